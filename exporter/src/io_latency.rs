//! Latency of the slow operations as histograms per filesystem device and operation
//! (`iostall_io_latency_seconds{device,op}`), each bucket with an exemplar: the trace and
//! span id of the last operation that fell in it.
//!
//! Observed on the sink thread once a record has its ids ([`crate::pipeline`] calls
//! [`IoLatency::observe`] right before the sinks), so an exemplar names the very span the
//! OTLP sink exports (and the JSON line's `span_id`). Only operations at or above the
//! threshold cross from the kernel, so this is the latency of the *slow* ones: a count
//! per second that rises is the stall rate, the buckets say how slow.
//!
//! `device` is the filesystem's block device (`major:minor`, as the spans'
//! `iostall.file.device`): one ext4 filesystem per device, so it names the filesystem
//! too. Series are bounded: past [`MAX_DEVICES`] devices, more go to `device="other"`.
use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex};

use crate::{
    correlate::CorrelatedRecord,
    event::IoOp,
    openmetrics::{Exemplar, Format},
};

/// The histogram's name.
pub const NAME: &str = "iostall_io_latency_seconds";

/// Upper bounds (seconds) of the buckets: from the default 10 ms threshold to the
/// multi-second stalls of a throttled cloud disk.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Devices with series of their own; the rest share `device="other"`.
pub const MAX_DEVICES: usize = 64;

/// `(device or None for "other", op)`, in exposition order.
type Key = (Option<(u32, u32)>, u8);

/// One series: bucket counts (not cumulative; the last is `+Inf`), their exemplars.
#[derive(Debug, Default, Clone)]
struct Series {
    buckets: [u64; BUCKETS.len() + 1],
    exemplars: [Option<Exemplar>; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// The histograms; share it inside [`crate::metrics::Metrics`].
#[derive(Debug, Default)]
pub struct IoLatency {
    series: Mutex<BTreeMap<Key, Series>>,
}

fn op_index(op: IoOp) -> u8 {
    match op {
        IoOp::Read => 0,
        IoOp::Write => 1,
        IoOp::Open => 2,
        IoOp::Fsync => 3,
    }
}

fn op_name(index: u8) -> &'static str {
    [IoOp::Read, IoOp::Write, IoOp::Open, IoOp::Fsync]
        .get(usize::from(index))
        .map_or("unknown", |op| op.as_str())
}

impl IoLatency {
    /// Counts one slow operation, and makes it its bucket's exemplar.
    pub fn observe(&self, record: &CorrelatedRecord) {
        let r = &record.record;
        let value = r.latency_ns as f64 / 1e9;
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let device = (r.dev_major, r.dev_minor);
        let op = op_index(r.op);
        // A device with a series keeps it; a new one gets its own while there is room.
        let own = series.keys().any(|(d, _)| *d == Some(device)) || {
            let mut devices: Vec<_> = series.keys().filter_map(|(d, _)| *d).collect();
            devices.dedup();
            devices.len() < MAX_DEVICES
        };
        let key = (own.then_some(device), op);
        let s = series.entry(key).or_default();
        let i = BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(BUCKETS.len());
        s.buckets[i] += 1;
        s.exemplars[i] = Some(Exemplar {
            trace_id: record.trace_id,
            span_id: record.span_id,
            value,
            unix_ns: r.end_unix_ns,
        });
        s.sum += value;
        s.count += 1;
    }

    /// Writes the family (its `# HELP`/`# TYPE` lines even with no series yet); exemplars
    /// only in OpenMetrics.
    pub fn render(&self, out: &mut String, format: Format) {
        let _ = writeln!(
            out,
            "# HELP {NAME} Latency of the slow operations (at or above the threshold), by \
             filesystem device and operation; OpenMetrics exemplars name the trace and span \
             of the last one in each bucket.\n# TYPE {NAME} histogram"
        );
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((device, op), s) in series.iter() {
            let device = device.map_or_else(|| "other".to_owned(), |(a, b)| format!("{a}:{b}"));
            let labels = format!("device=\"{device}\",op=\"{}\"", op_name(*op));
            let mut cumulative = 0;
            for (i, n) in s.buckets.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), f64::to_string);
                let _ = write!(out, "{NAME}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                if let (Format::OpenMetrics, Some(e)) = (format, &s.exemplars[i]) {
                    e.write(out);
                }
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "{NAME}_sum{{{labels}}} {}\n{NAME}_count{{{labels}}} {}",
                s.sum, s.count
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        correlate::{ResourceKey, SpanId, TraceId},
        enrich::Enrichment,
    };

