//! runtime: container runtime and Kubernetes lifecycle events, as one stream.
//!
//! Every source ([`docker`], the containerd/CRI sources, [`kube`]) turns what its runtime
//! says into [`RuntimeEvent`]s and hands them to an [`EventSender`], which never blocks:
//! when the consumer lags, events are dropped and counted. Sources survive an absent or
//! restarting runtime through [`Reconnect`]: exponential backoff with jitter, one log
//! line per outage.

pub mod containerd;
pub mod cri;
pub mod docker;
pub mod kube;
pub mod start;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::enrich::{
    cgroup_path::Runtime,
    metadata::{ContainerKind, ContainerMeta, DOCKER_SANDBOX_ID, LABEL_POD_UID, SharedMetadata},
};

/// Which source reported an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// containerd's events service.
    Containerd,
    /// dockerd's `/events` API.
    Docker,
    /// The CRI runtime service.
    Cri,
    /// The Kubernetes API (pods on this node).
    Kube,
    /// iostall's own eBPF programs (cgroup, exec/exit and OOM tracepoints).
    Kernel,
}

impl EventSource {
    /// Lower-case name: `containerd`, `docker`, `cri`, `kube` or `kernel`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Docker => "docker",
            Self::Cri => "cri",
            Self::Kube => "kube",
            Self::Kernel => "kernel",
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RuntimeEventKind {
    /// A pod sandbox was created.
    SandboxCreated,
    /// A pod sandbox was started.
    SandboxStarted,
    /// A pod sandbox was stopped.
    SandboxStopped,
    /// A pod sandbox was deleted.
    SandboxDeleted,
    /// A container was created.
    ContainerCreated,
    /// A container's task was started.
    ContainerStarted,
    /// A container's task exited.
    ContainerExited {
        /// Its exit code (128 + signal when killed by one).
        exit_code: i32,
    },
    /// A container hit its memory limit.
    ContainerOom,
    /// A container was deleted.
    ContainerDeleted,
    /// A container that already existed when the source (re)connected (a listing, not
    /// a change).
    ContainerListed {
        /// Whether it was running then.
        running: bool,
    },
    /// An image was pulled.
    ImagePulled,
    /// An image was loaded or imported from an archive.
    ImageLoaded,
    /// A runtime shim started.
    ShimStarted,
    /// A runtime shim exited.
    ShimExited,
    /// A pod appeared on this node (Kubernetes API).
    PodAdded,
    /// A pod on this node changed.
    PodUpdated,
    /// A pod left this node.
    PodDeleted,
    /// A container's cgroup was made (kernel).
    CgroupCreated,
    /// A container's cgroup was removed (kernel).
    CgroupRemoved,
    /// A process in a container, or a runtime daemon, called `execve` (kernel).
    ProcessExec,
    /// A process in a container, or a runtime daemon, exited (kernel).
    ProcessExit {
        /// Its exit code as a shell shows it (128 + signal when killed by one).
        exit_code: i32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// The OOM killer chose a victim (kernel).
    OomKill,
}

impl RuntimeEventKind {
    /// A low-cardinality name, usable as a log record's event name
    /// (`container.exited`, `pod.added`…).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::SandboxCreated => "sandbox.created",
            Self::SandboxStarted => "sandbox.started",
            Self::SandboxStopped => "sandbox.stopped",
            Self::SandboxDeleted => "sandbox.deleted",
            Self::ContainerCreated => "container.created",
            Self::ContainerStarted => "container.started",
            Self::ContainerExited { .. } => "container.exited",
            Self::ContainerOom => "container.oom",
            Self::ContainerDeleted => "container.deleted",
            Self::ContainerListed { .. } => "container.listed",
            Self::ImagePulled => "image.pulled",
            Self::ImageLoaded => "image.loaded",
            Self::ShimStarted => "shim.started",
            Self::ShimExited => "shim.exited",
            Self::PodAdded => "pod.added",
            Self::PodUpdated => "pod.updated",
            Self::PodDeleted => "pod.deleted",
            Self::CgroupCreated => "cgroup.created",
            Self::CgroupRemoved => "cgroup.removed",
            Self::ProcessExec => "process.exec",
            Self::ProcessExit { .. } => "process.exit",
            Self::OomKill => "oom.kill",
        }
    }
}

