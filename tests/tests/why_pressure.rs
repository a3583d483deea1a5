//! "The container was stalled on IO for 60% of the last 10 s": a process writing on a
//! disk capped at 10 IOPS, in a cgroup v2 cgroup of its own, shows its cgroup's IO
//! pressure (PSI `some avg10`) rising on its records; one that only opens files on an
//! uncapped disk, in another cgroup at the same time, shows ~0. Both carry the node's
//! pressure.
//!
//! Nothing is mocked: real cgroups in the unified hierarchy (a container is one; the
//! containerd tests show iostall resolves a real container's cgroup the same way, by
//! its id), real ext4 on loop devices ([`CappedExt4`]), the kernel's own PSI files,
//! iostall attached in tracepoint mode.
use std::{fs, os::unix::fs::MetadataExt, path::PathBuf};

use anyhow::{Context, Result};
use iostall_tests::{
    capped_disk::CappedExt4,
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
    workload::workload_binary,
};
use serde_json::Value;

/// A cgroup v2 cgroup made for the test, removed after.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Result<Self> {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("io.pressure").exists())
            .context("no cgroup v2 hierarchy with PSI")?;
        let dir = root.join(format!("{name}-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.0)?.ino())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes have exited; an empty cgroup is removed with rmdir.
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("iostall-tests: could not remove {}", self.0.display());
    }
}

fn psi(record: &Value) -> Option<f64> {
    record["why"]["pressure"]["cgroup"]["some_avg10"].as_f64()
}

#[test]
fn a_stalled_cgroups_pressure_rises_on_its_records_an_idle_ones_does_not() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let slow = CappedExt4::create(64, 10)?;
    let fast = CappedExt4::create(32, 0)?;
    let busy_dir = slow.mount_point().join("busy");
    let idle_dir = fast.mount_point().join("idle");
    fs::create_dir(&busy_dir)?;
    fs::create_dir(&idle_dir)?;
    let busy = Cgroup::create("iostall-psi-busy")?;
    let idle = Cgroup::create("iostall-psi-idle")?;
    let comm = "iost-psi";
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "--threshold-ms",
        "0",
        "--output",
        "json",
        "--comm",
        comm,
    ])?;
    let workload = workload_binary()?;
    let run = |cgroup: &Cgroup, args: &[&str]| {
        std::process::Command::new(&workload)
            .arg("--cgroup")
            .arg(&cgroup.0)
            .args(["--comm", comm])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
    };
    let busy_s = busy_dir.to_string_lossy().into_owned();
    let idle_s = idle_dir.to_string_lossy().into_owned();
    // ~8 s of O_DIRECT write+fsync at 10 IOPS: each write waits for the device in
    // `io_schedule`, which is what PSI counts as an IO stall. (An fsync's wait for the
    // journal commit is not: it sleeps in `jbd2_log_wait_commit`, and the commit's IO
    // is the journal thread's, so it shows in the node's pressure, not the cgroup's.)
    let mut writer = run(
        &busy,
        &[
            "write-fsync",
            "--dir",
            &busy_s,
            "--count",
            "30",
            "--size",
            "4096",
            "--direct",
        ],
    )?;
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Meanwhile, in its own cgroup, files opened (created) on a disk that waits for
    // nothing: no IO stall.
    let status = run(&idle, &["open", "--dir", &idle_s, "--count", "20"])?.wait()?;
    assert!(status.success(), "the idle workload failed: {status}");
    let status = writer.wait()?;
    assert!(status.success(), "the writer failed: {status}");
    let finished = iostall.stop()?;
    assert!(finished.success, "iostall failed: {}", finished.stderr);

    let events = finished.json()?;
    let of = |id: u64| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["comm"] == comm && e["cgroup_id"].as_u64() == Some(id))
            .collect()
    };
    let busy_records = of(busy.id()?);
    let idle_records = of(idle.id()?);
    assert!(
        busy_records.len() >= 20 && !idle_records.is_empty(),
        "records of both cgroups: {} busy, {} idle: {events:#?}",
        busy_records.len(),
        idle_records.len()
    );
    let busy_psi: Vec<f64> = busy_records.iter().filter_map(|e| psi(e)).collect();
    let idle_psi: Vec<f64> = idle_records.iter().filter_map(|e| psi(e)).collect();
    eprintln!("busy cgroup PSI some avg10 over its records: {busy_psi:?}");
    eprintln!("idle cgroup PSI some avg10 over its records: {idle_psi:?}");
    let records: Vec<&Value> = events.iter().filter(|e| e["op"].is_string()).collect();
    let node: Vec<f64> = records
        .iter()
        .filter_map(|e| e["why"]["pressure"]["node"]["some_avg10"].as_f64())
        .collect();
    eprintln!(
        "node PSI some avg10: min {:.2}, max {:.2}",
        node.iter().copied().fold(f64::INFINITY, f64::min),
        node.iter().copied().fold(0.0, f64::max)
    );
    assert_eq!(
        busy_psi.len(),
        busy_records.len(),
        "every record has its PSI"
    );
    assert_eq!(
        idle_psi.len(),
        idle_records.len(),
        "every record has its PSI"
    );
    assert_eq!(node.len(), records.len(), "every record has the node's PSI");
    // Rising: the kernel updates avg10 every 2 s; after ~6 s stalled it is well up.
    let first = busy_psi.first().copied().unwrap_or(0.0);
    let peak = busy_psi.iter().copied().fold(0.0, f64::max);
    assert!(
        peak >= 8.0 && peak > first + 5.0,
        "the stalled cgroup's PSI rises: {busy_psi:?}"
    );
    assert!(
        idle_psi.iter().all(|p| *p < 1.0),
        "the idle cgroup's PSI stays ~0: {idle_psi:?}"
    );
    Ok(())
}
