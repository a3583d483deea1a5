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
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use containerd_client::{
    events::{
        ContainerCreate, ContainerDelete, ContainerUpdate, TaskCreate, TaskDelete, TaskExit,
        TaskOom, TaskStart,
    },
    services::v1::{
        Container, GetContainerRequest, ImageCreate, ImageDelete, ImageUpdate,
        ListContainersRequest, ListNamespacesRequest, ListTasksRequest, SubscribeRequest,
        containers_client::ContainersClient, events_client::EventsClient,
        namespaces_client::NamespacesClient, tasks_client::TasksClient,
    },
    types::{Envelope, v1::Status as TaskStatus},
};
use prost::Message;
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use super::{
    Backoff, EventSender, EventSource, Reconnect, RuntimeEvent, RuntimeEventKind, SendOutcome,
};
use crate::enrich::{
    cgroup_path::Runtime,
    metadata::{ContainerKind, ContainerMeta},
};

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

/// A containerd event, decoded from its envelope's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerdEvent {
    /// `/tasks/create`: a task (the container's init process) was created.
    TaskCreate {
        /// The container.
        container_id: String,
        /// Its init process.
        pid: u32,
    },
    /// `/tasks/start`.
    TaskStart {
        /// The container.
        container_id: String,
        /// Its init process.
        pid: u32,
    },
    /// `/tasks/exit`: a process of the task exited (the init process when
    /// `exec_id == container_id`).
    TaskExit {
        /// The container.
        container_id: String,
        /// The process (the container id for the init process, else an exec id).
        exec_id: String,
        /// Its pid.
        pid: u32,
        /// Its exit status (128 + signal when killed by one).
        exit_status: u32,
    },
    /// `/tasks/oom`: the container hit its memory limit.
    TaskOom {
        /// The container.
        container_id: String,
    },
    /// `/tasks/delete`: the task was deleted (after its exit).
    TaskDelete {
        /// The container.
        container_id: String,
        /// The init process.
        pid: u32,
        /// Its exit status.
        exit_status: u32,
    },
    /// `/containers/create`.
    ContainerCreate {
        /// The container.
        id: String,
        /// Its image.
        image: String,
    },
    /// `/containers/update`.
    ContainerUpdate {
        /// The container.
        id: String,
        /// Its image.
        image: String,
    },
    /// `/containers/delete`.
    ContainerDelete {
        /// The container.
        id: String,
    },
    /// `/images/create` (a pull or an import: containerd does not say which).
    ImageCreate {
        /// The image name.
        name: String,
    },
    /// `/images/update`.
    ImageUpdate {
        /// The image name.
        name: String,
    },
    /// `/images/delete`.
    ImageDelete {
        /// The image name.
        name: String,
    },
    /// Any other topic (snapshots, content, namespaces, exec, sandbox API…).
    Other,
}

impl ContainerdEvent {
    /// The container the event is about, if any.
    #[must_use]
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Self::TaskCreate { container_id, .. }
            | Self::TaskStart { container_id, .. }
            | Self::TaskExit { container_id, .. }
            | Self::TaskOom { container_id }
            | Self::TaskDelete { container_id, .. } => Some(container_id),
            Self::ContainerCreate { id, .. }
            | Self::ContainerUpdate { id, .. }
            | Self::ContainerDelete { id } => Some(id),
            _ => None,
        }
        .map(String::as_str)
        .filter(|id| !id.is_empty())
    }
}

/// An envelope from containerd's events service, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdMessage {
    /// When containerd published it, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The containerd namespace (`k8s.io`, `moby`, `default`…).
    pub namespace: String,
    /// The topic (`/tasks/exit`…).
    pub topic: String,
    /// The payload.
    pub event: ContainerdEvent,
}

