//! Self-observability: counters of what was seen, exported and lost, served as
//! Prometheus text on `GET /metrics`, plus `GET /healthz`.
//!
//! Metric names:
//! - `iostall_records_total`: records handed to the sinks (after decode and filters).
//! - `iostall_dropped_records_total{reason}`: records lost, by reason:
//!   `ringbuf_full` (kernel side, from the eBPF counters), `decode_error`, `sink_queue_full` (the sinks fell behind the kernel reader),
//!   `otlp_queue_full` (the OTLP exporter's queue was full: collector slow or down),
//!   `otlp_export_failed` (a batch failed after all retries, or was rejected).
//! - `iostall_otlp_exported_spans_total`, `iostall_otlp_exported_logs_total`: accepted
//!   by the collector.
//! - `iostall_otlp_export_requests_total{signal,result}`: export requests by outcome
//!   (`ok`, `retry`, `failed`).
//! - `iostall_dropped_runtime_events_total{reason}`: runtime lifecycle events lost
//!   (`ringbuf_full`: the kernel's lifecycle ring; the queues as above).
//! - `iostall_kernel_events_total`: events the eBPF programs wrote to the ring buffer;
//!   `iostall_kernel_lifecycle_events_total`: to the lifecycle ring buffer;
//!   `iostall_kernel_journal_commits_total{result="written|dropped"}`: the jbd2 commits
//!   (`why.journal`) written to the ring buffer beside the slow operations, or lost.
//! - `iostall_kernel_filtered_total{reason}`: slow operations the kernel side left out
//!   on purpose (`other_fs`, `not_regular` file, `file_unresolved`, `other_comm`).
//! - `iostall_kernel_untimed_operations_total{reason="inflight_full"}`: operations the
//!   kernel could not time because its in-flight map was full. Not records lost: most
//!   of them were fast; but a slow one among them was never seen.
//! - `iostall_kernel_inflight_shared_slot_total`: operations whose thread's in-flight
//!   slot held another thread's operation (`pid_max` above 65536), timed through the
//!   in-flight hash map instead: timed, not lost.
//! - `iostall_watched_cgroups_full_total`: container cgroups the kernel's watch map had
//!   no room for: the exec and exit of their processes go unreported.
//! - `iostall_input_truncated_total`: values a runtime or the API server handed over
//!   that were cut to [`crate::bounds`]' limits (or labels left out).
//! - `iostall_filesystem_seen{root,fstype}`: 1 when a runtime or kubelet directory
//!   present on the node is on a traced filesystem, 0 when iostall cannot see its IO
//!   ([`crate::coverage`]).
//! - `iostall_runtime_events_rate_limited_total`: container process events (execs,
//!   exits not by a signal) held back by the per-container budget
//!   ([`crate::lifecycle::ProcessEventLimit`]): left out on purpose, not lost.
//! - `iostall_disk_iops{device,name}`, `iostall_disk_bytes_per_second`,
//!   `iostall_disk_in_flight`, `iostall_disk_await_seconds`, `iostall_disk_saturated`
//!   (1 when flat at a ceiling while requests wait) and `iostall_disk_ceiling_iops`
//!   (while saturated): each whole block device's last second, from the `why.disk`
//!   view ([`crate::why::disk`]).
//! - `iostall_io_latency_seconds{device,op}`: a histogram of the slow operations'
//!   latency per filesystem device and operation, with exemplars in OpenMetrics
//!   ([`crate::io_latency`]).
//! - `iostall_ebs_exceeded_iops_seconds_total{device,volume_id,limit}`,
//!   `iostall_ebs_exceeded_throughput_seconds_total{…}`, `iostall_ebs_volume_queue_length`,
//!   `iostall_ebs_log_page_errors_total`: an AWS EBS volume's own account of its
//!   throttling, only where there is one ([`crate::ebs_nvme`]).
//!
//! A scrape that accepts `application/openmetrics-text` gets OpenMetrics 1.0.0 (with
//! exemplars), any other gets Prometheus text 0.0.4 ([`crate::openmetrics`]).
//!
//! The server is deliberately tiny (HTTP/1.1, one request per connection): it must add
//! no dependency and no risk to the exporter.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    openmetrics::{Format, to_openmetrics},
    tracer::KernelStats,
};

/// Why a record was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The kernel's ring buffer was full.
    RingbufFull,
    /// The record could not be decoded.
    DecodeError,
    /// The channel before the sinks was full.
    SinkQueueFull,
    /// The OTLP exporter's queue was full.
    OtlpQueueFull,
    /// An OTLP export failed after its retries, or the collector rejected it.
    OtlpExportFailed,
}

