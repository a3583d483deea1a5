//! CRI poller: pod sandboxes and containers from the CRI `runtime.v1` service, into the
//! shared metadata cache.
//!
//! Every [`CriConfig::interval`] (and whenever [`CriRefresh::request`] asks) the poller
//! calls `ListPodSandbox` and `ListContainers` and stores, per sandbox and container,
//! the pod's name, namespace and uid, the container's name, attempt and sandbox id
//! ([`sandbox_meta`], [`container_meta`]). What it listed before and no longer lists
//! leaves the cache after [`CriConfig::deleted_grace`] (only what it added: the
//! containerd source's entries of other namespaces stay).
//!
//! Once per connection it also tries `GetContainerEvents` (containerd ≥ 1.7, CRI-O):
//! each event then triggers a poll at once. containerd 1.6 answers `UNIMPLEMENTED`;
//! that is logged at debug level and polling alone is used.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_cri::v1::{
    Container, GetEventsRequest, ListContainersRequest, ListPodSandboxRequest, PodSandbox,
    runtime_service_client::RuntimeServiceClient,
};
use thiserror::Error;
use tokio::{sync::Notify, task::JoinHandle};
use tonic::transport::Channel;

use super::{
    Connection, ConnectionSettings, Reconnect, SocketOutage,
    containerd::{SharedMetadata, merge_metadata},
    forget_after,
};
use crate::enrich::{
    cgroup_path::Runtime,
    metadata::{ContainerKind, ContainerMeta},
};

/// The default CRI socket (containerd's).
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// Errors of the CRI poller.
#[derive(Debug, Error)]
pub enum CriError {
    /// The socket did not accept a connection.
    #[error("failed to connect to the CRI socket {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call returned an error status.
    #[error("CRI {op} failed: {code:?}: {message}")]
    Call {
        /// The call (`ListContainers`…).
        op: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// A call did not answer in time.
    #[error("CRI {op} did not answer within {timeout:?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// The timeout.
        timeout: Duration,
    },
}

/// A sandbox's metadata: the pod's name, namespace and uid (from the kubelet's labels,
/// else the sandbox metadata), its attempt. `None` without an id.
#[must_use]
pub fn sandbox_meta(s: &PodSandbox) -> Option<ContainerMeta> {
    let labels: BTreeMap<String, String> = s
        .annotations
        .iter()
        .chain(&s.labels)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut meta = ContainerMeta::from_labels(&s.id, labels)
        .ok()?
        .with_runtime(Runtime::Containerd)
        .with_sandbox_id(s.id.clone());
    meta.kind = Some(ContainerKind::Sandbox);
    if let Some(m) = &s.metadata {
        let or = |field: &mut Option<String>, value: &str| {
            if field.is_none() && !value.is_empty() {
                *field = Some(value.to_owned());
            }
        };
        or(&mut meta.pod_name, &m.name);
        or(&mut meta.pod_namespace, &m.namespace);
        or(&mut meta.pod_uid, &m.uid);
        meta.attempt = Some(m.attempt);
    }
    Some(meta)
}

/// A container's metadata: pod name, namespace and uid (the kubelet's labels), the
/// container's name and attempt (CRI metadata when the labels lack them), its sandbox
/// id and image. `None` without an id.
#[must_use]
pub fn container_meta(c: &Container) -> Option<ContainerMeta> {
    let labels: BTreeMap<String, String> = c
        .annotations
        .iter()
        .chain(&c.labels)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut meta = ContainerMeta::from_labels(&c.id, labels)
        .ok()?
        .with_runtime(Runtime::Containerd);
    meta.kind = Some(ContainerKind::Container);
    if !c.pod_sandbox_id.is_empty() {
        meta = meta.with_sandbox_id(c.pod_sandbox_id.clone());
    }
    if let Some(m) = &c.metadata {
        if meta.container_name.is_none() && !m.name.is_empty() {
            meta.container_name = Some(m.name.clone());
        }
        meta = meta.with_attempt(m.attempt);
    }
    if meta.image.is_none()
        && let Some(image) = c.image.as_ref().filter(|i| !i.image.is_empty())
    {
        meta.image = Some(image.image.clone());
    }
    Some(meta)
}

/// What one poll saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Sandboxes listed.
    pub sandboxes: usize,
    /// Containers listed.
    pub containers: usize,
    /// Entries removed from the cache because the runtime no longer lists them.
    pub removed: usize,
}

