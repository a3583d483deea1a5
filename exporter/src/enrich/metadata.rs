//! Container id → names, image and pod, from the labels and annotations that the
//! kubelet and the CRI plugin put on containers; pod uid → pod.
//!
//! The kubelet labels every container it creates with `io.kubernetes.pod.name`,
//! `io.kubernetes.pod.namespace`, `io.kubernetes.pod.uid` and
//! `io.kubernetes.container.name`; containerd's CRI plugin adds the annotations
//! `io.kubernetes.cri.{container-type,sandbox-id,container-name,sandbox-name,
//! sandbox-namespace,sandbox-uid}` to the OCI spec. Either set is enough to name the pod,
//! without any API server.
//!
//! When the Kubernetes API is reachable, a [`PodLookup`] (the pods of this node, see
//! `runtime::kube`) adds what no runtime label says: the pod's owners and its
//! allow-listed labels — and names pods known only by the uid in their cgroup path.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use serde::Serialize;
use thiserror::Error;

use super::cgroup_path::Runtime;

/// Label: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the container's name in its pod.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation (kubelet): how many times the container was restarted.
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// CRI annotation: `sandbox` or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the sandbox a container belongs to.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI annotation: the container's name.
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// CRI annotation: the pod's name.
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// CRI annotation: the pod's namespace.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// CRI annotation: the pod's uid.
pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// CRI annotation: the image name.
pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// containerd CRI label: `sandbox` or `container`.
pub const CRI_CONTAINERD_KIND: &str = "io.cri-containerd.kind";
/// dockershim label: `podsandbox` or `container`.
pub const DOCKER_TYPE: &str = "io.kubernetes.docker.type";
/// dockershim label: the sandbox a container belongs to.
pub const DOCKER_SANDBOX_ID: &str = "io.kubernetes.sandbox.id";

/// Prefix of the pod label attributes (semantic conventions: `k8s.pod.label.<key>`).
pub const POD_LABEL_PREFIX: &str = "k8s.pod.label.";

/// A pod's owners, by kind, as the semantic conventions name them. Each level of the
/// chain is kept: a Deployment's pod has both `k8s.replicaset.name` and
/// `k8s.deployment.name`, as the Collector's `k8sattributes` processor sets them.
/// In JSON, absent owners are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodOwners {
    /// `k8s.deployment.name`.
    #[serde(
        rename = "k8s.deployment.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub deployment: Option<String>,
    /// `k8s.replicaset.name`.
    #[serde(
        rename = "k8s.replicaset.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub replicaset: Option<String>,
    /// `k8s.statefulset.name`.
    #[serde(
        rename = "k8s.statefulset.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub statefulset: Option<String>,
    /// `k8s.daemonset.name`.
    #[serde(rename = "k8s.daemonset.name", skip_serializing_if = "Option::is_none")]
    pub daemonset: Option<String>,
    /// `k8s.job.name`.
    #[serde(rename = "k8s.job.name", skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// `k8s.cronjob.name`.
    #[serde(rename = "k8s.cronjob.name", skip_serializing_if = "Option::is_none")]
    pub cronjob: Option<String>,
}

impl PodOwners {
    /// From `(kind, name)` pairs (the pod's controller, then its owner…). Kinds without
    /// a semantic-convention attribute (custom controllers) are skipped.
    #[must_use]
    pub fn from_chain<'a>(chain: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut owners = Self::default();
        for (kind, name) in chain {
            let slot = match kind {
                "Deployment" => &mut owners.deployment,
                "ReplicaSet" => &mut owners.replicaset,
                "StatefulSet" => &mut owners.statefulset,
                "DaemonSet" => &mut owners.daemonset,
                "Job" => &mut owners.job,
                "CronJob" => &mut owners.cronjob,
                _ => continue,
            };
            *slot = Some(name.to_owned());
        }
        owners
    }

    /// Whether no owner is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.attributes().next().is_none()
    }

    /// `(attribute, name)` of the known owners, top owner first.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("k8s.cronjob.name", &self.cronjob),
            ("k8s.deployment.name", &self.deployment),
            ("k8s.statefulset.name", &self.statefulset),
            ("k8s.daemonset.name", &self.daemonset),
            ("k8s.job.name", &self.job),
            ("k8s.replicaset.name", &self.replicaset),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// A pod's allow-listed labels, key → value. Serialized (JSON, when flattened into a
/// record) as `k8s.pod.label.<key>` entries, the attribute names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodLabels(pub BTreeMap<String, String>);

impl PodLabels {
    /// `(k8s.pod.label.<key>, value)` of each label.
    pub fn attributes(&self) -> impl Iterator<Item = (String, &str)> {
        self.0
            .iter()
            .map(|(k, v)| (format!("{POD_LABEL_PREFIX}{k}"), v.as_str()))
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for PodLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.attributes() {
            map.serialize_entry(&k, v)?;
        }
        map.end()
    }
}

