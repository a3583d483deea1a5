//! What the benchmark binaries share: iostall attached for one measured run, and the
//! median of a few runs.
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
