//! A container's own root filesystem, seen through overlayfs, as root and for real: a
//! private containerd keeps its root (so its overlayfs snapshots) on an ext4 disk capped
//! at 10 IOPS at the device (the seed's cloud disk, [`CappedExt4`]); a container created
//! through CRI, as the kubelet would, writes and reads files of its own filesystem, `/`,
//! which is an overlayfs mount. iostall (tracepoint mode) must report each slow
//! operation as the real file under the snapshot directory, marked `via_overlayfs`, with
//! the container's identity.
//!
//! The slow operations are the seed's: O_DIRECT writes that wait for the disk, buffered
//! writes held in dirty-page throttling (the disk's own dirty limit lowered to 256 KiB,
//! so 8 MiB of writes wait for writeback; without it they are not slow here, measured),
//! and cold reads: of a file the container wrote (its upper layer) after its pages were
//! evicted, and of the image's busybox (a lower layer) with O_DIRECT. Nothing is mocked.
//! Without the overlayfs follow, none of them is reported (checked against the binary
//! before it: the operations are filtered out as not on ext4).
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use iostall_tests::{
    capped_disk::CappedExt4,
    containerd::{CRI_NAMESPACE, ContainerSpec, Containerd, new_pod_uid},
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
};
use serde_json::Value as Json;

/// The container's script. `/cold` is written (and synced) before the disk is capped;
/// then each step waits for the test's go-ahead (a file the test makes in the
/// container's root filesystem), so the disk is capped and `/cold` evicted exactly in
/// between. The disk's cap is a rate: an IO after a quiet spell goes through at once, so
/// every timed operation needs several IOs in a row (three or more direct 4 KiB writes
/// and reads, a 1 MiB read of a cold file through 128 KiB readaheads).
const SCRIPT: &str = "\
dd if=/dev/zero of=/cold bs=1048576 count=4 conv=fsync
touch /ready
while [ ! -e /go-write ]; do sleep 0.05; done
dd if=/dev/zero of=/direct bs=4096 count=4 oflag=direct
dd if=/dev/zero of=/buffered bs=1048576 count=8
touch /written
while [ ! -e /go-read ]; do sleep 0.05; done
dd if=/cold of=/dev/null bs=1048576
dd if=/bin/busybox of=/dev/null bs=4096 count=4 iflag=direct
";

/// The disk's writeback cache limit while the container writes: small, and strict (the
/// limit holds even far under the machine's global dirty limits), as a small node's
/// would be full of its neighbours' dirty pages.
const DIRTY_LIMIT_BYTES: u64 = 256 * 1024;

/// The loop device's writeback settings (`/sys/class/bdi/<maj:min>/`), put back as they
/// were on drop: loop devices outlive the fixture and are reused by other tests.
struct DirtyLimit {
    dir: PathBuf,
    max_ratio_fine: String,
    strict_limit: String,
}

impl DirtyLimit {
    fn set(device: (u32, u32), max_bytes: u64) -> Result<Self> {
        let dir = PathBuf::from(format!("/sys/class/bdi/{}:{}", device.0, device.1));
        let read = |name: &str| {
            fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}/{name}", dir.display()))
        };
        let this = Self {
            max_ratio_fine: read("max_ratio_fine")?,
            strict_limit: read("strict_limit")?,
            dir,
        };
        this.write("strict_limit", "1")?;
        this.write("max_bytes", &max_bytes.to_string())?;
        Ok(this)
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, value.trim()).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for DirtyLimit {
    fn drop(&mut self) {
        for (name, value) in [
            ("max_ratio_fine", self.max_ratio_fine.clone()),
            ("strict_limit", self.strict_limit.clone()),
        ] {
            if let Err(e) = self.write(name, &value) {
                eprintln!("iostall-tests: restoring {name}: {e:#}");
            }
        }
    }
}

/// `option=` of the overlayfs mount at `mount_point` (from `/proc/self/mountinfo`).
fn overlay_option(mount_point: &Path, option: &str) -> Result<String> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let want = mount_point.to_string_lossy();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4) != Some(&want.as_ref()) || fields.get(dash + 1) != Some(&"overlay") {
            continue;
        }
        let options = fields.get(dash + 3).copied().unwrap_or_default();
        if let Some(value) = options
            .split(',')
            .find_map(|o| o.strip_prefix(&format!("{option}=")))
        {
            return Ok(value.to_owned());
        }
    }
    bail!("no overlay mount at {want} with {option}=")
}

fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Evicts `file`'s cached pages (it was synced: all are clean), and only its: a global
/// `drop_caches` would also make the container's next exec fault busybox in from the
/// capped disk, and slow every other test on the machine.
fn evict(file: &Path) -> Result<()> {
    let f = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    f.sync_all()?;
    // SAFETY: posix_fadvise on an fd we own.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    ensure!(rc == 0, "posix_fadvise(DONTNEED) failed: {rc}");
    Ok(())
}

