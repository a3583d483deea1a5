//! A real containerd for end-to-end tests, and a CRI client to drive it.
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
//! [`CriClient`] speaks CRI `runtime.v1` over the unix socket with tonic. Pods get the
//! cgroup parent `/kubepods/besteffort/pod<uid>` and the kubelet's labels, so their
//! containers' cgroups are `/kubepods/besteffort/pod<uid>/<id>`, as on a kubelet node
//! with the cgroupfs driver.
//!
//! Teardown ([`Drop`]) kills containerd (SIGTERM, then SIGKILL), deletes what runc
//! still runs under the harness's runc root, kills the harness's shims, unmounts
//! everything under the directory, removes the pod cgroups it created and the directory.
//! Prefer [`CriClient::remove_all_pods`] first: it lets shims exit on their own.

use std::{
    collections::HashMap,
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
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as cri, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::image::{self, BUSYBOX_IMAGE, PAUSE_IMAGE};

/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long [`Containerd::start`] waits for the socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one CRI call may take (throttled disks make RunPodSandbox take ~20 s).
const CRI_TIMEOUT: Duration = Duration::from_secs(180);

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
        which("containerd")?;
        which("containerd-shim-runc-v2")?;
        which("runc")?;
        which("ctr")?;
        let dir = tempfile::Builder::new()
            .prefix("iostall-ctd-")
            .tempdir_in("/tmp")
            .context("failed to create containerd's temp dir")?;
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

/// A fresh random pod uid (from the kernel's uuid generator).
pub fn new_pod_uid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("failed to read /proc/sys/kernel/random/uuid")?
        .trim()
        .to_owned())
}

/// A running pod sandbox, with the config containers in it need.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The sandbox id.
    pub id: String,
    /// The pod name.
    pub name: String,
    /// The pod namespace.
    pub namespace: String,
    /// The pod uid.
    pub uid: String,
    /// The config it was created with.
    pub config: PodSandboxConfig,
}

/// A host path bind-mounted into a container.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// The path on the host.
    pub host_path: PathBuf,
    /// The path in the container.
    pub container_path: String,
    /// Read-only.
    pub readonly: bool,
}

/// What to run in a container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The container's name in its pod.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The command (replaces the image's entrypoint).
    pub command: Vec<String>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// The restart count.
    pub attempt: u32,
}

impl ContainerSpec {
    /// A container `name` running `command` in [`BUSYBOX_IMAGE`].
    #[must_use]
    pub fn busybox(name: &str, command: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            image: BUSYBOX_IMAGE.to_owned(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            mounts: Vec::new(),
            memory_limit: None,
            attempt: 0,
        }
    }

    /// Adds a read-write bind mount.
    #[must_use]
    pub fn bind(mut self, host_path: impl Into<PathBuf>, container_path: &str) -> Self {
        self.mounts.push(BindMount {
            host_path: host_path.into(),
            container_path: container_path.to_owned(),
            readonly: false,
        });
        self
    }

    /// Sets a memory limit.
    #[must_use]
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }
}

/// The namespaces of a host-network pod, as the kubelet asks for them.
fn host_network_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..NamespaceOption::default()
    }
}

/// A CRI `runtime.v1` client over a unix socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pod_uids: Arc<Mutex<Vec<String>>>,
    pod_log_root: PathBuf,
}

/// Turns a CRI error status into an error naming the call.
fn call<T>(what: &str, r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!("CRI {what} failed: {:?}: {}", s.code(), s.message()))
}

