//! `iostall::fuzzing::config_yaml` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::config_yaml(data);
});
