//! A long collector outage under steady load: iostall's memory, its drop accounting and
//! how soon export resumes.
//!
//! `cargo run -p iostall-tests --bin soak-outage [-- --outage-seconds 600]` (as root).
//! iostall watches a paced `pwrite` + `fdatasync` loop on a loop-device ext4 (every
//! `fdatasync` one record) while the OTLP receiver is up, then down for
//! `--outage-seconds`, then back (see [`iostall_tests::soak`], which the `otlp_outage`
//! test runs for 30 s). It samples iostall's `VmRSS` every second, writes the samples as
//! CSV and the RSS curve as a PNG, and prints the RSS min/median/max of each phase,
//! records produced/received/dropped and the time from the collector's return to its
//! first export request. Exits non-zero when a check fails (RSS growth over
//! `--max-growth-mib`, a record unaccounted for, export later than 1 s after the return).
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    slowfs::require_root,
    soak::{OutagePlan, OutageReport, Phase, run_outage},
};
use plotters::prelude::*;

#[derive(Debug, Parser)]
#[command(
    about = "iostall's memory, drop accounting and export resumption over a long collector outage"
)]
struct Args {
    /// Seconds with the collector up before the outage.
    #[arg(long, default_value_t = 60)]
    before_seconds: u64,
    /// Seconds the collector is down.
    #[arg(long, default_value_t = 600)]
    outage_seconds: u64,
    /// Seconds with the collector back.
    #[arg(long, default_value_t = 60)]
    after_seconds: u64,
    /// fdatasyncs a second (each one record).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// iostall's threshold, ms: under any fdatasync on the loop ext4, over a page-cache
    /// pwrite.
    #[arg(long, default_value_t = 0.05)]
    threshold_ms: f64,
    /// Where the CSV and the PNG go.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// The TTF font of the plot's text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Most RSS growth during the outage (its max over the median before) that passes.
    #[arg(long, default_value_t = 4.0)]
    max_growth_mib: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    // Read before the run, so a missing font fails at once, not after 12 minutes.
    let font: &'static [u8] = Box::leak(
        std::fs::read(&args.font)
            .with_context(|| {
                format!(
                    "reading the plot font {} (`apt-get install fonts-dejavu-core`, or --font)",
                    args.font.display()
                )
            })?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{} is not a TTF font", args.font.display()))?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let plan = OutagePlan {
        before: Duration::from_secs(args.before_seconds),
        outage: Duration::from_secs(args.outage_seconds),
        after: Duration::from_secs(args.after_seconds),
        rate: args.rate,
        threshold_ms: args.threshold_ms,
    };
    let report = run_outage(plan, |s| {
        if (s.t_s.round() as u64).is_multiple_of(10) {
            eprintln!(
                "{:>5.0} s {:<6} RSS {:.1} MiB records {} exported {} dropped {} received {}",
                s.t_s,
                s.phase.name(),
                s.rss_kib as f64 / 1024.0,
                s.records,
                s.exported,
                s.dropped,
                s.received
            );
        }
    })?;
    let csv = args.out_dir.join("soak-outage.csv");
    std::fs::write(&csv, report.csv()).with_context(|| format!("writing {}", csv.display()))?;
    let log = args.out_dir.join("soak-outage-iostall.log");
    std::fs::write(&log, &report.stderr).with_context(|| format!("writing {}", log.display()))?;
    let png = args.out_dir.join("soak-outage-rss.png");
    plot(&report, &png)?;
    print!("{}", report.summary());
    println!(
        "samples: {}\nplot: {}\niostall's log: {}",
        csv.display(),
        png.display(),
        log.display()
    );

    let mut failed = Vec::new();
    let growth = report.outage_growth_kib().unwrap_or(i64::MAX);
    if growth as f64 > args.max_growth_mib * 1024.0 {
        failed.push(format!("RSS grew {growth} KiB during the outage"));
    }
    if !report.accounted() {
        failed.push("the drop counters do not account for every record".into());
    }
    if report
        .first_export_after_return
        .is_none_or(|d| d > Duration::from_secs(1))
    {
        failed.push("export did not resume within 1 s of the collector's return".into());
    }
    if !report.clean_exit {
        failed.push(format!("iostall did not exit cleanly:\n{}", report.stderr));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The RSS curve, with the outage shaded.
fn plot(report: &OutageReport, path: &std::path::Path) -> Result<()> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let points: Vec<(f64, f64)> = report
        .samples
        .iter()
        .map(|s| (s.t_s, mib(s.rss_kib)))
        .collect();
    let t_end = points.last().map_or(1.0, |p| p.0).max(1.0);
    let lo = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let hi = points.iter().map(|p| p.1).fold(0.0, f64::max);
    // At least 8 MiB of range, so that a flat line looks flat.
    let mid = (lo + hi) / 2.0;
    let half = ((hi - lo) / 2.0 + 1.0).max(4.0);
    let (y0, y1) = ((mid - half).max(0.0), mid + half);
    let outage: Vec<f64> = report
        .samples
        .iter()
        .filter(|s| s.phase == Phase::Outage)
        .map(|s| s.t_s)
        .collect();

    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "iostall VmRSS: collector down {} s under {:.0} records/s",
        report.plan.outage.as_secs(),
        report.record_rate()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_end, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("VmRSS (MiB)")
        .label_style(("sans-serif", 14))
        .draw()?;
    if let (Some(first), Some(last)) = (outage.first(), outage.last()) {
        // A sample is taken at the end of its second: the outage began a second before
        // its first.
        chart.draw_series(std::iter::once(Rectangle::new(
            [(first - 1.0, y0), (*last, y1)],
            RGBColor(255, 225, 225).filled(),
        )))?;
        chart
            .draw_series(std::iter::once(Text::new(
                "collector down",
                (first + 2.0, y1 - (y1 - y0) * 0.06),
                ("sans-serif", 14),
            )))
            .context("drawing the label")?;
    }
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
