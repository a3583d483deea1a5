//! The export task: takes correlated records and runtime events from a bounded queue,
//! batches them (up to `batch_size` items or `batch_timeout`), encodes one traces and one
//! logs request per batch (no traces request for a batch of runtime events only), and
//! sends both with retry and exponential backoff. It runs on its own thread
//! with its own single-threaded tokio runtime, so neither the kernel reader nor the
//! sink thread ever waits on the network.
//!
//! Loss is counted, never hidden: a batch whose export still fails after
//! `max_attempts` tries (or is rejected as not retryable) adds its records to
//! `iostall_dropped_records_total{reason="otlp_export_failed"}` and its runtime events
//! to `iostall_dropped_runtime_events_total{reason="otlp_export_failed"}`.
//!
//! An outage is one warning, not one per batch, and it costs no memory: once a batch has
//! used all its tries on retryable errors the signal is *down*, and from then on each
//! batch gets one try (dropped and counted at once if it fails) until one gets through,
//! which is logged as the end of the outage. Retrying every batch for a second or more
//! while records keep coming would keep a backlog of them queued for as long as the
//! collector is away (measured: 11 MiB more RSS at 200 records a second, the soak-outage
//! command in README).
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    ExportItem,
    encode::now_unix_ns,
    resource::Resources,
    transport::{ExportError, SignalClient, TransportError},
    wire::WireEncoder,
};
use crate::{
    config::{OtlpConfig, Signal},
    metrics::{DropReason, ExportOutcome, Metrics},
};

/// How long, once the sink is closing, queued records may still take to export; the
/// rest is dropped and counted (`otlp_export_failed`), so that a stop never hangs on an
/// unreachable collector.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The export task's state.
pub struct ExportTask {
    traces: SignalClient,
    logs: SignalClient,
    resources: Resources,
    config: OtlpConfig,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
    shutdown_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// [traces, logs]: the endpoint said it does not take that signal (logs only, so
    /// far); it is no longer sent (said once).
    refused: [std::sync::atomic::AtomicBool; 2],
    /// [traces, logs]: the outage under way, if the signal's last batch failed after
    /// all its tries: batches get one try until one gets through.
    down: [std::sync::Mutex<Option<Outage>>; 2],
}

/// A signal's collector outage: since when, and what it cost.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: tokio::time::Instant,
    /// Records (or events) of the failed batches since.
    lost: u64,
}