/// What the Kubernetes API says about one pod of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubePod {
    /// The pod uid.
    pub uid: String,
    /// The pod name.
    pub name: String,
    /// The pod namespace.
    pub namespace: String,
    /// Its owners.
    pub owners: PodOwners,
    /// Its allow-listed labels.
    pub labels: PodLabels,
}

/// Pods of this node as the Kubernetes API knows them (`runtime::kube::KubePodIndex`).
/// Lookups are synchronous and must not wait on the network: they run on the
/// enrich stage's thread, once per record.
pub trait PodLookup: fmt::Debug + Send + Sync {
    /// The pod with this uid, if known.
    fn pod_by_uid(&self, uid: &str) -> Option<KubePod>;
    /// The pod `namespace/name`, if known.
    fn pod_by_name(&self, namespace: &str, name: &str) -> Option<KubePod>;
}

/// Errors building metadata.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetadataError {
    /// The container id was empty.
    #[error("container metadata without a container id")]
    EmptyId,
}

/// Whether a runtime container is a pod's sandbox (pause) or one of its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    /// The pod sandbox.
    Sandbox,
    /// An application (or init) container.
    Container,
}

/// What is known about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerMeta {
    /// The runtime's container id.
    pub id: String,
    /// The container's name in its pod.
    pub container_name: Option<String>,
    /// The image reference.
    pub image: Option<String>,
    /// The runtime that runs it.
    pub runtime: Option<Runtime>,
    /// The pod name.
    pub pod_name: Option<String>,
    /// The pod namespace.
    pub pod_namespace: Option<String>,
    /// The pod uid.
    pub pod_uid: Option<String>,
    /// The restart count (containers) or sandbox attempt.
    pub attempt: Option<u32>,
    /// The pod sandbox's id (a sandbox's own id for a sandbox).
    pub sandbox_id: Option<String>,
    /// Sandbox or container, when the labels say.
    pub kind: Option<ContainerKind>,
    /// All labels and annotations it was built from.
    pub labels: BTreeMap<String, String>,
}

impl ContainerMeta {
    /// Builds the metadata of container `id` from its labels and annotations (merged:
    /// pass both). Unparseable values (a non-numeric restart count) are ignored.
    pub fn from_labels<K, V>(
        id: &str,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, MetadataError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        if id.is_empty() {
            return Err(MetadataError::EmptyId);
        }
        let labels: BTreeMap<String, String> = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()).cloned())
        };
        let kind = match get(&[CRI_CONTAINER_TYPE, CRI_CONTAINERD_KIND, DOCKER_TYPE]).as_deref() {
            Some("sandbox" | "podsandbox") => Some(ContainerKind::Sandbox),
            Some("container") => Some(ContainerKind::Container),
            _ => None,
        };
        let sandbox_id = get(&[CRI_SANDBOX_ID, DOCKER_SANDBOX_ID])
            .or_else(|| (kind == Some(ContainerKind::Sandbox)).then(|| id.to_owned()));
        Ok(Self {
            id: id.to_owned(),
            container_name: get(&[LABEL_CONTAINER_NAME, CRI_CONTAINER_NAME]),
            image: get(&[CRI_IMAGE_NAME]),
            runtime: None,
            pod_name: get(&[LABEL_POD_NAME, CRI_SANDBOX_NAME]),
            pod_namespace: get(&[LABEL_POD_NAMESPACE, CRI_SANDBOX_NAMESPACE]),
            pod_uid: get(&[LABEL_POD_UID, CRI_SANDBOX_UID]),
            attempt: get(&[ANNOTATION_RESTART_COUNT]).and_then(|v| v.parse().ok()),
            sandbox_id,
            kind,
            labels,
        })
    }

    /// Sets the image (the runtime knows it apart from the labels).
    #[must_use]
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Sets the runtime.
    #[must_use]
    pub fn with_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Sets the sandbox id (CRI's `Container.pod_sandbox_id`: the CRI annotation that
    /// names it is in the OCI spec, not in CRI's container annotations).
    #[must_use]
    pub fn with_sandbox_id(mut self, sandbox_id: impl Into<String>) -> Self {
        self.sandbox_id = Some(sandbox_id.into());
        self
    }

    /// Sets the attempt (CRI metadata's `attempt`).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Cuts every value to [`crate::bounds`]' limits; returns whether anything was cut.
    pub fn bound(&mut self) -> bool {
        use crate::bounds::{MAX_VALUE_BYTES, bound_map, cut, cut_opt};
        let mut cut_any = cut(&mut self.id, MAX_VALUE_BYTES);
        for s in [
            &mut self.container_name,
            &mut self.image,
            &mut self.pod_name,
            &mut self.pod_namespace,
            &mut self.pod_uid,
            &mut self.sandbox_id,
        ] {
            cut_any |= cut_opt(s);
        }
        cut_any | bound_map(&mut self.labels)
    }
}

