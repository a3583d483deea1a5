//! As root, real kernel and ext4, tracepoint mode: what the kernel side keeps and what
//! it leaves out. A directory's fsync is disk IO (runtimes fsync a directory to make a
//! rename durable) and is reported, marked as such; `--comm` is applied in the kernel, so
//! other processes' slow IO never reaches the ring buffer, and what it left out is counted.
use std::process::Command;

use iostall_tests::{
    iostall_proc::{Finished, Iostall},
    records::stopped_field,
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use serde_json::Value;

const QUIET: &[&str] = &[
    "--attach",
    "tracepoint",
    "-t",
    "0",
    "-o",
    "json",
    "--metrics-listen",
    "off",
    "--containerd-socket",
    "off",
    "--docker-socket",
    "off",
];

/// Runs `body` (Python) under the thread name `comm`; `os` is imported.
fn python_as(comm: &str, body: &str) {
    let script = format!(
        "import os, ctypes\nctypes.CDLL(None).prctl(15, {comm:?}.encode(), 0, 0, 0)\n{body}"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python3");
    assert!(status.success(), "python3 as {comm} failed");
}

/// The IO records (not runtime lines) of a finished run.
fn io_records(finished: &Finished) -> Vec<Value> {
    finished
        .json()
        .expect("JSON lines")
        .into_iter()
        .filter(|r| r["op"].is_string())
        .collect()
}

#[test]
fn directory_fsync_is_reported_as_one_and_directory_opens_are_not() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs");
    let fs = SlowExt4::create(SlowExt4Options::default()).expect("ext4 fixture");
    let dir = fs.mount_point().join("state");
    std::fs::create_dir(&dir).expect("mkdir");
    let comm = "iost-dirsync";
    let iostall = Iostall::start(&[QUIET, &["-c", comm]].concat()).expect("attaches");
    // As a runtime writes its state: a temporary file, fsync, rename, fsync the directory.
    python_as(
        comm,
        &format!(
            "d = {dir:?}\n\
             fd = os.open(d + '/config.json.tmp', os.O_WRONLY | os.O_CREAT, 0o644)\n\
             os.write(fd, b'{{}}' * 2048)\n\
             os.fsync(fd)\n\
             os.close(fd)\n\
             os.rename(d + '/config.json.tmp', d + '/config.json')\n\
             dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n\
             os.fsync(dfd)\n\
             os.close(dfd)\n",
            dir = dir.to_string_lossy()
        ),
    );
    let finished = iostall.stop().expect("iostall stops");
    assert!(finished.success, "{}", finished.stderr);
    let records = io_records(&finished);
    let fsyncs: Vec<(&str, bool)> = records
        .iter()
        .filter(|r| r["op"] == "fsync")
        .filter_map(|r| Some((r["file_name"].as_str()?, r["directory"].as_bool()?)))
        .collect();
    assert!(
        fsyncs.contains(&("state", true)),
        "the directory's fsync is reported and marked: {fsyncs:?}"
    );
    assert!(
        fsyncs.contains(&("config.json.tmp", false)),
        "the file's fsync is not marked: {fsyncs:?}"
    );
    let dir_fsync = records
        .iter()
        .find(|r| r["op"] == "fsync" && r["file_name"] == "state")
        .expect("found above");
    assert_eq!(dir_fsync["parents"], serde_json::json!([]));
    assert!(
        dir_fsync["file_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/state")),
        "{dir_fsync}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["op"] == "open" && r["file_name"] == "state"),
        "opening a directory is not a file open: {records:?}"
    );
}

#[test]
fn comm_filter_keeps_other_processes_out_of_the_ring_buffer() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs");
    let fs = SlowExt4::create(SlowExt4Options::default()).expect("ext4 fixture");
    let dir = fs.mount_point().to_string_lossy().into_owned();
    let wanted = "iost-wanted";
    let iostall = Iostall::start(&[QUIET, &["--comm", wanted]].concat()).expect("attaches");
    let write_fsync = |name: &str, n: u32| {
        format!(
            "for i in range({n}):\n    \
             fd = os.open('{dir}/{name}-%d' % i, os.O_WRONLY | os.O_CREAT, 0o644)\n    \
             os.write(fd, b'x' * 4096)\n    \
             os.fsync(fd)\n    \
             os.close(fd)\n"
        )
    };
    // Another process does more IO, on the same filesystem, at the same threshold.
    python_as("iost-other", &write_fsync("other", 10));
    python_as(wanted, &write_fsync("wanted", 2));
    let finished = iostall.stop().expect("iostall stops");
    assert!(finished.success, "{}", finished.stderr);
    let records = io_records(&finished);
    let comms: std::collections::BTreeSet<&str> =
        records.iter().filter_map(|r| r["comm"].as_str()).collect();
    assert_eq!(comms, [wanted].into(), "only the wanted comm is reported");
    let wanted_ops = records
        .iter()
        .filter(|r| {
            r["file_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("wanted-"))
        })
        .count();
    assert!(wanted_ops >= 6, "2 × (open, write, fsync): {records:?}");
    // Kernel side: every event that entered the ring buffer was printed (nothing of
    // another comm got there to be dropped later), and the other process's 30
    // operations (and whatever else ran at -t 0) were counted as left out.
    let kernel_events = stopped_field(&finished.stderr, "kernel_events");
    assert_eq!(kernel_events, records.len() as u64, "{}", finished.stderr);
    let other = stopped_field(&finished.stderr, "kernel_filtered_other_comm");
    assert!(other >= 30, "other_comm = {other}");
}
