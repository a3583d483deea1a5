//! `iostall::fuzzing::docker_json` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::docker_json(data);
});
