//! What the startup stage costs and holds under a churn of pods: memory must stay flat,
//! whatever the number of pods that came and went.
//!
//! `cargo run --release -p iostall-tests --bin bench-startup [-- --pods 100000]`. Feeds
//! the real [`iostall::startup::StartupStage`] synthetic pods at `--rate` a second of
//! event time: each a sandbox, one container created and started, three slow operations
//! of its own and two of containerd's shared `meta.db` overlapping its phases; one pod in
//! ten never finishes (a sandbox stuck for good), so evictions happen. It prints the
//! time per pod and this process's resident memory (VmRSS) at each tenth of the run.
//! Only the stage runs (no kernel, no export), so the figures are the stage's own.
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use iostall::{
    enrich::Enrichment,
    event::{AttachMode, FsKind, IoOp, IoRecord},
    runtime::{EventSource, RuntimeEvent, RuntimeEventKind as K},
    startup::{StartupConfig, StartupOutput, StartupStage},
};
use iostall_tests::otlp_receiver::vm_rss_kib;

#[derive(Debug, Parser)]
#[command(about = "Memory and time of the startup stage under a churn of pods")]
struct Args {
    /// Pods started.
    #[arg(long, default_value_t = 100_000)]
    pods: u64,
    /// Pods a second (of event time).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Open startups at most (`startup.max_open`).
    #[arg(long, default_value_t = 1024)]
    max_open: usize,
}

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn record(comm: &str, start: u64, dur: u64, path: &str) -> IoRecord {
    IoRecord {
        op: IoOp::Fsync,
        start_unix_ns: start,
        end_unix_ns: start + dur,
        latency_ns: dur,
        pid: 812,
        tid: 812,
        comm: comm.into(),
        cgroup_id: 1,
        mntns: 0,
        bytes: 0,
        offset: None,
        ret: 0,
        inode: start,
        dev_major: 8,
        dev_minor: 1,
        file_name: path.rsplit('/').next().unwrap_or(path).into(),
        parents: Vec::new(),
        path_complete: true,
        mount_point: Some("/".into()),
        file_path: Some(path.into()),
        datasync: false,
        directory: false,
        via_overlayfs: false,
        attach_mode: AttachMode::Tracepoint,
        fs: FsKind::Ext4,
        why: Default::default(),
    }
}

fn event(kind: K, at: u64, id: &str) -> RuntimeEvent {
    let mut e = RuntimeEvent::new(at, EventSource::Containerd, kind);
    e.container_id = Some(id.into());
    e
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut stage = StartupStage::new(StartupConfig {
        max_open: args.max_open,
        ..StartupConfig::default()
    });
    let me = std::process::id();
    let gap = S / args.rate.max(1);
    let t0 = 1_800_000_000 * S;
    let mut out: Vec<StartupOutput> = Vec::new();
    let (mut spans, mut summaries) = (0u64, 0u64);
    let rss_start = vm_rss_kib(me).context("VmRSS")?;
    println!(
        "{:>8} {:>10} {:>10} {:>9}",
        "PODS", "VmRSS KiB", "tracked", "evicted"
    );
    let started = Instant::now();
    let mut next_tick = t0;
    for i in 0..args.pods {
        let t = t0 + i * gap;
        let uid = format!("pod-{i:08}");
        let pod = Enrichment {
            pod_uid: Some(uid.clone()),
            pod_name: Some(format!("web-{i}")),
            pod_namespace: Some("churn".into()),
            ..Enrichment::none()
        };
        let sandbox = format!("sb-{i:08}");
        stage.event(
            event(K::SandboxCreated, t, &sandbox),
            pod.clone(),
            t,
            &mut out,
        );
        let shared = record(
            "containerd",
            t + 20 * MS,
            150 * MS,
            "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
        );
        stage.io(shared.clone(), Enrichment::none(), t + 200 * MS, &mut out);
        if i % 10 != 0 {
            let id = format!("c-{i:08}");
            let container = Enrichment {
                container_id: Some(id.clone()),
                container_name: Some("app".into()),
                ..pod.clone()
            };
            let path = format!("/var/lib/containerd/sandboxes/{sandbox}/hostname");
            stage.io(
                record("containerd", t + 5 * MS, 40 * MS, &path),
                container.clone(),
                t,
                &mut out,
            );
            stage.event(
                event(K::SandboxStarted, t + 300 * MS, &sandbox),
                pod.clone(),
                t,
                &mut out,
            );
            stage.io(
                record("containerd", t + 310 * MS, 90 * MS, &path),
                container.clone(),
                t,
                &mut out,
            );
            stage.event(
                event(K::ContainerCreated, t + 400 * MS, &id),
                container.clone(),
                t,
                &mut out,
            );
            stage.io(
                record("runc", t + 420 * MS, 60 * MS, &path),
                container.clone(),
                t,
                &mut out,
            );
            stage.event(
                event(K::ContainerStarted, t + 500 * MS, &id),
                container,
                t,
                &mut out,
            );
            let mut later = shared;
            later.start_unix_ns += 350 * MS;
            later.end_unix_ns += 350 * MS;
            stage.io(later, Enrichment::none(), t + 600 * MS, &mut out);
        }
        while next_tick <= t {
            stage.tick(next_tick, &mut out);
            next_tick += S / 10;
        }
        for o in out.drain(..) {
            match o {
                StartupOutput::Span(_) => spans += 1,
                StartupOutput::Summary(_) => summaries += 1,
                _ => {}
            }
        }
        if (i + 1) % (args.pods / 10).max(1) == 0 {
            let (attempts, shared, history) = stage.tracked();
            println!(
                "{:>8} {:>10} {:>10} {:>9}",
                i + 1,
                vm_rss_kib(me).context("VmRSS")?,
                attempts + shared + history,
                stage.stats().evicted
            );
        }
    }
    let took = started.elapsed();
    let rss_end = vm_rss_kib(me).context("VmRSS")?;
    println!(
        "{} pods in {:.2} s: {:.1} µs a pod; {spans} spans and {summaries} summaries out; \
         VmRSS {rss_start} → {rss_end} KiB; {} evicted (never-finishing pods past max_open {})",
        args.pods,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / args.pods as f64,
        stage.stats().evicted,
        args.max_open
    );
    Ok(())
}
