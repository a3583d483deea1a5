//! `bench-otlp`: how fast the OTLP path exports, and with how much memory.
//!
//! Feeds N synthetic `IoRecord`s through the real stages after decode — `correlate`
//! (deterministic ids) → `OtlpSink` (bounded queue) → export task (batching, span and
//! log encoding, gzip if asked, gRPC or HTTP/protobuf) — to a real OTLP receiver on
//! localhost, and reports the end-to-end rate (records acknowledged by the receiver per
//! second, each one a span *and* a log record) and the exporter's peak RSS (`VmHWM`).
//!
//! The receiver runs in a child process (this binary with `--receiver`) so that the
//! RSS measured is the exporter's only. By default the exporter is pinned to CPU 0 and
//! the receiver to CPU 1: "one core" for the exporter, its feeding thread included.
//!
//! ```text
//! cargo run --release -p iostall-tests --bin bench-otlp -- [--events N] [--protocol grpc|http/protobuf] [--gzip]
//! ```
//! Target: ≥ 200k events/s on one core, peak RSS < 40 MiB.
//!
//! Measured on the 2-core development machine (1M events, release build, shared and
//! noisy, ±15% run to run), "per CPU-s" = events ÷ CPU time of the exporter process:
//!
//! | mode | wall rate | per exporter CPU-s | peak RSS |
//! | --- | --- | --- | --- |
//! | http/protobuf, discarding receiver (`--discard`) | 265–350k/s | 340–375k | 13 MiB |
//! | http/protobuf, decoding receiver | 150–175k/s | 310–355k | 13 MiB |
//! | grpc, decoding receiver | 108–143k/s | 270–310k | 13 MiB |
//! | grpc + gzip | 73–78k/s | 115–125k | 13 MiB |
//!
//! With a decoding receiver the wall rate is bound by the receiver (on the other core),
//! not by the exporter. gzip (flate2, fastest level) costs more than everything else.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall::{
    config::{CliOverrides, Config, FileConfig},
    correlate::Correlator,
    event::{AttachMode, FsKind, IoOp, IoRecord},
    metrics::{DropReason, Metrics},
    otlp::resource::Resources,
    sink::otlp::OtlpSink,
};
use iostall_tests::otlp_receiver::OtlpReceiver;

#[derive(Debug, Parser)]
#[command(name = "bench-otlp")]
struct Args {
    /// Records to export.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// grpc or http/protobuf.
    #[arg(long, default_value = "grpc")]
    protocol: String,
    /// gzip request bodies.
    #[arg(long)]
    gzip: bool,
    /// Do not pin the exporter and the receiver to CPUs 0 and 1.
    #[arg(long)]
    no_pin: bool,
    /// Receiver that discards bodies without decoding them (http/protobuf only): shows
    /// the exporter's own limit rather than the test receiver's.
    #[arg(long)]
    discard: bool,
    /// Internal: run as the receiver child.
    #[arg(long, hide = true)]
    receiver: bool,
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity
    // on our own pid (0) with a valid set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is a valid out value; RUSAGE_SELF always works.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// An HTTP endpoint that accepts `POST /v1/*` and discards the body undecoded: a
/// receiver that costs (almost) nothing, to see the exporter's own limit.
fn discard_receiver() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let app = axum::Router::new().route(
            "/v1/{signal}",
            axum::routing::post(|_body: axum::body::Bytes| async { "" }),
        );
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = done_tx.send(());
        });
        let stop = async {
            let _ = done_rx.await;
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await?;
        anyhow::Ok(())
    })
}

fn receiver(protocol: &str, discard: bool) -> Result<()> {
    if discard {
        return discard_receiver();
    }
    let rx = if protocol == "grpc" {
        OtlpReceiver::grpc()?
    } else {
        OtlpReceiver::http()?
    };
    println!("{}", rx.addr());
    std::io::stdout().flush()?;
    // Drain (and drop) requests until the parent closes our stdin.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = done_tx.send(());
    });
    while done_rx.try_recv().is_err() {
        let _ = rx.recv_timeout(Duration::from_millis(100));
    }
    Ok(())
}