fn s(v: &Json, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn latency_ms(v: &Json) -> u64 {
    v["latency_ns"].as_u64().unwrap_or(0) / 1_000_000
}

/// `/parent/…/name` from what the kernel walked (nearest parent first).
fn walked_path(v: &Json) -> String {
    let mut path = String::new();
    for parent in v["parents"].as_array().into_iter().flatten().rev() {
        path.push('/');
        path.push_str(parent.as_str().unwrap_or_default());
    }
    path.push('/');
    path.push_str(&s(v, "file_name"));
    path
}

#[test]
fn container_rootfs_io_is_seen_through_overlayfs_with_the_containers_identity() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    // Uncapped while containerd starts and unpacks the image.
    let disk = CappedExt4::create(256, 0)?;
    let ctd = Containerd::start_in(disk.mount_point())?;
    assert_eq!(
        ctd.snapshotter(),
        "overlayfs",
        "containerd on ext4 must use overlayfs snapshots"
    );
    ctd.import_test_images()?;
    let socket = ctd.socket().to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "20",
        "-o",
        "json",
        "-c",
        "dd",
        "--containerd-socket",
        &socket,
        "--docker-socket",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    iostall.wait_for_source(&socket)?;

    let rt = tokio::runtime::Runtime::new()?;
    let uid = new_pod_uid()?;
    let id = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let sandbox = cri.run_pod_sandbox("app-0", "shop", &uid, 0).await?;
        let spec = ContainerSpec::busybox("writer", &["sh", "-c", SCRIPT]);
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        anyhow::Ok(id)
    })?;
    // The container's `/`, as its shim mounted it: overlayfs over containerd's snapshots.
    let rootfs = ctd
        .state()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(&id)
        .join("rootfs");
    let upper = PathBuf::from(overlay_option(&rootfs, "upperdir")?);
    let lower = PathBuf::from(overlay_option(&rootfs, "lowerdir")?);
    wait_for_file(&rootfs.join("ready"), Duration::from_secs(60))?;

    // The writes: a capped disk whose writeback cache is small.
    disk.set_iops(10);
    let limit = DirtyLimit::set(disk.device(), DIRTY_LIMIT_BYTES)?;
    fs::write(rootfs.join("go-write"), b"")?;
    wait_for_file(&rootfs.join("written"), Duration::from_secs(120))?;
    drop(limit);
    // The reads: `/cold` (in the upper layer) no longer cached; busybox (in the image's
    // layer) read with O_DIRECT.
    evict(&upper.join("cold"))?;
    fs::write(rootfs.join("go-read"), b"")?;
    let status = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let status = cri.wait_exited(&id, Duration::from_secs(120)).await?;
        cri.remove_all_pods().await?;
        anyhow::Ok(status)
    })?;
    disk.set_iops(0);
    assert_eq!(status.exit_code, 0, "{status:?}");

    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let io: Vec<Json> = finished
        .json()?
        .into_iter()
        .filter(|l| l.get("op").is_some())
        .collect();
    let (major, minor) = disk.device();
    // Each kind of slow operation, on the real file it reached: the container's own
    // files in the upper layer, busybox in the image's.
    let expected = [
        ("write", "direct", upper.join("direct")),
        ("write", "buffered", upper.join("buffered")),
        ("read", "cold", upper.join("cold")),
        ("read", "busybox", lower.join("bin/busybox")),
    ];
    for (op, name, real) in &expected {
        let seen: Vec<&Json> = io
            .iter()
            .filter(|e| s(e, "op") == *op && s(e, "file_name") == *name)
            .collect();
        assert!(
            !seen.is_empty(),
            "no slow {op} of the container's /{name} reported: {io:#?}\n{}",
            finished.stderr
        );
        eprintln!(
            "slow {op} of /{name}: {:?} ms",
            seen.iter().map(|e| latency_ms(e)).collect::<Vec<_>>()
        );
        for e in seen {
            assert!(latency_ms(e) >= 20, "{e}");
            assert_eq!(e["via_overlayfs"], true, "{e}");
            // The real file: its device (the capped disk, not overlayfs's), and its
            // path under containerd's snapshot directory, as far as it was walked.
            assert_eq!(
                (e["dev_major"].as_u64(), e["dev_minor"].as_u64()),
                (Some(u64::from(major)), Some(u64::from(minor))),
                "{e}"
            );
            let walked = walked_path(e);
            assert!(
                walked.contains("/io.containerd.snapshotter.v1.overlayfs/snapshots/")
                    && real.to_string_lossy().ends_with(&walked),
                "{e}: the walked path {walked} is not the end of {}",
                real.display()
            );
            if let Some(path) = e["file_path"].as_str() {
                assert_eq!(Path::new(path), real.as_path(), "{e}");
            }
            // The container's identity, by the writer's cgroup.
            assert_eq!(e["container.id"], id.as_str(), "{e}");
            assert_eq!(e["k8s.pod.uid"], uid.as_str(), "{e}");
            assert_eq!(e["k8s.pod.name"], "app-0", "{e}");
            assert_eq!(e["k8s.namespace.name"], "shop", "{e}");
            assert_eq!(e["k8s.container.name"], "writer", "{e}");
            assert_eq!(e["iostall.attribution"], "cgroup", "{e}");
        }
    }
    // The buffered writes waited in dirty-page throttling: the seed's stall.
    let buffered_ms: u64 = io
        .iter()
        .filter(|e| s(e, "file_name") == "buffered")
        .map(latency_ms)
        .sum();
    assert!(
        buffered_ms >= 500,
        "8 MiB of buffered writes with a 256 KiB dirty limit waited only {buffered_ms} ms"
    );
    Ok(())
}