/// What is known about one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    /// The pod uid.
    pub uid: String,
    /// The pod name.
    pub name: Option<String>,
    /// The pod namespace.
    pub namespace: Option<String>,
    /// Sandbox ids seen for this pod (one per attempt), oldest first.
    pub sandbox_ids: Vec<String>,
}

/// Container id → [`ContainerMeta`] and pod uid → [`PodMeta`], plus (optionally) the
/// Kubernetes API's view of the node's pods.
#[derive(Debug, Default)]
pub struct MetadataCache {
    containers: HashMap<String, ContainerMeta>,
    pods: HashMap<String, PodMeta>,
    kube: Option<Arc<dyn PodLookup>>,
}

impl MetadataCache {
    /// An empty cache.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a container, and records its pod. Its values are cut to
    /// [`crate::bounds`]' limits first: they are what a runtime handed over.
    pub fn insert(&mut self, mut meta: ContainerMeta) {
        meta.bound();
        if let Some(uid) = &meta.pod_uid {
            let pod = self.pods.entry(uid.clone()).or_insert_with(|| PodMeta {
                uid: uid.clone(),
                ..PodMeta::default()
            });
            if meta.pod_name.is_some() {
                pod.name.clone_from(&meta.pod_name);
            }
            if meta.pod_namespace.is_some() {
                pod.namespace.clone_from(&meta.pod_namespace);
            }
            if let Some(sandbox) = &meta.sandbox_id
                && !pod.sandbox_ids.contains(sandbox)
            {
                pod.sandbox_ids.push(sandbox.clone());
            }
        }
        self.containers.insert(meta.id.clone(), meta);
    }

    /// Forgets a container (on delete). Its pod stays until [`Self::remove_pod`].
    pub fn remove(&mut self, id: &str) -> Option<ContainerMeta> {
        self.containers.remove(id)
    }

    /// Forgets a pod and every container of it.
    pub fn remove_pod(&mut self, uid: &str) -> Option<PodMeta> {
        self.containers
            .retain(|_, c| c.pod_uid.as_deref() != Some(uid));
        self.pods.remove(uid)
    }

    /// The container with this id.
    #[must_use]
    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.get(id)
    }

    /// The pod with this uid.
    #[must_use]
    pub fn pod(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid)
    }

    /// Consults `lookup` (the Kubernetes API's pods) for what runtime labels do not say.
    pub fn set_pod_lookup(&mut self, lookup: Arc<dyn PodLookup>) {
        self.kube = Some(lookup);
    }

    /// The Kubernetes API's pod lookup, when one is set.
    #[must_use]
    pub fn pod_lookup(&self) -> Option<&dyn PodLookup> {
        self.kube.as_deref()
    }

    /// How many containers are known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    /// How many pods are known.
    #[must_use]
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether no container is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

/// The metadata cache, shared by the runtime sources (writers) and enrichment (reader).
pub type SharedMetadata = std::sync::Arc<std::sync::RwLock<MetadataCache>>;

/// A new, empty [`SharedMetadata`].
#[must_use]
pub fn shared_metadata() -> SharedMetadata {
    std::sync::Arc::new(std::sync::RwLock::new(MetadataCache::new()))
}