/// One lifecycle event from a runtime or the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeEvent {
    /// When it happened (the runtime's clock), nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// Who reported it.
    pub runtime: EventSource,
    /// What happened.
    pub kind: RuntimeEventKind,
    /// The container (or, for sandbox kinds, the sandbox) id.
    pub container_id: Option<String>,
    /// The pod sandbox id, when known.
    pub sandbox_id: Option<String>,
    /// The runtime's namespace (containerd `k8s.io`/`moby`; the pod namespace for kube).
    pub namespace: Option<String>,
    /// The image reference (for image kinds: the image itself).
    pub image: Option<String>,
    /// The container's (or pod's) labels, as the runtime reports them.
    pub labels: BTreeMap<String, String>,
    /// Other runtime-specific attributes (`name`, `exitCode`, `signal`, pod `uid`…).
    pub attributes: BTreeMap<String, String>,
}

impl RuntimeEvent {
    /// Cuts every value to [`crate::bounds`]' limits (a runtime's labels are whatever
    /// the container's creator wrote); returns whether anything was cut.
    pub fn bound(&mut self) -> bool {
        use crate::bounds::{bound_map, cut_opt};
        let mut cut_any = false;
        for s in [
            &mut self.container_id,
            &mut self.sandbox_id,
            &mut self.namespace,
            &mut self.image,
        ] {
            cut_any |= cut_opt(s);
        }
        cut_any |= bound_map(&mut self.labels);
        cut_any | bound_map(&mut self.attributes)
    }

    /// An event with no ids, labels or attributes yet.
    #[must_use]
    pub fn new(time_unix_ns: u64, runtime: EventSource, kind: RuntimeEventKind) -> Self {
        Self {
            time_unix_ns,
            runtime,
            kind,
            container_id: None,
            sandbox_id: None,
            namespace: None,
            image: None,
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// The container's metadata from the event's labels (pod name, namespace and uid,
    /// container name, sandbox id), for [`crate::enrich::metadata::MetadataCache`].
    /// `None` for events about no container (images, pods).
    #[must_use]
    pub fn container_meta(&self) -> Option<ContainerMeta> {
        let id = self.container_id.as_deref()?;
        let mut meta = ContainerMeta::from_labels(id, self.labels.clone()).ok()?;
        if let Some(image) = &self.image {
            meta = meta.with_image(image.clone());
        }
        let runtime = match self.runtime {
            EventSource::Docker => Some(Runtime::Docker),
            EventSource::Containerd | EventSource::Cri => Some(Runtime::Containerd),
            EventSource::Kube | EventSource::Kernel => None,
        };
        if let Some(runtime) = runtime {
            meta = meta.with_runtime(runtime);
        }
        if meta.sandbox_id.is_none() {
            meta.sandbox_id.clone_from(&self.sandbox_id);
        }
        Some(meta)
    }

    /// The pod uid from the labels (`io.kubernetes.pod.uid`), when the kubelet set it.
    #[must_use]
    pub fn pod_uid(&self) -> Option<&str> {
        self.labels.get(LABEL_POD_UID).map(String::as_str)
    }

    /// The docker sandbox id label (`io.kubernetes.sandbox.id`, dockershim/cri-dockerd).
    #[must_use]
    pub fn docker_sandbox_label(&self) -> Option<&str> {
        self.labels.get(DOCKER_SANDBOX_ID).map(String::as_str)
    }
}

/// How long a deleted container's metadata is kept: its last IO may still be on its way
/// through the pipeline when the runtime says it is gone.
pub const DELETED_GRACE: Duration = Duration::from_secs(60);

/// The attribute of a listed container ([`RuntimeEventKind::ContainerListed`]) holding
/// when it was made, Unix nanoseconds.
pub const CREATED_ATTRIBUTE: &str = "created_unix_ns";

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
#[must_use]
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Why an event could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued.
    Sent,
    /// The queue was full: dropped and counted.
    Dropped,
    /// The receiver is gone: the source should stop.
    Closed,
}

/// The sending side of the runtime event stream: never blocks, counts what it drops.
///
/// Clones share the counters.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<RuntimeEvent>,
    sent: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl EventSender {
    /// Wraps a bounded channel's sender.
    #[must_use]
    pub fn new(tx: mpsc::Sender<RuntimeEvent>) -> Self {
        Self {
            tx,
            sent: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A bounded channel of `capacity` events (at least 1) and its [`EventSender`].
    #[must_use]
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<RuntimeEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self::new(tx), rx)
    }

    /// Hands `event` over with `try_send`: never waits.
    pub fn send(&self, event: RuntimeEvent) -> SendOutcome {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Sent
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => SendOutcome::Closed,
        }
    }