impl DropReason {
    /// Every reason, in exposition order.
    pub const ALL: [Self; 5] = [
        Self::RingbufFull,
        Self::DecodeError,
        Self::SinkQueueFull,
        Self::OtlpQueueFull,
        Self::OtlpExportFailed,
    ];

    /// The `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::DecodeError => "decode_error",
            Self::SinkQueueFull => "sink_queue_full",
            Self::OtlpQueueFull => "otlp_queue_full",
            Self::OtlpExportFailed => "otlp_export_failed",
        }
    }
}

/// Outcome of one export request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportOutcome {
    /// Accepted.
    Ok,
    /// Failed with a retryable error; will be retried.
    Retry,
    /// Failed for good.
    Failed,
}

/// What iostall keeps per container, pod, process or cgroup, served as
/// `iostall_cache_entries{cache}`: after churn (containers and cgroups created and
/// removed) each returns to where it began, which is how a leak would show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// The metadata cache's containers (from the runtime sources).
    Containers,
    /// The metadata cache's pods.
    Pods,
    /// pid → container lookups held (bounded, two generations).
    Pids,
    /// cgroup id → path entries (removed ids kept for a grace period).
    CgroupIds,
    /// Container cgroups the lifecycle stage watches (the kernel's `WATCHED_CGROUPS`).
    WatchedCgroups,
    /// Per-container process-event budgets.
    ProcessBudgets,
    /// Records parked until their container is announced.
    AwaitingRecords,
}

impl CacheKind {
    /// Every cache, in exposition order.
    pub const ALL: [Self; 7] = [
        Self::Containers,
        Self::Pods,
        Self::Pids,
        Self::CgroupIds,
        Self::WatchedCgroups,
        Self::ProcessBudgets,
        Self::AwaitingRecords,
    ];

    /// The `cache` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Containers => "containers",
            Self::Pods => "pods",
            Self::Pids => "pids",
            Self::CgroupIds => "cgroup_ids",
            Self::WatchedCgroups => "watched_cgroups",
            Self::ProcessBudgets => "process_budgets",
            Self::AwaitingRecords => "awaiting_records",
        }
    }
}

/// All counters; share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    records: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Runtime lifecycle events lost, by the same reasons: apart, so that the records
    /// series keeps adding up with `iostall_records_total`.
    dropped_events: [AtomicU64; DropReason::ALL.len()],
    /// Operations the kernel could not time (its in-flight map was full).
    untimed_inflight_full: AtomicU64,
    /// Operations timed through the hash map because their slot was taken.
    inflight_shared_slot: AtomicU64,
    /// Container cgroups the kernel's watch map had no room for.
    watched_cgroups_full: AtomicU64,
    /// The runtime and kubelet directories on this node and whether they are seen.
    filesystems: std::sync::Mutex<Vec<crate::coverage::RootFilesystem>>,
    exported_spans: AtomicU64,
    exported_logs: AtomicU64,
    /// [signal (0 traces, 1 logs)][outcome].
    requests: [[AtomicU64; 3]; 2],
    kernel_events: AtomicU64,
    kernel_lifecycle_events: AtomicU64,
    /// [jbd2 commit records written, lost] (`why.journal`).
    kernel_journal: [AtomicU64; 2],
    /// `other_fs`, `not_regular`, `file_unresolved`, `other_comm`.
    kernel_filtered: [AtomicU64; 4],
    runtime_events_rate_limited: AtomicU64,
    dropped_startup_spans: AtomicU64,
    startups: std::sync::Mutex<StartupHistograms>,
    startups_evicted: AtomicU64,
    startups_open: AtomicU64,
    /// [records sent unplaced (held budget full), records after their phase went out,
    /// shared copies not made (budget full)].
    startup_overflow: [AtomicU64; 3],
    /// Slow operations' latency per device and op, with exemplars.
    io_latency: crate::io_latency::IoLatency,
    /// The EBS volumes' last readings (none off AWS).
    ebs: std::sync::Mutex<Vec<crate::ebs_nvme::EbsSample>>,
    /// Failed reads of an EBS volume's log page.
    ebs_errors: AtomicU64,
    /// The per-device view, when `why.disk` is on.
    disks: std::sync::OnceLock<Arc<crate::why::disk::DiskState>>,
    /// Entries of each [`CacheKind`] now.
    cache_entries: [AtomicU64; CacheKind::ALL.len()],
    /// Runtime events the sources' queues had no room for (before the sink queue).
    runtime_queue_dropped: AtomicU64,
}

