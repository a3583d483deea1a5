//! What the benchmark binaries share: iostall attached for one measured run, the
//! median of a few runs, and the kernel's own timing of BPF programs.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::iostall_proc::{iostall_binary, wait_attached};

/// iostall attached for one measured run, counting the stdout lines `counts` accepts.
pub struct CountingIostall {
    child: Child,
    counted: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
}

impl CountingIostall {
    /// Starts iostall with `args` and returns once it is attached.
    pub fn start(args: &[String], counts: fn(&str) -> bool) -> Result<Self> {
        let mut child = Command::new(iostall_binary()?)
            .args(args)
            .env("IOSTALL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iostall")?;
        wait_attached(child.stderr.take().context("no stderr")?)?;
        let counted = Arc::new(AtomicU64::new(0));
        let counter = counted.clone();
        let stdout = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if counts(&line) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            child,
            counted,
            reader: Some(reader),
        })
    }

    /// Lets the last events through for `settle`, stops iostall with SIGINT, and returns
    /// how many lines were counted.
    pub fn stop(mut self, settle: Duration) -> Result<u64> {
        std::thread::sleep(settle);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        self.child.wait()?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(self.counted.load(Ordering::Relaxed))
    }
}

impl Drop for CountingIostall {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The median of `values` (sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// `(run_time_ns, run_cnt)` summed over the BPF programs process `pid` holds, from
/// `/proc/<pid>/fdinfo` (the kernel fills them only while `kernel.bpf_stats_enabled`).
pub fn bpf_program_stats(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0u64, 0u64);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    Some(total)
}

/// `kernel.bpf_stats_enabled` set for as long as it lives, then put back: the kernel
/// then times every program run, which costs two clock reads a run, so a bench turns it
/// on only for a pass of its own, never while it compares sides.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    /// Turns the kernel's per-program statistics on until dropped.
    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(Self::PATH).context("bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling bpf_stats")?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}
