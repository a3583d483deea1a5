//! `seed-storm`: the field report's startup storm, on this machine, with iostall watching.
//!
//! The seed (`shared/seed/…`): a `helm install` on a fresh cluster fails because the OS
//! disk's IOPS quota puts tens to hundreds of milliseconds into every fsync of the
//! container runtime. This replays it with real parts: a private containerd whose root
//! (its `meta.db`, snapshots, pod logs) lives on an ext4 loop filesystem throttled to
//! `--iops` write IOPS, with containerd itself in the throttled blkio cgroup (or, with
//! `--capped`, on a device capped at `--iops` for every IO of every process, as a cloud
//! volume is; `--fs xfs` or `--fs btrfs` for another filesystem); `--pods`
//! pods (a busybox container each) created at once through CRI, as the kubelet would;
//! and the `iostall` binary of this workspace attached, printing its live table (or
//! whatever `-- <iostall args>` asks for, e.g. `-- -o otlp --otlp-endpoint http://…`).
//!
//! ```text
//! sudo cargo run -p iostall-tests --bin seed-storm -- [--pods 5] [--iops 10] [--fs xfs] [--capped] [-- <iostall args>]
//! ```
//! At the end it prints how long each CRI call took (on the development machine, 5 pods
//! at 10 IOPS took 16–20 s in RunPodSandbox against 0.07 s unthrottled, and the iostall
//! table showed containerd's `meta.db` fsyncs at 100–200 ms each), and iostall's
//! startup summary of each pod: its startup time, phases and the IO stall inside
//! (`-- -o otlp --otlp-endpoint …` sends the same as one trace per pod).
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    capped_disk::CappedExt4,
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    iostall_proc::{READY_MARKER, iostall_binary},
    slowfs::{FsType, SlowExt4, SlowExt4Options, ensure_kernel_mounts},
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
    /// containerd's filesystem: ext4, xfs or btrfs.
    #[arg(long, default_value = "ext4", value_parser = parse_fs)]
    fs: FsType,
    /// Cap the device at `--iops` (every IO, every process) instead of throttling
    /// containerd's cgroup's writes.
    #[arg(long)]
    capped: bool,
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
    let disk = SlowDisk::create(&args)?;
    let ctd = Containerd::start_in(disk.mount_point())?;
    ctd.import_test_images()?;
    let ctd_pid = ctd.pid().context("containerd is not running")?;
    disk.slow_down(ctd_pid, args.iops, args.fs)?;

    let (mut iostall, summaries) = start_iostall(&ctd, &args.iostall_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(storm(&ctd, args.pods));
    // Each pod's startup ends once its container ran and nothing new came for the
    // settle time (5 s): wait for their summaries, then stop.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < args.pods as usize {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match summaries.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    // Let the last records reach the outputs before stopping.
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
    println!();
    println!("iostall's pod startups ({} of {}):", seen.len(), args.pods);
    for line in &seen {
        println!("  {line}");
    }
    runtime.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
    });
    Ok(())
}

/// `--fs` as the fixtures' filesystem type.
fn parse_fs(name: &str) -> Result<FsType, String> {
    match name {
        "ext4" => Ok(FsType::Ext4),
        "xfs" => Ok(FsType::Xfs),
        "btrfs" => Ok(FsType::Btrfs),
        other => Err(format!("{other:?} is not ext4, xfs or btrfs")),
    }
}

/// containerd's disk: throttled for its cgroup, or capped at the device.
enum SlowDisk {
    Throttled(SlowExt4),
    Capped(CappedExt4),
}

impl SlowDisk {
    /// The disk, not slow yet (containerd starts and imports its images at full speed).
    fn create(args: &Args) -> Result<Self> {
        let size_mib = 512;
        Ok(if args.capped {
            Self::Capped(CappedExt4::create_fs(size_mib, 0, args.fs)?)
        } else {
            Self::Throttled(SlowExt4::create_fs(
                SlowExt4Options {
                    size_mib,
                    ..SlowExt4Options::default()
                },
                args.fs,
            )?)
        })
    }

    fn mount_point(&self) -> &std::path::Path {
        match self {
            Self::Throttled(d) => d.mount_point(),
            Self::Capped(d) => d.mount_point(),
        }
    }

    /// Slows the disk to `iops`: containerd's writes (its cgroup), or the device's.
    fn slow_down(&self, containerd: u32, iops: u32, fs: FsType) -> Result<()> {
        let fs = fs.name();
        match self {
            Self::Throttled(d) => {
                d.set_write_iops(iops)?;
                d.add_pid(containerd)?;
                eprintln!(
                    "slow {fs} at {}: containerd {containerd} in the cgroup throttled to \
                     {iops} write IOPS",
                    d.mount_point().display()
                );
            }
            Self::Capped(d) => {
                d.set_iops(u64::from(iops));
                eprintln!(
                    "slow {fs} at {}: its device capped at {iops} IOPS",
                    d.mount_point().display()
                );
            }
        }
        Ok(())
    }
}

/// Starts iostall on the test containerd; its stdout (the table) goes to ours, and its
/// pod startup summaries (table lines or JSON records) also to the receiver returned.
fn start_iostall(ctd: &Containerd, extra: &[String]) -> Result<(Child, mpsc::Receiver<String>)> {
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iostall")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (summary_tx, summaries) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stdout(), "{line}");
            if let Some(summary) = startup_summary(&line) {
                let _ = summary_tx.send(summary);
            }
        }
    });
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
    Ok((child, summaries))
}

/// A pod startup summary in iostall's output: the table's `pod startup …` line, or a
/// JSON record of type `startup` (shown as its pod, time and stall).
fn startup_summary(line: &str) -> Option<String> {
    if let Some(at) = line.find("pod startup ") {
        return Some(line[at..].to_owned());
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["type"] != "startup" {
        return None;
    }
    let secs = |ns: &serde_json::Value| ns.as_u64().unwrap_or(0) as f64 / 1e9;
    let phases: Vec<String> = v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {:.1}s",
                p["name"].as_str().unwrap_or("?"),
                secs(&p["duration_ns"])
            )
        })
        .collect();
    Some(format!(
        "{}/{} {:.1}s ({}) own stall {:.1}s, shared {:.1}s [{}]",
        v["k8s.namespace.name"].as_str().unwrap_or("?"),
        v["k8s.pod.name"].as_str().unwrap_or("?"),
        (v["end_unix_ns"].as_u64().unwrap_or(0) as f64
            - v["start_unix_ns"].as_u64().unwrap_or(0) as f64)
            / 1e9,
        phases.join(", "),
        secs(&v["io"]["own_ns"]),
        secs(&v["io"]["shared_ns"]),
        v["end_reason"].as_str().unwrap_or("?"),
    ))
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