impl CriClient {
    /// Connects to a CRI socket (lazily: the first call dials).
    pub async fn connect(socket: &Path) -> Result<CriClient> {
        let socket = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::1]:50051")
            .context("endpoint")?
            .timeout(CRI_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .context("failed to connect to the CRI socket")?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            pod_uids: Arc::default(),
            pod_log_root: std::env::temp_dir(),
        })
    }

    /// The runtime's name and versions.
    pub async fn version(&mut self) -> Result<cri::VersionResponse> {
        call(
            "Version",
            self.runtime
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await,
        )
    }

    /// Whether the runtime has this image.
    pub async fn has_image(&mut self, image: &str) -> Result<bool> {
        let resp = call(
            "ImageStatus",
            self.images
                .image_status(cri::ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                        ..ImageSpec::default()
                    }),
                    verbose: false,
                })
                .await,
        )?;
        Ok(resp.image.is_some())
    }

    /// Runs a host-network pod sandbox with the kubelet's labels, an empty hostname
    /// (runc refuses one without a private UTS namespace) and the cgroup parent
    /// [`pod_cgroup_parent`].
    pub async fn run_pod_sandbox(
        &mut self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
    ) -> Result<Sandbox> {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", namespace),
            ("io.kubernetes.pod.uid", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let log_directory = self.pod_log_root.join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(&log_directory).context("failed to create the pod log dir")?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: namespace.to_owned(),
                attempt,
            }),
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: pod_cgroup_parent(uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network_namespaces()),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        if let Ok(mut uids) = self.pod_uids.lock()
            && !uids.iter().any(|u| u == uid)
        {
            uids.push(uid.to_owned());
        }
        let resp = call(
            "RunPodSandbox",
            self.runtime
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await,
        )?;
        Ok(Sandbox {
            id: resp.pod_sandbox_id,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            config,
        })
    }

    /// Creates a container in `sandbox` (not started); returns its id.
    pub async fn create_container(
        &mut self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String> {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name", sandbox.name.as_str()),
            ("io.kubernetes.pod.namespace", sandbox.namespace.as_str()),
            ("io.kubernetes.pod.uid", sandbox.uid.as_str()),
            ("io.kubernetes.container.name", spec.name.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let annotations = HashMap::from([(
            "io.kubernetes.container.restartCount".to_owned(),
            spec.attempt.to_string(),
        )]);
        let mounts = spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                ..cri::Mount::default()
            })
            .collect();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..ImageSpec::default()
            }),
            command: spec.command.clone(),
            mounts,
            labels,
            annotations,
            log_path: format!("{}/{}.log", spec.name, spec.attempt),
            linux: Some(LinuxContainerConfig {
                resources: spec.memory_limit.map(|bytes| LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..LinuxContainerResources::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network_namespaces()),
                    ..LinuxContainerSecurityContext::default()
                }),
            }),
            ..ContainerConfig::default()
        };
        let resp = call(
            "CreateContainer",
            self.runtime
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox.config.clone()),
                })
                .await,
        )?;
        Ok(resp.container_id)
    }

    /// Starts a created container.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        call(
            "StartContainer",
            self.runtime
                .start_container(StartContainerRequest {
                    container_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Stops a container (SIGTERM, SIGKILL after `timeout_s`).
    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        call(
            "StopContainer",
            self.runtime
                .stop_container(StopContainerRequest {
                    container_id: id.to_owned(),
                    timeout: timeout_s,
                })
                .await,
        )
        .map(drop)
    }

    /// Removes a container.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        call(
            "RemoveContainer",
            self.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Stops a pod sandbox and its containers.
    pub async fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        call(
            "StopPodSandbox",
            self.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Removes a stopped pod sandbox and its containers.
    pub async fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        call(
            "RemovePodSandbox",
            self.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Containers, of one sandbox or all.
    pub async fn list_containers(&mut self, sandbox: Option<&str>) -> Result<Vec<cri::Container>> {
        let filter = sandbox.map(|id| ContainerFilter {
            pod_sandbox_id: id.to_owned(),
            ..ContainerFilter::default()
        });
        Ok(call(
            "ListContainers",
            self.runtime
                .list_containers(ListContainersRequest { filter })
                .await,
        )?
        .containers)
    }

    /// All pod sandboxes.
    pub async fn list_pod_sandboxes(&mut self) -> Result<Vec<cri::PodSandbox>> {
        Ok(call(
            "ListPodSandbox",
            self.runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await,
        )?
        .items)
    }

    /// A container's status, and containerd's verbose `info` (JSON) when `verbose`.
    pub async fn container_status_verbose(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<(ContainerStatus, HashMap<String, String>)> {
        let resp = call(
            "ContainerStatus",
            self.runtime
                .container_status(ContainerStatusRequest {
                    container_id: id.to_owned(),
                    verbose,
                })
                .await,
        )?;
        let status = resp
            .status
            .with_context(|| format!("ContainerStatus of {id} has no status"))?;
        Ok((status, resp.info))
    }

    /// A container's status (state, exit code, labels…).
    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        Ok(self.container_status_verbose(id, false).await?.0)
    }

    /// The host pid of a running container's init process (containerd's verbose info).
    pub async fn container_pid(&mut self, id: &str) -> Result<u32> {
        let (_, info) = self.container_status_verbose(id, true).await?;
        let json = info
            .get("info")
            .with_context(|| format!("no verbose info for container {id}"))?;
        let value: serde_json::Value =
            serde_json::from_str(json).context("verbose info is not JSON")?;
        value
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
            .with_context(|| format!("no pid in the verbose info of {id}: {json}"))
    }

    /// Polls until the container has exited; returns its final status.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    status.state
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops and removes every pod sandbox (and so every container).
    pub async fn remove_all_pods(&mut self) -> Result<()> {
        for pod in self.list_pod_sandboxes().await? {
            self.stop_pod_sandbox(&pod.id).await?;
            self.remove_pod_sandbox(&pod.id).await?;
        }
        Ok(())
    }
}
