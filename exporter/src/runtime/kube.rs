//! Kubernetes API enrichment: the pods of this node, their owners and labels.
//!
//! A watcher on `pods` with `fieldSelector=spec.nodeName=<node>` feeds a reflector
//! store (`managedFields` and the last-applied annotation dropped); [`KubePodIndex`]
//! answers by pod uid. Owners resolve through one hop: a ReplicaSet's controller
//! (Deployment) and a Job's (CronJob), fetched once per owner and cached;
//! StatefulSet, DaemonSet and others are taken as they are.
//!
//! Without an API server (no kubeconfig or in-cluster environment, or unreachable) the
//! index stays empty, one warning is logged, and the task keeps retrying with backoff:
//! nothing else waits for it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::task::JoinHandle;

use crate::enrich::metadata::{KubePod, PodLabels, PodLookup, PodOwners};

use super::{
    Backoff, EventSender, EventSource, Reconnect, RuntimeEvent, RuntimeEventKind, SendOutcome,
};

/// The annotation `kubectl apply` leaves: a full copy of the object, not worth keeping.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Errors of the Kubernetes source; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Neither a kubeconfig nor the in-cluster environment was found.
    #[error("failed to infer the Kubernetes client configuration: {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// The client could not be built from its configuration.
    #[error("failed to create the Kubernetes client: {0}")]
    CreateClient(#[source] Box<kube::Error>),
    /// Listing or watching pods failed.
    #[error("failed to start watching pods: {0}")]
    WatchStart(#[source] watcher::Error),
    /// The kubeconfig file could not be read or has no usable current context.
    #[error("failed to load the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The API server URL could not be parsed.
    #[error("failed to parse the API server URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// The cause.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Getting an owner object failed.
    #[error("failed to get {kind} {namespace}/{name}: {source}")]
    GetOwner {
        /// `ReplicaSet` or `Job`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Settings of the Kubernetes source.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// This node's name (`spec.nodeName` of its pods); usually from the downward API.
    pub node_name: String,
    /// Pod labels to copy: exact keys, or prefixes ending in `*`
    /// (`app.kubernetes.io/*`). Default: none.
    pub copy_labels: Vec<String>,
    /// Resolve ReplicaSet → Deployment and Job → CronJob. Default true.
    pub resolve_owners: bool,
    /// First retry delay while no client can be built. Default 500 ms.
    pub backoff_initial: Duration,
    /// Longest retry delay. Default 30 s.
    pub backoff_max: Duration,
}

impl KubeConfig {
    /// Pods of `node_name`, no labels copied, owners resolved.
    #[must_use]
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            copy_labels: Vec::new(),
            resolve_owners: true,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// Copies these pod labels (exact keys or `prefix*`).
    #[must_use]
    pub fn with_copy_labels<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.copy_labels = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Turns owner resolution on or off.
    #[must_use]
    pub fn with_resolve_owners(mut self, on: bool) -> Self {
        self.resolve_owners = on;
        self
    }

    /// The field selector of this node's pods.
    #[must_use]
    pub fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.node_name)
    }
}

/// Where the client comes from.
#[derive(Clone)]
pub enum ClientSource {
    /// `kube::Config::infer()`: kubeconfig, then the in-cluster environment.
    Infer,
    /// This configuration (e.g. `kube::Config::new(url)`).
    Config(Box<kube::Config>),
    /// This client.
    Client(Client),
}

impl ClientSource {
    /// A plain configuration for the API server at `url` (no credentials, no TLS
    /// settings): `kubectl proxy`, or a test server.
    pub fn from_url(url: &str) -> Result<Self, KubeError> {
        let uri: http::Uri = url.parse().map_err(|source| KubeError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        Ok(Self::Config(Box::new(kube::Config::new(uri))))
    }

    /// The current context of the kubeconfig file at `path` (read now, so that a bad
    /// file is a start-up error rather than a background retry loop).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, KubeError> {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.to_owned(),
                source,
            })?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|source| KubeError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::Config(Box::new(config)))
    }
}

impl std::fmt::Debug for ClientSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Infer => f.write_str("Infer"),
            Self::Config(c) => write!(f, "Config({})", c.cluster_url),
            Self::Client(_) => f.write_str("Client"),
        }
    }
}

