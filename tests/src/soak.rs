//! A collector outage under steady load, shared by the `soak-outage` command (10 minutes)
//! and the `otlp_outage` test (30 seconds): the same code, only the phases' lengths
//! differ.
//!
//! iostall (tracepoint mode, OTLP output only) watches one thread of this process, named
//! [`comm`], that does a paced `pwrite` + `fdatasync` of 4 KiB on a real loop-device ext4
//! ([`SlowExt4`], unthrottled) at `rate` a second. The threshold is below any
//! `fdatasync` there and above a page-cache `pwrite`, so each `fdatasync` is one record.
//! The OTLP receiver ([`OtlpReceiver`], real gRPC on localhost) is up for the `before`
//! phase, dropped (the port refuses connections) for the `outage`, and brought back on the
//! same port for the `after` phase. Every second the run samples iostall's `VmRSS` and
//! its `/metrics` counters.
use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::FileExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    iostall_proc::Iostall,
    otlp_receiver::{Export, OtlpReceiver, metric, metrics_addr_from_log, scrape, vm_rss_kib},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts},
};

/// The comm of the thread whose `fdatasync`s are the records (iostall filters on it in
/// the kernel): one per process, so that a soak and a test running at once each see
/// only their own load.
pub fn comm() -> String {
    format!("soak-{}", std::process::id())
}

/// The drop reasons of slow-operation records on the OTLP path.
pub const DROP_REASONS: [&str; 3] = ["otlp_queue_full", "otlp_export_failed", "sink_queue_full"];

/// The OTLP batch size the run configures (the product's default): the accounting slack
/// is one batch per signal.
pub const BATCH_SIZE: u64 = 512;

/// The lengths of the three phases and the load.
#[derive(Debug, Clone, Copy)]
pub struct OutagePlan {
    /// Collector up, before the outage.
    pub before: Duration,
    /// Collector down.
    pub outage: Duration,
    /// Collector back.
    pub after: Duration,
    /// `fdatasync`s a second.
    pub rate: u32,
    /// iostall's threshold, ms (a float: 0.05 is 50 µs).
    pub threshold_ms: f64,
}

/// Which phase a sample was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Collector up, before the outage.
    Before,
    /// Collector down.
    Outage,
    /// Collector back.
    After,
}

impl Phase {
    /// Its name in the CSV and the printout.
    pub fn name(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::Outage => "outage",
            Self::After => "after",
        }
    }
}

/// One second's sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// The phase it was taken in.
    pub phase: Phase,
    /// iostall's `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `iostall_records_total` so far.
    pub records: u64,
    /// `iostall_otlp_exported_spans_total` so far.
    pub exported: u64,
    /// The records' drop counters ([`DROP_REASONS`]) summed, so far.
    pub dropped: u64,
    /// Spans of [`comm`] the receiver got so far.
    pub received: u64,
}

/// min, median, max.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// Smallest.
    pub min: u64,
    /// Median (the lower middle of an even count).
    pub median: u64,
    /// Largest.
    pub max: u64,
}

/// What one run measured.
#[derive(Debug)]
pub struct OutageReport {
    /// The plan it ran.
    pub plan: OutagePlan,
    /// One sample a second.
    pub samples: Vec<Sample>,
    /// `fdatasync`s the load made.
    pub ops: u64,
    /// Seconds the load ran.
    pub load_seconds: f64,
    /// `iostall_records_total` at the end: the records produced.
    pub records: u64,
    /// Spans of [`comm`] that reached the receiver.
    pub received: u64,
    /// The records' drop counters summed, at the end.
    pub dropped: u64,
    /// Each drop reason's count, at the end.
    pub dropped_by_reason: Vec<(&'static str, u64)>,
    /// `iostall_dropped_records_total{reason="ringbuf_full"}`: records the kernel lost.
    pub ringbuf_dropped: u64,
    /// From the receiver's return to the first export request it got.
    pub first_export_after_return: Option<Duration>,
    /// The last `/metrics` text.
    pub metrics_text: String,
    /// iostall's log.
    pub stderr: String,
    /// Whether iostall exited cleanly at SIGINT.
    pub clean_exit: bool,
}

impl OutageReport {
    /// RSS min/median/max of one phase, KiB (`None` without samples in it).
    pub fn rss(&self, phase: Phase) -> Option<Spread> {
        let mut v: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.phase == phase)
            .map(|s| s.rss_kib)
            .collect();
        v.sort_unstable();
        Some(Spread {
            min: *v.first()?,
            median: v[(v.len() - 1) / 2],
            max: *v.last()?,
        })
    }

