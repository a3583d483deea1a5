//! A real containerd for end-to-end tests; [`cri`] drives it as the kubelet would.
//!
//! [`Containerd::start`] runs Debian's `containerd` as a child with its own config file,
//! root, state directory, runc root and gRPC socket, all under a fresh directory in
//! `/tmp`: the system's `/var/lib/containerd` and `/run/containerd` are not used (the
//! one exception is containerd's own: each shim puts its socket in
//! `/run/containerd/s/<hash>`, a path containerd 1.6 hard-codes; shims remove it when they
//! exit, and [`Drop`] removes those it can name).
//!
//! The CRI plugin is set up for these machines: `restrict_oom_score_adj = true` (no
//! CAP_SYS_RESOURCE here: sandboxes fail without it), the sandbox image is the locally
//! built [`PAUSE_IMAGE`], cgroupfs driver (`SystemdCgroup = false`), overlayfs (or native
//! where the directory is itself on overlayfs), and no CNI: tests run host-network pods.
//!
//! [`CriClient`] (in [`cri`]) speaks CRI `runtime.v1` over the unix socket with tonic.
//!
//! Teardown ([`Drop`]) kills containerd (SIGTERM, then SIGKILL), deletes what runc
//! still runs under the harness's runc root, kills the harness's shims, unmounts
//! everything under the directory, removes the pod cgroups it created and the directory.
//! Prefer [`CriClient::remove_all_pods`] first: it lets shims exit on their own.

