//! What iostall's lifecycle tracepoints (plus its syscall tracepoints) cost a
//! process-churning workload: fork + exec + exit of `/bin/true`, one after another.
//!
//! `cargo run --release -p iostall-tests --bin bench-lifecycle` (as root). Two cases:
//! `host` (children in a host cgroup: the kernel filters them out after one hash lookup
//! on exec and exit) and `container` (children in a watched, container-shaped cgroup:
//! every exec and exit becomes an event). Runs alternate without and with iostall
//! attached (ABBA), and the ratio of median times (with ÷ without) is printed with the
//! microseconds added per process. Times are only compared inside one run.
use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    iostall_proc::{READY_MARKER, iostall_binary},
    slowfs::{ensure_kernel_mounts, require_root},
};

#[derive(Debug, Parser)]
#[command(about = "Overhead of iostall on fork+exec+exit of /bin/true")]
struct Args {
    /// Processes per run.
    #[arg(long, default_value_t = 2000)]
    count: u32,
    /// Pairs of (without, with) runs per case.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
}

/// iostall attached for one run, counting the kernel `process.exit` lines it prints.
struct Attached {
    child: std::process::Child,
    exits: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Attached {
    fn start() -> Result<Self> {
        let mut child = Command::new(iostall_binary()?)
            .args(["--attach", "tracepoint", "--output", "json"])
            .args(["--threshold-ms", "1000", "--metrics-listen", "off"])
            .args(["--containerd-socket", "off", "--docker-socket", "off"])
            .env("IOSTALL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iostall")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(READY_MARKER) => break,
                Some(Ok(_)) => {}
                _ => bail!("iostall exited before attaching"),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let exits = Arc::new(AtomicU64::new(0));
        let counter = exits.clone();
        let stdout = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"event.name\":\"process.exit\"") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            child,
            exits,
            reader: Some(reader),
        })
    }

    fn stop(mut self) -> Result<u64> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        self.child.wait()?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(self.exits.load(Ordering::Relaxed))
    }
}

/// Runs `/bin/true` `count` times, each child first moving itself into `procs`.
fn churn(count: u32, procs: &CString) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        let procs = procs.clone();
        let mut cmd = Command::new("/bin/true");
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.status().context("running /bin/true")?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
    }
    Ok(start.elapsed())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A cgroup in the unified hierarchy, removed at the end.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.0.ancestors().take(4) {
            if dir == Path::new("/sys/fs/cgroup/unified") {
                break;
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure_kernel_mounts()?;
    let unified = Path::new("/sys/fs/cgroup/unified");
    let id: String = format!("{:016x}", std::process::id())
        .chars()
        .cycle()
        .take(64)
        .collect();
    let cases = [
        ("host", Cgroup(unified.join("iostall-bench-host"))),
        (
            "container",
            Cgroup(unified.join(format!(
                "kubepods/besteffort/pod0badc0de-0000-4000-8000-00000000beef/{id}"
            ))),
        ),
    ];
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>7} {:>12} {:>10}",
        "case", "procs", "µs/proc w/o", "µs/proc with", "ratio", "µs added", "exit evts"
    );
    for (name, cgroup) in &cases {
        std::fs::create_dir_all(&cgroup.0)
            .with_context(|| format!("mkdir {}", cgroup.0.display()))?;
        let procs = CString::new(cgroup.0.join("cgroup.procs").to_string_lossy().as_bytes())?;
        // Warm the page cache and the binary.
        churn(50, &procs)?;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let mut exits = 0;
        for pair in 0..args.pairs {
            let order = if pair % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for attached in order {
                let tracer = attached.then(Attached::start).transpose()?;
                let took = churn(args.count, &procs)?;
                let per_proc_us = took.as_secs_f64() * 1e6 / f64::from(args.count);
                if let Some(tracer) = tracer {
                    exits += tracer.stop()?;
                    with.push(per_proc_us);
                } else {
                    without.push(per_proc_us);
                }
            }
        }
        let (w, wo) = (median(&mut with), median(&mut without));
        println!(
            "{:<10} {:>8} {:>14.1} {:>14.1} {:>7.3} {:>12.1} {:>10}",
            name,
            args.count,
            wo,
            w,
            w / wo,
            w - wo,
            exits / args.pairs as u64
        );
    }
    Ok(())
}
