//! What a storm of operations costs iostall at threshold 0 (every operation a record):
//! page-cache `pread`s of 4 KiB on an ext4 loop filesystem, from `--threads` threads
//! paced to `--rate` operations a second in all (0: as fast as they go), with iostall
//! attached (tracepoint mode, `--output json` to `/dev/null`, `--comm` keeping only the
//! storm's threads) for `--seconds`.
//!
//! `cargo run --release -p iostall-tests --bin bench-storm [-- --rate 100000 --seconds 30]`
//! (as root). Printed: the rate reached; iostall's CPU (utime + stime from
//! `/proc/<pid>/stat`) as % of one core over the storm; its `VmRSS` sampled every 250 ms
//! (min / median / max, first and last, and per fifth of the run); records handed to the
//! outputs; and where the rest went: the kernel's ring-full drops and the sink queue's.
//! `--json` prints the same as one JSON object.
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use iostall_tests::{
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts},
    storm::{QuietIostall, Sampler, clock_ticks, min_median_max, pread_storm, storm_file},
};

/// The storm threads' name (iostall's `--comm`).
const COMM: &str = "iostall-storm";

#[derive(Debug, Parser)]
#[command(about = "iostall's CPU and memory at threshold 0 under a storm of page-cache preads")]
struct Args {
    /// Operations a second in all (0: unpaced).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Threads doing them.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How long the storm lasts.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-storm needs root (loop devices, eBPF)");
    }
    if args.threads == 0 || args.seconds == 0 {
        bail!("--threads and --seconds must be at least 1");
    }
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let file = fs.mount_point().join("storm");
    storm_file(&file)?;
    let iostall = QuietIostall::for_storm(COMM)?;
    let sampler = Sampler::start(iostall.pid(), Duration::from_millis(250));
    let per_thread = (args.rate > 0).then(|| (args.rate / args.threads as u64).max(1));
    let run = pread_storm(
        &file,
        args.threads,
        Duration::from_secs(args.seconds),
        COMM,
        per_thread,
    )?;
    let samples = sampler.finish();
    // Let the last second's kernel counters be published and the queue drain.
    std::thread::sleep(Duration::from_millis(2500));
    let m = iostall.scrape()?;
    iostall.stop()?;

    let cpu_s = match (samples.first(), samples.last()) {
        (Some(f), Some(l)) => (l.cpu_ticks - f.cpu_ticks) as f64 / clock_ticks() as f64,
        _ => 0.0,
    };
    let span = match (samples.first(), samples.last()) {
        (Some(f), Some(l)) => (l.at - f.at).as_secs_f64().max(1e-9),
        _ => 1.0,
    };
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let (rss_min, rss_median, rss_max) = min_median_max(&rss);
    let fifths: Vec<u64> = (0..5)
        .filter_map(|i| {
            let part = &rss[rss.len() * i / 5..rss.len() * (i + 1) / 5];
            part.iter().max().copied()
        })
        .collect();
    let written = m.get("iostall_kernel_events_total");
    let ring_full = m.get("iostall_dropped_records_total{reason=\"ringbuf_full\"}");
    let records = m.get("iostall_records_total");
    let queue_full = m.get("iostall_dropped_records_total{reason=\"sink_queue_full\"}");
    let untimed = m.get("iostall_kernel_untimed_operations_total{reason=\"inflight_full\"}");
    let report = serde_json::json!({
        "ops": run.ops,
        "seconds": run.elapsed.as_secs_f64(),
        "ops_per_s": run.rate(),
        "iostall_cpu_pct_of_core": 100.0 * cpu_s / span,
        "rss_kib": {"min": rss_min, "median": rss_median, "max": rss_max,
                    "first": rss.first(), "last": rss.last(), "max_per_fifth": fifths},
        "kernel_written": written,
        "kernel_ringbuf_full": ring_full,
        "kernel_untimed": untimed,
        "records": records,
        "records_per_s": records as f64 / run.elapsed.as_secs_f64(),
        "sink_queue_full": queue_full,
        "accounted": written + ring_full == run.ops && records + queue_full == written,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "storm: {} preads in {:.1} s = {:.0}/s ({} threads, paced to {})",
        run.ops,
        run.elapsed.as_secs_f64(),
        run.rate(),
        args.threads,
        if args.rate == 0 {
            "nothing".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    println!(
        "iostall CPU: {:.1}% of one core ({cpu_s:.2} s over {span:.1} s)",
        100.0 * cpu_s / span
    );
    println!(
        "iostall VmRSS (MiB): min {:.1} median {:.1} max {:.1}; first {:.1} last {:.1}; max per fifth {:?}",
        rss_min as f64 / 1024.0,
        rss_median as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        rss.first().copied().unwrap_or(0) as f64 / 1024.0,
        rss.last().copied().unwrap_or(0) as f64 / 1024.0,
        fifths
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
    );
    println!(
        "records: kernel wrote {written}, ring full {ring_full} (untimed {untimed}); \
         handed to the outputs {records} ({:.0}/s), sink queue full {queue_full}; \
         every operation accounted for: {}",
        records as f64 / run.elapsed.as_secs_f64(),
        written + ring_full == run.ops && records + queue_full == written
    );
    Ok(())
}