/// Settings of the CRI poller.
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// The socket, call timeout and reconnect delays. Default socket [`DEFAULT_SOCKET`].
    pub connection: Connection,
    /// Time between polls. Default 10 s.
    pub interval: Duration,
    /// How long a container the runtime stopped listing stays in the metadata cache.
    /// Default [`super::DELETED_GRACE`].
    pub deleted_grace: Duration,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            connection: Connection::new(DEFAULT_SOCKET),
            interval: Duration::from_secs(10),
            deleted_grace: super::DELETED_GRACE,
        }
    }
}

impl ConnectionSettings for CriConfig {
    fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

impl CriConfig {
    /// Polls every `interval` (at least 100 ms).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Keeps containers the runtime no longer lists this long (zero: forget at once).
    #[must_use]
    pub fn with_deleted_grace(mut self, grace: Duration) -> Self {
        self.deleted_grace = grace;
        self
    }
}

/// Counters of the poller.
#[derive(Debug, Default)]
pub struct CriStats {
    polls: AtomicU64,
    failures: AtomicU64,
    events: AtomicU64,
    event_stream: AtomicBool,
}

impl CriStats {
    /// Polls that succeeded.
    #[must_use]
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Polls or connections that failed.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// `GetContainerEvents` events received.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Whether the runtime implements `GetContainerEvents`.
    #[must_use]
    pub fn has_event_stream(&self) -> bool {
        self.event_stream.load(Ordering::Relaxed)
    }
}

/// Asks a running [`CriPoller`] to poll now.
#[derive(Debug, Clone)]
pub struct CriRefresh(Arc<Notify>);

impl CriRefresh {
    /// Requests a poll (coalesced with one already requested).
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Aborts the event-stream task when the connection ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The CRI poller.
#[derive(Debug)]
pub struct CriPoller {
    config: CriConfig,
    metadata: SharedMetadata,
    refresh: Arc<Notify>,
    stats: Arc<CriStats>,
    /// Ids listed by the last poll.
    known: HashSet<String>,
    /// Outages of the containerd events source on the same socket.
    covered_by: Option<SocketOutage>,
}

impl CriPoller {
    /// A poller filling `metadata`.
    #[must_use]
    pub fn new(config: CriConfig, metadata: SharedMetadata) -> Self {
        Self {
            config,
            metadata,
            refresh: Arc::new(Notify::new()),
            stats: Arc::default(),
            known: HashSet::new(),
            covered_by: None,
        }
    }

    /// Logs an outage that begins while `outage` (the containerd events source on the
    /// same socket) is down at DEBUG only: that source already warned about the socket.
    #[must_use]
    pub fn covered_by(mut self, outage: SocketOutage) -> Self {
        self.covered_by = Some(outage);
        self
    }

    /// A handle to request polls.
    #[must_use]
    pub fn refresher(&self) -> CriRefresh {
        CriRefresh(Arc::clone(&self.refresh))
    }

    /// The poller's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<CriStats> {
        Arc::clone(&self.stats)
    }

    /// Runs [`CriPoller::run`] on a new task.
    #[must_use]
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Polls forever (abort the task to stop), reconnecting with backoff.
    pub async fn run(mut self) {
        let mut reconnect = self.config.connection.reconnect("CRI");
        if let Some(outage) = &self.covered_by {
            reconnect = reconnect.covered_by(outage.clone());
        }
        let mut try_events = true;
        loop {
            let error = self.connection(&mut reconnect, &mut try_events).await;
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            reconnect.wait_after_failure(&error).await;
        }
    }

    /// One connection: poll until a call fails.
    async fn connection(&mut self, reconnect: &mut Reconnect, try_events: &mut bool) -> CriError {
        let mut client = match self.connect().await {
            Ok(client) => client,
            Err(e) => return e,
        };
        // Tried on the first connection; again later only if the runtime has it.
        let want_events = *try_events || self.stats.has_event_stream();
        *try_events = false;
        let _events = if want_events {
            Some(AbortOnDrop(tokio::spawn(follow_events(
                client.clone(),
                Arc::clone(&self.refresh),
                Arc::clone(&self.stats),
            ))))
        } else {
            None
        };
        let mut first = true;
        loop {
            if let Err(e) = self.poll_once(&mut client).await {
                return e;
            }
            if first {
                reconnect.connected();
                first = false;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = self.refresh.notified() => {}
            }
        }
    }

    async fn connect(&self) -> Result<RuntimeServiceClient<Channel>, CriError> {
        let channel = containerd_client::connect(&self.config.connection.socket)
            .await
            .map_err(|source| CriError::Connect {
                socket: self.config.connection.socket.clone(),
                source,
            })?;
        Ok(RuntimeServiceClient::new(channel))
    }