use std::{
    fs::{self, File},
    io::{self, Read, Seek, SeekFrom},
    os::unix::{ffi::OsStrExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub mod cri;

pub use cri::{BindMount, ContainerSpec, CriClient, Sandbox};

use crate::image::{self, PAUSE_IMAGE};

/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long [`Containerd::start`] waits for the socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one CRI call may take (throttled disks make RunPodSandbox take ~20 s).
pub(crate) const CRI_TIMEOUT: Duration = Duration::from_secs(180);

/// `OVERLAYFS_SUPER_MAGIC` from `linux/magic.h`.
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// A containerd process of the test's own, with everything under a temporary directory.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    snapshotter: &'static str,
    pod_uids: Arc<Mutex<Vec<String>>>,
    last_start: Duration,
}

impl Containerd {
    /// Writes the config and starts containerd; returns once its socket accepts.
    pub fn start() -> Result<Containerd> {
        Self::start_in(Path::new("/tmp"))
    }

    /// As [`Containerd::start`], with its directory (root with `meta.db`, state, pod
    /// logs) under `parent`: on a slow filesystem, for the seed's scenario.
    pub fn start_in(parent: &Path) -> Result<Containerd> {
        which("containerd")?;
        which("containerd-shim-runc-v2")?;
        which("runc")?;
        which("ctr")?;
        let dir = tempfile::Builder::new()
            .prefix("iostall-ctd-")
            .tempdir_in(parent)
            .with_context(|| {
                format!("failed to create containerd's dir in {}", parent.display())
            })?;
        let snapshotter = if fs_magic(dir.path()) == Some(OVERLAYFS_SUPER_MAGIC) {
            "native"
        } else {
            "overlayfs"
        };
        let mut this = Containerd {
            dir,
            child: None,
            snapshotter,
            pod_uids: Arc::default(),
            last_start: Duration::ZERO,
        };
        for sub in [
            "root", "state", "runc", "pods", "cni/bin", "cni/conf", "opt",
        ] {
            fs::create_dir_all(this.dir.path().join(sub))
                .with_context(|| format!("failed to create {sub}"))?;
        }
        fs::write(this.config_path(), this.config_toml())
            .context("failed to write containerd config")?;
        this.spawn()?;
        if this.snapshotter == "overlayfs"
            && !this.plugin_ok("io.containerd.snapshotter.v1", "overlayfs")?
        {
            // The overlayfs plugin skipped itself (no overlay support here): go native.
            this.stop_containerd();
            this.snapshotter = "native";
            fs::write(this.config_path(), this.config_toml())
                .context("failed to rewrite containerd config")?;
            this.spawn()?;
        }
        Ok(this)
    }

    /// Whether containerd loaded plugin `kind`/`id` (`ctr plugins ls` says `ok`).
    pub fn plugin_ok(&self, kind: &str, id: &str) -> Result<bool> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["plugins", "ls"])
            .output()
            .context("failed to run `ctr plugins ls`")?;
        if !out.status.success() {
            bail!(
                "ctr plugins ls failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() >= 4 && cols[0] == kind && cols[1] == id && cols[cols.len() - 1] == "ok"
        }))
    }

    /// The config file (version 2).
    fn config_toml(&self) -> String {
        let d = self.dir.path().display();
        let snapshotter = self.snapshotter;
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let socket = self.socket();
        match fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("failed to remove the stale socket"),
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("failed to open containerd.log")?;
        let started = Instant::now();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to dup the log fd")?)
            .stderr(log)
            .spawn()
            .context("failed to run containerd")?;
        self.child = Some(child);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("failed to wait for containerd")?
            {
                self.child = None;
                bail!(
                    "containerd exited at start ({status}); log:\n{}",
                    self.log_tail(4000)
                );
            }
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "containerd's socket {} did not answer within {START_TIMEOUT:?}; log:\n{}",
                    socket.display(),
                    self.log_tail(4000)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.last_start = started.elapsed();
        Ok(())
    }

    /// Kills containerd with SIGKILL (its shims and containers keep running, as when it
    /// crashes) and starts it again with the same config and directories.
    pub fn kill_and_restart(&mut self) -> Result<Duration> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("failed to kill containerd")?;
            child.wait().context("failed to reap containerd")?;
        }
        self.spawn()?;
        Ok(self.last_start)
    }

    /// Builds the busybox and pause images ([`crate::image`]) and imports them into the
    /// CRI namespace.
    pub fn import_test_images(&self) -> Result<()> {
        let archive = image::busybox_archive_in(self.dir.path())?;
        image::import_into_containerd(&self.socket(), CRI_NAMESPACE, &archive)
    }

    /// A CRI client on this containerd, once the CRI plugin answers.
    pub async fn cri(&self) -> Result<CriClient> {
        let mut client = CriClient::connect(&self.socket()).await?;
        client.pod_uids = Arc::clone(&self.pod_uids);
        client.pod_log_root = self.pod_log_root();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match client.list_pod_sandboxes().await {
                Ok(_) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the CRI plugin did not get ready; log:\n{}",
                        self.log_tail(4000)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The gRPC socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The temporary directory holding everything.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's root (`meta.db`, snapshots, CRI's per-container files).
    #[must_use]
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's state directory (task bundles).
    #[must_use]
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where pods' log directories go (the kubelet's `/var/log/pods` layout).
    #[must_use]
    pub fn pod_log_root(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    /// The config file.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// containerd's log file.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The snapshotter in use (`overlayfs` or `native`).
    #[must_use]
    pub fn snapshotter(&self) -> &'static str {
        self.snapshotter
    }

    /// containerd's pid while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long the last start took, until the socket accepted.
    #[must_use]
    pub fn start_duration(&self) -> Duration {
        self.last_start
    }

    /// The last `max` bytes of containerd's log.
    #[must_use]
    pub fn log_tail(&self, max: u64) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            out = String::from_utf8_lossy(&buf).into_owned();
        }
        out
    }

    /// Mount points under the directory, deepest first.
    pub fn mounts_under_dir(&self) -> Result<Vec<PathBuf>> {
        let mut found: Vec<PathBuf> = crate::slowfs::mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        Ok(found)
    }

    /// Pids of shims serving this containerd (their `-address` is our socket).
    #[must_use]
    pub fn shim_pids(&self) -> Vec<u32> {
        let socket = self.socket();
        let mut pids = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == socket.as_os_str().as_bytes());
            if is_shim && ours {
                pids.push(pid);
            }
        }
        pids
    }

    fn stop_containerd(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Shim socket files named in the task bundles (`<bundle>/address`).
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let tasks = self.state().join("io.containerd.runtime.v2.task");
        for ns in fs::read_dir(tasks).into_iter().flatten().flatten() {
            for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(addr) = fs::read_to_string(bundle.path().join("address"))
                    && let Some(path) = addr.trim().strip_prefix("unix://")
                {
                    out.push(PathBuf::from(path));
                }
            }
        }
        out
    }

    fn delete_runc_containers(&self) {
        for ns in fs::read_dir(self.dir.path().join("runc"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = ns.path();
            let Ok(out) = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
            else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    fn remove_pod_cgroups(&self) {
        let uids = self.pod_uids.lock().map(|u| u.clone()).unwrap_or_default();
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let hierarchies: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
        for uid in &uids {
            for h in &hierarchies {
                let pod = h.join(pod_cgroup_parent(uid).trim_start_matches('/'));
                remove_cgroup_tree(&pod);
            }
        }
    }
}

/// Removes a cgroup directory and its children, deepest first, retrying briefly while
/// their last processes exit.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shim_sockets = self.shim_sockets();
        self.stop_containerd();
        self.delete_runc_containers();
        for pid in self.shim_pids() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: no memory-safety preconditions; the shim serves our containerd.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for socket in shim_sockets {
            let _ = fs::remove_file(socket);
        }
        for _ in 0..3 {
            let Ok(mounts) = self.mounts_under_dir() else {
                break;
            };
            if mounts.is_empty() {
                break;
            }
            for m in mounts {
                if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_bytes()) {
                    // SAFETY: a valid C string; umount2 has no other preconditions.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        self.remove_pod_cgroups();
    }
}

/// The filesystem magic of `path` (statfs `f_type`).
fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes only into the zeroed struct; `c` is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    #[allow(clippy::unnecessary_cast)]
    (rc == 0).then_some(buf.f_type as i64)
}

fn which(binary: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{binary}` not found in PATH: install Debian's `containerd` and `runc` packages");
    }
    Ok(())
}

/// The cgroup parent pods get: `/kubepods/besteffort/pod<uid>` (cgroupfs driver).
#[must_use]
pub fn pod_cgroup_parent(uid: &str) -> String {
    format!("/kubepods/besteffort/pod{uid}")
}

/// Throttles the writes of a running CRI container (of pod `pod_uid`) to `device` at
/// `iops`: blkio limits work on the writer's own leaf cgroup only, which runc creates at
/// [`pod_cgroup_parent`]`/<id>` in the v1 blkio hierarchy.
pub fn throttle_container_writes(
    pod_uid: &str,
    id: &str,
    (major, minor): (u32, u32),
    iops: u32,
) -> Result<()> {
    let cgroup = format!("/sys/fs/cgroup/blkio{}/{id}", pod_cgroup_parent(pod_uid));
    fs::write(
        format!("{cgroup}/blkio.throttle.write_iops_device"),
        format!("{major}:{minor} {iops}"),
    )
    .with_context(|| format!("throttling {cgroup}"))
}

/// A fresh random pod uid (from the kernel's uuid generator).
pub fn new_pod_uid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("failed to read /proc/sys/kernel/random/uuid")?
        .trim()
        .to_owned())
}
