//! A real, private dockerd (Debian's `docker.io` 20.10) for the Docker source's tests.
//!
//! [`Dockerd::start`] runs `dockerd` as a child of the test with everything of its own
//! under one temporary directory: `--data-root`, `--exec-root`, `--pidfile` and the API
//! socket (`-H unix://…/docker.sock`); no networking is set up
//! (`--iptables=false --ip-masq=false --bridge=none`), so containers run with
//! `NetworkMode: none`. Storage is overlay2, or vfs when overlay2 does not start. dockerd
//! supervises its own containerd (under the exec root), which never touches the
//! system's containerd. The system's docker service is neither needed nor started.
//!
//! There is no registry: [`Dockerd::load_busybox`] loads the docker-archive from
//! [`crate::image`] (Debian's `busybox-static`) with `POST /images/load`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use axum::http::Method;
use iostall::runtime::docker::DockerClient;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::image;

/// Where Debian's `docker.io` installs the daemon.
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// How long dockerd may take to answer `/_ping`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private dockerd; stopped (and its directory removed) when dropped.
#[derive(Debug)]
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
    storage_driver: String,
    last_startup: Duration,
}

/// Fails with an install hint unless dockerd is installed.
pub fn require_dockerd() -> Result<()> {
    if !Path::new(DOCKERD).exists() {
        bail!(
            "{DOCKERD} not found: install Debian's docker.io with `apt-get install -y docker.io` \
             (its service need not run; the tests start their own dockerd)"
        );
    }
    Ok(())
}

impl Dockerd {
    /// Starts dockerd (overlay2, falling back to vfs) and waits until it answers.
    pub async fn start() -> Result<Self> {
        require_dockerd()?;
        let dir = tempfile::Builder::new()
            .prefix("iostall-dockerd-")
            .tempdir()
            .context("failed to create dockerd's directory")?;
        let mut d = Self {
            dir,
            child: None,
            storage_driver: "overlay2".into(),
            last_startup: Duration::ZERO,
        };
        if let Err(overlay) = d.launch().await {
            d.kill_child();
            d.storage_driver = "vfs".into();
            d.launch().await.with_context(|| {
                format!("dockerd failed with overlay2 ({overlay:#}) and with vfs")
            })?;
        }
        Ok(d)
    }

    async fn launch(&mut self) -> Result<()> {
        let root = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("failed to open dockerd.log")?;
        let log2 = log.try_clone().context("failed to clone the log handle")?;
        let started = Instant::now();
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args(["--storage-driver", &self.storage_driver])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("failed to run {DOCKERD}"))?;
        self.child = Some(child);
        let client = self.client();
        loop {
            if let Ok(body) = client.call(Method::GET, "/_ping", None).await
                && body.as_ref() == b"OK"
            {
                break;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "dockerd exited ({status}) before answering: {}",
                    self.log_tail()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "dockerd did not answer within {READY_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.last_startup = started.elapsed();
        Ok(())
    }

    /// Starts dockerd again after [`Dockerd::kill`] or [`Dockerd::stop`], same
    /// directories (images and containers survive).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill_child();
        self.launch().await
    }

    /// SIGKILLs dockerd (a crash); its containerd follows (parent-death signal).
    pub fn kill(&mut self) {
        self.kill_child();
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget_containerd();
    }

    /// After dockerd died: waits for its containerd to die too (SIGKILLing it if it
    /// lingers) and removes containerd's pid file. Where the init process does not
    /// reap orphans (as on the test machines), the dead containerd stays a zombie whose
    /// pid still "exists"; a restarted dockerd would then take it for a running
    /// containerd, wait for its socket, and fail with "timeout waiting for containerd
    /// to start".
    fn forget_containerd(&self) {
        let pid_file = self.dir.path().join("exec/containerd/containerd.pid");
        let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
        else {
            return;
        };
        let alive = || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only if the pid is still ours (not reused): its command line names our dir.
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let root = self.dir.path().to_string_lossy();
                String::from_utf8_lossy(&c).contains(root.as_ref())
            })
            .unwrap_or(false);
        if alive() && ours {
            // SAFETY: kill(2) on the containerd our own dockerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = fs::remove_file(pid_file);
    }

    /// SIGTERMs dockerd and waits up to 30 s, then SIGKILLs it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.forget_containerd();
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// dockerd's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dockerd.log")
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `overlay2` or `vfs`.
    pub fn storage_driver(&self) -> &str {
        &self.storage_driver
    }

    /// How long the last (re)start took until `/_ping` answered.
    pub fn last_startup(&self) -> Duration {
        self.last_startup
    }

    /// A client of this dockerd.
    pub fn client(&self) -> DockerClient {
        DockerClient::new(self.socket())
    }

    /// Loads [`image::BUSYBOX_IMAGE`] (and the pause image) from a locally built
    /// docker-archive.
    pub async fn load_busybox(&self) -> Result<()> {
        let archive = image::busybox_archive_in(self.dir.path())?;
        let bytes = fs::read(&archive).context("failed to read the busybox archive")?;
        let out = self
            .client()
            .call(
                Method::POST,
                "/images/load?quiet=1",
                Some((bytes.into(), "application/x-tar")),
            )
            .await
            .context("docker image load")?;
        let text = String::from_utf8_lossy(&out);
        if text.contains("\"error") {
            bail!("docker image load failed: {text}");
        }
        Ok(())
    }

    /// Creates a busybox container running `cmd` with `labels`, `NetworkMode: none`,
    /// and an optional memory limit in bytes. Returns its id.
    pub async fn create(
        &self,
        name: &str,
        cmd: &[&str],
        labels: &BTreeMap<String, String>,
        memory: Option<i64>,
    ) -> Result<String> {
        let mut host_config = json!({ "NetworkMode": "none" });
        if let Some(m) = memory {
            host_config["Memory"] = json!(m);
            host_config["MemorySwap"] = json!(m);
        }
        let body = json!({
            "Image": image::BUSYBOX_IMAGE,
            "Cmd": cmd,
            "Labels": labels,
            "HostConfig": host_config,
        });
        let created: Value = self
            .client()
            .call_json(
                Method::POST,
                &format!("/containers/create?name={name}"),
                Some(&body),
            )
            .await
            .with_context(|| format!("docker create {name}"))?;
        created["Id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("docker create {name}: no Id in {created}"))
    }

    /// Starts container `id`.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.client()
            .call(Method::POST, &format!("/containers/{id}/start"), None)
            .await
            .with_context(|| format!("docker start {id}"))?;
        Ok(())
    }

    /// Waits for container `id` to stop; returns its exit code.
    pub async fn wait_container(&self, id: &str) -> Result<i64> {
        let v: Value = self
            .client()
            .call_json(Method::POST, &format!("/containers/{id}/wait"), None)
            .await
            .with_context(|| format!("docker wait {id}"))?;
        v["StatusCode"]
            .as_i64()
            .with_context(|| format!("docker wait {id}: no StatusCode in {v}"))
    }

    /// Removes container `id` (forcefully).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.client()
            .call(Method::DELETE, &format!("/containers/{id}?force=1"), None)
            .await
            .with_context(|| format!("docker rm {id}"))?;
        Ok(())
    }

    fn unmount_leftovers(&self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .map(str::to_owned)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p) {
                // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other inputs.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        self.unmount_leftovers();
    }
}