/// What the index knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Node name (`spec.nodeName`).
    pub node: Option<String>,
    /// Top owner's kind (`Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`,
    /// or `ReplicaSet` until its owner is known).
    pub owner_kind: Option<String>,
    /// Top owner's name.
    pub owner_name: Option<String>,
    /// `(kind, name)` of every owner known, from the pod's controller up:
    /// `[("ReplicaSet", "web-5d4f8c7b9"), ("Deployment", "web")]`. Semantic conventions
    /// name both levels (`k8s.replicaset.name`, `k8s.deployment.name`).
    pub owners: Vec<(String, String)>,
    /// Allow-listed pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod IP (`status.podIP`).
    pub pod_ip: Option<String>,
    /// What the pod's spec and status say of its startup.
    pub startup: PodStartupStatus,
}

impl PodInfo {
    /// Cuts what the API server handed over to [`crate::bounds`]' limits: an API
    /// server's objects are validated, a proxy's or a fake one's need not be.
    fn bound(&mut self) {
        use crate::bounds::{MAX_VALUE_BYTES, bound_map, cut, cut_opt};
        for s in [&mut self.name, &mut self.namespace, &mut self.uid] {
            cut(s, MAX_VALUE_BYTES);
        }
        for s in [
            &mut self.node,
            &mut self.owner_kind,
            &mut self.owner_name,
            &mut self.pod_ip,
        ] {
            cut_opt(s);
        }
        self.owners.truncate(crate::bounds::MAX_ENTRIES);
        for (kind, name) in &mut self.owners {
            cut(kind, MAX_VALUE_BYTES);
            cut(name, MAX_VALUE_BYTES);
        }
        bound_map(&mut self.labels);
    }
}

/// A pod's startup as its spec and status tell it: what the startup stage needs to
/// begin a startup at the pod's binding and end it when its containers all run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStartupStatus {
    /// When the pod was bound to the node (the `PodScheduled` condition), Unix ns.
    pub scheduled_unix_ns: Option<u64>,
    /// App containers in the spec.
    pub containers: u32,
    /// Init containers in the spec.
    pub init_containers: u32,
    /// App containers running now.
    pub containers_running: u32,
    /// The latest `startedAt` of a running container, Unix ns.
    pub last_started_unix_ns: Option<u64>,
}

impl PodStartupStatus {
    fn of(pod: &Pod) -> Self {
        let ns = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
            u64::try_from(t.0.as_nanosecond()).ok()
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let scheduled = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "True")
            })
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(ns);
        let running: Vec<Option<u64>> = status
            .and_then(|s| s.container_statuses.as_ref())
            .map(|v| {
                v.iter()
                    .filter_map(|c| c.state.as_ref()?.running.as_ref())
                    .map(|r| r.started_at.as_ref().and_then(ns))
                    .collect()
            })
            .unwrap_or_default();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            scheduled_unix_ns: scheduled,
            containers: count(spec.map_or(0, |s| s.containers.len())),
            init_containers: count(
                spec.and_then(|s| s.init_containers.as_ref())
                    .map_or(0, Vec::len),
            ),
            containers_running: count(running.len()),
            last_started_unix_ns: running.into_iter().flatten().max(),
        }
    }

    /// As runtime event attributes (`scheduled_unix_ns`, `containers`…).
    fn attributes(&self) -> impl Iterator<Item = (&'static str, String)> {
        [
            (
                "scheduled_unix_ns",
                self.scheduled_unix_ns.map(|v| v.to_string()),
            ),
            ("containers", Some(self.containers.to_string())),
            ("init_containers", Some(self.init_containers.to_string())),
            (
                "containers_running",
                Some(self.containers_running.to_string()),
            ),
            (
                "last_started_unix_ns",
                self.last_started_unix_ns.map(|v| v.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }

    /// Reads them back from a pod event's attributes.
    #[must_use]
    pub fn from_attributes(attributes: &BTreeMap<String, String>) -> Option<Self> {
        let get = |k: &str| attributes.get(k).and_then(|v| v.parse::<u64>().ok());
        let small = |k: &str| get(k).and_then(|v| u32::try_from(v).ok());
        Some(Self {
            scheduled_unix_ns: get("scheduled_unix_ns"),
            containers: small("containers")?,
            init_containers: small("init_containers").unwrap_or(0),
            containers_running: small("containers_running").unwrap_or(0),
            last_started_unix_ns: get("last_started_unix_ns"),
        })
    }
}

/// `(namespace, kind, name)` of an intermediate owner.
type OwnerKey = (String, &'static str, String);

/// Resolved owners: `Some((kind, name))` of the owner's own controller, `None` when it
/// has none.
type OwnerCache = HashMap<OwnerKey, Option<(String, String)>>;

/// Pods of this node by uid, kept current by a background watcher.
#[derive(Clone)]
pub struct KubePodIndex {
    store: Store<Pod>,
    owners: Arc<RwLock<OwnerCache>>,
    copy_labels: Arc<[String]>,
}

impl std::fmt::Debug for KubePodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePodIndex")
            .field("pods", &self.store.len())
            .finish_non_exhaustive()
    }
}

fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

fn label_allowed(allow: &[String], key: &str) -> bool {
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => a == key,
    })
}

