//! `iostall::fuzzing::ring_lifecycle` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::ring_lifecycle(data);
});
