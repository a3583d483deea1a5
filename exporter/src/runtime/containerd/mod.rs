//! containerd source: its events service over the gRPC socket, plus a listing of what
//! already exists.
//!
//! Each session connects to the socket, subscribes to every namespace's events
//! (`Events.Subscribe`, empty filter = all), then lists the containers of every
//! namespace (`Namespaces.List`, `Containers.List`, `Tasks.List`) so nothing that already
//! runs is unknown ([`RuntimeEventKind::ContainerListed`]), then follows the stream.
//! containerd's events carry no labels: the source fetches them (`Containers.Get`: the
//! labels, and the `io.kubernetes.cri.*` annotations of the OCI spec) when a container
//! is created or updated, or when a task event names a container it does not know, and
//! keeps the shared [`MetadataCache`] up to date.
//!
//! containerd sends a stream's response headers with its first event, so the
//! subscription runs on its own task while the session lists (a tonic call returns only
//! with the headers). Events that happen between the listing and the moment containerd
//! registers the subscription can be missed; the listing, the next event of the same
//! container and the CRI poller ([`super::cri`]) fill the cache anyway.
//!
//! When containerd goes away the session ends and [`Reconnect`] retries with backoff
//! (one log line per outage). Nothing here blocks the kernel pipeline: events go out
//! with [`EventSender::send`] (`try_send`, drops counted), and calls to containerd have a
//! timeout.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use containerd_client::{
    services::v1::{
        Container, GetContainerRequest, ListContainersRequest, ListNamespacesRequest,
        ListTasksRequest, SubscribeRequest, containers_client::ContainersClient,
        events_client::EventsClient, namespaces_client::NamespacesClient,
        tasks_client::TasksClient,
    },
    types::{Envelope, v1::Status as TaskStatus},
};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

mod decode;

pub use decode::{
    ContainerdEvent, ContainerdMessage, container_meta, decode_envelope, runtime_event,
    spec_annotations,
};

use super::{
    CREATED_ATTRIBUTE, Connection, ConnectionSettings, EventSender, EventSource, Reconnect,
    RuntimeEvent, RuntimeEventKind, SendOutcome, SocketOutage, forget_after,
};
use crate::enrich::metadata::ContainerMeta;

/// containerd's default gRPC socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// The gRPC metadata key that selects a containerd namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Envelopes buffered between the subscription task and the session.
const SUBSCRIPTION_BUFFER: usize = 1024;

pub use crate::enrich::metadata::{SharedMetadata, merge_metadata, shared_metadata};

