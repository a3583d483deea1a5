//! Wires the stages: kernel ring buffer → decode → filter → bounded channel →
//! enrich → correlate → sinks (enrich, correlate and the sinks run on the sink thread).
//! The kernel side is read on the async runtime and never waits on a sink: when the
//! sinks fall behind, records are dropped at the channel and counted.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};

use crate::{
    correlate::Correlator,
    decode::Decoder,
    enrich::{
        Enricher, Enrichment,
        awaiting::AwaitingNames,
        pid_map::{CgroupFeed, find_unified_root},
    },
    event::{AttachMode, IoRecord},
    lifecycle::{LifecycleStage, ProcessEventLimit},
    metrics::{CacheKind, DropReason, Metrics},
    runtime::{EventSource, RuntimeEvent, now_unix_ns},
    sink::Sink,
    startup::{StartupConfig, StartupOutput, StartupStage},
    tracer::{AttachRequest, KernelStats, Tracer, TracerError, TracerOptions},
    why::Explainer,
};

/// Records buffered between the kernel reader and the sinks.
pub const SINK_QUEUE: usize = 16384;
/// cgroup updates buffered between the lifecycle reader and the enrich stage.
pub const CGROUP_FEED_QUEUE: usize = 4096;
/// How often the drop counters are checked and reported.
pub const STATS_EVERY: Duration = Duration::from_secs(10);

/// What `run` needs.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Kernel-side settings.
    pub tracer: TracerOptions,
    /// Which attach mode(s) to try.
    pub attach: AttachRequest,
    /// Ties records to containers and pods before correlation; `None` skips it.
    pub enricher: Option<Enricher>,
    /// Runtime lifecycle events to hand to the sinks beside the IO records.
    pub runtime_events: Option<mpsc::Receiver<RuntimeEvent>>,
    /// Assigns trace and span ids before the sinks.
    pub correlator: Correlator,
    /// Counters served on `/metrics` (records, drops by reason, kernel counters).
    pub metrics: Arc<Metrics>,
    /// Each container's budget of process events (kernel lifecycle signals).
    pub process_event_limit: ProcessEventLimit,
    /// How long a record of a container no runtime has announced yet waits for its
    /// names ([`crate::enrich::awaiting`]); `None`: not at all.
    pub unannounced_hold: Option<Duration>,
    /// Pod startup traces ([`crate::startup`]); `None`: off.
    pub startup: Option<StartupConfig>,
    /// Why each slow operation was slow ([`crate::why`]); its sources are off by default.
    pub explainer: Explainer,
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RunSummary {
    /// The mode used.
    pub mode: Option<AttachMode>,
    /// Records handed to the sinks.
    pub records: u64,
    /// Records dropped because the sinks were behind.
    pub sink_queue_drops: u64,
    /// Records the decoder rejected.
    pub decode_errors: u64,
    /// Kernel-side counters at the end.
    pub kernel: KernelStats,
}