/// Which owner kinds need one more hop, and the kind name used as cache key.
fn intermediate(kind: &str) -> Option<&'static str> {
    match kind {
        "ReplicaSet" => Some("ReplicaSet"),
        "Job" => Some("Job"),
        _ => None,
    }
}

impl KubePodIndex {
    /// Starts the background watcher and returns the index it fills, and its task.
    /// `events`, when given, receives `PodAdded`/`PodUpdated`/`PodDeleted`.
    #[must_use]
    pub fn spawn(
        config: KubeConfig,
        client: ClientSource,
        events: Option<EventSender>,
    ) -> (Self, JoinHandle<()>) {
        let (store, writer) = reflector::store();
        let index = Self {
            store,
            owners: Arc::new(RwLock::new(HashMap::new())),
            copy_labels: config.copy_labels.clone().into(),
        };
        let task = tokio::spawn(run(index.clone(), config, client, events, writer));
        (index, task)
    }

    /// An index no watcher fills, which copies `copy_labels`: for turning a `Pod` into
    /// what iostall keeps of it ([`Self::pod_info`]) without an API server.
    #[must_use]
    pub fn detached(copy_labels: Vec<String>) -> Self {
        let (store, _writer) = reflector::store();
        Self {
            store,
            owners: Arc::new(RwLock::new(HashMap::new())),
            copy_labels: copy_labels.into(),
        }
    }

    /// What iostall keeps of `pod` (as its watcher does for every pod it is sent).
    #[must_use]
    pub fn pod_info(&self, pod: &Pod) -> PodInfo {
        self.info(pod)
    }

    /// The pod with this uid, if it is on this node and known.
    #[must_use]
    pub fn get(&self, pod_uid: &str) -> Option<PodInfo> {
        let pod = self
            .store
            .find(|p| p.metadata.uid.as_deref() == Some(pod_uid))?;
        Some(self.info(&pod))
    }

    /// The pod `namespace/name`, if known.
    #[must_use]
    pub fn get_by_name(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let pod = self.store.find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
        })?;
        Some(self.info(&pod))
    }

    /// Number of pods known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no pod is known (no API server yet, or an empty node).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    fn info(&self, pod: &Pod) -> PodInfo {
        let namespace = pod.namespace().unwrap_or_default();
        let mut owners = Vec::new();
        if let Some(r) = controller_of(pod.metadata.owner_references.as_ref()) {
            owners.push((r.kind.clone(), r.name.clone()));
            let resolved = intermediate(&r.kind).and_then(|kind| {
                let cache = self.owners.read().ok()?;
                cache
                    .get(&(namespace.clone(), kind, r.name.clone()))
                    .cloned()
                    .flatten()
            });
            owners.extend(resolved);
        }
        let (owner_kind, owner_name) = match owners.last() {
            Some((kind, name)) => (Some(kind.clone()), Some(name.clone())),
            None => (None, None),
        };
        let mut info = PodInfo {
            name: pod.name_any(),
            namespace,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            owner_kind,
            owner_name,
            owners,
            labels: pod
                .labels()
                .iter()
                .filter(|(k, _)| label_allowed(&self.copy_labels, k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            startup: PodStartupStatus::of(pod),
        };
        info.bound();
        info
    }

    fn pod_event(&self, kind: RuntimeEventKind, info: &PodInfo) -> RuntimeEvent {
        let mut ev = RuntimeEvent::new(super::now_unix_ns(), EventSource::Kube, kind);
        ev.namespace = Some(info.namespace.clone());
        ev.labels.clone_from(&info.labels);
        let attrs = [
            ("name", Some(&info.name)),
            ("uid", Some(&info.uid)),
            ("node", info.node.as_ref()),
            ("owner_kind", info.owner_kind.as_ref()),
            ("owner_name", info.owner_name.as_ref()),
            ("pod_ip", info.pod_ip.as_ref()),
        ];
        for (k, v) in attrs {
            if let Some(v) = v {
                ev.attributes.insert(k.to_owned(), v.clone());
            }
        }
        for (k, v) in info.startup.attributes() {
            ev.attributes.insert(k.to_owned(), v);
        }
        ev
    }
}

