//! What iostall holds in memory on a node: resident now (VmRSS, steady) and at its
//! highest (VmHWM, the start-up peak), with N running containers known.
//!
//! `cargo run --release -p iostall-tests --bin bench-memory [-- --containers 100]`, as
//! root. Starts a private real containerd, runs N pods of one `sleep` container each
//! through CRI, then starts the release iostall (tracepoint mode, containerd source on,
//! /metrics on) and reads `/proc/<pid>/status` once it has listed the containers and
//! settled. The first line is taken before any container exists (the idle node).
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    containerd::{Containerd, cri::ContainerSpec, new_pod_uid},
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
};

#[derive(Debug, Parser)]
#[command(about = "iostall's resident memory, steady and peak, with N containers known")]
struct Args {
    /// Running containers (one pod each).
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// How long iostall runs before it is measured.
    #[arg(long, default_value_t = 10)]
    settle_s: u64,
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs iostall against `socket`, lets it settle, returns (VmRSS, VmHWM) in KiB.
fn measure(socket: &str, settle: Duration) -> Result<(u64, u64)> {
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "--output",
        "json",
        "--threshold-ms",
        "1000",
        "--metrics-listen",
        "127.0.0.1:0",
        "--containerd-socket",
        socket,
        "--docker-socket",
        "off",
    ])?;
    std::thread::sleep(settle);
    let figures = memory(iostall.pid())?;
    let finished = iostall.stop()?;
    if !finished.success {
        bail!("iostall failed: {}", finished.stderr);
    }
    Ok(figures)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure_kernel_mounts()?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    let socket = ctd.socket().to_string_lossy().into_owned();
    let settle = Duration::from_secs(args.settle_s);

    let (rss, hwm) = measure(&socket, settle)?;
    println!(
        "idle (0 containers): steady {:.1} MiB (VmRSS), peak {:.1} MiB (VmHWM)",
        mib(rss),
        mib(hwm)
    );

    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    rt.block_on(async {
        let mut cri = ctd.cri().await?;
        for i in 0..args.containers {
            let uid = new_pod_uid()?;
            let sandbox = cri
                .run_pod_sandbox(&format!("mem-{i}"), "bench", &uid, 0)
                .await?;
            let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
            let id = cri.create_container(&sandbox, &spec).await?;
            cri.start_container(&id).await?;
        }
        anyhow::Ok(())
    })?;
    eprintln!(
        "bench-memory: {} containers running after {:.0} s",
        args.containers,
        started.elapsed().as_secs_f64()
    );
    let (rss, hwm) = measure(&socket, settle)?;
    println!(
        "{} containers known: steady {:.1} MiB (VmRSS), peak {:.1} MiB (VmHWM)",
        args.containers,
        mib(rss),
        mib(hwm)
    );
    rt.block_on(async {
        let mut cri = ctd.cri().await?;
        cri.remove_all_pods().await
    })?;
    Ok(())
}
