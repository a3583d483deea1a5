//! End to end, as root, on the real kernel: iostall in tracepoint mode sees slow writes,
//! fsyncs and reads on real xfs and btrfs filesystems (loop devices made slow by cgroup
//! v1 blkio throttling, as the ext4 tests do), with pid, file, path, latency and the
//! filesystem; and `--fs` leaves a filesystem out in the kernel, where the filtered
//! operations are counted. Nothing here is mocked.
use anyhow::Result;
use iostall_tests::{
    iostall_proc::{Finished, Iostall},
    records::{iostall_op, matching, stopped_field, str_field as s, u64_field as n},
    slowfs::{FsType, SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
    workload::{WorkloadOp, run_workload, throttled_slow_ops},
};
use serde_json::Value;

fn setup() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs mount");
}

fn events_of(finished: &Finished, comm: &str) -> Vec<Value> {
    assert!(finished.success, "iostall failed: {}", finished.stderr);
    finished
        .json()
        .expect("--output json prints only JSON lines")
        .into_iter()
        .filter(|e| s(e, "comm") == comm)
        .collect()
}

/// Slow buffered writes + fsyncs, O_DIRECT writes and O_DIRECT reads on a throttled
/// `fs_type` filesystem: each kind is reported at ≥ 80 ms with the workload's pid, tid,
/// file, full path, device, sizes and a latency matching what the workload measured,
/// tagged with the filesystem.
fn slow_operations_are_reported_on(fs_type: FsType, comm: &str) -> Result<()> {
    setup();
    let fs = SlowExt4::create_fs(
        SlowExt4Options {
            size_mib: fs_type.min_size_mib().max(64),
            write_iops: Some(10),
            read_iops: Some(10),
        },
        fs_type,
    )?;
    let mnt = fs.mount_point().to_path_buf();
    let dir = mnt.join("stall-dir");
    std::fs::create_dir(&dir)?;
    let cgroup = fs.cgroup_dir().to_string_lossy().into_owned();
    let threshold_ms = 20.0;
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
    // Buffered writes + fsync, O_DIRECT writes, O_DIRECT reads, on the throttled disk.
    let ops = throttled_slow_ops(&cgroup, comm, &dir)?;
    let events = events_of(&iostall.stop()?, comm);

    for e in &events {
        assert_eq!(s(e, "fs"), fs_type.name(), "{e}");
    }
    let mut slow_seen = std::collections::BTreeMap::<String, u32>::new();
    for op in &ops {
        let user_ms = op.duration_ns as f64 / 1e6;
        if user_ms < threshold_ms + 5.0 {
            continue;
        }
        let e = matching(&events, op).unwrap_or_else(|| {
            panic!(
                "slow {} of {} ({user_ms:.1} ms) on {} not reported; got {events:#?}",
                op.op,
                op.path,
                fs_type.name()
            )
        });
        let kernel_ms = n(e, "latency_ns") as f64 / 1e6;
        assert!(
            kernel_ms <= user_ms + 1.0 && kernel_ms >= user_ms - 5.0,
            "{} latency {kernel_ms:.2} ms vs {user_ms:.2} ms measured around the syscall",
            op.op
        );
        assert_eq!((n(e, "pid"), n(e, "tid")), (op.pid, op.tid), "{e}");
        assert_eq!(e["parents"][0].as_str(), Some(op.parent.as_str()), "{e}");
        assert_eq!(s(e, "file_path"), op.path, "{e}");
        assert_eq!(s(e, "mount_point"), mnt.to_string_lossy(), "{e}");
        let (major, minor) = fs.device();
        if fs_type != FsType::Btrfs {
            assert_eq!(
                (n(e, "dev_major"), n(e, "dev_minor")),
                (u64::from(major), u64::from(minor)),
                "{e}"
            );
        }
        if matches!(op.op.as_str(), "write" | "pread" | "read") {
            assert_eq!(n(e, "bytes"), op.bytes, "{e}");
            assert_eq!(e["offset"].as_i64(), Some(op.offset as i64), "{e}");
        }
        if kernel_ms >= 80.0 {
            *slow_seen.entry(iostall_op(&op.op).to_owned()).or_default() += 1;
        }
    }
    for kind in ["write", "fsync", "read"] {
        assert!(
            slow_seen.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} of ≥ 80 ms reported on {}; saw {slow_seen:?}; ops {ops:#?}",
            fs_type.name()
        );
    }
    Ok(())
}

