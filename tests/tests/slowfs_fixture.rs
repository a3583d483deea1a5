//! Checks the slow-ext4 fixture itself: throttling really slows fsync, no throttle
//! leaves it fast, and dropping the fixture leaves nothing behind.
//!
//! Runs as root; without root these tests fail (never skip).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use iostall_tests::slowfs::{
    SlowExt4, SlowExt4Options, TmpfsDir, ensure_kernel_mounts, is_mounted, loop_backed_by, mounts,
    require_root,
};
use serde_json::Value;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");

/// Runs the workload with `args` and returns its JSON lines.
fn workload(args: &[&std::ffi::OsStr]) -> Result<Vec<Value>> {
    let out = Command::new(WORKLOAD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("starting iostall-workload")?;
    if !out.status.success() {
        bail!(
            "iostall-workload {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout).context("workload stdout is not UTF-8")?;
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line {l:?}")))
        .collect()
}

/// Runs `write-fsync` in the fixture's cgroup and returns the fsync durations in ns.
///
/// `prime` passes `--prime-throttle`: blk-throttle lets the first IO after an idle
/// period through at once, so without priming the first fsync is fast.
fn fsync_durations(fs: &SlowExt4, count: u32, prime: bool) -> Result<Vec<u64>> {
    let count = count.to_string();
    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
    if prime {
        args.push("--prime-throttle".as_ref());
    }
    args.extend::<[&std::ffi::OsStr; 13]>([
        "--cgroup".as_ref(),
        fs.cgroup_dir().as_os_str(),
        "--comm".as_ref(),
        "slowfs-fixture".as_ref(),
        "write-fsync".as_ref(),
        "--dir".as_ref(),
        fs.mount_point().as_os_str(),
        "--count".as_ref(),
        count.as_ref(),
        "--size".as_ref(),
        "4096".as_ref(),
        "--name-prefix".as_ref(),
        "fixture-".as_ref(),
    ]);
    let records = workload(&args)?;
    let mut fsyncs = Vec::new();
    for r in &records {
        assert_eq!(r["comm"], "slowfs-fixture", "record {r}");
        assert_eq!(r["file_name"], "fixture-data", "record {r}");
        assert_eq!(r["parent"], "mnt", "record {r}");
        if r["op"] == "fsync" {
            fsyncs.push(
                r["duration_ns"]
                    .as_u64()
                    .context("duration_ns not a number")?,
            );
        }
    }
    Ok(fsyncs)
}

fn fmt_ms(ns: &[u64]) -> String {
    ns.iter()
        .map(|n| format!("{:.1} ms", *n as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn throttled_fsync_is_slow() -> Result<()> {
    require_root();
    let fs = SlowExt4::create(SlowExt4Options {
        write_iops: Some(10),
        ..Default::default()
    })?;
    let fsyncs = fsync_durations(&fs, 3, true)?;
    eprintln!("fsync at 10 write IOPS: {}", fmt_ms(&fsyncs));
    assert_eq!(fsyncs.len(), 3, "expected 3 fsync records");
    for d in &fsyncs {
        assert!(
            *d >= 60_000_000,
            "fsync at 10 write IOPS took only {d} ns; all: {}",
            fmt_ms(&fsyncs)
        );
    }
    Ok(())
}

#[test]
fn unthrottled_fsync_is_fast() -> Result<()> {
    require_root();
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let fsyncs = fsync_durations(&fs, 3, true)?;
    eprintln!("fsync unthrottled: {}", fmt_ms(&fsyncs));
    assert_eq!(fsyncs.len(), 3, "expected 3 fsync records");
    for d in &fsyncs {
        assert!(
            *d < 50_000_000,
            "unthrottled fsync took {d} ns; all: {}",
            fmt_ms(&fsyncs)
        );
    }
    Ok(())
}

/// Which blkio cgroup `pid` is in, from `/proc/<pid>/cgroup`.
fn blkio_cgroup_of(pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "blkio")
                .then(|| path.to_owned())
        })
        .with_context(|| format!("no blkio line in /proc/{pid}/cgroup: {text}"))
}

/// Loop devices whose backing file is `backing`, per `losetup -j`.
fn losetup_j(backing: &Path) -> Result<String> {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(backing)
        .output()
        .context("running losetup -j")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process killed and reaped on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn drop_leaves_nothing_behind() -> Result<()> {
    require_root();
    let sleeper = Child(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .context("spawning sleep")?,
    );
    let pid = sleeper.0.id();

    let fs = SlowExt4::create(SlowExt4Options {
        write_iops: Some(10),
        read_iops: Some(20),
        ..Default::default()
    })?;
    let mount_point: PathBuf = fs.mount_point().to_owned();
    let backing: PathBuf = fs.backing_file().to_owned();
    let cgroup: PathBuf = fs.cgroup_dir().to_owned();
    let loop_dev: PathBuf = fs.loop_device().to_owned();
    let (major, minor) = fs.device();

    // While alive: mounted as ext4 on the loop device, limits set, pid in the cgroup.
    let entry = mounts()?
        .into_iter()
        .find(|m| m.mount_point == mount_point)
        .context("fixture mount point not in mountinfo")?;
    assert_eq!(entry.fs_type, "ext4");
    assert_eq!(Path::new(&entry.source), loop_dev);
    assert!(
        losetup_j(&backing)?.contains(&*loop_dev.to_string_lossy()),
        "losetup -j does not list {}",
        loop_dev.display()
    );
    let limits = std::fs::read_to_string(cgroup.join("blkio.throttle.write_iops_device"))?;
    assert_eq!(limits.trim(), format!("{major}:{minor} 10"));
    let limits = std::fs::read_to_string(cgroup.join("blkio.throttle.read_iops_device"))?;
    assert_eq!(limits.trim(), format!("{major}:{minor} 20"));
    fs.add_pid(pid)?;
    let cg_name = format!(
        "/{}",
        cgroup.file_name().context("cgroup name")?.to_string_lossy()
    );
    assert_eq!(blkio_cgroup_of(pid)?, cg_name);

    drop(fs);

    assert!(
        !is_mounted(&mount_point)?,
        "{} still mounted after drop",
        mount_point.display()
    );
    let listed = losetup_j(&backing)?;
    assert!(
        listed.trim().is_empty(),
        "loop device still attached after drop: {listed}"
    );
    // `losetup -j` stats the backing file, which drop deleted, so also ask sysfs.
    // The node may be reused by someone else at once: only check it is not ours.
    assert!(
        !loop_backed_by(&loop_dev, &backing)?,
        "{} still backed by {}",
        loop_dev.display(),
        backing.display()
    );
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
    assert!(
        !mount_point.exists(),
        "{} still exists",
        mount_point.display()
    );
    // The live process was moved back to the root blkio cgroup, not killed.
    assert_eq!(blkio_cgroup_of(pid)?, "/");
    Ok(())
}

#[test]
fn drop_after_panic_still_tears_down() -> Result<()> {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::Builder::new()
        .name("panics-on-purpose".into())
        .spawn(move || {
            let fs = SlowExt4::create(SlowExt4Options::default()).expect("creating fixture");
            tx.send((fs.mount_point().to_owned(), fs.cgroup_dir().to_owned()))
                .expect("sending paths");
            panic!("deliberate panic while the fixture is alive");
        })
        .context("spawning thread")?
        .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (mount_point, cgroup) = rx.recv().context("fixture was never created")?;
    assert!(!is_mounted(&mount_point)?, "still mounted after panic");
    assert!(!cgroup.exists(), "cgroup left behind after panic");
    Ok(())
}

#[test]
fn busy_mount_is_still_torn_down() -> Result<()> {
    require_root();
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let mount_point = fs.mount_point().to_owned();
    let backing = fs.backing_file().to_owned();
    let loop_dev = fs.loop_device().to_owned();
    // Keep a file open on the filesystem so a plain umount fails with EBUSY.
    let open = std::fs::File::create(mount_point.join("held-open"))?;
    drop(fs);
    assert!(!is_mounted(&mount_point)?, "busy mount not detached");
    drop(open);
    // The loop device auto-clears once the lazily detached fs is released.
    for _ in 0..50 {
        if !loop_backed_by(&loop_dev, &backing)? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("loop device for {} never detached", backing.display())
}

#[test]
fn tmpfs_dir_mounts_and_unmounts() -> Result<()> {
    require_root();
    let dir = TmpfsDir::create(8)?;
    let path = dir.path().to_owned();
    let entry = mounts()?
        .into_iter()
        .find(|m| m.mount_point == path)
        .context("tmpfs not in mountinfo")?;
    assert_eq!(entry.fs_type, "tmpfs");
    std::fs::write(path.join("f"), b"x")?;
    drop(dir);
    assert!(!is_mounted(&path)?, "tmpfs still mounted after drop");
    assert!(!path.exists(), "tmpfs dir left behind");
    Ok(())
}

#[test]
fn kernel_mounts_are_present() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let all = mounts()?;
    assert!(
        all.iter()
            .any(|m| m.fs_type == "tracefs" && m.mount_point == Path::new("/sys/kernel/tracing"))
    );
    assert!(
        all.iter()
            .any(|m| m.fs_type == "bpf" && m.mount_point == Path::new("/sys/fs/bpf"))
    );
    Ok(())
}
