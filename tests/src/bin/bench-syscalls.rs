//! What iostall costs the workloads it watches, in tracepoint mode at threshold 1 ms.
//!
//! `cargo run --release -p iostall-tests --bin bench-syscalls` (as root). On a throttled
//! ("slow", cgroup v1 blkio) and an unthrottled ("fast") ext4 loop filesystem it runs a
//! fsync-heavy workload (pwrite 4 KiB + fdatasync) and a read-heavy one (page-cache
//! `pread`s of 4 KiB), alternating runs without and with iostall attached (ABBA order, so
//! drift hits both sides alike), and prints per workload the ratio of median times (with ÷
//! without), the nanoseconds added per operation and per syscall, and the events per second
//! iostall reported. Times are only compared inside one run: these machines are shared.
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use iostall_tests::{
    bench::{CountingIostall, median},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
    workload::run_workload_summary,
};

#[derive(Debug, Parser)]
#[command(about = "Overhead of iostall (tracepoint mode, threshold 1 ms) on syscall workloads")]
struct Args {
    /// Pairs of (without, with) runs per workload.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Page-cache preads per run.
    #[arg(long, default_value_t = 400_000)]
    preads: u64,
    /// pwrite+fdatasync iterations per run on the fast filesystem.
    #[arg(long, default_value_t = 2_000)]
    fast_fsyncs: u64,
    /// pwrite+fdatasync iterations per run on the slow filesystem (~100 ms each).
    #[arg(long, default_value_t = 10)]
    slow_fsyncs: u64,
    /// Threshold iostall runs with, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    threshold_ms: f64,
    /// Print one JSON object per workload instead of the table.
    #[arg(long)]
    json: bool,
}

/// One workload to measure.
struct Case {
    name: String,
    args: Vec<String>,
    syscalls_per_op: u64,
}

/// Results of one case.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    workload: String,
    ops_per_run: u64,
    median_ns_per_op_without: f64,
    median_ns_per_op_with: f64,
    ratio: f64,
    ns_added_per_op: f64,
    ns_added_per_syscall: f64,
    events_per_s: f64,
}

fn measure(case: &Case, args: &Args) -> Result<Outcome> {
    let argv: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut events = 0u64;
    let mut with_secs = 0f64;
    let mut ops = 0u64;
    for pair in 0..args.pairs {
        // ABBA: even pairs run without first, odd pairs with first.
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            let tracer = attached
                .then(|| {
                    let iostall_args = [
                        "--attach".to_owned(),
                        "tracepoint".to_owned(),
                        "--output".to_owned(),
                        "json".to_owned(),
                        "--threshold-ms".to_owned(),
                        args.threshold_ms.to_string(),
                    ];
                    // Every line is one event.
                    CountingIostall::start(&iostall_args, |_| true)
                })
                .transpose()?;
            let summary = run_workload_summary(&argv)?;
            let ns_per_op = summary["ns_per_op"].as_f64().context("no ns_per_op")?;
            ops = summary["count"].as_u64().context("no count")?;
            if let Some(tracer) = tracer {
                events += tracer.stop(Duration::from_millis(200))?;
                with_secs += summary["total_ns"].as_f64().unwrap_or(0.0) / 1e9;
                with.push(ns_per_op);
            } else {
                without.push(ns_per_op);
            }
        }
    }
    let without_ns = median(&mut without);
    let with_ns = median(&mut with);
    Ok(Outcome {
        workload: case.name.clone(),
        ops_per_run: ops,
        median_ns_per_op_without: without_ns,
        median_ns_per_op_with: with_ns,
        ratio: with_ns / without_ns,
        ns_added_per_op: with_ns - without_ns,
        ns_added_per_syscall: (with_ns - without_ns) / case.syscalls_per_op as f64,
        events_per_s: if with_secs > 0.0 {
            events as f64 / with_secs
        } else {
            0.0
        },
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure_kernel_mounts()?;
    let slow = SlowExt4::create(SlowExt4Options {
        write_iops: Some(10),
        ..Default::default()
    })?;
    let fast = SlowExt4::create(SlowExt4Options::default())?;
    let slow_cg = slow.cgroup_dir().to_string_lossy().into_owned();
    let file =
        |fs: &SlowExt4, name: &str| fs.mount_point().join(name).to_string_lossy().into_owned();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let cases = [
        Case {
            name: "fsync-heavy, slow fs (pwrite+fdatasync)".into(),
            args: strings(&[
                "--cgroup",
                &slow_cg,
                "--prime-throttle",
                "fsync-loop",
                "--file",
                &file(&slow, "fsync.dat"),
                "--count",
                &args.slow_fsyncs.to_string(),
                "--size",
                "4096",
            ]),
            syscalls_per_op: 2,
        },
        Case {
            name: "fsync-heavy, fast fs (pwrite+fdatasync)".into(),
            args: strings(&[
                "fsync-loop",
                "--file",
                &file(&fast, "fsync.dat"),
                "--count",
                &args.fast_fsyncs.to_string(),
                "--size",
                "4096",
            ]),
            syscalls_per_op: 2,
        },
        Case {
            name: "read-heavy, slow fs (page-cache pread 4 KiB)".into(),
            args: strings(&[
                "pread-loop",
                "--file",
                &file(&slow, "pread.dat"),
                "--count",
                &args.preads.to_string(),
                "--size",
                "4096",
            ]),
            syscalls_per_op: 1,
        },
        Case {
            name: "read-heavy, fast fs (page-cache pread 4 KiB)".into(),
            args: strings(&[
                "pread-loop",
                "--file",
                &file(&fast, "pread.dat"),
                "--count",
                &args.preads.to_string(),
                "--size",
                "4096",
            ]),
            syscalls_per_op: 1,
        },
    ];
    if !args.json {
        println!(
            "{:<46} {:>9} {:>13} {:>13} {:>7} {:>12} {:>13} {:>9}",
            "workload (iostall: tracepoint, -t 1 ms)",
            "ops/run",
            "ns/op without",
            "ns/op with",
            "ratio",
            "ns added/op",
            "ns added/call",
            "events/s"
        );
    }
    for case in &cases {
        let o = measure(case, &args)?;
        if args.json {
            println!("{}", serde_json::to_string(&o)?);
        } else {
            println!(
                "{:<46} {:>9} {:>13.0} {:>13.0} {:>7.3} {:>12.0} {:>13.0} {:>9.1}",
                o.workload,
                o.ops_per_run,
                o.median_ns_per_op_without,
                o.median_ns_per_op_with,
                o.ratio,
                o.ns_added_per_op,
                o.ns_added_per_syscall,
                o.events_per_s
            );
        }
    }
    Ok(())
}
