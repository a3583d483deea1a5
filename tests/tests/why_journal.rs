//! "Your fsync waited for everyone else's writes": a small fsync made while another
//! process's large buffered write is being flushed and committed says which jbd2 commit
//! it waited for, how long that commit took and what it carried.
//!
//! Nothing is mocked: a real ext4 on a device capped at 20 IOPS ([`CappedExt4`]: every
//! IO waits, the journal's included), `dd` as the other process, the workload binary as
//! the small writer, iostall attached in tracepoint mode (its jbd2 programs beside it).
use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use iostall_tests::{
    capped_disk::CappedExt4,
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
    workload::run_workload,
};
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
fn a_small_fsync_says_it_waited_on_the_big_writers_commit() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let disk = CappedExt4::create(64, 20)?;
    let root = disk.mount_point().to_path_buf();
    let small_dir = root.join("small");
    std::fs::create_dir(&small_dir)?;
    // Let the directory's own commit go by before the cap matters.
    Command::new("sync").arg("-f").arg(&root).status()?;

    let comm = "iost-journal";
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "--threshold-ms",
        "50",
        "--output",
        "json",
        "--comm",
        comm,
    ])?;
    // The other process: 8 MiB buffered, then one fsync that writes it all back (the
    // blocks are allocated in the running transaction) and commits.
    let big = root.join("big");
    let mut dd = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", big.display()))
        .args(["bs=1M", "count=8", "conv=fsync", "status=none"])
        .spawn()
        .context("spawning dd")?;
    std::thread::sleep(Duration::from_millis(300));
    let small = small_dir.to_string_lossy().into_owned();
    let ops = run_workload(&[
        "--comm",
        comm,
        "write-fsync",
        "--dir",
        &small,
        "--count",
        "1",
        "--size",
        "4096",
    ])?;
    let dd_status = dd.wait()?;
    assert!(dd_status.success(), "dd failed: {dd_status}");
    std::thread::sleep(Duration::from_millis(200));
    let finished = iostall.stop()?;
    assert!(finished.success, "iostall failed: {}", finished.stderr);

    let fsync = ops
        .iter()
        .find(|o| o.op == "fsync")
        .context("the workload reports its fsync")?;
    let events = finished.json()?;
    let seen = events
        .iter()
        .find(|e| e["op"] == "fsync" && e["comm"] == comm && e["tid"].as_u64() == Some(fsync.tid))
        .with_context(|| format!("the small fsync {fsync:?} was not reported: {events:#?}"))?;
    let latency_ms = seen["latency_ns"].as_u64().unwrap_or(0) as f64 / 1e6;
    let journal = &seen["why"]["journal"];
    assert!(
        journal.is_object(),
        "the small fsync ({latency_ms:.0} ms) does not say it waited on a commit: {seen:#}"
    );
    let commit_ms = f(&journal["commit_ms"]);
    let wait_ms = f(&journal["wait_ms"]);
    eprintln!(
        "small fsync {latency_ms:.0} ms: its commit {commit_ms:.0} ms (tid {}, {} blocks, {} \
         handles); waited {wait_ms:.0} ms over {} commit(s) of {} blocks, {} handles",
        journal["tid"],
        journal["blocks"],
        journal["handles"],
        journal["commits"],
        journal["blocks_total"],
        journal["handles_total"]
    );
    // At 20 IOPS a commit writes at least its blocks and its commit record: 2 requests.
    assert!(
        commit_ms >= 50.0,
        "a commit on the capped disk takes at least 2 requests: {journal:#}"
    );
    assert!(
        wait_ms <= latency_ms + 0.5 && commit_ms > 0.0 && wait_ms > 0.0,
        "the commit's wait lies inside the fsync: {journal:#}"
    );
    assert!(journal["blocks"].as_u64().unwrap_or(0) >= 1, "{journal:#}");
    // What it waited for held the other process's writes (dd's block allocations), not
    // only the small file's own: dd's transaction was committing when it began.
    assert!(
        journal["handles_total"].as_u64().unwrap_or(0) > journal["handles"].as_u64().unwrap_or(0)
            || journal["handles"].as_u64().unwrap_or(0) >= 2,
        "{journal:#}"
    );
    assert!(
        wait_ms >= 100.0,
        "at 20 IOPS the commits it waited through took more than 2 requests: {journal:#}"
    );
    // Only fsyncs wait on commits.
    for e in events.iter().filter(|e| e["op"] != "fsync") {
        assert!(e["why"]["journal"].is_null(), "{e:#}");
    }
    Ok(())
}
