//! `iostall::fuzzing::containerd_envelope` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::containerd_envelope(data);
});