    pub(crate) fn record(op: IoOp, dev: (u32, u32), latency_ms: u64, id: u8) -> CorrelatedRecord {
        let start = 1_700_000_000_000_000_000;
        let mut record = crate::correlate::tests::record(1, start);
        record.op = op;
        record.end_unix_ns = start + latency_ms * 1_000_000;
        record.latency_ns = latency_ms * 1_000_000;
        (record.dev_major, record.dev_minor) = dev;
        CorrelatedRecord {
            record,
            trace_id: TraceId([id; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: None,
            shared_by: None,
            enrichment: Enrichment::none(),
            resource: ResourceKey::Node,
        }
    }

    #[test]
    fn buckets_are_cumulative_and_exemplars_openmetrics_only() {
        let h = IoLatency::default();
        h.observe(&record(IoOp::Fsync, (7, 0), 948, 1));
        h.observe(&record(IoOp::Fsync, (7, 0), 120, 2));
        h.observe(&record(IoOp::Fsync, (7, 0), 110, 3));
        h.observe(&record(IoOp::Write, (8, 1), 40_000, 4));
        let mut text = String::new();
        h.render(&mut text, Format::Prometheus);
        assert!(!text.contains(" # {"), "{text}");
        for line in [
            "iostall_io_latency_seconds_bucket{device=\"7:0\",op=\"fsync\",le=\"0.1\"} 0\n",
            "iostall_io_latency_seconds_bucket{device=\"7:0\",op=\"fsync\",le=\"0.25\"} 2\n",
            "iostall_io_latency_seconds_bucket{device=\"7:0\",op=\"fsync\",le=\"1\"} 3\n",
            "iostall_io_latency_seconds_bucket{device=\"7:0\",op=\"fsync\",le=\"+Inf\"} 3\n",
            "iostall_io_latency_seconds_count{device=\"7:0\",op=\"fsync\"} 3\n",
            "iostall_io_latency_seconds_bucket{device=\"8:1\",op=\"write\",le=\"30\"} 0\n",
            "iostall_io_latency_seconds_bucket{device=\"8:1\",op=\"write\",le=\"+Inf\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let mut om = String::new();
        h.render(&mut om, Format::OpenMetrics);
        let id = |b: u8| format!("{b:02x}");
        for line in [
            // The last of the two in (0.1, 0.25].
            format!(
                "iostall_io_latency_seconds_bucket{{device=\"7:0\",op=\"fsync\",le=\"0.25\"}} 2 \
                 # {{trace_id=\"{}\",span_id=\"{}\"}} 0.11 1700000000.110\n",
                id(3).repeat(16),
                id(3).repeat(8)
            ),
            format!(
                "iostall_io_latency_seconds_bucket{{device=\"7:0\",op=\"fsync\",le=\"1\"}} 3 \
                 # {{trace_id=\"{}\",span_id=\"{}\"}} 0.948 1700000000.948\n",
                id(1).repeat(16),
                id(1).repeat(8)
            ),
            format!(
                "iostall_io_latency_seconds_bucket{{device=\"8:1\",op=\"write\",le=\"+Inf\"}} 1 \
                 # {{trace_id=\"{}\",span_id=\"{}\"}} 40 1700000040.000\n",
                id(4).repeat(16),
                id(4).repeat(8)
            ),
            // No exemplar on an empty bucket.
            "iostall_io_latency_seconds_bucket{device=\"7:0\",op=\"fsync\",le=\"0.5\"} 2\n"
                .to_owned(),
        ] {
            assert!(om.contains(&line), "{line} missing in\n{om}");
        }
    }

    #[test]
    fn devices_past_the_limit_share_other() {
        let h = IoLatency::default();
        for minor in 0..MAX_DEVICES as u32 + 3 {
            h.observe(&record(IoOp::Read, (7, minor), 20, 1));
        }
        // A known device keeps its own series, for a new op too.
        h.observe(&record(IoOp::Write, (7, 0), 20, 1));
        let mut text = String::new();
        h.render(&mut text, Format::Prometheus);
        assert!(
            text.contains("_count{device=\"other\",op=\"read\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("_count{device=\"7:0\",op=\"write\"} 1\n"));
        assert!(text.contains(&format!(
            "_count{{device=\"7:{}\",op=\"read\"}} 1\n",
            MAX_DEVICES - 1
        )));
        assert!(!text.contains(&format!("device=\"7:{}\"", MAX_DEVICES)));
    }
}