impl From<PodInfo> for KubePod {
    fn from(info: PodInfo) -> Self {
        Self {
            owners: PodOwners::from_chain(
                info.owners
                    .iter()
                    .map(|(kind, name)| (kind.as_str(), name.as_str())),
            ),
            uid: info.uid,
            name: info.name,
            namespace: info.namespace,
            labels: PodLabels(info.labels),
        }
    }
}

/// A linear scan of the node's pods (about a hundred at most: `maxPods` defaults to
/// 110) under the store's read lock: microseconds, and only for records of a pod.
impl PodLookup for KubePodIndex {
    fn pod_by_uid(&self, uid: &str) -> Option<KubePod> {
        self.get(uid).map(KubePod::from)
    }

    fn pod_by_name(&self, namespace: &str, name: &str) -> Option<KubePod> {
        self.get_by_name(namespace, name).map(KubePod::from)
    }
}

async fn make_client(source: &ClientSource) -> Result<Client, KubeError> {
    match source {
        ClientSource::Client(c) => Ok(c.clone()),
        ClientSource::Config(cfg) => {
            Client::try_from(cfg.as_ref().clone()).map_err(|e| KubeError::CreateClient(Box::new(e)))
        }
        ClientSource::Infer => {
            let cfg = kube::Config::infer()
                .await
                .map_err(KubeError::InferConfig)?;
            Client::try_from(cfg).map_err(|e| KubeError::CreateClient(Box::new(e)))
        }
    }
}

/// Gets the controller of an intermediate owner (ReplicaSet or Job).
async fn fetch_owner(
    client: Client,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<(String, String)>, KubeError> {
    let map = |source| KubeError::GetOwner {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source: Box::new(source),
    };
    let refs = match kind {
        "ReplicaSet" => Api::<ReplicaSet>::namespaced(client, namespace)
            .get_opt(name)
            .await
            .map_err(map)?
            .and_then(|o| o.metadata.owner_references),
        _ => Api::<Job>::namespaced(client, namespace)
            .get_opt(name)
            .await
            .map_err(map)?
            .and_then(|o| o.metadata.owner_references),
    };
    Ok(controller_of(refs.as_ref()).map(|r| (r.kind.clone(), r.name.clone())))
}

/// Per-watch bookkeeping for pod events and owner lookups.
struct Tracker {
    index: KubePodIndex,
    client: Client,
    resolve_owners: bool,
    events: Option<EventSender>,
    /// uid → (namespace, name) of pods announced.
    known: HashMap<String, PodInfo>,
    /// uids seen since the last `Init`.
    relisted: HashSet<String>,
    pending: Arc<RwLock<HashSet<OwnerKey>>>,
}

impl Tracker {
    fn emit(&self, kind: RuntimeEventKind, info: &PodInfo) -> bool {
        match &self.events {
            Some(tx) => tx.send(self.index.pod_event(kind, info)) != SendOutcome::Closed,
            None => true,
        }
    }

    fn resolve(&self, pod: &Pod) {
        if !self.resolve_owners {
            return;
        }
        let Some(r) = controller_of(pod.metadata.owner_references.as_ref()) else {
            return;
        };
        let Some(kind) = intermediate(&r.kind) else {
            return;
        };
        let key: OwnerKey = (pod.namespace().unwrap_or_default(), kind, r.name.clone());
        let cached = self
            .index
            .owners
            .read()
            .map(|o| o.contains_key(&key))
            .unwrap_or(true);
        if cached {
            return;
        }
        let fresh = self
            .pending
            .write()
            .map(|mut p| p.insert(key.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let (client, owners, pending) = (
            self.client.clone(),
            self.index.owners.clone(),
            self.pending.clone(),
        );
        tokio::spawn(async move {
            let (namespace, kind, name) = &key;
            match fetch_owner(client, namespace, kind, name).await {
                Ok(owner) => {
                    if let Ok(mut o) = owners.write() {
                        o.insert(key.clone(), owner);
                    }
                }
                // Retried when the pod changes next; until then the direct owner shows.
                Err(e) => tracing::debug!("{e}"),
            }
            if let Ok(mut p) = pending.write() {
                p.remove(&key);
            }
        });
    }

    /// Handles one watcher event; false when the event receiver is gone.
    fn handle(&mut self, event: &watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisted.clear();
                true
            }
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                self.resolve(pod);
                let info = self.index.info(pod);
                if matches!(event, watcher::Event::InitApply(_)) {
                    self.relisted.insert(info.uid.clone());
                }
                let kind = if self.known.contains_key(&info.uid) {
                    RuntimeEventKind::PodUpdated
                } else {
                    RuntimeEventKind::PodAdded
                };
                self.known.insert(info.uid.clone(), info.clone());
                self.emit(kind, &info)
            }
            watcher::Event::Delete(pod) => {
                let info = self.index.info(pod);
                self.known.remove(&info.uid);
                self.emit(RuntimeEventKind::PodDeleted, &info)
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|uid| !self.relisted.contains(*uid))
                    .cloned()
                    .collect();
                let mut open = true;
                for uid in gone {
                    if let Some(info) = self.known.remove(&uid) {
                        open &= self.emit(RuntimeEventKind::PodDeleted, &info);
                    }
                }
                open
            }
        }
    }
}