/// Errors of the pipeline itself.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Loading or attaching failed.
    #[error(transparent)]
    Tracer(#[from] TracerError),
    /// The ring buffer could not be polled.
    #[error("failed to poll the ring buffer: {0}")]
    Poll(#[source] std::io::Error),
}

/// Loads, attaches, and runs until `shutdown` completes.
pub async fn run(
    mut options: RunOptions,
    sinks: Vec<Box<dyn Sink>>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, PipelineError> {
    let mut tracer = Tracer::load(&options.tracer)?;
    let (mode, refusals) = tracer.attach(options.attach)?;
    for refusal in &refusals {
        tracing::info!(mode = %refusal.mode, reason = %refusal.reason, "attach mode refused");
    }
    let why = if refusals.is_empty() {
        "first choice".to_owned()
    } else {
        refusals
            .iter()
            .map(|r| format!("{} refused", r.mode))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // jbd2 commits share the IO ring (so each arrives before the fsyncs that waited
    // for it); an extra, like the lifecycle signals.
    let journal = options.explainer.journal.as_ref().map(|j| j.feed());
    let journal = match journal.map(|feed| tracer.attach_journal().map(|()| feed)) {
        Some(Err(e)) => {
            tracing::warn!("journal commits not traced: {e}");
            None
        }
        Some(Ok(feed)) => Some(feed),
        None => None,
    };
    let ring = tracer.take_events()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| PipelineError::Poll(e.into()))?;

    let (tx, rx) = mpsc::channel::<SinkItem>(SINK_QUEUE);
    // Completes when every output is gone (their reader closed the pipe): iostall then
    // stops, as `ext4slower | head` does.
    let (outputs_gone, mut outputs_gone_rx) = oneshot::channel::<()>();
    let lifecycle = start_lifecycle(
        &mut tracer,
        options
            .enricher
            .as_mut()
            .and_then(|e| e.cgroup_ids.as_mut()),
        tx.clone(),
        options.metrics.clone(),
        options.process_event_limit,
    );
    // "attached" is said once everything that reports is attached (IO and lifecycle
    // signals, existing containers watched): tests and operators take it as "from here
    // on nothing is missed".
    tracing::info!(
        mode = %mode,
        threshold_ms = options.tracer.threshold_ns as f64 / 1e6,
        "attached in {mode} mode ({why})"
    );
    if mode == AttachMode::Tracepoint {
        tracing::info!(
            "tracepoint mode times read/write/open syscalls and fsyncs (ext4: every one; xfs, btrfs: fsync and fdatasync); it never sees {}",
            crate::coverage::TRACEPOINT_BLIND_SPOTS
        );
    }
    // Runtime lifecycle events share the sinks' queue (and its drop accounting).
    let forwarder = options.runtime_events.take().map(|mut events| {
        let tx = tx.clone();
        let metrics = options.metrics.clone();
        tokio::spawn(async move {
            while let Some(mut event) = events.recv().await {
                event.bound();
                if tx.try_send(SinkItem::Runtime(event)).is_err() {
                    metrics.add_dropped_events(DropReason::SinkQueueFull, 1);
                }
            }
        })
    });
    let records = Arc::new(AtomicU64::new(0));
    let sink_thread = spawn_sinks(
        sinks,
        rx,
        records.clone(),
        SinkStages {
            enricher: options.enricher,
            correlator: options.correlator.clone(),
            metrics: options.metrics.clone(),
            unannounced_hold: options.unannounced_hold,
            startup: options.startup.take(),
            explainer: std::mem::take(&mut options.explainer),
            outputs_gone,
        },
    );
    let metrics = options.metrics.clone();
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));

    let mut io = IoForwarder {
        decoder: Decoder::new(mode),
        journal,
        metrics: metrics.clone(),
        sink_queue_drops: 0,
        decode_errors: 0,
    };
    let mut last_reported = ReportedDrops::default();
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Ok(()) = &mut outputs_gone_rx => {
                tracing::info!("every output is closed: stopping");
                break;
            }
            _ = stats_tick.tick() => {
                report_drops(&tracer, &mut last_reported, io.sink_queue_drops);
            }
            _ = metrics_tick.tick() => {
                if let Ok(stats) = tracer.stats() {
                    metrics.set_kernel(&stats);
                }
                // When full, the sink thread is busy anyway and looks again soon.
                let _ = tx.try_send(SinkItem::Tick);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(PipelineError::Poll)?;
                io.forward(guard.get_inner_mut(), &tx);
                guard.clear_ready();
            }
        }
    }
    // What the kernel wrote before the stop is reported, not lost with the rings.
    io.forward(ring.get_mut(), &tx);
    if let Some(lifecycle) = lifecycle {
        lifecycle.finish().await;
    }
    // Every sender must go for the sink thread to drain and stop: ours, and the
    // forwarder's (its runtime sources outlive the pipeline).
    if let Some(task) = forwarder {
        task.abort();
        let _ = task.await;
    }
    let IoForwarder {
        sink_queue_drops,
        decode_errors,
        ..
    } = io;
    drop(tx);
    if sink_thread.join().is_err() {
        tracing::error!("sink thread panicked");
    }
    let kernel = tracer.stats().unwrap_or_default();
    metrics.set_kernel(&kernel);
    report_drops(&tracer, &mut last_reported, sink_queue_drops);
    Ok(RunSummary {
        mode: Some(mode),
        records: records.load(Ordering::Relaxed),
        sink_queue_drops,
        decode_errors,
        kernel,
    })
}

/// Decodes the IO ring's records and hands them to the sinks' queue, counting what
/// it cannot decode and what the queue has no room for.
struct IoForwarder {
    decoder: Decoder,
    /// Where jbd2 commits go (read by [`crate::why::JournalView`] on the sink thread).
    journal: Option<crate::why::journal::JournalFeed>,
    metrics: Arc<Metrics>,
    sink_queue_drops: u64,
    decode_errors: u64,
}