fn template() -> IoRecord {
    IoRecord {
        op: IoOp::Fsync,
        start_unix_ns: 1_700_000_000_000_000_000,
        end_unix_ns: 1_700_000_000_108_000_000,
        latency_ns: 108_000_000,
        pid: 3616,
        tid: 3617,
        comm: "containerd".into(),
        cgroup_id: 4242,
        mntns: 4026531841,
        bytes: 0,
        offset: None,
        ret: 0,
        inode: 131_074,
        dev_major: 259,
        dev_minor: 1,
        file_name: "meta.db".into(),
        parents: vec!["io.containerd.metadata.v1.bolt".into(), "containerd".into()],
        path_complete: true,
        mount_point: Some("/var/lib".into()),
        file_path: Some("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".into()),
        datasync: false,
        directory: false,
        via_overlayfs: false,
        attach_mode: AttachMode::Tracepoint,
        fs: FsKind::Ext4,
        why: Default::default(),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = !args.no_pin && cpus >= 2;
    if args.receiver {
        if pinning {
            pin(1);
        }
        return receiver(&args.protocol, args.discard);
    }
    let exe = std::env::current_exe().context("own path")?;
    let mut child = Command::new(exe)
        .args(["--receiver", "--protocol", &args.protocol])
        .args(if pinning { &[][..] } else { &["--no-pin"][..] })
        .args(if args.discard {
            &["--discard"][..]
        } else {
            &[][..]
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the receiver")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
    let addr = line.trim().to_owned();
    if addr.is_empty() {
        bail!("receiver did not start");
    }
    if pinning {
        pin(0);
    }

    let yaml = format!(
        "otlp:\n  endpoint: http://{addr}\n  protocol: {}\n  compression: {}\n",
        args.protocol,
        if args.gzip { "gzip" } else { "none" }
    );
    let file = FileConfig::parse("bench.yaml".as_ref(), &yaml)?;
    let config = Config::resolve(&CliOverrides::default(), &file, &|_| None)?;
    let metrics = Metrics::new();
    let resources = Resources::new(&config.resource, Some("bench-node".into()));
    let rss_before = proc_status_kib("VmRSS:");
    let correlator = Correlator::new("bench-host");
    let template = template();

    if args.discard && args.protocol == "grpc" {
        bail!("--discard needs --protocol http/protobuf");
    }
    let cpu_start = cpu_time();
    let start = Instant::now();
    let mut sink = OtlpSink::start(&config.otlp, resources, metrics.clone())?;
    let mut waits = 0u64;
    for i in 0..args.events {
        let mut r = template.clone();
        r.start_unix_ns += i * 1_000;
        r.end_unix_ns += i * 1_000;
        r.pid += (i % 64) as u32;
        r.tid = r.pid + 1;
        r.inode += i % 1024;
        let mut c = correlator.correlate(r);
        loop {
            match sink.offer(c) {
                None => break,
                Some(back) => {
                    c = back;
                    waits += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    sink.close();
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_start);
    let exported = metrics.exported_spans().min(metrics.exported_logs());
    let failed = metrics.dropped(DropReason::OtlpExportFailed);
    let hwm = proc_status_kib("VmHWM:");
    drop(child.stdin.take());
    let _ = child.wait();
    let rate = exported as f64 / elapsed.as_secs_f64();
    let per_core = exported as f64 / cpu.as_secs_f64().max(1e-9);
    println!(
        "bench-otlp: protocol={} gzip={} discard={} pinned={} events={} exported={} failed={} time={:.2}s \
         rate={:.0} events/s wall, {:.0} events per exporter CPU-second (each = 1 span + 1 log record) \
         exporter_cpu={:.2}s peak_rss={:.1} MiB (baseline {:.1} MiB) queue_full_waits={}",
        args.protocol,
        args.gzip,
        args.discard,
        pinning,
        args.events,
        exported,
        failed,
        elapsed.as_secs_f64(),
        rate,
        per_core,
        cpu.as_secs_f64(),
        hwm as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        waits
    );
    if exported != args.events {
        bail!("only {exported} of {} events were exported", args.events);
    }
    Ok(())
}