    /// How far RSS rose during the outage above its median before it, KiB (negative if
    /// it fell).
    pub fn outage_growth_kib(&self) -> Option<i64> {
        let before = self.rss(Phase::Before)?.median;
        let during = self.rss(Phase::Outage)?.max;
        Some(during as i64 - before as i64)
    }

    /// Records produced a second over the run.
    pub fn record_rate(&self) -> f64 {
        self.records as f64 / self.load_seconds.max(f64::EPSILON)
    }

    /// Spans that never arrived.
    pub fn lost(&self) -> u64 {
        self.records.saturating_sub(self.received)
    }

    /// Whether the drop counters account for every record, as `otlp_collector_down`
    /// documents it: every record whose span did not arrive is counted, and at most one
    /// batch per signal more (a request the server took while the client saw it fail).
    pub fn accounted(&self) -> bool {
        let lost = self.lost();
        lost <= self.dropped && self.dropped <= lost + 2 * BATCH_SIZE
    }

    /// The samples as CSV, one line a second.
    pub fn csv(&self) -> String {
        let mut out = String::from("t_s,phase,rss_kib,records,exported,dropped,received\n");
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:.1},{},{},{},{},{},{}",
                s.t_s,
                s.phase.name(),
                s.rss_kib,
                s.records,
                s.exported,
                s.dropped,
                s.received
            );
        }
        out
    }

    /// The figures, for people.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "phases: {} s before, {} s outage, {} s after; load {} fdatasync/s asked, \
             threshold {} ms",
            p.before.as_secs(),
            p.outage.as_secs(),
            p.after.as_secs(),
            p.rate,
            p.threshold_ms
        );
        let _ = writeln!(
            out,
            "load: {} fdatasyncs in {:.1} s = {:.1}/s; records {} = {:.1}/s",
            self.ops,
            self.load_seconds,
            self.ops as f64 / self.load_seconds.max(f64::EPSILON),
            self.records,
            self.record_rate()
        );
        for phase in [Phase::Before, Phase::Outage, Phase::After] {
            if let Some(s) = self.rss(phase) {
                let _ = writeln!(
                    out,
                    "RSS {:<6} min {:.1} MiB, median {:.1} MiB, max {:.1} MiB",
                    phase.name(),
                    s.min as f64 / 1024.0,
                    s.median as f64 / 1024.0,
                    s.max as f64 / 1024.0
                );
            }
        }
        if let Some(g) = self.outage_growth_kib() {
            let _ = writeln!(
                out,
                "RSS growth during the outage (its max over the median before): {g} KiB"
            );
        }
        let reasons: Vec<String> = self
            .dropped_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "produced {} = received {} + lost {}; dropped {} ({}); ringbuf_full {}; \
             accounted: {}",
            self.records,
            self.received,
            self.lost(),
            self.dropped,
            reasons.join(" "),
            self.ringbuf_dropped,
            self.accounted()
        );
        let _ = writeln!(
            out,
            "first export after the collector returned: {}",
            self.first_export_after_return
                .map_or("none".into(), |d| format!("{} ms", d.as_millis()))
        );
        out
    }
}