    /// Lists sandboxes and containers once into the cache.
    pub async fn poll_once(
        &mut self,
        client: &mut RuntimeServiceClient<Channel>,
    ) -> Result<PollSummary, CriError> {
        let timeout = self.config.connection.call_timeout;
        let sandboxes = timed(
            "ListPodSandbox",
            timeout,
            client.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )
        .await?
        .items;
        let containers = timed(
            "ListContainers",
            timeout,
            client.list_containers(ListContainersRequest { filter: None }),
        )
        .await?
        .containers;
        let metas: Vec<ContainerMeta> = sandboxes
            .iter()
            .filter_map(sandbox_meta)
            .chain(containers.iter().filter_map(container_meta))
            .collect();
        let seen: HashSet<String> = metas.iter().map(|m| m.id.clone()).collect();
        for meta in metas {
            merge_metadata(&self.metadata, meta);
        }
        let gone: Vec<&String> = self.known.difference(&seen).collect();
        for id in &gone {
            forget_after(&self.metadata, (*id).clone(), self.config.deleted_grace);
        }
        let summary = PollSummary {
            sandboxes: sandboxes.len(),
            containers: containers.len(),
            removed: gone.len(),
        };
        self.known = seen;
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        Ok(summary)
    }

    /// Connects and polls once (for a one-shot listing, or to check the socket).
    pub async fn poll_now(&mut self) -> Result<PollSummary, CriError> {
        let mut client = self.connect().await?;
        self.poll_once(&mut client).await
    }
}

/// Follows `GetContainerEvents`, requesting a poll per event, until it fails.
async fn follow_events(
    mut client: RuntimeServiceClient<Channel>,
    refresh: Arc<Notify>,
    stats: Arc<CriStats>,
) {
    let mut stream = match client.get_container_events(GetEventsRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::debug!(
                "the CRI runtime does not implement GetContainerEvents ({}): polling only",
                status.message()
            );
            return;
        }
        Err(status) => {
            tracing::debug!(
                "CRI GetContainerEvents failed: {:?}: {}; polling only",
                status.code(),
                status.message()
            );
            return;
        }
    };
    stats.event_stream.store(true, Ordering::Relaxed);
    loop {
        match stream.message().await {
            Ok(Some(_event)) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                refresh.notify_one();
            }
            Ok(None) => return,
            Err(status) => {
                tracing::debug!("CRI event stream ended: {status}");
                return;
            }
        }
    }
}

/// Awaits a call with a timeout.
async fn timed<T>(
    op: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CriError::Call {
            op,
            code: status.code(),
            message: status.message().to_owned(),
        }),
        Err(_) => Err(CriError::Timeout { op, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_cri::v1::{ContainerMetadata, ImageSpec, PodSandboxMetadata};

    use super::*;

    #[test]
    fn sandbox_from_metadata_when_labels_lack() {
        let s = PodSandbox {
            id: "sb1".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web-0".into(),
                uid: "u1".into(),
                namespace: "shop".into(),
                attempt: 2,
            }),
            ..PodSandbox::default()
        };
        let meta = sandbox_meta(&s).expect("meta");
        assert_eq!(meta.kind, Some(ContainerKind::Sandbox));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"));
        assert_eq!(meta.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(meta.pod_uid.as_deref(), Some("u1"));
        assert_eq!(meta.attempt, Some(2));
        assert!(sandbox_meta(&PodSandbox::default()).is_none());
    }

    #[test]
    fn container_from_labels_and_metadata() {
        let c = Container {
            id: "c1".into(),
            pod_sandbox_id: "sb1".into(),
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            image: Some(ImageSpec {
                image: "sha256:abc".into(),
                ..ImageSpec::default()
            }),
            labels: HashMap::from([
                ("io.kubernetes.pod.name".into(), "web-0".into()),
                ("io.kubernetes.pod.namespace".into(), "shop".into()),
                ("io.kubernetes.pod.uid".into(), "u1".into()),
            ]),
            ..Container::default()
        };
        let meta = container_meta(&c).expect("meta");
        assert_eq!(meta.container_name.as_deref(), Some("app"));
        assert_eq!(meta.attempt, Some(3));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"));
        assert_eq!(meta.pod_uid.as_deref(), Some("u1"));
        assert_eq!(meta.image.as_deref(), Some("sha256:abc"));
        assert_eq!(meta.kind, Some(ContainerKind::Container));
    }
}
