//! `iostall::fuzzing::kube_watch_event` under libFuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iostall::fuzzing::kube_watch_event(data);
});
