//! `seed-storm`: the field report's startup storm, on this machine, with iostall watching.
//!
//! The seed (`shared/seed/…`): a `helm install` on a fresh cluster fails because the OS
//! disk's IOPS quota puts tens to hundreds of milliseconds into every fsync of the
//! container runtime. This replays it with real parts: a private containerd whose root
//! (its `meta.db`, snapshots, pod logs) lives on an ext4 loop filesystem throttled to
//! `--iops` write IOPS, with containerd itself in the throttled blkio cgroup; `--pods`
//! pods (a busybox container each) created at once through CRI, as the kubelet would;
//! and the `iostall` binary of this workspace attached, printing its live table (or
//! whatever `-- <iostall args>` asks for, e.g. `-- -o otlp --otlp-endpoint http://…`).
//!
//! ```text
//! sudo cargo run -p iostall-tests --bin seed-storm -- [--pods 5] [--iops 10] [-- <iostall args>]
//! ```
//! At the end it prints how long each CRI call took: on the development machine, 5 pods
//! at 10 IOPS took 16–20 s in RunPodSandbox against 0.07 s unthrottled, and the iostall
//! table showed containerd's `meta.db` fsyncs at 100–200 ms each.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    iostall_proc::{READY_MARKER, iostall_binary},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts},
};

/// The seed's startup storm, replayed with iostall attached.
#[derive(Debug, Parser)]
struct Args {
    /// Pods created at once.
    #[arg(long, default_value_t = 5)]
    pods: u32,
    /// Write IOPS allowed to containerd's disk (the cloud disk's quota).
    #[arg(long, default_value_t = 10)]
    iops: u32,
    /// Arguments for iostall (default: the table, 20 ms threshold).
    #[arg(last = true)]
    iostall_args: Vec<String>,
}

/// How long each pod's CRI calls took.
struct PodTimings {
    name: String,
    sandbox: Duration,
    create: Duration,
    start: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("seed-storm needs root (loop devices, cgroups, containerd, eBPF)");
    }
    ensure_kernel_mounts()?;
    let slow = SlowExt4::create(SlowExt4Options {
        size_mib: 512,
        write_iops: Some(args.iops),
        read_iops: None,
    })?;
    eprintln!(
        "slow ext4 at {} ({} write IOPS)",
        slow.mount_point().display(),
        args.iops
    );
    let ctd = Containerd::start_in(slow.mount_point())?;
    ctd.import_test_images()?;
    let ctd_pid = ctd.pid().context("containerd is not running")?;
    slow.add_pid(ctd_pid)?;
    eprintln!("containerd {ctd_pid} in the throttled cgroup, root on the slow disk");

    let mut iostall = start_iostall(&ctd, &args.iostall_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(storm(&ctd, args.pods));
    // Let the last records reach the table before stopping it.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(iostall.id() as libc::pid_t, libc::SIGINT) };
    let _ = iostall.wait();
    let timings = result?;
    println!();
    println!(
        "{:<10} {:>14} {:>16} {:>15}",
        "POD", "RunPodSandbox", "CreateContainer", "StartContainer"
    );
    for t in &timings {
        println!(
            "{:<10} {:>13.2}s {:>15.2}s {:>14.2}s",
            t.name,
            t.sandbox.as_secs_f64(),
            t.create.as_secs_f64(),
            t.start.as_secs_f64()
        );
    }
    runtime.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
    });
    Ok(())
}

/// Starts iostall on the test containerd; its stdout (the table) goes to ours.
fn start_iostall(ctd: &Containerd, extra: &[String]) -> Result<Child> {
    let socket = ctd.socket();
    let mut args: Vec<String> = vec![
        "--containerd-socket".into(),
        socket.to_string_lossy().into_owned(),
        "--docker-socket".into(),
        "off".into(),
        "--metrics-listen".into(),
        "off".into(),
    ];
    if extra.is_empty() {
        args.extend(["-t".into(), "20".into()]);
    } else {
        args.extend(extra.iter().cloned());
    }
    let mut child = Command::new(iostall_binary()?)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iostall")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            if line.contains(READY_MARKER)
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    if ready.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        bail!("iostall did not attach within 60 s");
    }
    Ok(child)
}

/// Creates `pods` pods at once, a busybox container in each, as the kubelet would.
async fn storm(ctd: &Containerd, pods: u32) -> Result<Vec<PodTimings>> {
    let cri = ctd.cri().await?;
    let mut tasks = Vec::new();
    for i in 0..pods {
        let mut cri = cri.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("web-{i}");
            let uid = new_pod_uid()?;
            let t = Instant::now();
            let sandbox = cri.run_pod_sandbox(&name, "storm", &uid, 0).await?;
            let sandbox_took = t.elapsed();
            let t = Instant::now();
            let spec =
                ContainerSpec::busybox("app", &["sh", "-c", "echo up > /tmp/up; sleep 3600"]);
            let id = cri.create_container(&sandbox, &spec).await?;
            let create = t.elapsed();
            let t = Instant::now();
            cri.start_container(&id).await?;
            anyhow::Ok(PodTimings {
                name,
                sandbox: sandbox_took,
                create,
                start: t.elapsed(),
            })
        }));
    }
    let mut timings = Vec::new();
    for task in tasks {
        timings.push(task.await.context("pod task panicked")??);
    }
    Ok(timings)
}