impl IoForwarder {
    /// Forwards every record now in `ring`.
    fn forward(&mut self, ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<SinkItem>) {
        while let Some(item) = ring.next() {
            if crate::decode::record_kind(&item)
                == Some(exporter_common::event_kind::JOURNAL_COMMIT)
            {
                match (self.decoder.decode_commit(&item), &self.journal) {
                    (Ok(commit), Some(journal)) => journal.push(commit),
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        self.decode_errors += 1;
                        self.metrics.add_dropped(DropReason::DecodeError, 1);
                        tracing::warn!(error = %e, "dropping undecodable journal commit");
                    }
                }
                continue;
            }
            match self.decoder.decode(&item) {
                Ok(record) => {
                    if tx.try_send(SinkItem::Io(Box::new(record))).is_err() {
                        self.sink_queue_drops += 1;
                        self.metrics.add_dropped(DropReason::SinkQueueFull, 1);
                    }
                }
                Err(e) => {
                    self.decode_errors += 1;
                    self.metrics.add_dropped(DropReason::DecodeError, 1);
                    tracing::warn!(error = %e, "dropping undecodable record");
                }
            }
        }
    }
}

/// The task reading the lifecycle ring; `finish` has it forward what is left, then stop.
struct LifecycleTask {
    handle: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl LifecycleTask {
    /// Stops the task once the events already in its ring are forwarded.
    async fn finish(self) {
        // An Err means the task already ended (its ring failed): nothing to drain.
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

/// Forwards every lifecycle record now in `ring` to the sinks' queue.
fn forward_lifecycle<W: crate::lifecycle::WatchSet>(
    ring: &mut RingBuf<MapData>,
    stage: &mut LifecycleStage<W>,
    tx: &mpsc::Sender<SinkItem>,
    metrics: &Metrics,
) {
    while let Some(item) = ring.next() {
        match stage.handle(&item) {
            Ok(Some(event)) => {
                if tx.try_send(SinkItem::Runtime(event)).is_err() {
                    metrics.add_dropped_events(DropReason::SinkQueueFull, 1);
                }
            }
            Ok(None) => {}
            Err(e) => {
                metrics.add_dropped(DropReason::DecodeError, 1);
                tracing::warn!(error = %e, "dropping undecodable lifecycle record");
            }
        }
    }
    metrics.set_runtime_events_rate_limited(stage.stats().rate_limited);
    metrics.set_watched_cgroups_full(stage.stats().watch_full);
    let (watched, budgets) = stage.tracked();
    metrics.set_cache_entries(CacheKind::WatchedCgroups, watched);
    metrics.set_cache_entries(CacheKind::ProcessBudgets, budgets);
}

/// Attaches the kernel lifecycle signals and starts the task that reads them: their
/// events join the sinks' queue beside the runtime sources' (drops counted alike), and
/// cgroup ids go to the enrich stage's `cgroup_ids`. Lifecycle signals are extras: when
/// they cannot run, one warning says why and IO tracing goes on.
fn start_lifecycle(
    tracer: &mut Tracer,
    cgroup_ids: Option<&mut crate::enrich::pid_map::CgroupIdMap>,
    tx: mpsc::Sender<SinkItem>,
    metrics: Arc<Metrics>,
    process_event_limit: ProcessEventLimit,
) -> Option<LifecycleTask> {
    let refused = tracer.attach_lifecycle();
    if !refused.is_empty() {
        tracing::warn!(
            "kernel lifecycle signals partly or wholly off: {}",
            refused.join("; ")
        );
    }
    let maps = tracer
        .take_lifecycle_events()
        .and_then(|ring| Ok((ring, tracer.take_watched_cgroups()?)));
    let (ring, watched) = match maps {
        Ok(maps) => maps,
        Err(e) => {
            tracing::warn!(error = %e, "kernel lifecycle signals off");
            return None;
        }
    };
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(ring) => ring,
        Err(e) => {
            tracing::warn!(error = %e, "kernel lifecycle signals off: cannot poll their ring");
            return None;
        }
    };
    let feed = cgroup_ids.map(|ids| {
        let (feed, rx) = CgroupFeed::channel(CGROUP_FEED_QUEUE);
        ids.set_feed(rx);
        feed
    });
    let mut stage = LifecycleStage::new(watched, feed).with_process_limit(process_event_limit);
    match find_unified_root().map(|root| stage.scan(&root)) {
        Ok(Ok(n)) => tracing::debug!(containers = n, "watching existing container cgroups"),
        Ok(Err(e)) => tracing::warn!(error = %e, "existing containers not watched"),
        Err(e) => tracing::warn!(error = %e, "container exec/exit not watched"),
    }
    metrics.set_watched_cgroups_full(stage.stats().watch_full);
    let (watched, budgets) = stage.tracked();
    metrics.set_cache_entries(CacheKind::WatchedCgroups, watched);
    metrics.set_cache_entries(CacheKind::ProcessBudgets, budgets);
    let (stop, mut stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    forward_lifecycle(ring.get_mut(), &mut stage, &tx, &metrics);
                    return;
                }
                guard = ring.readable_mut() => {
                    let mut guard = match guard {
                        Ok(guard) => guard,
                        Err(e) => {
                            tracing::warn!(error = %e, "kernel lifecycle ring buffer failed; signals off");
                            return;
                        }
                    };
                    forward_lifecycle(guard.get_inner_mut(), &mut stage, &tx, &metrics);
                    guard.clear_ready();
                }
            }
        }
    });
    Some(LifecycleTask { handle, stop })
}