/// Upper bounds (seconds) of the startup histograms' buckets: the kubelet's own
/// `kubelet_pod_start_sli_duration_seconds` spans 0.5 s to minutes.
pub const STARTUP_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One histogram series (cumulative buckets on render).
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; STARTUP_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = STARTUP_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, result: &str) {
        let mut cumulative = 0;
        for (le, n) in STARTUP_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{result=\"{result}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{result=\"{result}\",le=\"+Inf\"}} {}\n\
             {name}_sum{{result=\"{result}\"}} {}\n{name}_count{{result=\"{result}\"}} {}",
            self.count, self.sum, self.count
        );
    }
}

/// Pod startup time and IO stall per startup, by result (`ok`, `failed`): labels of
/// bounded cardinality, never pod names.
#[derive(Debug, Default)]
struct StartupHistograms {
    /// [ok, failed].
    duration: [Histogram; 2],
    stall: [Histogram; 2],
}

impl Metrics {
    /// Fresh counters.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts records handed to the sinks.
    pub fn add_records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    /// Records handed to the sinks so far.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Counts lost records.
    pub fn add_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Records lost for `reason` so far.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts lost runtime lifecycle events.
    pub fn add_dropped_events(&self, reason: DropReason, n: u64) {
        self.dropped_events[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Runtime lifecycle events lost for `reason` so far.
    #[must_use]
    pub fn dropped_events(&self, reason: DropReason) -> u64 {
        self.dropped_events[reason as usize].load(Ordering::Relaxed)
    }

    /// Takes the kernel's own counters (totals since load).
    pub fn set_kernel(&self, stats: &KernelStats) {
        self.dropped[DropReason::RingbufFull as usize]
            .store(stats.ringbuf_drops, Ordering::Relaxed);
        self.untimed_inflight_full
            .store(stats.inflight_full, Ordering::Relaxed);
        self.inflight_shared_slot
            .store(stats.inflight_shared_slot, Ordering::Relaxed);
        self.kernel_events.store(stats.events, Ordering::Relaxed);
        self.dropped_events[DropReason::RingbufFull as usize]
            .store(stats.lifecycle_drops, Ordering::Relaxed);
        self.kernel_lifecycle_events
            .store(stats.lifecycle_events, Ordering::Relaxed);
        self.kernel_journal
            .iter()
            .zip([stats.journal_commits, stats.journal_drops])
            .for_each(|(slot, v)| slot.store(v, Ordering::Relaxed));
        for (slot, value) in self.kernel_filtered.iter().zip([
            stats.other_fs,
            stats.not_regular,
            stats.file_unresolved,
            stats.other_comm,
        ]) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Takes the lifecycle stage's count of rate-limited process events (a total).
    pub fn set_runtime_events_rate_limited(&self, total: u64) {
        self.runtime_events_rate_limited
            .store(total, Ordering::Relaxed);
    }

    /// Takes the lifecycle stage's count of cgroups the watch map had no room for.
    pub fn set_watched_cgroups_full(&self, total: u64) {
        self.watched_cgroups_full.store(total, Ordering::Relaxed);
    }

    /// Takes the runtime sources' count of events their queues had no room for (a total).
    pub fn set_runtime_queue_dropped(&self, total: u64) {
        self.runtime_queue_dropped.store(total, Ordering::Relaxed);
    }

    /// Takes how many entries `cache` holds now.
    pub fn set_cache_entries(&self, cache: CacheKind, n: usize) {
        self.cache_entries[cache as usize].store(n as u64, Ordering::Relaxed);
    }

    /// Entries `cache` held when last told.
    #[must_use]
    pub fn cache_entries(&self, cache: CacheKind) -> u64 {
        self.cache_entries[cache as usize].load(Ordering::Relaxed)
    }

    /// Takes the node's runtime and kubelet directories, as checked at start.
    pub fn set_filesystems(&self, found: Vec<crate::coverage::RootFilesystem>) {
        if let Ok(mut f) = self.filesystems.lock() {
            *f = found;
        }
    }

    /// Serves the per-device view's last second on `/metrics`.
    pub fn set_disks(&self, state: Arc<crate::why::disk::DiskState>) {
        let _ = self.disks.set(state);
    }

    /// Container process events held back so far.
    #[must_use]
    pub fn runtime_events_rate_limited(&self) -> u64 {
        self.runtime_events_rate_limited.load(Ordering::Relaxed)
    }

    /// Counts startup spans (roots, phases, shared copies) lost to a failed export.
    pub fn add_dropped_startup_spans(&self, n: u64) {
        self.dropped_startup_spans.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one finished pod startup.
    pub fn observe_startup(&self, duration_ns: u64, stall_ns: u64, failed: bool) {
        let mut h = self
            .startups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = usize::from(failed);
        h.duration[i].observe(duration_ns as f64 / 1e9);
        h.stall[i].observe(stall_ns as f64 / 1e9);
    }

    /// Takes the startup stage's evictions (a total) and open startups (a gauge).
    pub fn set_startups(&self, evicted_total: u64, open: u64) {
        self.startups_evicted
            .store(evicted_total, Ordering::Relaxed);
        self.startups_open.store(open, Ordering::Relaxed);
    }

    /// Takes the startup stage's totals of what it could not place: records sent
    /// unplaced because the held budget was full, records that came after their phase
    /// went out, shared copies not made.
    pub fn set_startup_overflow(&self, held_budget: u64, late: u64, copies_skipped: u64) {
        for (slot, v) in self
            .startup_overflow
            .iter()
            .zip([held_budget, late, copies_skipped])
        {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Counts spans the collector accepted.
    pub fn add_exported_spans(&self, n: u64) {
        self.exported_spans.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts log records the collector accepted.
    pub fn add_exported_logs(&self, n: u64) {
        self.exported_logs.fetch_add(n, Ordering::Relaxed);
    }

    /// Spans accepted so far.
    #[must_use]
    pub fn exported_spans(&self) -> u64 {
        self.exported_spans.load(Ordering::Relaxed)
    }

    /// Log records accepted so far.
    #[must_use]
    pub fn exported_logs(&self) -> u64 {
        self.exported_logs.load(Ordering::Relaxed)
    }

    /// Counts one export request's outcome; `logs` picks the signal.
    pub fn add_request(&self, logs: bool, outcome: ExportOutcome) {
        self.requests[usize::from(logs)][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    #[must_use]
    pub fn render(&self) -> String {
        self.render_as(Format::Prometheus)
    }

    /// The exposition as OpenMetrics 1.0.0 text (exemplars, `# EOF`).
    #[must_use]
    pub fn render_openmetrics(&self) -> String {
        to_openmetrics(&self.render_as(Format::OpenMetrics))
    }

    /// Counts a slow operation in its device's latency histogram, with its ids as the
    /// bucket's exemplar: call once its trace and span ids are the ones it is exported
    /// with.
    pub fn observe_io(&self, record: &crate::correlate::CorrelatedRecord) {
        self.io_latency.observe(record);
    }

    /// Takes the EBS volumes' last readings.
    pub fn set_ebs(&self, samples: Vec<crate::ebs_nvme::EbsSample>) {
        if let Ok(mut e) = self.ebs.lock() {
            *e = samples;
        }
    }

    /// Counts a failed read of an EBS volume's log page.
    pub fn add_ebs_error(&self) {
        self.ebs_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The families, in Prometheus text, with exemplars when `format` is OpenMetrics.
    fn render_as(&self, format: Format) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP iostall_records_total Slow operations handed to the sinks.\n\
             # TYPE iostall_records_total counter\n\
             iostall_records_total {}",
            get(&self.records)
        );
        out.push_str(
            "# HELP iostall_dropped_records_total Slow operations lost, by reason.\n\
             # TYPE iostall_dropped_records_total counter\n",
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "iostall_dropped_records_total{{reason=\"{}\"}} {}",
                reason.label(),
                get(&self.dropped[reason as usize])
            );
        }
        out.push_str(
            "# HELP iostall_dropped_runtime_events_total Runtime lifecycle events lost, by reason.\n\
             # TYPE iostall_dropped_runtime_events_total counter\n",
        );
        for reason in [
            DropReason::RingbufFull,
            DropReason::SinkQueueFull,
            DropReason::OtlpQueueFull,
            DropReason::OtlpExportFailed,
        ] {
            let _ = writeln!(
                out,
                "iostall_dropped_runtime_events_total{{reason=\"{}\"}} {}",
                reason.label(),
                get(&self.dropped_events[reason as usize])
            );
        }
        let _ = writeln!(
            out,
            "iostall_dropped_runtime_events_total{{reason=\"runtime_queue_full\"}} {}",
            get(&self.runtime_queue_dropped)
        );
        let _ = writeln!(
            out,
            "# HELP iostall_otlp_exported_spans_total Spans accepted by the OTLP endpoint.\n\
             # TYPE iostall_otlp_exported_spans_total counter\n\
             iostall_otlp_exported_spans_total {}\n\
             # HELP iostall_otlp_exported_logs_total Log records accepted by the OTLP endpoint.\n\
             # TYPE iostall_otlp_exported_logs_total counter\n\
             iostall_otlp_exported_logs_total {}",
            get(&self.exported_spans),
            get(&self.exported_logs)
        );
        out.push_str(
            "# HELP iostall_otlp_export_requests_total OTLP export requests by signal and outcome.\n\
             # TYPE iostall_otlp_export_requests_total counter\n",
        );
        for (i, signal) in ["traces", "logs"].into_iter().enumerate() {
            for (j, result) in ["ok", "retry", "failed"].into_iter().enumerate() {
                let _ = writeln!(
                    out,
                    "iostall_otlp_export_requests_total{{signal=\"{signal}\",result=\"{result}\"}} {}",
                    get(&self.requests[i][j])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP iostall_kernel_events_total Events the eBPF programs wrote to the ring buffer.\n\
             # TYPE iostall_kernel_events_total counter\n\
             iostall_kernel_events_total {}\n\
             # HELP iostall_kernel_lifecycle_events_total Events the eBPF programs wrote to the lifecycle ring buffer.\n\
             # TYPE iostall_kernel_lifecycle_events_total counter\n\
             iostall_kernel_lifecycle_events_total {}\n\
             # HELP iostall_kernel_journal_commits_total jbd2 commits the eBPF programs wrote to the ring buffer (why.journal), by outcome.\n\
             # TYPE iostall_kernel_journal_commits_total counter\n\
             iostall_kernel_journal_commits_total{{result=\"written\"}} {}\n\
             iostall_kernel_journal_commits_total{{result=\"dropped\"}} {}\n\
             # HELP iostall_kernel_filtered_total Slow operations left out in the kernel, by reason.\n\
             # TYPE iostall_kernel_filtered_total counter",
            get(&self.kernel_events),
            get(&self.kernel_lifecycle_events),
            get(&self.kernel_journal[0]),
            get(&self.kernel_journal[1])
        );
        for (reason, value) in ["other_fs", "not_regular", "file_unresolved", "other_comm"]
            .into_iter()
            .zip(&self.kernel_filtered)
        {
            let _ = writeln!(
                out,
                "iostall_kernel_filtered_total{{reason=\"{reason}\"}} {}",
                get(value)
            );
        }
        let _ = writeln!(
            out,
            "# HELP iostall_kernel_untimed_operations_total Operations the kernel could not \
             time, by reason (inflight_full: its in-flight map was full).\n\
             # TYPE iostall_kernel_untimed_operations_total counter\n\
             iostall_kernel_untimed_operations_total{{reason=\"inflight_full\"}} {}\n\
             # HELP iostall_kernel_inflight_shared_slot_total Operations whose thread's \
             in-flight slot held another thread's operation (thread ids equal modulo the \
             slot count), timed through the in-flight hash map instead.\n\
             # TYPE iostall_kernel_inflight_shared_slot_total counter\n\
             iostall_kernel_inflight_shared_slot_total {}\n\
             # HELP iostall_watched_cgroups_full_total Container cgroups the kernel's watch \
             map had no room for (exec/exit of their processes not reported).\n\
             # TYPE iostall_watched_cgroups_full_total counter\n\
             iostall_watched_cgroups_full_total {}",
            get(&self.untimed_inflight_full),
            get(&self.inflight_shared_slot),
            get(&self.watched_cgroups_full)
        );
        let _ = writeln!(
            out,
            "# HELP iostall_input_truncated_total Values from runtimes and the API server \
             cut to iostall's bounds (labels, names, images), and labels left out.\n\
             # TYPE iostall_input_truncated_total counter\n\
             iostall_input_truncated_total {}",
            crate::bounds::truncated_total()
        );
        if let Ok(found) = self.filesystems.lock()
            && !found.is_empty()
        {
            out.push_str(
                "# HELP iostall_filesystem_seen Whether the IO under a runtime or kubelet \
                 directory is seen (1: on a traced filesystem; 0: not traced or left out by --fs).\n\
                 # TYPE iostall_filesystem_seen gauge\n",
            );
            for f in found.iter() {
                let _ = writeln!(
                    out,
                    "iostall_filesystem_seen{{root=\"{}\",fstype=\"{}\"}} {}",
                    label_value(&f.root),
                    label_value(&f.fstype),
                    u8::from(f.seen())
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP iostall_runtime_events_rate_limited_total Container process events \
             (exec, exits not by a signal) held back by the per-container budget.\n\
             # TYPE iostall_runtime_events_rate_limited_total counter\n\
             iostall_runtime_events_rate_limited_total {}",
            get(&self.runtime_events_rate_limited)
        );
        out.push_str(
            "# HELP iostall_cache_entries Entries iostall keeps per container, pod, process \
             or cgroup, by cache.\n\
             # TYPE iostall_cache_entries gauge\n",
        );
        for cache in CacheKind::ALL {
            let _ = writeln!(
                out,
                "iostall_cache_entries{{cache=\"{}\"}} {}",
                cache.label(),
                get(&self.cache_entries[cache as usize])
            );
        }
        self.render_startups(&mut out);
        self.io_latency.render(&mut out, format);
        if let Ok(ebs) = self.ebs.lock() {
            crate::ebs_nvme::render(&mut out, &ebs, self.ebs_errors.load(Ordering::Relaxed));
        }
        self.render_disks(&mut out);
        out
    }

    /// The per-device gauges (families always named, series per device with IO).
    fn render_disks(&self, out: &mut String) {
        let devices = self.disks.get().map(|d| d.snapshot()).unwrap_or_default();
        type Value = fn(&crate::why::disk::DeviceSnapshot) -> Option<f64>;
        let families: [(&str, &str, Value); 6] = [
            (
                "iostall_disk_iops",
                "Requests the whole block device completed per second (last second).",
                |d| Some(d.last.iops),
            ),
            (
                "iostall_disk_bytes_per_second",
                "Bytes the device read and wrote per second (last second).",
                |d| Some(d.last.bytes_per_second),
            ),
            (
                "iostall_disk_in_flight",
                "Requests in flight on the device at the last sample.",
                |d| Some(d.last.in_flight as f64),
            ),
            (
                "iostall_disk_await_seconds",
                "Mean time of the requests completed in the last second, queue and device.",
                |d| Some(d.last.await_ms / 1000.0),
            ),
            (
                "iostall_disk_saturated",
                "1 when the device's completions sit flat at a ceiling while requests \
                 queue and wait longer than unloaded (a throttled cloud disk).",
                |d| Some(f64::from(u8::from(d.saturation.saturated))),
            ),
            (
                "iostall_disk_ceiling_iops",
                "The IOPS ceiling a saturated device sits at.",
                |d| d.saturation.ceiling_iops,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for d in &devices {
                if let Some(v) = value(d) {
                    let _ = writeln!(
                        out,
                        "{name}{{device=\"{}:{}\",name=\"{}\"}} {v}",
                        d.dev.0,
                        d.dev.1,
                        label_value(&d.name)
                    );
                }
            }
        }
    }

    fn render_startups(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = self
            .startups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, help, series) in [
            (
                "iostall_pod_startup_duration_seconds",
                "Pod startups on this node, from the first sign of the pod to all its \
                 containers running (or its failure).",
                &h.duration,
            ),
            (
                "iostall_pod_startup_io_stall_seconds",
                "Slow IO time inside each pod startup (own and shared runtime IO).",
                &h.stall,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (result, hist) in ["ok", "failed"].into_iter().zip(series) {
                hist.render(out, name, result);
            }
        }
        let _ = writeln!(
            out,
            "# HELP iostall_pod_startups_open Pod startups being followed now.\n\
             # TYPE iostall_pod_startups_open gauge\n\
             iostall_pod_startups_open {}\n\
             # HELP iostall_pod_startups_evicted_total Pod startups ended early because too \
             many were open (startup.max_open).\n\
             # TYPE iostall_pod_startups_evicted_total counter\n\
             iostall_pod_startups_evicted_total {}\n\
             # HELP iostall_dropped_startup_spans_total Startup spans (roots, phases, shared \
             copies) lost to failed OTLP exports or a full queue.\n\
             # TYPE iostall_dropped_startup_spans_total counter\n\
             iostall_dropped_startup_spans_total {}\n\
             # HELP iostall_startup_records_unplaced_total Slow operations of a starting pod \
             sent outside its startup trace, by reason.\n\
             # TYPE iostall_startup_records_unplaced_total counter\n\
             iostall_startup_records_unplaced_total{{reason=\"held_budget_full\"}} {}\n\
             iostall_startup_records_unplaced_total{{reason=\"phase_already_exported\"}} {}\n\
             # HELP iostall_startup_shared_copies_skipped_total Shared runtime operations not \
             copied into a starting pod's trace (held budget full).\n\
             # TYPE iostall_startup_shared_copies_skipped_total counter\n\
             iostall_startup_shared_copies_skipped_total {}",
            get(&self.startups_open),
            get(&self.startups_evicted),
            get(&self.dropped_startup_spans),
            get(&self.startup_overflow[0]),
            get(&self.startup_overflow[1]),
            get(&self.startup_overflow[2])
        );
    }
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, metrics listener: binding happens at start, before attach,
/// so a taken port is a start-up error.
#[derive(Debug)]
pub struct MetricsServer {
    listener: std::net::TcpListener,
}

impl MetricsServer {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves forever on the current tokio runtime.
    pub async fn serve(self, metrics: Arc<Metrics>) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), handle(stream, &metrics)).await;
            });
        }
    }
}

async fn handle(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match Format::negotiate(header(&buf, "accept").as_deref()) {
            Format::Prometheus => (
                "200 OK",
                Format::Prometheus.content_type(),
                metrics.render(),
            ),
            Format::OpenMetrics => (
                "200 OK",
                Format::OpenMetrics.content_type(),
                metrics.render_openmetrics(),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The value of the request header `name` (any case), when present: repeated headers
/// joined with `,` as HTTP allows.
fn header(request: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(request);
    let values: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_histograms_and_overflow_render() {
        let m = Metrics::new();
        m.observe_startup(3_000_000_000, 1_500_000_000, false);
        m.observe_startup(400_000_000_000, 0, true);
        m.set_startups(2, 5);
        m.set_startup_overflow(1, 2, 3);
        let text = m.render();
        for line in [
            "iostall_pod_startup_duration_seconds_bucket{result=\"ok\",le=\"2\"} 0\n",
            "iostall_pod_startup_duration_seconds_bucket{result=\"ok\",le=\"5\"} 1\n",
            "iostall_pod_startup_duration_seconds_count{result=\"ok\"} 1\n",
            "iostall_pod_startup_duration_seconds_bucket{result=\"failed\",le=\"300\"} 0\n",
            "iostall_pod_startup_duration_seconds_bucket{result=\"failed\",le=\"600\"} 1\n",
            "iostall_pod_startup_io_stall_seconds_sum{result=\"ok\"} 1.5\n",
            "iostall_pod_startups_open 5\n",
            "iostall_pod_startups_evicted_total 2\n",
            "iostall_startup_records_unplaced_total{reason=\"held_budget_full\"} 1\n",
            "iostall_startup_records_unplaced_total{reason=\"phase_already_exported\"} 2\n",
            "iostall_startup_shared_copies_skipped_total 3\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn render_has_every_reason_and_kernel_drops() {
        let m = Metrics::new();
        m.add_records(3);
        m.add_dropped(DropReason::OtlpQueueFull, 2);
        m.set_kernel(&KernelStats {
            ringbuf_drops: 7,
            inflight_full: 1,
            events: 10,
            lifecycle_drops: 5,
            lifecycle_events: 6,
            not_regular: 2,
            other_comm: 9,
            inflight_shared_slot: 3,
            ..KernelStats::default()
        });
        m.add_exported_spans(1);
        m.add_dropped_events(DropReason::OtlpExportFailed, 4);
        m.set_runtime_events_rate_limited(11);
        let text = m.render();
        assert!(
            text.contains("iostall_kernel_inflight_shared_slot_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("iostall_runtime_events_rate_limited_total 11\n"),
            "{text}"
        );
        assert!(text.contains("iostall_records_total 3\n"), "{text}");
        assert!(text.contains("iostall_dropped_records_total{reason=\"otlp_queue_full\"} 2\n"));
        assert!(text.contains("iostall_dropped_records_total{reason=\"ringbuf_full\"} 7\n"));
        // Untimed operations are not records lost.
        assert!(!text.contains("iostall_dropped_records_total{reason=\"inflight_full\"}"));
        assert!(
            text.contains("iostall_kernel_untimed_operations_total{reason=\"inflight_full\"} 1\n")
        );
        assert!(text.contains("iostall_otlp_exported_spans_total 1\n"));
        assert!(
            text.contains(
                "iostall_dropped_runtime_events_total{reason=\"otlp_export_failed\"} 4\n"
            )
        );
        assert!(text.contains("iostall_dropped_records_total{reason=\"otlp_export_failed\"} 0\n"));
        assert!(text.contains("iostall_otlp_exported_logs_total 0\n"));
        assert!(
            text.contains("iostall_dropped_runtime_events_total{reason=\"ringbuf_full\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("iostall_kernel_lifecycle_events_total 6\n"),
            "{text}"
        );
        assert!(text.contains("iostall_kernel_filtered_total{reason=\"not_regular\"} 2\n"));
        assert!(text.contains("iostall_kernel_filtered_total{reason=\"other_fs\"} 0\n"));
        assert!(text.contains("iostall_kernel_filtered_total{reason=\"other_comm\"} 9\n"));
    }

    #[test]
    fn counters_end_in_total() {
        // OpenMetrics names a counter's sample `<family>_total`: a counter without the
        // suffix would change its name between the two formats.
        let m = Metrics::new();
        m.observe_io(&crate::io_latency::tests::record(
            crate::event::IoOp::Fsync,
            (7, 0),
            100,
            1,
        ));
        m.set_ebs(vec![crate::ebs_nvme::EbsSample {
            device: (259, 0),
            volume_id: None,
            stats: crate::ebs_nvme::EbsStats::default(),
        }]);
        let text = m.render();
        assert!(
            text.contains("iostall_ebs_exceeded_iops_seconds_total{"),
            "{text}"
        );
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            if let Some(name) = line.strip_suffix(" counter") {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
        }
        let om = m.render_openmetrics();
        assert!(om.ends_with("\n# EOF\n"), "{om}");
        assert!(om.contains("# TYPE iostall_records counter\niostall_records_total 0\n"));
        assert!(
            om.contains(" # {trace_id=\""),
            "exemplars in OpenMetrics: {om}"
        );
        assert!(!text.contains(" # {"), "no exemplars in 0.0.4: {text}");
        // The same samples, exemplars aside.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" # ").next().unwrap_or(l).to_owned())
                .collect()
        };
        assert_eq!(samples(&text), samples(&om));
    }

    #[test]
    fn accept_header_picks_the_format() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = server.local_addr().expect("addr");
            let m = Metrics::new();
            m.observe_io(&crate::io_latency::tests::record(
                crate::event::IoOp::Fsync,
                (7, 0),
                100,
                1,
            ));
            tokio::spawn(server.serve(m));
            for (accept, ctype, exemplars) in [
                ("", "text/plain; version=0.0.4", false),
                (
                    "Accept: application/openmetrics-text; version=1.0.0\r\n",
                    "application/openmetrics-text; version=1.0.0",
                    true,
                ),
                ("accept: text/plain\r\n", "text/plain; version=0.0.4", false),
            ] {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n").as_bytes())
                    .await
                    .expect("write");
                let mut out = String::new();
                s.read_to_string(&mut out).await.expect("read");
                assert!(
                    out.contains(&format!("Content-Type: {ctype}")),
                    "{accept}: {out}"
                );
                assert_eq!(out.contains(" # {trace_id="), exemplars, "{accept}: {out}");
                assert_eq!(out.ends_with("# EOF\n"), exemplars, "{accept}: {out}");
            }
        });
    }

    #[test]
    fn serves_metrics_and_healthz() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = server.local_addr().expect("addr");
            let m = Metrics::new();
            m.add_records(5);
            tokio::spawn(server.serve(m));
            for (path, want) in [("/metrics", "iostall_records_total 5"), ("/healthz", "ok")] {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .expect("write");
                let mut out = String::new();
                s.read_to_string(&mut out).await.expect("read");
                assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
                assert!(out.contains(want), "{out}");
            }
        });
    }

    #[test]
    fn per_device_gauges_render_each_device_with_io() {
        use crate::why::disk::{Counters, DetectorConfig, DiskState};
        let m = Metrics::new();
        let empty = m.render();
        assert!(
            empty.contains("# TYPE iostall_disk_saturated gauge"),
            "{empty}"
        );
        assert!(!empty.contains("iostall_disk_saturated{"), "{empty}");
        let state = Arc::new(DiskState::default());
        let c = DetectorConfig::default();
        // A device flat at 10 IOPS, busy, each request ~150 ms: saturated after 5 s.
        for i in 0..=8u64 {
            let at = |ios: u64, busy_ms: u64| Counters {
                ios,
                sectors: ios * 8,
                time_ms: ios * 150,
                in_flight: 2,
                busy_ms,
            };
            state.update(
                vec![
                    ((7, 3), "loop3".into(), at(10 * i, 1000 * i)),
                    ((7, 4), "loop4".into(), at(0, 0)),
                ],
                Duration::from_secs(1),
                &c,
            );
        }
        m.set_disks(state);
        let text = m.render();
        for line in [
            "iostall_disk_iops{device=\"7:3\",name=\"loop3\"} 10",
            "iostall_disk_in_flight{device=\"7:3\",name=\"loop3\"} 2",
            "iostall_disk_await_seconds{device=\"7:3\",name=\"loop3\"} 0.15",
            "iostall_disk_saturated{device=\"7:3\",name=\"loop3\"} 1",
            "iostall_disk_ceiling_iops{device=\"7:3\",name=\"loop3\"} 10",
            "iostall_disk_bytes_per_second{device=\"7:3\",name=\"loop3\"} 40960",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        // A device that did nothing adds no series.
        assert!(!text.contains("loop4"), "{text}");
    }
}
