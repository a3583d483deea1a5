//! `iostall::fuzzing::cri_lists` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::cri_lists(data);
});