/// What the sink thread takes from its queue.
#[derive(Debug)]
// Nearly every item is an `Io`: boxing it to shrink the rare others would cost an
// allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
pub enum SinkItem {
    /// A slow operation, to enrich and correlate (boxed: with its why, a record is
    /// several times a runtime event's size, and the queue holds thousands).
    Io(Box<IoRecord>),
    /// A runtime lifecycle event, to enrich (its container and pod) and correlate (the
    /// trace of its container's IO).
    Runtime(RuntimeEvent),
    /// A second went by: records that waited long enough for their names go on.
    Tick,
}

/// The stages that run on the sink thread, between the queue and the sinks.
struct SinkStages {
    enricher: Option<Enricher>,
    correlator: Correlator,
    metrics: Arc<Metrics>,
    /// How long a record of a container no runtime has announced yet waits for its
    /// names; `None`: it does not wait (no runtime source is on).
    unannounced_hold: Option<Duration>,
    /// Pod startup traces; `None`: off.
    startup: Option<StartupConfig>,
    /// Adds why each operation was slow, before enrich.
    explainer: Explainer,
    /// Told when every sink is gone.
    outputs_gone: oneshot::Sender<()>,
}

/// Records parked at most at once while their containers are unannounced.
pub const AWAITING_CAPACITY: usize = 4096;

/// What leaves the enrich stage: a record and who it belongs to.
type Enriched = (IoRecord, Enrichment);

/// Runs enrich → correlate → sinks on their own thread: a slow `/proc` read, terminal
/// or disk never stalls the kernel reader.
fn spawn_sinks(
    sinks: Vec<Box<dyn Sink>>,
    mut rx: mpsc::Receiver<SinkItem>,
    records: Arc<AtomicU64>,
    stages: SinkStages,
) -> std::thread::JoinHandle<()> {
    let SinkStages {
        mut enricher,
        correlator,
        metrics,
        unannounced_hold,
        startup,
        mut explainer,
        outputs_gone,
    } = stages;
    let mut awaiting: Option<AwaitingNames<Enriched>> =
        unannounced_hold.map(|hold| AwaitingNames::new(hold, AWAITING_CAPACITY));
    std::thread::spawn(move || {
        let mut out = SinkOutput {
            sinks,
            correlator,
            startup: startup.map(StartupStage::new),
            staged: Vec::new(),
            metrics: metrics.clone(),
            outputs_gone: Some(outputs_gone),
        };
        while let Some(item) = rx.blocking_recv() {
            match item {
                SinkItem::Io(record) => {
                    let mut record = *record;
                    records.fetch_add(1, Ordering::Relaxed);
                    metrics.add_records(1);
                    record.why = explainer.explain(&record.stall());
                    match &mut enricher {
                        Some(enricher) => {
                            let enrichment = enricher.enrich(&record);
                            let parked = match (
                                &mut awaiting,
                                enricher.unannounced_container(&enrichment),
                            ) {
                                (Some(awaiting), Some(id)) => {
                                    let id = id.to_owned();
                                    awaiting.park(id, (record, enrichment), Instant::now())
                                }
                                _ => Err((record, enrichment)),
                            };
                            if let Err((record, enrichment)) = parked {
                                out.record(record, enrichment);
                            }
                        }
                        None => out.unenriched(record),
                    }
                }
                SinkItem::Runtime(event) => {
                    let enrichment = enrich_event(enricher.as_ref(), &event);
                    out.runtime_event(event, enrichment);
                    // An announcement releases its container's records at once.
                    release(&mut awaiting, enricher.as_ref(), &mut out);
                }
                SinkItem::Tick => {
                    let released = release(&mut awaiting, enricher.as_ref(), &mut out);
                    report_caches(&metrics, enricher.as_mut(), awaiting.as_ref());
                    if released == 0 && !out.tick() {
                        continue;
                    }
                }
            }
            // Lines show when they happen, not when the next record comes.
            if rx.is_empty() {
                out.idle();
            }
        }
        if let (Some(awaiting), Some(enricher)) = (&mut awaiting, &enricher) {
            for (record, mut enrichment) in awaiting.drain() {
                enricher.refill(&mut enrichment);
                out.record(record, enrichment);
            }
        }
        out.finish();
        out.idle();
        // Dropping the sinks flushes them (the OTLP sink exports what it still holds).
        drop(out);
    })
}

