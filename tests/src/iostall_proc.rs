//! Runs the real `iostall` binary as a child process, the way a user runs it, and
//! collects what it prints.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStderr, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        mpsc::{self, Receiver},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The line iostall logs once its programs are attached.
pub const READY_MARKER: &str = "attached in";

/// Path of the `iostall` binary of this workspace, built once per test process with the
/// same cargo and profile as the tests.
pub fn iostall_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_iostall().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_iostall() -> Result<PathBuf> {
    // A frozen binary for repeated runs (a test run N times while the tree changes).
    if let Some(bin) = std::env::var_os("IOSTALL_TEST_BINARY") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("IOSTALL_TEST_BINARY={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    // target/<profile>/deps/<test> or target/<profile>/<bench> → target/<profile>/iostall
    let exe = std::env::current_exe().context("locating the running binary")?;
    let mut profile_dir = exe
        .parent()
        .context("the running binary has no directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The same package selection as `cargo test --workspace`, so cargo resolves the same
    // features and reuses the artifacts instead of rebuilding dependencies.
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    // Not the variables cargo sets for the running test (CARGO_PKG_NAME=iostall-tests,
    // CARGO_MANIFEST_DIR…): build scripts that watch them (ring's
    // `rerun-if-env-changed`) would otherwise rebuild ring, rustls, tonic, kube… here
    // and again at the next plain `cargo test`, minutes each time.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_CRATE_")
            || matches!(key, "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR")
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build --workspace")?;
    if !status.success() {
        bail!("cargo build --workspace failed: {status}");
    }
    let bin = profile_dir.join("iostall");
    if !bin.exists() {
        bail!("{} does not exist after building", bin.display());
    }
    Ok(bin)
}

/// Reads a spawned iostall's stderr until it says it is attached, then keeps draining it
/// on a thread (so iostall never blocks on a full pipe). Fails if it exits first.
pub fn wait_attached(stderr: ChildStderr) -> Result<()> {
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(READY_MARKER) => break,
            Some(Ok(_)) => {}
            _ => bail!("iostall exited before attaching"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(())
}

/// A running iostall.
pub struct Iostall {
    child: Child,
    stdout: Receiver<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// What iostall printed, once stopped.
#[derive(Debug)]
pub struct Finished {
    /// Every stdout line.
    pub stdout: Vec<String>,
    /// All of stderr (its logs).
    pub stderr: String,
    /// Whether it exited with success.
    pub success: bool,
    /// From SIGINT to its exit (detaching, draining the sinks).
    pub stop_took: Duration,
}

impl Finished {
    /// The stdout lines parsed as JSON objects (for `--output json`); fails on any line
    /// that is not JSON, so a broken output format fails the test.
    pub fn json(&self) -> Result<Vec<serde_json::Value>> {
        self.stdout
            .iter()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
            .collect()
    }
}

impl Iostall {
    /// Starts iostall with `args` and waits (up to 60 s) for it to report it is attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// As [`Iostall::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_configured(args, env, |_| {})
    }

    /// As [`Iostall::start_with_env`], with `configure` applied to the command before
    /// it is spawned (e.g. [`crate::peers::NetNs::enter_on_exec`]).
    pub fn start_configured(
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Self> {
        let bin = iostall_binary()?;
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .envs(env.iter().copied())
            .env("IOSTALL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().context("no stdout pipe")?;
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().context("no stderr pipe")?;
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut me = Self {
            child,
            stdout,
            stdout_thread: Some(stdout_thread),
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        me.wait_for_stderr(READY_MARKER, Duration::from_secs(60))
            .context("iostall did not attach")?;
        Ok(me)
    }

    /// Waits until the runtime sources on `socket` have connected (their first
    /// "… at <socket> connected" line): a test that expects every event of the
    /// containers it makes next calls this first.
    pub fn wait_for_source(&mut self, socket: &str) -> Result<()> {
        self.wait_for_stderr(&format!("{socket} connected"), Duration::from_secs(30))
    }

    /// Waits up to `timeout` until stderr (iostall's log) contains `needle`. Fails with
    /// the log if iostall exits or time runs out.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "iostall exited ({status}) before logging {needle:?}:\n{}",
                    self.stderr_text()
                );
            }
            if Instant::now() > deadline {
                let log = self.stderr_text();
                let _ = self.child.kill();
                bail!("iostall did not log {needle:?} within {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What stderr has said so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for a stdout line matching `pred`; every line read on the
    /// way (the match included) is appended to `seen`, since [`Iostall::stop`] returns
    /// only the lines not read yet.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    seen.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Stops it with SIGINT (as Ctrl-C) after letting in-flight events drain, and
    /// collects everything it printed.
    pub fn stop(mut self) -> Result<Finished> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let signalled = Instant::now();
        let deadline = signalled + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("iostall did not stop within 20 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stop_took = signalled.elapsed();
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stdout: Vec<String> = self.stdout.try_iter().collect();
        Ok(Finished {
            stdout,
            stderr: self.stderr_text(),
            success: status.success(),
            stop_took,
        })
    }
}

impl Drop for Iostall {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
