//! The 30-second version of the `soak-outage` command (README, Benchmarks): the
//! collector is down for 30 s under a steady ~200 slow operations a second. iostall's
//! memory stays flat, the drop counters account for every record, and export resumes
//! within 1 s of the collector's return. Real kernel, real ext4 on a loop device, real
//! gRPC receiver; the code is `iostall_tests::soak`, shared with the command.
use std::time::Duration;

use iostall_tests::{
    slowfs::require_root,
    soak::{OutagePlan, Phase, run_outage},
};

/// How far iostall's RSS may rise during the outage above its median before it.
///
/// What an outage may add is the records waiting in the OTLP queue and the batch being
/// tried. During an outage each batch gets one try (after the first, retried for ~1 s),
/// so at 200 records a second and 200 ms batches that is at most ~1 s of records (the
/// first batch's retries): ~250 records of a few KiB each (a `CorrelatedRecord` with
/// its path, names, `why` context and Resource key, and its encoded span and log record),
/// about 1 MiB, plus the allocator's slack for the error path's first use. Measured: 1.6
/// to 2.5 MiB in four runs. A queue that kept the ~6,000 records of 30 s would grow
/// about 20 MiB and fail it. (That only the first batch is retried is
/// `otlp_sink::an_outage_retries_one_batch_then_tries_each_once`; before it, a loaded
/// machine let a backlog of ~2,700 records build up, +11 MiB in the soak.)
const MAX_GROWTH_KIB: i64 = 4 * 1024;

#[test]
fn collector_down_30s_under_steady_load() {
    require_root();
    let plan = OutagePlan {
        before: Duration::from_secs(10),
        outage: Duration::from_secs(30),
        after: Duration::from_secs(10),
        rate: 200,
        threshold_ms: 0.05,
    };
    let report = run_outage(plan, |_| {}).expect("the outage run");
    let summary = report.summary();
    eprintln!("{summary}");
    assert!(
        report.clean_exit,
        "iostall must exit cleanly:\n{}",
        report.stderr
    );
    // The load is what the run is about: ~200 records a second, none lost in the kernel.
    let rate = report.record_rate();
    assert!(
        (150.0..=260.0).contains(&rate),
        "records at {rate:.1}/s, not ~200/s\n{summary}"
    );
    assert!(
        report.records >= report.ops * 9 / 10,
        "every fdatasync should be a record: {} of {}\n{summary}",
        report.records,
        report.ops
    );
    assert_eq!(report.ringbuf_dropped, 0, "{summary}");
    // Something was lost (the collector was down for 30 s), and every loss is counted.
    assert!(
        report.lost() >= 30 * 150,
        "30 s of outage must lose ~6,000 spans\n{summary}"
    );
    assert!(
        report.accounted(),
        "produced = received + dropped (within a batch per signal)\n{summary}\n{}",
        report.metrics_text
    );
    // Memory.
    let growth = report
        .outage_growth_kib()
        .expect("samples before and during");
    assert!(
        growth <= MAX_GROWTH_KIB,
        "RSS grew {growth} KiB during the outage\n{summary}\n{}",
        report.csv()
    );
    let after = report.rss(Phase::After).expect("samples after");
    let before = report.rss(Phase::Before).expect("samples before");
    assert!(
        after.median as i64 - before.median as i64 <= MAX_GROWTH_KIB,
        "RSS after the outage stayed up\n{summary}"
    );
    // Export resumes.
    let first = report
        .first_export_after_return
        .expect("an export after the collector came back");
    assert!(
        first <= Duration::from_secs(1),
        "first export {first:?} after the collector came back\n{summary}"
    );
    let last = report.samples.last().expect("samples");
    assert!(
        last.received > report.samples[(plan.before + plan.outage).as_secs() as usize].received,
        "spans must arrive after the collector came back\n{summary}"
    );
}