#[test]
fn slow_writes_fsyncs_and_reads_on_xfs_are_reported() -> Result<()> {
    slow_operations_are_reported_on(FsType::Xfs, "iost-xfs-slow")
}

#[test]
fn slow_writes_fsyncs_and_reads_on_btrfs_are_reported() -> Result<()> {
    slow_operations_are_reported_on(FsType::Btrfs, "iost-btrfs-slow")
}

/// `--fs ext4` leaves xfs out in the kernel: at threshold 0 the same workload on xfs
/// and ext4 gives ext4 events only, and the xfs writes are counted as filtered
/// (`kernel_filtered_other_fs`); an iostall beside it with the default `--fs` reports
/// them, so they were there to be seen.
#[test]
fn fs_ext4_leaves_xfs_out_in_the_kernel() -> Result<()> {
    setup();
    let xfs = SlowExt4::create_fs(
        SlowExt4Options {
            size_mib: FsType::Xfs.min_size_mib(),
            ..Default::default()
        },
        FsType::Xfs,
    )?;
    let ext4 = SlowExt4::create(SlowExt4Options::default())?;
    let comm = "iost-fs-filter";
    let base = [
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-o",
        "json",
        "-c",
        comm,
    ];
    let ext4_only = Iostall::start(&[&base[..], &["--fs", "ext4"]].concat())?;
    let every_fs = Iostall::start(&base)?;

    let mut ops = Vec::new();
    for mnt in [xfs.mount_point(), ext4.mount_point()] {
        let dir = mnt.join("work");
        std::fs::create_dir(&dir)?;
        let dir = dir.to_string_lossy().into_owned();
        ops.extend(run_workload(&[
            "--comm",
            comm,
            "write-fsync",
            "--dir",
            &dir,
            "--count",
            "3",
            "--size",
            "4096",
        ])?);
    }
    let ext4_only = ext4_only.stop()?;
    let every_fs = every_fs.stop()?;
    // Both saw the same operations of `comm`, its pipe writes included (never traced):
    // what only `--fs ext4` filtered is the xfs IO.
    let filtered = stopped_field(&ext4_only.stderr, "kernel_filtered_other_fs")
        .saturating_sub(stopped_field(&every_fs.stderr, "kernel_filtered_other_fs"));
    let ext4_only = events_of(&ext4_only, comm);
    let every_fs = events_of(&every_fs, comm);

    let xfs_dir = xfs.mount_point().to_string_lossy().into_owned();
    let on_xfs: Vec<&WorkloadOp> = ops
        .iter()
        .filter(|o| o.path.starts_with(&xfs_dir))
        .collect();
    assert_eq!(on_xfs.len(), 6, "3 writes and 3 fsyncs on xfs: {ops:#?}");
    for op in &on_xfs {
        let e = matching(&every_fs, op)
            .unwrap_or_else(|| panic!("the default --fs missed {op:?}: {every_fs:#?}"));
        assert_eq!(s(e, "fs"), "xfs", "{e}");
        assert!(
            matching(&ext4_only, op).is_none(),
            "--fs ext4 reported an xfs operation: {op:?}"
        );
    }
    assert!(
        ext4_only.iter().all(|e| s(e, "fs") == "ext4"),
        "--fs ext4 reported another filesystem: {ext4_only:#?}"
    );
    for op in ops.iter().filter(|o| !o.path.starts_with(&xfs_dir)) {
        let e = matching(&ext4_only, op)
            .unwrap_or_else(|| panic!("--fs ext4 missed an ext4 {op:?}: {ext4_only:#?}"));
        assert_eq!(s(e, "fs"), "ext4", "{e}");
    }
    // Every xfs write (and the open before them) reached the kernel side's filesystem
    // check and stopped there. xfs fsyncs are not even timed: with xfs and btrfs left
    // out, the fsync syscall programs are not attached.
    let xfs_writes = on_xfs.iter().filter(|o| o.op == "write").count() as u64;
    assert_eq!(xfs_writes, 3);
    assert!(
        filtered >= xfs_writes,
        "--fs ext4 filtered {filtered} more operations than the default, fewer than the \
         {xfs_writes} xfs writes"
    );
    Ok(())
}