/// Serves what the sink thread's caches hold (`iostall_cache_entries`), bringing the
/// cgroup id map up to date first.
fn report_caches(
    metrics: &Metrics,
    enricher: Option<&mut Enricher>,
    awaiting: Option<&AwaitingNames<Enriched>>,
) {
    metrics.set_cache_entries(
        CacheKind::AwaitingRecords,
        awaiting.map_or(0, AwaitingNames::len),
    );
    let Some(enricher) = enricher else { return };
    metrics.set_cache_entries(CacheKind::Pids, enricher.pids.len());
    if let Some(ids) = &mut enricher.cgroup_ids {
        ids.maintain();
        metrics.set_cache_entries(CacheKind::CgroupIds, ids.len());
    }
    if let Ok(cache) = enricher.metadata.read() {
        metrics.set_cache_entries(CacheKind::Containers, cache.len());
        metrics.set_cache_entries(CacheKind::Pods, cache.pod_count());
    }
}

/// Sends the records of containers now known (or waited for long enough) on, with
/// what the metadata cache knows of them now; returns how many.
fn release(
    awaiting: &mut Option<AwaitingNames<Enriched>>,
    enricher: Option<&Enricher>,
    out: &mut SinkOutput,
) -> usize {
    let (Some(awaiting), Some(enricher)) = (awaiting, enricher) else {
        return 0;
    };
    if awaiting.is_empty() {
        return 0;
    }
    let released = awaiting.release(Instant::now(), |id| enricher.knows_container(id));
    let n = released.len();
    for (record, mut enrichment) in released {
        enricher.refill(&mut enrichment);
        out.record(record, enrichment);
    }
    n
}

/// The end of the sink thread: the startup stage, correlate, then every sink.
struct SinkOutput {
    sinks: Vec<Box<dyn Sink>>,
    correlator: Correlator,
    startup: Option<StartupStage>,
    /// What the startup stage handed out, reused between calls.
    staged: Vec<StartupOutput>,
    metrics: Arc<Metrics>,
    outputs_gone: Option<oneshot::Sender<()>>,
}

impl SinkOutput {
    fn record(&mut self, record: IoRecord, enrichment: Enrichment) {
        match &mut self.startup {
            Some(stage) => {
                stage.io(record, enrichment, now_unix_ns(), &mut self.staged);
                self.emit();
            }
            None => {
                let record = self.correlator.correlate_enriched(record, enrichment);
                self.send(&record);
            }
        }
    }

    fn unenriched(&mut self, record: IoRecord) {
        let record = self.correlator.correlate(record);
        self.send(&record);
    }

    fn runtime_event(&mut self, event: RuntimeEvent, enrichment: Enrichment) {
        match &mut self.startup {
            Some(stage) => {
                stage.event(event, enrichment, now_unix_ns(), &mut self.staged);
                self.emit();
            }
            None => self.event(event, enrichment, None),
        }
    }