    /// Whether the receiver is gone.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Events queued so far (all clones).
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Events dropped because the queue was full (all clones).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts an event dropped further on (the updater's queue to the sinks was full).
    pub fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a source reaches its runtime; shared by the containerd, CRI and docker sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The runtime's unix socket.
    pub socket: PathBuf,
    /// Timeout of each unary call. Default 5 s.
    pub call_timeout: Duration,
    /// First reconnect delay. Default 250 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 30 s.
    pub backoff_max: Duration,
}

impl Connection {
    /// Default timeouts and delays, at `socket`.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            call_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// The reconnect state of a source called `what` (`containerd events`, `CRI`…) on
    /// this connection; its log lines name the socket.
    #[must_use]
    pub fn reconnect(&self, what: &str) -> Reconnect {
        Reconnect::for_socket(
            format!("{what} at {}", self.socket.display()),
            &self.socket,
            Backoff::new(self.backoff_initial, self.backoff_max),
        )
    }
}

/// The builder methods every source config has, written once over its [`Connection`].
pub trait ConnectionSettings: Sized {
    /// The config's connection.
    fn connection_mut(&mut self) -> &mut Connection;

    /// Uses another socket.
    #[must_use]
    fn with_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.connection_mut().socket = socket.into();
        self
    }

    /// Uses other reconnect delays.
    #[must_use]
    fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        let connection = self.connection_mut();
        connection.backoff_initial = initial;
        connection.backoff_max = max;
        self
    }

    /// Uses another timeout for each call.
    #[must_use]
    fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.connection_mut().call_timeout = timeout;
        self
    }
}

/// Forgets a deleted container after `grace`, in the background: its last IO may
/// still be on its way through the pipeline when the runtime says it is gone, and
/// should keep its names. A sandbox's pod goes with it when it was the pod's only
/// sandbox.
pub fn forget_after(metadata: &SharedMetadata, id: String, grace: Duration) {
    let metadata = metadata.clone();
    let forget = move || {
        let mut cache = metadata.write().unwrap_or_else(PoisonError::into_inner);
        let Some(meta) = cache.remove(&id) else {
            return;
        };
        if meta.kind == Some(ContainerKind::Sandbox)
            && let Some(uid) = &meta.pod_uid
            && cache
                .pod(uid)
                .is_some_and(|p| p.sandbox_ids.iter().all(|s| *s == id))
        {
            cache.remove_pod(uid);
        }
    };
    if grace.is_zero() {
        forget();
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            forget();
        });
    }
}

/// Exponential backoff with jitter.
///
/// Defaults: 250 ms initial, ×2 per failure, 30 s cap; each delay is drawn uniformly
/// from `[d/2, d]` ("equal jitter"), so restarting nodes do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms), doubles up to `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay (with jitter); doubles the base for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Whether a socket is down, as the source that speaks for it saw last: two sources on
/// one socket (containerd's events API and its CRI) then log one outage, not two.
#[derive(Debug, Clone, Default)]
pub struct SocketOutage(Arc<AtomicBool>);

