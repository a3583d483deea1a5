//! The OTLP sink: hands records and runtime events to the export task without ever
//! waiting.
//!
//! [`Sink::record`] and [`Sink::runtime_event`] only `try_send` into the exporter's one
//! bounded queue (`otlp.queue_size` items); when the collector is slow or down the queue
//! fills, further items are dropped and counted as `otlp_queue_full` (runtime events
//! already when it is half full, so that they never crowd out slow operations; records in
//! `iostall_dropped_records_total`, runtime events in
//! `iostall_dropped_runtime_events_total`), and a warning is logged at most every 10 s.
//! Memory stays bounded by the queue and one batch in flight.
use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};

use super::Sink;
use crate::{
    config::OtlpConfig,
    correlate::{CorrelatedEvent, CorrelatedRecord},
    metrics::{DropReason, Metrics},
    otlp::{ExportItem, exporter::ExportTask, resource::Resources, transport::TransportError},
};

/// How often queue-full drops are reported in the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Errors starting the OTLP sink.
#[derive(Debug, thiserror::Error)]
pub enum OtlpSinkError {
    /// A client could not be built from the settings.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The export thread or its runtime could not start.
    #[error("otlp: cannot start the export thread: {0}")]
    Start(#[source] std::io::Error),
}

/// Sends records as OTLP spans and log records, runtime events as log records.
pub struct OtlpSink {
    tx: Option<mpsc::Sender<ExportItem>>,
    thread: Option<JoinHandle<()>>,
    closing: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    unreported_drops: u64,
    last_warn: Option<Instant>,
    /// The queue's capacity: runtime events may only take its first half.
    queue_size: usize,
}

impl OtlpSink {
    /// Starts the export thread; fails (before anything is sent) if a client cannot be
    /// built, e.g. an invalid CA certificate.
    pub fn start(
        config: &OtlpConfig,
        resources: Resources,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OtlpSinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OtlpSinkError::Start)?;
        let (closing, closing_rx) = watch::channel(false);
        let task = {
            let _guard = runtime.enter();
            ExportTask::new(config, resources, metrics.clone(), closing_rx)?
        };
        let (tx, rx) = mpsc::channel(config.queue_size);
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(task.run(rx)))
            .map_err(OtlpSinkError::Start)?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            closing,
            metrics,
            unreported_drops: 0,
            queue_size: config.queue_size,
            last_warn: None,
        })
    }

    /// Queues a record without counting a drop: gives it back (`Some`) if the queue is
    /// full (for callers that would rather wait, such as the benchmark).
    #[must_use]
    pub fn offer(&mut self, record: CorrelatedRecord) -> Option<CorrelatedRecord> {
        match &self.tx {
            Some(tx) => match tx.try_send(ExportItem::Io(record)) {
                Ok(()) => None,
                Err(TrySendError::Full(item) | TrySendError::Closed(item)) => match item {
                    ExportItem::Io(r) => Some(r),
                    _ => None,
                },
            },
            None => Some(record),
        }
    }

    /// Queues `item`, or drops and counts it (`otlp_queue_full`) if the queue is full.
    fn push(&mut self, item: ExportItem) {
        let Some(tx) = &self.tx else {
            return;
        };
        // Slow IO is what iostall is for: a burst of runtime events (the kernel reports
        // every process exit in every container) never takes the last half of the queue.
        let crowded = matches!(item, ExportItem::Runtime(_)) && tx.capacity() * 2 < self.queue_size;
        let refused = if crowded {
            Some(item)
        } else {
            match tx.try_send(item) {
                Ok(()) => None,
                Err(TrySendError::Full(item) | TrySendError::Closed(item)) => Some(item),
            }
        };
        if let Some(item) = refused {
            match item {
                ExportItem::Io(_) => self.metrics.add_dropped(DropReason::OtlpQueueFull, 1),
                ExportItem::Runtime(_) => {
                    self.metrics
                        .add_dropped_events(DropReason::OtlpQueueFull, 1);
                }
                ExportItem::SharedIo(_) | ExportItem::Startup(_) => {
                    self.metrics.add_dropped_startup_spans(1);
                }
            }
            self.unreported_drops += 1;
            self.report_drops(false);
        }
    }

    /// Stops taking records, exports what is queued (one try per batch), and waits for
    /// the export thread.
    pub fn close(&mut self) {
        self.closing.send_replace(true);
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("OTLP export thread panicked");
        }
        self.report_drops(true);
    }

    fn report_drops(&mut self, force: bool) {
        if self.unreported_drops == 0 {
            return;
        }
        let due = self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if force || due {
            tracing::warn!(
                dropped = self.unreported_drops,
                dropped_total = self.metrics.dropped(DropReason::OtlpQueueFull),
                "OTLP queue full (collector slow or down): records dropped"
            );
            self.unreported_drops = 0;
            self.last_warn = Some(Instant::now());
        }
    }
}