/// Adds `meta` to the cache, keeping what an earlier entry of the same container knew
/// and `meta` does not (labels are merged, `meta`'s win).
pub fn merge_metadata(cache: &SharedMetadata, mut meta: ContainerMeta) {
    let mut cache = cache
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(old) = cache.container(&meta.id) {
        let mut labels = old.labels.clone();
        labels.append(&mut meta.labels);
        meta.labels = labels;
        macro_rules! keep {
            ($($field:ident),*) => {$(
                if meta.$field.is_none() {
                    meta.$field.clone_from(&old.$field);
                }
            )*};
        }
        keep!(
            container_name,
            image,
            runtime,
            pod_name,
            pod_namespace,
            pod_uid,
            attempt,
            sandbox_id,
            kind
        );
    }
    cache.insert(meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";

    #[test]
    fn what_a_runtime_hands_over_is_bounded_in_the_cache() {
        let mut labels = kubelet_labels("app");
        labels.push((LABEL_POD_NAME, "p".repeat(1 << 20)));
        let extra: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("zz.{i:05}"), "v".repeat(64)))
            .collect();
        let meta = ContainerMeta::from_labels(
            "c1",
            labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain(extra),
        )
        .expect("meta")
        .with_image("i".repeat(1 << 20));
        let mut cache = MetadataCache::new();
        cache.insert(meta);
        let kept = cache.container("c1").expect("kept");
        assert!(
            kept.pod_name
                .as_ref()
                .is_some_and(|n| n.len() <= 4096 && n.ends_with('…'))
        );
        assert!(kept.image.as_ref().is_some_and(|n| n.len() <= 4096));
        assert_eq!(kept.labels.len(), crate::bounds::MAX_ENTRIES);
        assert!(kept.labels.values().all(|v| v.len() <= 4096));
        assert_eq!(
            cache
                .pod(UID)
                .and_then(|p| p.name.as_ref())
                .map(String::len),
            kept.pod_name.as_ref().map(String::len),
            "the pod's name is the cut one"
        );
    }

    fn kubelet_labels(container: &str) -> Vec<(&'static str, String)> {
        vec![
            (LABEL_POD_NAME, "web-0".into()),
            (LABEL_POD_NAMESPACE, "shop".into()),
            (LABEL_POD_UID, UID.into()),
            (LABEL_CONTAINER_NAME, container.into()),
            (ANNOTATION_RESTART_COUNT, "2".into()),
            (CRI_CONTAINER_TYPE, "container".into()),
            (CRI_SANDBOX_ID, "sb1".into()),
        ]
    }

    #[test]
    fn from_kubelet_labels() {
        let meta = ContainerMeta::from_labels("c1", kubelet_labels("nginx"))
            .expect("meta")
            .with_image("nginx:1.27")
            .with_runtime(Runtime::Containerd);
        assert_eq!(meta.container_name.as_deref(), Some("nginx"));
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"));
        assert_eq!(meta.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(meta.pod_uid.as_deref(), Some(UID));
        assert_eq!(meta.attempt, Some(2));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.kind, Some(ContainerKind::Container));
        assert_eq!(meta.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(meta.labels.len(), 7);
    }

    #[test]
    fn from_cri_annotations_only() {
        let meta = ContainerMeta::from_labels(
            "sb1",
            [
                (CRI_CONTAINER_TYPE, "sandbox"),
                (CRI_SANDBOX_NAME, "web-0"),
                (CRI_SANDBOX_NAMESPACE, "shop"),
                (CRI_SANDBOX_UID, UID),
                (ANNOTATION_RESTART_COUNT, "not a number"),
            ],
        )
        .expect("meta");
        assert_eq!(meta.kind, Some(ContainerKind::Sandbox));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"));
        assert_eq!(meta.pod_uid.as_deref(), Some(UID));
        assert_eq!(meta.container_name, None);
        assert_eq!(meta.attempt, None);
    }

    #[test]
    fn labels_win_over_annotations_and_empty_values_are_absent() {
        let meta = ContainerMeta::from_labels(
            "c",
            [
                (LABEL_CONTAINER_NAME, ""),
                (CRI_CONTAINER_NAME, "from-cri"),
                (LABEL_POD_NAME, "label-pod"),
                (CRI_SANDBOX_NAME, "cri-pod"),
                (DOCKER_TYPE, "podsandbox"),
            ],
        )
        .expect("meta");
        assert_eq!(meta.container_name.as_deref(), Some("from-cri"));
        assert_eq!(meta.pod_name.as_deref(), Some("label-pod"));
        assert_eq!(meta.kind, Some(ContainerKind::Sandbox));
    }

    #[test]
    fn empty_id_is_an_error() {
        let err = ContainerMeta::from_labels("", Vec::<(String, String)>::new());
        assert_eq!(err, Err(MetadataError::EmptyId));
    }

    #[test]
    fn cache_tracks_pods() {
        let mut cache = MetadataCache::new();
        let sandbox = ContainerMeta::from_labels(
            "sb1",
            [
                (CRI_CONTAINER_TYPE, "sandbox"),
                (LABEL_POD_NAME, "web-0"),
                (LABEL_POD_NAMESPACE, "shop"),
                (LABEL_POD_UID, UID),
            ],
        )
        .expect("meta");
        cache.insert(sandbox);
        cache.insert(ContainerMeta::from_labels("c1", kubelet_labels("nginx")).expect("meta"));
        cache.insert(ContainerMeta::from_labels("c2", kubelet_labels("sidecar")).expect("meta"));
        assert_eq!(cache.len(), 3);
        let pod = cache.pod(UID).expect("pod");
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.sandbox_ids, vec!["sb1".to_owned()]);
        assert_eq!(
            cache
                .container("c2")
                .and_then(|c| c.container_name.as_deref()),
            Some("sidecar")
        );
        assert!(cache.remove("c2").is_some());
        assert!(cache.container("c2").is_none());
        assert!(cache.remove_pod(UID).is_some());
        assert!(cache.is_empty());
        assert!(cache.pod(UID).is_none());
    }
}