/// The paced `pwrite` + `fdatasync` thread.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    started: Instant,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Load {
    /// Starts `rate` `fdatasync`s a second on `dir/soak-data`, each after a 4 KiB
    /// `pwrite` at offset 0, in a thread named [`comm`]. It keeps to the schedule: ops
    /// that ran late (a loaded machine, a slow flush) are caught up at once, up to 5 s
    /// of them.
    fn start(dir: &Path, rate: u32) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("soak-data"))
            .context("opening the soak file")?;
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (stop2, ops2) = (stop.clone(), ops.clone());
        let period = Duration::from_secs(1) / rate.max(1);
        let thread = std::thread::Builder::new()
            // The thread's name is its comm, which iostall filters on.
            .name(comm())
            .spawn(move || -> Result<()> {
                let buf = [0xa5u8; 4096];
                let mut next = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    file.write_all_at(&buf, 0).context("pwrite")?;
                    file.sync_data().context("fdatasync")?;
                    ops2.fetch_add(1, Ordering::Relaxed);
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_secs(5) {
                        next = now;
                    }
                }
                Ok(())
            })
            .context("spawning the load thread")?;
        Ok(Self {
            stop,
            ops,
            started: Instant::now(),
            thread: Some(thread),
        })
    }

    /// Stops it: (`fdatasync`s made, seconds it ran).
    fn finish(mut self) -> Result<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        }
        Ok((self.ops.load(Ordering::Relaxed), secs))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The receiver's side of the run: what arrived, and when the first request after its
/// return did.
struct Receiving {
    rx: Option<OtlpReceiver>,
    comm: String,
    addr: SocketAddr,
    spans: u64,
    returned_at: Option<Instant>,
    first_after_return: Option<Duration>,
}

impl Receiving {
    /// Takes what arrived so far, counting the spans of [`comm`].
    fn drain(&mut self) {
        let Some(rx) = &self.rx else { return };
        let mut exports = Vec::new();
        while let Some(export) = rx.recv_timeout(Duration::ZERO) {
            exports.push(export);
        }
        self.count(exports);
    }

    /// Counts the spans of [`comm`] in `exports`, and the first request's arrival after
    /// the return.
    fn count(&mut self, exports: Vec<Export>) {
        for export in exports {
            let Export::Traces(req, meta) = export else {
                continue;
            };
            if let Some(back) = self.returned_at
                && self.first_after_return.is_none()
            {
                self.first_after_return = Some(meta.received_at.saturating_duration_since(back));
            }
            self.spans += req
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .filter(|s| {
                    crate::otlp_receiver::str_attr(&s.attributes, "process.command").as_deref()
                        == Some(self.comm.as_str())
                })
                .count() as u64;
        }
    }

    /// Stops the receiver: its port refuses connections from now on. What it took while
    /// stopping counts too.
    fn go_down(&mut self) {
        self.drain();
        if let Some(rx) = self.rx.take() {
            self.count(rx.stop());
        }
    }

    /// Brings it back on the same port.
    fn come_back(&mut self) -> Result<()> {
        let rx = OtlpReceiver::grpc_on(self.addr).context("the receiver comes back")?;
        self.returned_at = Some(Instant::now());
        self.rx = Some(rx);
        Ok(())
    }
}