impl SocketOutage {
    /// Whether the reporting source is in an outage now.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reconnect helper shared by the sources: backoff between attempts, and one log line
/// when an outage starts and one when it ends — never one per retry.
#[derive(Debug)]
pub struct Reconnect {
    what: String,
    backoff: Backoff,
    socket: Option<PathBuf>,
    ever_connected: bool,
    down_since: Option<Instant>,
    failures: u64,
    outages: u64,
    /// Published: this source's outages (it speaks for its socket).
    reports: Option<SocketOutage>,
    /// Read: another source's outages on the same socket.
    covered_by: Option<SocketOutage>,
    /// The current outage began while `covered_by` was down: logged at DEBUG only.
    covered: bool,
}

impl Reconnect {
    /// For a source at a unix socket: an outage before the first connection, while
    /// the socket does not exist, is logged at INFO (the runtime is simply not installed
    /// or not started yet); every other outage is a warning.
    #[must_use]
    pub fn for_socket(what: impl Into<String>, socket: &Path, backoff: Backoff) -> Self {
        Self {
            socket: Some(socket.to_path_buf()),
            ..Self::new(what, backoff)
        }
    }

    /// Never reached, and its socket is absent.
    fn runtime_absent(&self) -> bool {
        !self.ever_connected && self.socket.as_deref().is_some_and(|s| !s.exists())
    }

    /// For a source named `what` (e.g. `docker events at /var/run/docker.sock`).
    #[must_use]
    pub fn new(what: impl Into<String>, backoff: Backoff) -> Self {
        Self {
            what: what.into(),
            backoff,
            socket: None,
            ever_connected: false,
            down_since: None,
            failures: 0,
            outages: 0,
            reports: None,
            covered_by: None,
            covered: false,
        }
    }

    /// Publishes this source's outages to `outage` (for [`Reconnect::covered_by`]).
    #[must_use]
    pub fn reporting(mut self, outage: SocketOutage) -> Self {
        self.reports = Some(outage);
        self
    }

    /// An outage that begins while `outage` is down (another source on the same socket
    /// already warned) is logged at DEBUG, its end too; one that begins while the other
    /// source is connected (this source's own trouble) is logged as usual.
    #[must_use]
    pub fn covered_by(mut self, outage: SocketOutage) -> Self {
        self.covered_by = Some(outage);
        self
    }

    /// Records a failure (logged only if it starts an outage) and returns how long to
    /// wait before the next attempt.
    pub fn failed(&mut self, error: &dyn fmt::Display) -> Duration {
        self.failures += 1;
        let delay = self.backoff.next_delay();
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            self.outages += 1;
            if let Some(r) = &self.reports {
                r.0.store(true, Ordering::Relaxed);
            }
            // A socket that does not exist is said by each source, whichever tried first:
            // a line about the host, not an outage, and the same lines every start.
            self.covered = !self.runtime_absent()
                && self.covered_by.as_ref().is_some_and(SocketOutage::is_down);
            if self.covered {
                tracing::debug!(
                    source = %self.what,
                    "{} unavailable (its socket's outage is already reported): {error}",
                    self.what
                );
            } else if self.runtime_absent() {
                // A node without this runtime is normal (docker-less nodes, CRI-O nodes):
                // worth a line, not a warning. A runtime that was reached and went away
                // is still a warning.
                tracing::info!(
                    source = %self.what,
                    "{} unavailable, retrying in the background with backoff: \
                     the socket does not exist (no such runtime on this host yet)",
                    self.what
                );
            } else {
                tracing::warn!(
                    source = %self.what,
                    "{} unavailable, retrying in the background with backoff: {error}",
                    self.what
                );
            }
        } else {
            tracing::debug!(source = %self.what, ?delay, "still unavailable: {error}");
        }
        delay
    }

    /// Records a failure; the returned timer (await it) is the backoff delay.
    pub fn wait_after_failure(&mut self, error: &dyn fmt::Display) -> tokio::time::Sleep {
        tokio::time::sleep(self.failed(error))
    }

    /// Records a success: resets the backoff and logs the first connection and the end
    /// of an outage.
    pub fn connected(&mut self) {
        if !self.ever_connected {
            // Operators ask "does iostall see my runtime?"; tests wait for this line
            // before making containers whose every event they expect.
            tracing::info!(source = %self.what, "{} connected", self.what);
        }
        self.ever_connected = true;
        self.backoff.reset();
        if let Some(r) = &self.reports {
            r.0.store(false, Ordering::Relaxed);
        }
        if let Some(since) = self.down_since.take() {
            let took = since.elapsed();
            if std::mem::take(&mut self.covered) {
                tracing::debug!(
                    source = %self.what,
                    "{} available again after {took:.1?} ({} failed attempts)",
                    self.what,
                    self.failures
                );
            } else {
                tracing::info!(
                    source = %self.what,
                    "{} available again after {took:.1?} ({} failed attempts)",
                    self.what,
                    self.failures
                );
            }
        }
        self.failures = 0;
    }

