//! A slow disk as the seed's is slow: capped at the device (10 IOPS, as a small cloud
//! volume), so every IO of every process waits, with no cgroup involved. iostall,
//! attached in tracepoint mode to the real kernel, reports what waits there: fsyncs
//! bound on the journal, and an open whose directory lookup reads the disk.
//!
//! Nothing is mocked: the device is a loop device over a FUSE file served at 10
//! requests a second by the test process ([`CappedExt4`]), with a real ext4 on it.
use std::time::Duration;

use anyhow::Result;
use iostall_tests::{
    capped_disk::CappedExt4,
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
    workload::run_workload,
};
use serde_json::Value;

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The fixture itself: IO waits at the device, and only once the cap is set.
#[test]
fn the_device_serves_at_most_its_iops() -> Result<()> {
    require_root();
    let disk = CappedExt4::create(32, 10)?;
    let dir = disk.mount_point().join("d");
    std::fs::create_dir(&dir)?;
    let dir_s = dir.to_string_lossy().into_owned();
    let before = disk.served();
    let started = std::time::Instant::now();
    let ops = run_workload(&[
        "write-fsync",
        "--dir",
        &dir_s,
        "--count",
        "3",
        "--size",
        "4096",
    ])?;
    let elapsed = started.elapsed();
    let served = disk.served() - before;
    // Each fsync writes the data block and commits the journal (descriptor, blocks,
    // commit record): at least 2 requests, so at least 100 ms at 10 IOPS.
    let fsyncs: Vec<_> = ops.iter().filter(|o| o.op == "fsync").collect();
    assert_eq!(fsyncs.len(), 3);
    for f in &fsyncs {
        assert!(
            f.duration_ns >= 100_000_000,
            "an fsync on the capped disk took {} ms",
            f.duration_ns / 1_000_000
        );
    }
    assert!(served >= 6, "the device served {served} requests");
    // The cap holds: N requests take at least (N-1)/10 s.
    assert!(
        elapsed >= Duration::from_millis(100 * (served - 1)),
        "{served} requests in {elapsed:?}"
    );
    Ok(())
}

#[test]
fn journal_bound_fsyncs_and_cold_opens_are_seen_without_any_cgroup() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let mut disk = CappedExt4::create(64, 10)?;
    let root = disk.mount_point().to_path_buf();
    // Files to open cold, in directories of their own, made while uncapped.
    disk.set_iops(0);
    let mut cold = Vec::new();
    for i in 0..3 {
        let d = root.join(format!("cold-{i}/a/b"));
        std::fs::create_dir_all(&d)?;
        let f = d.join(format!("file-{i}"));
        std::fs::write(&f, b"x")?;
        cold.push(f.to_string_lossy().into_owned());
    }
    let work = root.join("work");
    std::fs::create_dir(&work)?;
    // Written back, then evicted: each open must read its directories and inode.
    disk.set_iops(10);
    disk.evict_caches()?;

    let comm = "iost-capped";
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "--threshold-ms",
        "20",
        "--output",
        "json",
        "--comm",
        comm,
    ])?;
    let prime = root.join("work").to_string_lossy().into_owned();
    let mut args = vec!["--comm", comm, "open-existing", "--prime-dir", &prime];
    args.extend(cold.iter().map(String::as_str));
    let mut ops = run_workload(&args)?;
    let work_s = work.to_string_lossy().into_owned();
    ops.extend(run_workload(&[
        "--comm",
        comm,
        "write-fsync",
        "--dir",
        &work_s,
        "--count",
        "4",
        "--size",
        "4096",
    ])?);
    let finished = iostall.stop()?;
    assert!(finished.success, "iostall failed: {}", finished.stderr);
    let events: Vec<Value> = finished
        .json()?
        .into_iter()
        .filter(|e| s(e, "comm") == comm)
        .collect();
    let (major, minor) = disk.device();

    // The workload ran in the test's own cgroup: no throttle anywhere but the device.
    let slow_fsyncs: Vec<_> = ops
        .iter()
        .filter(|o| o.op == "fsync" && o.duration_ns >= 60_000_000)
        .collect();
    assert!(
        slow_fsyncs.len() >= 3,
        "fsyncs on the capped disk must wait: {ops:?}"
    );
    for f in &slow_fsyncs {
        let seen = events.iter().find(|e| {
            s(e, "op") == "fsync"
                && n(e, "tid") == f.tid
                && s(e, "file_name") == f.file_name
                && n(e, "start_unix_ns") + 2_000_000 >= f.start_unix_ns
                && n(e, "start_unix_ns") <= f.start_unix_ns + f.duration_ns
        });
        let e = seen.unwrap_or_else(|| panic!("slow fsync {f:?} not reported: {events:#?}"));
        assert_eq!(
            (n(e, "dev_major"), n(e, "dev_minor")),
            (major as u64, minor as u64)
        );
        assert!(n(e, "latency_ns") >= 50_000_000, "{e}");
    }

    // A cold open reads its directories and inode from the device.
    let slow_opens: Vec<_> = ops
        .iter()
        .filter(|o| o.op == "open" && o.duration_ns >= 60_000_000)
        .collect();
    assert!(
        !slow_opens.is_empty(),
        "a cold open on the capped disk must wait: {ops:?}"
    );
    for o in &slow_opens {
        let e = events
            .iter()
            .find(|e| s(e, "op") == "open" && s(e, "file_name") == o.file_name)
            .unwrap_or_else(|| panic!("slow open {o:?} not reported: {events:#?}"));
        assert!(n(e, "latency_ns") >= 50_000_000, "{e}");
        assert!(
            s(e, "file_path").ends_with(&format!("a/b/{}", o.file_name)),
            "{e}"
        );
    }
    Ok(())
}