/// Errors of the containerd source.
#[derive(Debug, Error)]
pub enum ContainerdError {
    /// The socket did not accept a connection.
    #[error("failed to connect to containerd at {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call returned an error status.
    #[error("containerd {op} failed: {code:?}: {message}")]
    Call {
        /// The call (`Containers.Get`…).
        op: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// A call did not answer in time.
    #[error("containerd {op} did not answer within {timeout:?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// A namespace name is not a valid gRPC metadata value.
    #[error("containerd namespace {0:?} is not a valid gRPC metadata value")]
    BadNamespace(String),
    /// The event stream ended (containerd stopped or restarted).
    #[error("containerd's event stream ended")]
    StreamEnded,
    /// An event's payload did not decode as its topic says.
    #[error("failed to decode the payload of a {topic} event: {source}")]
    Decode {
        /// The topic.
        topic: String,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
}

impl ContainerdError {
    fn call(op: &'static str, status: &tonic::Status) -> Self {
        Self::Call {
            op,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Settings of the containerd source.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The socket, call timeout and reconnect delays. Default socket [`DEFAULT_SOCKET`].
    pub connection: Connection,
    /// Namespaces to follow; empty (the default) follows all.
    pub namespaces: Vec<String>,
    /// How long a deleted container stays in the metadata cache. Default
    /// [`super::DELETED_GRACE`].
    pub deleted_grace: Duration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            connection: Connection::new(DEFAULT_SOCKET),
            namespaces: Vec::new(),
            deleted_grace: super::DELETED_GRACE,
        }
    }
}

impl ConnectionSettings for ContainerdConfig {
    fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

impl ContainerdConfig {
    /// Follows only these namespaces.
    #[must_use]
    pub fn with_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.namespaces = namespaces.into_iter().collect();
        self
    }

    /// Keeps deleted containers' metadata this long (zero: forget at once).
    #[must_use]
    pub fn with_deleted_grace(mut self, grace: Duration) -> Self {
        self.deleted_grace = grace;
        self
    }
}

/// Counters of the containerd source (shared with its handle).
#[derive(Debug, Default)]
pub struct ContainerdStats {
    sessions: AtomicU64,
    envelopes: AtomicU64,
    decode_errors: AtomicU64,
    lookup_errors: AtomicU64,
}

impl ContainerdStats {
    /// Sessions that subscribed and listed (1 + reconnects).
    #[must_use]
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Envelopes received.
    #[must_use]
    pub fn envelopes(&self) -> u64 {
        self.envelopes.load(Ordering::Relaxed)
    }

    /// Envelopes whose payload did not decode.
    #[must_use]
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// `Containers.Get` calls that failed (container gone, timeout…).
    #[must_use]
    pub fn lookup_errors(&self) -> u64 {
        self.lookup_errors.load(Ordering::Relaxed)
    }
}

/// Aborts the subscription task when the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The containerd event source.
#[derive(Debug)]
pub struct ContainerdSource {
    config: ContainerdConfig,
    sender: EventSender,
    metadata: SharedMetadata,
    stats: Arc<ContainerdStats>,
    outage: Option<SocketOutage>,
}

impl ContainerdSource {
    /// A source sending into `sender` and filling `metadata`.
    #[must_use]
    pub fn new(config: ContainerdConfig, sender: EventSender, metadata: SharedMetadata) -> Self {
        Self {
            config,
            sender,
            metadata,
            stats: Arc::default(),
            outage: None,
        }
    }

    /// Publishes this source's outages, for a CRI poller on the same socket to stay
    /// quiet about them ([`super::Reconnect::covered_by`]).
    #[must_use]
    pub fn reporting(mut self, outage: SocketOutage) -> Self {
        self.outage = Some(outage);
        self
    }

    /// The source's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<ContainerdStats> {
        Arc::clone(&self.stats)
    }

    /// Runs [`ContainerdSource::run`] on a new task.
    #[must_use]
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Follows containerd until the receiver is dropped, reconnecting with backoff.
    pub async fn run(self) {
        let mut reconnect = self.config.connection.reconnect("containerd events");
        if let Some(outage) = &self.outage {
            reconnect = reconnect.reporting(outage.clone());
        }
        loop {
            let result = self.session(&mut reconnect).await;
            if self.sender.is_closed() {
                return;
            }
            let error = result.err().unwrap_or(ContainerdError::StreamEnded);
            reconnect.wait_after_failure(&error).await;
        }
    }

    /// One connection: subscribe, list, follow. `Ok` when the receiver is gone.
    async fn session(&self, reconnect: &mut Reconnect) -> Result<(), ContainerdError> {
        let channel = containerd_client::connect(&self.config.connection.socket)
            .await
            .map_err(|source| ContainerdError::Connect {
                socket: self.config.connection.socket.clone(),
                source,
            })?;
        let (tx, mut rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let filters = self
            .config
            .namespaces
            .iter()
            .map(|ns| format!("namespace=={ns}"))
            .collect();
        let _subscription = AbortOnDrop(tokio::spawn(subscribe(
            EventsClient::new(channel.clone()),
            filters,
            tx,
        )));
        let calls = Calls {
            channel,
            timeout: self.config.connection.call_timeout,
        };
        if self.list(&calls).await? == SendOutcome::Closed {
            return Ok(());
        }
        reconnect.connected();
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        while let Some(envelope) = rx.recv().await {
            if self.handle(&calls, &envelope?).await == SendOutcome::Closed {
                return Ok(());
            }
        }
        Err(ContainerdError::StreamEnded)
    }

    /// Lists every container of every followed namespace into the cache, and sends a
    /// [`RuntimeEventKind::ContainerListed`] for each.
    async fn list(&self, calls: &Calls) -> Result<SendOutcome, ContainerdError> {
        let namespaces = calls.namespaces().await?;
        let now = super::now_unix_ns();
        for ns in namespaces {
            if !self.config.namespaces.is_empty() && !self.config.namespaces.contains(&ns) {
                continue;
            }
            let containers = calls.containers(&ns).await?;
            let tasks = calls.tasks(&ns).await?;
            for c in &containers {
                let Some(meta) = container_meta(c) else {
                    continue;
                };
                let task = tasks.get(&c.id);
                let running = task.is_some_and(|(_, status)| *status == TaskStatus::Running);
                let mut ev = RuntimeEvent::new(
                    now,
                    EventSource::Containerd,
                    RuntimeEventKind::ContainerListed { running },
                );
                ev.container_id = Some(c.id.clone());
                ev.namespace = Some(ns.clone());
                ev.image = meta.image.clone();
                ev.sandbox_id.clone_from(&meta.sandbox_id);
                ev.labels = meta.labels.clone();
                if let Some((pid, _)) = task.filter(|(pid, _)| *pid > 0) {
                    ev.attributes.insert("pid".to_owned(), pid.to_string());
                }
                // When it was made: a restarted iostall resumes the startups still going.
                if let Some(t) = &c.created_at {
                    let created = decode::timestamp_ns(t.seconds, t.nanos);
                    ev.attributes
                        .insert(CREATED_ATTRIBUTE.to_owned(), created.to_string());
                }
                merge_metadata(&self.metadata, meta);
                if self.sender.send(ev) == SendOutcome::Closed {
                    return Ok(SendOutcome::Closed);
                }
            }
        }
        Ok(SendOutcome::Sent)
    }

    /// Decodes one envelope, updates the cache, sends the event.
    async fn handle(&self, calls: &Calls, envelope: &Envelope) -> SendOutcome {
        self.stats.envelopes.fetch_add(1, Ordering::Relaxed);
        let msg = match decode_envelope(envelope) {
            Ok(msg) => msg,
            Err(e) => {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("skipping a containerd event: {e}");
                return SendOutcome::Sent;
            }
        };
        let Some(id) = msg.event.container_id() else {
            return runtime_event(&msg, None).map_or(SendOutcome::Sent, |ev| self.sender.send(ev));
        };
        let known = self.cached(id).is_some();
        let refresh = matches!(
            msg.event,
            ContainerdEvent::ContainerCreate { .. } | ContainerdEvent::ContainerUpdate { .. }
        ) || (!known
            && !matches!(msg.event, ContainerdEvent::ContainerDelete { .. }));
        if refresh {
            match calls.container(&msg.namespace, id).await {
                Ok(c) => {
                    if let Some(meta) = container_meta(&c) {
                        merge_metadata(&self.metadata, meta);
                    }
                }
                Err(e) => {
                    self.stats.lookup_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(container.id = id, "no labels for a containerd event: {e}");
                }
            }
        }
        let meta = self.cached(id);
        let ev = runtime_event(&msg, meta.as_ref());
        if matches!(msg.event, ContainerdEvent::ContainerDelete { .. }) {
            forget_after(&self.metadata, id.to_owned(), self.config.deleted_grace);
        }
        ev.map_or(SendOutcome::Sent, |ev| self.sender.send(ev))
    }

    fn cached(&self, id: &str) -> Option<ContainerMeta> {
        self.metadata
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .container(id)
            .cloned()
    }
}

/// Forwards the event stream into `tx` until it fails or the session drops `rx`.
async fn subscribe(
    mut client: EventsClient<Channel>,
    filters: Vec<String>,
    tx: mpsc::Sender<Result<Envelope, ContainerdError>>,
) {
    let result = async {
        let mut stream = client
            .subscribe(SubscribeRequest { filters })
            .await
            .map_err(|s| ContainerdError::call("Events.Subscribe", &s))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(envelope)) => {
                    if tx.send(Ok(envelope)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(ContainerdError::StreamEnded),
                Err(s) => return Err(ContainerdError::call("Events.Subscribe", &s)),
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

/// Unary calls with a namespace and a timeout.
struct Calls {
    channel: Channel,
    timeout: Duration,
}

impl Calls {
    fn request<T>(namespace: &str, message: T) -> Result<Request<T>, ContainerdError> {
        let mut request = Request::new(message);
        let value = MetadataValue::try_from(namespace)
            .map_err(|_| ContainerdError::BadNamespace(namespace.to_owned()))?;
        request.metadata_mut().insert(NAMESPACE_HEADER, value);
        Ok(request)
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ContainerdError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ContainerdError::call(op, &status)),
            Err(_) => Err(ContainerdError::Timeout {
                op,
                timeout: self.timeout,
            }),
        }
    }

    async fn namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let mut client = NamespacesClient::new(self.channel.clone());
        let resp = self
            .timed(
                "Namespaces.List",
                client.list(ListNamespacesRequest::default()),
            )
            .await?;
        Ok(resp.namespaces.into_iter().map(|n| n.name).collect())
    }

    async fn containers(&self, namespace: &str) -> Result<Vec<Container>, ContainerdError> {
        let mut client = ContainersClient::new(self.channel.clone());
        let request = Self::request(namespace, ListContainersRequest::default())?;
        Ok(self
            .timed("Containers.List", client.list(request))
            .await?
            .containers)
    }

    /// Container id → (init pid, status) of the namespace's tasks.
    async fn tasks(
        &self,
        namespace: &str,
    ) -> Result<HashMap<String, (u32, TaskStatus)>, ContainerdError> {
        let mut client = TasksClient::new(self.channel.clone());
        let request = Self::request(namespace, ListTasksRequest::default())?;
        let resp = self.timed("Tasks.List", client.list(request)).await?;
        Ok(resp
            .tasks
            .into_iter()
            .map(|p| {
                let status = TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown);
                // containerd 1.6 leaves `container_id` empty here: a task's `id` is
                // its container's.
                let id = if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                };
                (id, (p.pid, status))
            })
            .collect())
    }

    async fn container(&self, namespace: &str, id: &str) -> Result<Container, ContainerdError> {
        let mut client = ContainersClient::new(self.channel.clone());
        let request = Self::request(namespace, GetContainerRequest { id: id.to_owned() })?;
        self.timed("Containers.Get", client.get(request))
            .await?
            .container
            .ok_or_else(|| ContainerdError::Call {
                op: "Containers.Get",
                code: tonic::Code::NotFound,
                message: format!("no container in the answer for {id}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::metadata::LABEL_POD_NAME;

    #[test]
    fn merge_keeps_what_the_new_entry_lacks() {
        let cache = shared_metadata();
        merge_metadata(
            &cache,
            ContainerMeta::from_labels("c", [(LABEL_POD_NAME, "web-0")])
                .expect("meta")
                .with_attempt(2),
        );
        merge_metadata(
            &cache,
            ContainerMeta::from_labels("c", [("other", "x")]).expect("meta"),
        );
        let cache = cache.read().expect("lock");
        let c = cache.container("c").expect("cached");
        assert_eq!(c.pod_name.as_deref(), Some("web-0"));
        assert_eq!(c.attempt, Some(2));
        assert_eq!(c.labels.len(), 2);
    }
}