    /// A second went by: startups that settled or timed out end, finished spans go
    /// out. Whether anything did.
    fn tick(&mut self) -> bool {
        let Some(stage) = &mut self.startup else {
            return false;
        };
        stage.tick(now_unix_ns(), &mut self.staged);
        let stats = stage.stats();
        let open = stage.open_count() as u64;
        self.metrics.set_startups(stats.evicted, open);
        self.metrics.set_startup_overflow(
            stats.held_overflow,
            stats.late_io,
            stats.shared_overflow,
        );
        let any = !self.staged.is_empty();
        self.emit();
        any
    }

    /// The pipeline stops: finished startups go out.
    fn finish(&mut self) {
        if let Some(stage) = &mut self.startup {
            stage.finish(now_unix_ns(), &mut self.staged);
            self.emit();
        }
    }

    /// Correlates and sends what the startup stage handed out, in order.
    fn emit(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        for item in staged.drain(..) {
            match item {
                StartupOutput::Io {
                    record,
                    enrichment,
                    placement,
                } => {
                    let record = self
                        .correlator
                        .correlate_placed(record, enrichment, placement);
                    self.send(&record);
                }
                StartupOutput::SharedIo {
                    record,
                    enrichment,
                    placement,
                } => {
                    let record =
                        self.correlator
                            .correlate_placed(record, enrichment, Some(placement));
                    self.each("a span", |sink| sink.shared_io(&record));
                }
                StartupOutput::Event {
                    event,
                    enrichment,
                    placement,
                } => self.event(event, enrichment, placement),
                StartupOutput::Span(span) => self.each("a span", |sink| sink.startup_span(&span)),
                StartupOutput::Summary(summary) => {
                    self.metrics.observe_startup(
                        summary.duration_ns(),
                        summary.io.total_ns(),
                        summary.error.is_some(),
                    );
                    self.each("a startup summary", |sink| sink.startup_summary(&summary));
                }
            }
        }
        // Keeps the buffer's capacity for the next call.
        self.staged = staged;
    }

    fn send(&mut self, record: &crate::correlate::CorrelatedRecord) {
        // Here the record has the ids the sinks export it with: its exemplar names them.
        self.metrics.observe_io(record);
        self.each("a record", |sink| sink.record(record));
    }

    /// Calls `f` on every sink. A sink whose reader is gone (broken pipe: `iostall |
    /// head`) is dropped with one line; when none is left, the pipeline is told to stop.
    fn each(&mut self, what: &str, mut f: impl FnMut(&mut dyn Sink) -> std::io::Result<()>) {
        let before = self.sinks.len();
        self.sinks.retain_mut(|sink| match f(sink.as_mut()) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::info!("an output's reader is gone (broken pipe): it stops");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "sink failed to take {what}");
                true
            }
        });
        if before > 0
            && self.sinks.is_empty()
            && let Some(tx) = self.outputs_gone.take()
        {
            let _ = tx.send(());
        }
    }

    fn event(
        &mut self,
        event: RuntimeEvent,
        enrichment: Enrichment,
        placement: Option<crate::correlate::Placement>,
    ) {
        let event = self
            .correlator
            .correlate_event_placed(event, enrichment, placement);
        self.each("a runtime event", |sink| sink.runtime_event(&event));
    }

    fn idle(&mut self) {
        self.each("a flush", |sink| sink.idle());
    }
}

/// Who a runtime event is about: its container (or its pod, by uid) from the metadata
/// cache, then what its own labels say. Kubernetes API events name their pod in their
/// attributes (`uid`, `name`) and namespace; kernel events give the pod uid their
/// cgroup path names (`k8s.pod.uid`).
fn enrich_event(enricher: Option<&Enricher>, event: &RuntimeEvent) -> Enrichment {
    let kube = event.runtime == EventSource::Kube;
    let attribute = |key: &str| event.attributes.get(key).map(String::as_str);
    let pod_uid = event
        .pod_uid()
        .or_else(|| attribute("k8s.pod.uid"))
        .or_else(|| attribute("uid").filter(|_| kube));
    let container_id = event.container_id.as_deref();
    let mut enrichment = match enricher {
        Some(enricher) => enricher.enrich_container(container_id, pod_uid),
        None => Enrichment {
            container_id: container_id.map(str::to_owned),
            pod_uid: pod_uid.map(str::to_owned),
            ..Enrichment::none()
        },
    };
    if let Some(meta) = event.container_meta() {
        enrichment.fill_from_container(&meta);
    }
    if kube && enrichment.pod_uid.is_some() {
        if enrichment.pod_name.is_none() {
            enrichment.pod_name = event.attributes.get("name").cloned();
        }
        if enrichment.pod_namespace.is_none() {
            enrichment.pod_namespace.clone_from(&event.namespace);
        }
    }
    enrichment
}

