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
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    bench::{CountingIostall, median},
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
fn start_iostall() -> Result<CountingIostall> {
    let args = [
        "--attach",
        "tracepoint",
        "--output",
        "json",
        "--threshold-ms",
        "1000",
        "--metrics-listen",
        "off",
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
    ]
    .map(String::from);
    CountingIostall::start(&args, |line| {
        line.contains("\"event.name\":\"process.exit\"")
    })
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
                let tracer = attached.then(start_iostall).transpose()?;
                let took = churn(args.count, &procs)?;
                let per_proc_us = took.as_secs_f64() * 1e6 / f64::from(args.count);
                if let Some(tracer) = tracer {
                    exits += tracer.stop(Duration::from_millis(300))?;
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