/// The counters a sample reads from `/metrics`.
struct Counters {
    /// `iostall_records_total`.
    records: u64,
    /// `iostall_otlp_exported_spans_total`.
    exported: u64,
    /// Each of [`DROP_REASONS`].
    dropped: Vec<(&'static str, u64)>,
    /// `iostall_dropped_records_total{reason="ringbuf_full"}`.
    ringbuf: u64,
}

impl Counters {
    fn read(text: &str) -> Result<Self> {
        let get = |series: &str| metric(text, series).with_context(|| format!("no {series}"));
        let dropped = DROP_REASONS
            .iter()
            .map(|r| {
                Ok((
                    *r,
                    get(&format!("iostall_dropped_records_total{{reason=\"{r}\"}}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            records: get("iostall_records_total")?,
            exported: get("iostall_otlp_exported_spans_total")?,
            dropped,
            ringbuf: get("iostall_dropped_records_total{reason=\"ringbuf_full\"}")?,
        })
    }

    fn dropped_sum(&self) -> u64 {
        self.dropped.iter().map(|d| d.1).sum()
    }
}

/// Runs the plan; `progress` is called with each sample (the soak command prints it).
pub fn run_outage(plan: OutagePlan, mut progress: impl FnMut(&Sample)) -> Result<OutageReport> {
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options {
        size_mib: 64,
        write_iops: None,
        read_iops: None,
    })?;
    let rx = OtlpReceiver::grpc().context("starting the receiver")?;
    let addr = rx.addr();
    // The product's defaults, except a shorter batch wait: during an outage each batch
    // gets one try, so a returning collector gets the next batch within 200 ms of
    // batching (with the default 1 s, within about a second).
    let yaml = format!(
        "threshold_ms: {}\ncomm: {}\noutputs: [otlp]\nmetrics:\n  listen: 127.0.0.1:0\n\
         runtime:\n  containerd_socket: off\n  docker_socket: off\nkube:\n  enabled: off\n\
         otlp:\n  endpoint: http://{addr}\n  protocol: grpc\n  batch_size: {BATCH_SIZE}\n  \
         batch_timeout_ms: 200\n",
        plan.threshold_ms,
        comm()
    );
    let mut config = tempfile::NamedTempFile::new()?;
    config.write_all(yaml.as_bytes())?;
    let config_path = config.path().to_str().context("config path")?.to_owned();
    let iostall = Iostall::start(&["--config", &config_path])?;
    let pid = iostall.pid();
    let metrics_addr = metrics_addr_from_log(&iostall.stderr_text())
        .context("iostall logged no metrics address")?;
    let mut recv = Receiving {
        rx: Some(rx),
        comm: comm(),
        addr,
        spans: 0,
        returned_at: None,
        first_after_return: None,
    };

    let load = Load::start(fs.mount_point(), plan.rate)?;
    let t0 = Instant::now();
    let outage_at = plan.before;
    let back_at = plan.before + plan.outage;
    let end_at = back_at + plan.after;
    let mut samples = Vec::new();
    let mut phase = Phase::Before;
    let mut tick = 1u32;
    loop {
        let at = Duration::from_secs(u64::from(tick));
        if let Some(wait) = (t0 + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        recv.drain();
        let rss_kib = vm_rss_kib(pid).context("iostall is gone")?;
        let text = scrape(metrics_addr, "/metrics")?;
        let c = Counters::read(&text)?;
        let sample = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            phase,
            rss_kib,
            records: c.records,
            exported: c.exported,
            dropped: c.dropped_sum(),
            received: recv.spans,
        };
        progress(&sample);
        samples.push(sample);
        if at >= end_at {
            break;
        }
        if at == outage_at {
            recv.go_down();
            phase = Phase::Outage;
        } else if at == back_at {
            recv.come_back()?;
            phase = Phase::After;
        }
        tick += 1;
    }
    let (ops, load_seconds) = load.finish()?;

    // Every record ends exported or dropped; wait for the last batch.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (last, metrics_text) = loop {
        let text = scrape(metrics_addr, "/metrics")?;
        let c = Counters::read(&text)?;
        if c.exported + c.dropped_sum() >= c.records || Instant::now() > deadline {
            break (c, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The receiver may still be taking the last request.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle && recv.spans + last.dropped_sum() < last.records {
        recv.drain();
        std::thread::sleep(Duration::from_millis(50));
    }
    recv.drain();
    let finished = iostall.stop()?;
    drop(fs);
    if recv.returned_at.is_none() && plan.outage > Duration::ZERO {
        bail!("the receiver never came back");
    }
    Ok(OutageReport {
        plan,
        samples,
        ops,
        load_seconds,
        records: last.records,
        received: recv.spans,
        dropped: last.dropped_sum(),
        ringbuf_dropped: last.ringbuf,
        dropped_by_reason: last.dropped,
        first_export_after_return: recv.first_after_return,
        metrics_text,
        stderr: finished.stderr,
        clean_exit: finished.success,
    })
}