/// What was lost, as of the last report.
#[derive(Debug, Default)]
struct ReportedDrops {
    kernel: KernelStats,
    sink_queue: u64,
}

/// Logs what was lost since the last report: in the kernel, and at the sinks' queue
/// (the sinks behind the kernel reader).
fn report_drops(tracer: &Tracer, last: &mut ReportedDrops, sink_queue_drops: u64) {
    let Ok(now) = tracer.stats() else {
        return;
    };
    let ring = now.ringbuf_drops - last.kernel.ringbuf_drops;
    let inflight = now.inflight_full - last.kernel.inflight_full;
    let lifecycle = now.lifecycle_drops - last.kernel.lifecycle_drops;
    let sink_queue = sink_queue_drops - last.sink_queue;
    if ring > 0 || inflight > 0 || lifecycle > 0 || sink_queue > 0 {
        tracing::warn!(
            ringbuf_drops = ring,
            inflight_full = inflight,
            lifecycle_drops = lifecycle,
            sink_queue_drops = sink_queue,
            ringbuf_drops_total = now.ringbuf_drops,
            sink_queue_drops_total = sink_queue_drops,
            "events lost (kernel ring buffer, in-flight map, or the sinks' queue)"
        );
    }
    *last = ReportedDrops {
        kernel: now,
        sink_queue: sink_queue_drops,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::metadata::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_UID},
        runtime::RuntimeEventKind,
    };

    #[test]
    fn runtime_events_are_enriched_from_labels_and_kube_attributes() {
        // A container the cache does not know (already deleted): its labels name it.
        let mut gone = RuntimeEvent::new(
            1,
            EventSource::Containerd,
            RuntimeEventKind::ContainerDeleted,
        );
        gone.container_id = Some("c0ffee".into());
        for (k, v) in [
            (LABEL_POD_NAME, "web-0"),
            (LABEL_POD_UID, "uid-1"),
            (LABEL_CONTAINER_NAME, "app"),
        ] {
            gone.labels.insert(k.into(), v.into());
        }
        let e = enrich_event(Some(&Enricher::for_host()), &gone);
        assert_eq!(e.container_id.as_deref(), Some("c0ffee"));
        assert_eq!(e.container_name.as_deref(), Some("app"));
        assert_eq!(e.pod_uid.as_deref(), Some("uid-1"));
        assert_eq!(enrich_event(None, &gone), e, "with or without an enricher");
        // A pod from the Kubernetes API: uid and name in its attributes.
        let mut pod = RuntimeEvent::new(1, EventSource::Kube, RuntimeEventKind::PodAdded);
        pod.namespace = Some("shop".into());
        pod.attributes.insert("uid".into(), "uid-2".into());
        pod.attributes.insert("name".into(), "web-1".into());
        let e = enrich_event(None, &pod);
        assert_eq!(e.pod_uid.as_deref(), Some("uid-2"));
        assert_eq!(e.pod_name.as_deref(), Some("web-1"));
        assert_eq!(e.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(e.container_id, None);
        // A kernel event: the pod uid its cgroup path gave.
        let mut exit = RuntimeEvent::new(
            1,
            EventSource::Kernel,
            RuntimeEventKind::ProcessExit {
                exit_code: 1,
                signal: None,
            },
        );
        exit.container_id = Some("c0ffee".into());
        exit.attributes.insert("k8s.pod.uid".into(), "uid-3".into());
        let e = enrich_event(None, &exit);
        assert_eq!(e.pod_uid.as_deref(), Some("uid-3"));
        assert_eq!(e.container_id.as_deref(), Some("c0ffee"));
        // An image: nobody's.
        let image = RuntimeEvent::new(1, EventSource::Containerd, RuntimeEventKind::ImagePulled);
        assert_eq!(enrich_event(None, &image), Enrichment::none());
    }
}