impl ExportTask {
    /// Builds both clients (inside a tokio runtime: gRPC channels connect lazily).
    /// `closing` is set when the sink shuts down: from then on batches get one try.
    pub fn new(
        config: &OtlpConfig,
        resources: Resources,
        metrics: Arc<Metrics>,
        closing: watch::Receiver<bool>,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            traces: SignalClient::new(Signal::Traces, &config.traces)?,
            logs: SignalClient::new(Signal::Logs, &config.logs)?,
            resources,
            config: config.clone(),
            metrics,
            closing,
            shutdown_deadline: std::sync::OnceLock::new(),
            refused: Default::default(),
            down: Default::default(),
        })
    }

    /// Whether the logs (or traces) signal is sent: on in the settings, and not
    /// refused by the endpoint.
    fn sends(&self, logs: bool) -> bool {
        let on = if logs {
            self.config.logs.enabled
        } else {
            self.config.traces.enabled
        };
        on && !self.refused[usize::from(logs)].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When closing: the instant by which everything must be done.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        if !*self.closing.borrow() {
            return None;
        }
        Some(
            *self
                .shutdown_deadline
                .get_or_init(|| tokio::time::Instant::now() + SHUTDOWN_GRACE),
        )
    }

    /// Runs until `rx` is closed and drained.
    pub async fn run(self, mut rx: mpsc::Receiver<ExportItem>) {
        let mut encoder = WireEncoder::new();
        let batch_size = self.config.batch_size;
        let mut batch: Vec<ExportItem> = Vec::with_capacity(batch_size);
        loop {
            if rx.recv_many(&mut batch, batch_size).await == 0 {
                break;
            }
            let deadline = tokio::time::Instant::now() + self.config.batch_timeout;
            let mut closed = false;
            while batch.len() < batch_size {
                let want = batch_size - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, want)).await {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            self.export(&mut encoder, &batch).await;
            batch.clear();
            if closed {
                break;
            }
        }
    }

    /// Exports one batch (traces and logs concurrently) and counts the outcome: spans
    /// for the slow operations, log records for everything.
    async fn export(&self, encoder: &mut WireEncoder, batch: &[ExportItem]) {
        let count = BatchCount::of(batch);
        if self
            .deadline()
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            count.lost(&self.metrics, true, true);
            tracing::warn!(
                records = batch.len(),
                "OTLP: shutting down, records dropped"
            );
            return;
        }
        let spans = count.io + count.span_only;
        let logs_n = count.io + count.events;
        let logs = Bytes::from(encoder.logs(
            batch,
            &self.resources,
            self.config.warn_threshold_ns,
            now_unix_ns(),
        ));
        let (traces_on, logs_on) = (self.sends(false), self.sends(true));
        let send_traces = async {
            // Off (`OTEL_TRACES_EXPORTER=none`, or refused by the endpoint) is not a
            // loss: nothing is counted.
            if spans == 0 || !traces_on {
                return true;
            }
            let traces = Bytes::from(encoder.traces(batch, &self.resources));
            self.with_retry(false, &self.traces, traces, spans).await
        };
        let send_logs = async {
            if logs_n == 0 || !logs_on {
                return true;
            }
            self.with_retry(true, &self.logs, logs, logs_n).await
        };
        let (traces_ok, logs_ok) = tokio::join!(send_traces, send_logs);
        if traces_ok && traces_on {
            self.metrics.add_exported_spans(spans);
        }
        if logs_ok && logs_on {
            self.metrics.add_exported_logs(logs_n);
        }
        count.lost(&self.metrics, !traces_ok, !logs_ok);
    }

    /// Sends `body`, retrying retryable failures with exponential backoff (or the
    /// server's `Retry-After`) up to `max_attempts` tries; `true` if it got through.
    async fn with_retry(
        &self,
        logs: bool,
        client: &SignalClient,
        body: Bytes,
        records: u64,
    ) -> bool {
        let signal = if logs { "logs" } else { "traces" };
        let down = &self.down[usize::from(logs)];
        let outage = down.lock().map(|d| *d).unwrap_or(None);
        // During an outage one try: the next batch is the next probe.
        let max_attempts = if outage.is_some() {
            1
        } else {
            self.config.max_attempts
        };
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1u32;
        loop {
            // An export may be in flight when the sink starts closing (a collector that
            // accepts but never answers): from then on it only gets the shutdown grace.
            let mut closing = self.closing.clone();
            let grace_over = async {
                let _ = closing.wait_for(|c| *c).await;
                match self.deadline() {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let sent = tokio::select! {
                sent = client.export(body.clone()) => sent,
                () = grace_over => Err(ExportError {
                    unsupported: false,
                    retryable: false,
                    retry_after: None,
                    message: "shutting down: export did not finish in time".into(),
                }),
            };
            match sent {
                Ok(()) => {
                    self.metrics.add_request(logs, ExportOutcome::Ok);
                    if let Some(o) = down.lock().ok().and_then(|mut d| d.take()) {
                        tracing::warn!(
                            signal,
                            down_for = ?o.since.elapsed(),
                            records_dropped = o.lost,
                            "OTLP export works again: the collector answers"
                        );
                    }
                    return true;
                }
                Err(e) if e.retryable && attempt < max_attempts && !*self.closing.borrow() => {
                    self.metrics.add_request(logs, ExportOutcome::Retry);
                    let delay = e
                        .retry_after
                        .unwrap_or(backoff)
                        .min(self.config.max_backoff);
                    tracing::debug!(signal, attempt, error = %e, ?delay, "OTLP export failed, retrying");
                    tokio::time::sleep(jitter(delay)).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
                // A backend that stores traces but not logs is common; one that takes no
                // traces is a wrong URL, which keeps failing loudly.
                Err(e) if e.unsupported && logs => {
                    self.metrics.add_request(logs, ExportOutcome::Failed);
                    if !self.refused[1].swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            "the OTLP endpoint does not take logs ({e}): log records are not \
                             sent from now on (this batch's {records} counted as lost); spans \
                             still are. If the backend stores no logs, set \
                             OTEL_LOGS_EXPORTER=none"
                        );
                    }
                    return false;
                }
                Err(e) if e.retryable => {
                    self.metrics.add_request(logs, ExportOutcome::Failed);
                    let Ok(mut d) = down.lock() else { return false };
                    match d.as_mut() {
                        Some(o) => {
                            o.lost += records;
                            tracing::debug!(signal, records, error = %e, "OTLP export failed (collector still down); records dropped");
                        }
                        None => {
                            *d = Some(Outage {
                                since: tokio::time::Instant::now(),
                                lost: records,
                            });
                            tracing::warn!(
                                signal,
                                attempts = attempt,
                                records,
                                error = %e,
                                "OTLP export failed; records dropped (counted in iostall_dropped_records_total{{reason=\"otlp_export_failed\"}}); until the collector answers, each batch gets one try, and the next line is when it does"
                            );
                        }
                    }
                    return false;
                }
                Err(e) => {
                    self.metrics.add_request(logs, ExportOutcome::Failed);
                    tracing::warn!(
                        signal,
                        attempts = attempt,
                        records,
                        error = %e,
                        "OTLP export failed; records dropped (counted in iostall_dropped_records_total{{reason=\"otlp_export_failed\"}})"
                    );
                    return false;
                }
            }
        }
    }
}

/// Up to +25% of `d`, so that exporters restarted together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// What a batch holds, by what each item becomes.
#[derive(Debug, Clone, Copy)]
struct BatchCount {
    /// Slow operations: a span and a log record each.
    io: u64,
    /// Runtime events: a log record each.
    events: u64,
    /// Startup spans and shared copies: a span each.
    span_only: u64,
}

impl BatchCount {
    fn of(batch: &[ExportItem]) -> Self {
        let mut c = Self {
            io: 0,
            events: 0,
            span_only: 0,
        };
        for item in batch {
            match item {
                ExportItem::Io(_) => c.io += 1,
                ExportItem::Runtime(_) => c.events += 1,
                ExportItem::SharedIo(_) | ExportItem::Startup(_) => c.span_only += 1,
            }
        }
        c
    }

    /// Counts what was lost: a slow operation when either of its signals was, a runtime
    /// event with the logs, a startup span with the traces.
    fn lost(self, metrics: &Metrics, traces_lost: bool, logs_lost: bool) {
        if traces_lost || logs_lost {
            metrics.add_dropped(DropReason::OtlpExportFailed, self.io);
        }
        if logs_lost {
            metrics.add_dropped_events(DropReason::OtlpExportFailed, self.events);
        }
        if traces_lost {
            metrics.add_dropped_startup_spans(self.span_only);
        }
    }
}