/// `(seconds, nanos)` since the Unix epoch as nanoseconds (0 when before it).
fn timestamp_ns(seconds: i64, nanos: i32) -> u64 {
    let (Ok(secs), Ok(nanos)) = (u64::try_from(seconds), u64::try_from(nanos)) else {
        return 0;
    };
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Decodes an envelope. Unknown topics decode to [`ContainerdEvent::Other`].
pub fn decode_envelope(envelope: &Envelope) -> Result<ContainerdMessage, ContainerdError> {
    let payload: &[u8] = envelope
        .event
        .as_ref()
        .map_or(&[], |any| any.value.as_slice());
    let topic = envelope.topic.as_str();
    let err = |source| ContainerdError::Decode {
        topic: topic.to_owned(),
        source,
    };
    let event = match topic {
        "/tasks/create" => {
            let e = TaskCreate::decode(payload).map_err(err)?;
            ContainerdEvent::TaskCreate {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/start" => {
            let e = TaskStart::decode(payload).map_err(err)?;
            ContainerdEvent::TaskStart {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/exit" => {
            let e = TaskExit::decode(payload).map_err(err)?;
            ContainerdEvent::TaskExit {
                container_id: e.container_id,
                exec_id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/tasks/oom" => {
            let e = TaskOom::decode(payload).map_err(err)?;
            ContainerdEvent::TaskOom {
                container_id: e.container_id,
            }
        }
        "/tasks/delete" => {
            let e = TaskDelete::decode(payload).map_err(err)?;
            ContainerdEvent::TaskDelete {
                container_id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/containers/create" => {
            let e = ContainerCreate::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerCreate {
                id: e.id,
                image: e.image,
            }
        }
        "/containers/update" => {
            let e = ContainerUpdate::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerUpdate {
                id: e.id,
                image: e.image,
            }
        }
        "/containers/delete" => {
            let e = ContainerDelete::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerDelete { id: e.id }
        }
        "/images/create" => ContainerdEvent::ImageCreate {
            name: ImageCreate::decode(payload).map_err(err)?.name,
        },
        "/images/update" => ContainerdEvent::ImageUpdate {
            name: ImageUpdate::decode(payload).map_err(err)?.name,
        },
        "/images/delete" => ContainerdEvent::ImageDelete {
            name: ImageDelete::decode(payload).map_err(err)?.name,
        },
        _ => ContainerdEvent::Other,
    };
    Ok(ContainerdMessage {
        time_unix_ns: envelope
            .timestamp
            .as_ref()
            .map_or(0, |t| timestamp_ns(t.seconds, t.nanos)),
        namespace: envelope.namespace.clone(),
        topic: envelope.topic.clone(),
        event,
    })
}

/// The [`RuntimeEvent`] for a decoded message, given what is known about its container
/// (sandbox or not, labels). `None` for what the stream does not report: exec
/// processes' exits, `/tasks/create` and `/tasks/delete` (the container's create, exit
/// and delete carry them), image updates and deletes, container updates, other topics.
#[must_use]
pub fn runtime_event(
    msg: &ContainerdMessage,
    meta: Option<&ContainerMeta>,
) -> Option<RuntimeEvent> {
    use RuntimeEventKind as K;
    let sandbox = meta.is_some_and(|m| m.kind == Some(ContainerKind::Sandbox));
    let pick = |sandbox_kind, container_kind| {
        if sandbox {
            sandbox_kind
        } else {
            container_kind
        }
    };
    let mut attributes = BTreeMap::new();
    let mut image = None;
    let kind = match &msg.event {
        ContainerdEvent::ContainerCreate { image: i, .. } => {
            image = Some(i.clone()).filter(|i| !i.is_empty());
            pick(K::SandboxCreated, K::ContainerCreated)
        }
        ContainerdEvent::TaskStart { pid, .. } => {
            attributes.insert("pid".to_owned(), pid.to_string());
            pick(K::SandboxStarted, K::ContainerStarted)
        }
        ContainerdEvent::TaskExit {
            container_id,
            exec_id,
            pid,
            exit_status,
        } => {
            if !exec_id.is_empty() && exec_id != container_id {
                return None;
            }
            attributes.insert("pid".to_owned(), pid.to_string());
            attributes.insert("exit_code".to_owned(), exit_status.to_string());
            let exit_code = i32::try_from(*exit_status).unwrap_or(i32::MAX);
            pick(K::SandboxStopped, K::ContainerExited { exit_code })
        }
        ContainerdEvent::TaskOom { .. } => K::ContainerOom,
        ContainerdEvent::ContainerDelete { .. } => pick(K::SandboxDeleted, K::ContainerDeleted),
        ContainerdEvent::ImageCreate { name } => {
            let mut ev =
                RuntimeEvent::new(msg.time_unix_ns, EventSource::Containerd, K::ImagePulled);
            ev.namespace = Some(msg.namespace.clone());
            ev.image = Some(name.clone());
            ev.attributes.insert("topic".to_owned(), msg.topic.clone());
            return Some(ev);
        }
        _ => return None,
    };
    let id = msg.event.container_id()?;
    let mut ev = RuntimeEvent::new(msg.time_unix_ns, EventSource::Containerd, kind);
    ev.container_id = Some(id.to_owned());
    ev.namespace = Some(msg.namespace.clone());
    attributes.insert("topic".to_owned(), msg.topic.clone());
    ev.attributes = attributes;
    if let Some(meta) = meta {
        ev.labels = meta.labels.clone();
        ev.sandbox_id.clone_from(&meta.sandbox_id);
        ev.image = meta.image.clone();
    }
    if image.is_some() {
        ev.image = image;
    }
    Some(ev)
}

/// The annotations of an OCI runtime spec, as containerd stores it in a container
/// (`google.protobuf.Any` whose value is the spec's JSON).
#[must_use]
pub fn spec_annotations(spec_json: &[u8]) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    serde_json::from_slice::<Spec>(spec_json)
        .map(|s| s.annotations)
        .unwrap_or_default()
}

/// A containerd container's metadata: its labels and its spec's annotations (labels
/// win), its image. `None` without an id.
#[must_use]
pub fn container_meta(c: &Container) -> Option<ContainerMeta> {
    let mut labels = c
        .spec
        .as_ref()
        .map(|s| spec_annotations(&s.value))
        .unwrap_or_default();
    labels.extend(c.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut meta = ContainerMeta::from_labels(&c.id, labels)
        .ok()?
        .with_runtime(Runtime::Containerd);
    if meta.image.is_none() && !c.image.is_empty() {
        meta.image = Some(c.image.clone());
    }
    Some(meta)
}

/// Settings of the containerd source.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket. Default [`DEFAULT_SOCKET`].
    pub socket: PathBuf,
    /// Namespaces to follow; empty (the default) follows all.
    pub namespaces: Vec<String>,
    /// Timeout of each unary call. Default 5 s.
    pub call_timeout: Duration,
    /// First reconnect delay. Default 250 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 30 s.
    pub backoff_max: Duration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            namespaces: Vec::new(),
            call_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl ContainerdConfig {
    /// Uses another socket.
    #[must_use]
    pub fn with_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        self
    }

    /// Follows only these namespaces.
    #[must_use]
    pub fn with_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.namespaces = namespaces.into_iter().collect();
        self
    }

    /// Uses other reconnect delays.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
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
        }
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
        let mut reconnect = Reconnect::new(
            format!("containerd events at {}", self.config.socket.display()),
            Backoff::new(self.config.backoff_initial, self.config.backoff_max),
        );
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
        let channel = containerd_client::connect(&self.config.socket)
            .await
            .map_err(|source| ContainerdError::Connect {
                socket: self.config.socket.clone(),
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
            timeout: self.config.call_timeout,
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
            self.forget(id, meta.as_ref());
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

    /// Forgets a deleted container; a deleted sandbox also forgets its pod when it was
    /// the pod's only sandbox.
    fn forget(&self, id: &str, meta: Option<&ContainerMeta>) {
        let mut cache = self
            .metadata
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        cache.remove(id);
        if let Some(meta) = meta
            && meta.kind == Some(ContainerKind::Sandbox)
            && let Some(uid) = &meta.pod_uid
            && cache
                .pod(uid)
                .is_some_and(|p| p.sandbox_ids.iter().all(|s| s == id))
        {
            cache.remove_pod(uid);
        }
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
    use containerd_client::to_any;

    use super::*;
    use crate::enrich::metadata::{CRI_CONTAINER_TYPE, LABEL_POD_NAME};

    fn envelope<T: Message + prost::Name>(topic: &str, payload: &T) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(to_any(payload)),
        }
    }

    #[test]
    fn decodes_task_events() {
        let msg = decode_envelope(&envelope(
            "/tasks/exit",
            &TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 42,
                exit_status: 7,
                exited_at: None,
            },
        ))
        .expect("decodes");
        assert_eq!(
            msg.event,
            ContainerdEvent::TaskExit {
                container_id: "c1".into(),
                exec_id: "c1".into(),
                pid: 42,
                exit_status: 7
            }
        );
        let ev = runtime_event(&msg, None).expect("mapped");
        assert_eq!(ev.kind, RuntimeEventKind::ContainerExited { exit_code: 7 });
        assert_eq!(ev.container_id.as_deref(), Some("c1"));
        assert_eq!(ev.namespace.as_deref(), Some("k8s.io"));
        assert_eq!(
            ev.attributes.get("topic").map(String::as_str),
            Some("/tasks/exit")
        );

        let exec_exit = decode_envelope(&envelope(
            "/tasks/exit",
            &TaskExit {
                container_id: "c1".into(),
                id: "exec-1".into(),
                ..TaskExit::default()
            },
        ))
        .expect("decodes");
        assert!(
            runtime_event(&exec_exit, None).is_none(),
            "exec exits are not container exits"
        );

        let oom = decode_envelope(&envelope(
            "/tasks/oom",
            &TaskOom {
                container_id: "c1".into(),
            },
        ))
        .expect("decodes");
        assert_eq!(
            runtime_event(&oom, None).map(|e| e.kind),
            Some(RuntimeEventKind::ContainerOom)
        );
    }

    #[test]
    fn sandbox_events_and_labels_from_metadata() {
        let meta = ContainerMeta::from_labels(
            "sb",
            [(CRI_CONTAINER_TYPE, "sandbox"), (LABEL_POD_NAME, "web-0")],
        )
        .expect("meta");
        let msg = decode_envelope(&envelope(
            "/tasks/start",
            &TaskStart {
                container_id: "sb".into(),
                pid: 9,
            },
        ))
        .expect("decodes");
        let ev = runtime_event(&msg, Some(&meta)).expect("mapped");
        assert_eq!(ev.kind, RuntimeEventKind::SandboxStarted);
        assert_eq!(ev.sandbox_id.as_deref(), Some("sb"));
        assert_eq!(
            ev.labels.get(LABEL_POD_NAME).map(String::as_str),
            Some("web-0")
        );
        assert_eq!(ev.attributes.get("pid").map(String::as_str), Some("9"));
    }

    #[test]
    fn unknown_topics_and_bad_payloads() {
        let mut env = envelope("/snapshot/prepare", &TaskOom::default());
        env.timestamp = None;
        let msg = decode_envelope(&env).expect("decodes");
        assert_eq!(msg.event, ContainerdEvent::Other);
        assert!(runtime_event(&msg, None).is_none());
        let mut bad = envelope("/tasks/start", &TaskOom::default());
        if let Some(any) = bad.event.as_mut() {
            any.value = vec![0xff, 0xff, 0xff];
        }
        assert!(matches!(
            decode_envelope(&bad),
            Err(ContainerdError::Decode { .. })
        ));
    }

    #[test]
    fn spec_annotations_and_container_meta() {
        let spec = br#"{"ociVersion":"1.0.2","annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.sandbox-id":"sb1",
            "io.kubernetes.cri.sandbox-name":"from-annotation",
            "io.kubernetes.cri.container-name":"app"}}"#;
        let mut spec_any = to_any(&TaskOom::default());
        spec_any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec".into();
        spec_any.value = spec.to_vec();
        let c = Container {
            id: "c1".into(),
            labels: HashMap::from([(LABEL_POD_NAME.to_owned(), "web-0".to_owned())]),
            image: "docker.io/library/busybox:1".into(),
            spec: Some(spec_any),
            ..Container::default()
        };
        let meta = container_meta(&c).expect("meta");
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"), "labels win");
        assert_eq!(meta.container_name.as_deref(), Some("app"));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.kind, Some(ContainerKind::Container));
        assert_eq!(meta.image.as_deref(), Some("docker.io/library/busybox:1"));
        assert!(spec_annotations(b"not json").is_empty());
    }

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