impl Sink for OtlpSink {
    fn record(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        self.push(ExportItem::Io(record.clone()));
        Ok(())
    }

    fn runtime_event(&mut self, event: &CorrelatedEvent) -> std::io::Result<()> {
        self.push(ExportItem::Runtime(event.clone()));
        Ok(())
    }

    fn shared_io(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        self.push(ExportItem::SharedIo(record.clone()));
        Ok(())
    }

    fn startup_span(&mut self, span: &crate::startup::report::StartupSpan) -> std::io::Result<()> {
        self.push(ExportItem::Startup(span.clone()));
        Ok(())
    }

    fn idle(&mut self) -> std::io::Result<()> {
        self.report_drops(false);
        Ok(())
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{CliOverrides, Config, FileConfig},
        correlate::Correlator,
        enrich::Enrichment,
        runtime::{EventSource, RuntimeEvent, RuntimeEventKind},
    };

    #[test]
    fn runtime_events_share_the_queue_and_its_drop_accounting() {
        // A port with nothing listening: every event is either queued and then lost in
        // export, or dropped at the full queue; none waits, none goes uncounted.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let yaml = format!(
            "otlp:\n  endpoint: http://127.0.0.1:{port}\n  max_attempts: 2\n  \
             initial_backoff_ms: 10\n  batch_timeout_ms: 50\n  queue_size: 10\n"
        );
        let file = FileConfig::parse("test.yaml".as_ref(), &yaml).expect("yaml");
        let config = Config::resolve(&CliOverrides::default(), &file, &|_| None).expect("config");
        let metrics = Metrics::new();
        let resources = Resources::new(&config.resource, Some("node".into()));
        let mut sink = OtlpSink::start(&config.otlp, resources, metrics.clone()).expect("start");
        let corr = Correlator::new("n");
        let n = 500u64;
        for i in 0..n {
            let mut ev = RuntimeEvent::new(
                i,
                EventSource::Containerd,
                RuntimeEventKind::ContainerExited { exit_code: 1 },
            );
            ev.container_id = Some(format!("c{i}"));
            let ev = corr.correlate_event(ev, Enrichment::none());
            sink.runtime_event(&ev).expect("never fails");
        }
        sink.close();
        let lost = metrics.dropped_events(DropReason::OtlpQueueFull)
            + metrics.dropped_events(DropReason::OtlpExportFailed);
        assert_eq!(lost, n, "every event exported or counted as dropped");
        assert!(
            metrics.dropped_events(DropReason::OtlpQueueFull) > 0,
            "a 10-item queue overflows"
        );
        assert_eq!(
            metrics.dropped(DropReason::OtlpQueueFull)
                + metrics.dropped(DropReason::OtlpExportFailed),
            0,
            "no IO record was lost: the records series stays theirs"
        );
        assert_eq!(metrics.exported_logs(), 0);
    }

    #[test]
    fn runtime_events_leave_half_the_queue_to_io() {
        // A collector that accepts connections but never answers: the export task holds
        // its first batch, the queue behind it fills.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let yaml = format!(
            "otlp:\n  endpoint: http://127.0.0.1:{port}\n  timeout_ms: 60000\n  \
             batch_size: 1\n  queue_size: 10\n"
        );
        let file = FileConfig::parse("test.yaml".as_ref(), &yaml).expect("yaml");
        let config = Config::resolve(&CliOverrides::default(), &file, &|_| None).expect("config");
        let metrics = Metrics::new();
        let resources = Resources::new(&config.resource, Some("node".into()));
        let mut sink = OtlpSink::start(&config.otlp, resources, metrics.clone()).expect("start");
        let corr = Correlator::new("n");
        for i in 0..100 {
            let ev = RuntimeEvent::new(i, EventSource::Kernel, RuntimeEventKind::OomKill);
            sink.runtime_event(&corr.correlate_event(ev, Enrichment::none()))
                .expect("never fails");
        }
        // About half the queue (6 of 10 slots: taken while 5 or more were free), plus
        // the one in flight, went to events…
        let queued_events = 100 - metrics.dropped_events(DropReason::OtlpQueueFull);
        assert!(queued_events <= 7, "{queued_events} events queued");
        // …and the rest still takes slow operations.
        for i in 0..4 {
            sink.record(&corr.correlate(crate::correlate::tests::record(10, i)))
                .expect("never fails");
        }
        assert_eq!(metrics.dropped(DropReason::OtlpQueueFull), 0);
        drop(silent);
    }
}