async fn run(
    index: KubePodIndex,
    config: KubeConfig,
    source: ClientSource,
    events: Option<EventSender>,
    writer: reflector::store::Writer<Pod>,
) {
    let what = match &source {
        ClientSource::Config(c) => format!("Kubernetes API at {}", c.cluster_url),
        ClientSource::Infer | ClientSource::Client(_) => "Kubernetes API".to_owned(),
    };
    let mut reconnect = Reconnect::new(
        what,
        Backoff::new(config.backoff_initial, config.backoff_max),
    );
    let client = loop {
        match make_client(&source).await {
            Ok(c) => break c,
            Err(e) => reconnect.wait_after_failure(&e).await,
        }
    };
    let api = Api::<Pod>::all(client.clone());
    let watch_config = watcher::Config::default().fields(&config.field_selector());
    let stream = watcher(api, watch_config)
        .default_backoff()
        .modify(|pod: &mut Pod| {
            pod.managed_fields_mut().clear();
            pod.annotations_mut().remove(LAST_APPLIED);
        })
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut tracker = Tracker {
        index,
        client,
        resolve_owners: config.resolve_owners,
        events,
        known: HashMap::new(),
        relisted: HashSet::new(),
        pending: Arc::new(RwLock::new(HashSet::new())),
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                // `Init` comes before the LIST is even sent: not a sign of success.
                if !matches!(event, watcher::Event::Init) {
                    reconnect.connected();
                }
                if !tracker.handle(&event) {
                    return;
                }
            }
            // The watcher retries on its own (default backoff); log once per outage.
            Err(e) => {
                let _ = reconnect.failed(&KubeError::WatchStart(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_allow_list_exact_and_prefix() {
        let allow = vec!["app".to_owned(), "app.kubernetes.io/*".to_owned()];
        assert!(label_allowed(&allow, "app"));
        assert!(label_allowed(&allow, "app.kubernetes.io/name"));
        assert!(!label_allowed(&allow, "pod-template-hash"));
        assert!(!label_allowed(&allow, "apps"));
    }

    #[test]
    fn controller_reference_preferred() {
        let refs = vec![
            OwnerReference {
                kind: "ConfigMap".into(),
                name: "c".into(),
                ..OwnerReference::default()
            },
            OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-5d4f".into(),
                controller: Some(true),
                ..OwnerReference::default()
            },
        ];
        assert_eq!(
            controller_of(Some(&refs)).map(|r| r.kind.as_str()),
            Some("ReplicaSet")
        );
        assert!(controller_of(None).is_none());
    }
}