    /// Whether the last attempt failed.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Outages seen so far (each logged once).
    #[must_use]
    pub fn outages(&self) -> u64 {
        self.outages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        for late in &d[4..] {
            assert!(*late >= Duration::from_millis(500) && *late <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn reconnect_counts_outages_not_retries() {
        let mut r = Reconnect::new("test", Backoff::default());
        for _ in 0..5 {
            let _ = r.failed(&"refused");
        }
        assert!(r.is_down());
        r.connected();
        let _ = r.failed(&"refused");
        assert_eq!(r.outages(), 2);
    }

    #[test]
    fn a_second_source_on_a_socket_is_quiet_while_the_first_reports_its_outage() {
        let outage = SocketOutage::default();
        let mut events = Reconnect::new("events", Backoff::default()).reporting(outage.clone());
        let mut cri = Reconnect::new("cri", Backoff::default()).covered_by(outage.clone());
        let _ = events.failed(&"refused");
        assert!(outage.is_down());
        let _ = cri.failed(&"refused");
        assert!(cri.covered, "the events source already warned");
        events.connected();
        assert!(!outage.is_down());
        cri.connected();
        assert!(!cri.covered);
        // CRI alone in trouble (its plugin broken): its own warning.
        let _ = cri.failed(&"unimplemented");
        assert!(!cri.covered);
        assert_eq!((events.outages(), cri.outages()), (1, 2));
    }

    #[test]
    fn an_absent_socket_is_said_by_each_source_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let outage = SocketOutage::default();
        let mut events =
            Reconnect::for_socket("events", &socket, Backoff::default()).reporting(outage.clone());
        let mut cri =
            Reconnect::for_socket("cri", &socket, Backoff::default()).covered_by(outage.clone());
        let _ = events.failed(&"no such file");
        let _ = cri.failed(&"no such file");
        assert!(!cri.covered, "an absent runtime is not an outage to cover");
    }

    #[test]
    fn an_absent_socket_is_news_only_until_the_runtime_was_reached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut absent =
            Reconnect::for_socket("x", &dir.path().join("none.sock"), Backoff::default());
        assert!(absent.runtime_absent());
        absent.connected();
        assert!(
            !absent.runtime_absent(),
            "a runtime that was reached and went away is a warning"
        );
        let present = Reconnect::for_socket("y", dir.path(), Backoff::default());
        assert!(!present.runtime_absent());
        assert!(!Reconnect::new("z", Backoff::default()).runtime_absent());
    }

    #[test]
    fn sender_drops_and_counts_when_full() {
        let (tx, mut rx) = EventSender::channel(1);
        let ev = RuntimeEvent::new(1, EventSource::Docker, RuntimeEventKind::ContainerOom);
        assert_eq!(tx.send(ev.clone()), SendOutcome::Sent);
        assert_eq!(tx.send(ev.clone()), SendOutcome::Dropped);
        assert_eq!((tx.sent(), tx.dropped()), (1, 1));
        assert!(rx.try_recv().is_ok());
        drop(rx);
        assert_eq!(tx.send(ev), SendOutcome::Closed);
    }

    #[test]
    fn container_meta_from_kubelet_labels() {
        let mut ev = RuntimeEvent::new(1, EventSource::Docker, RuntimeEventKind::ContainerCreated);
        ev.container_id = Some("abc".into());
        ev.image = Some("busybox:1".into());
        for (k, v) in [
            ("io.kubernetes.pod.name", "web-1"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", "u-1"),
            ("io.kubernetes.container.name", "app"),
        ] {
            ev.labels.insert(k.into(), v.into());
        }
        let meta = ev.container_meta().expect("container event");
        assert_eq!(meta.pod_name.as_deref(), Some("web-1"));
        assert_eq!(meta.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(meta.container_name.as_deref(), Some("app"));
        assert_eq!(meta.runtime, Some(Runtime::Docker));
        assert_eq!(ev.pod_uid(), Some("u-1"));
    }
}
