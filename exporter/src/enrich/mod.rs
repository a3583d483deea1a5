//! enrich: who an [`IoRecord`] belongs to — container, pod — and how that was found.
//!
//! In order of trust:
//! 1. **cgroup**: the record's cgroup v2 id ([`pid_map::CgroupIdMap`]) or its pid's
//!    `/proc/<pid>/cgroup` ([`pid_map::PidMap`]) is a container's cgroup
//!    ([`cgroup_path`]).
//! 2. **path**: the file's path names a container or pod ([`path_attribution`]): IO a
//!    runtime or the kubelet does on a container's behalf.
//! 3. **time_overlap** ([`crate::startup`]): shared runtime files by overlap with a
//!    container's startup phases.
//!
//! Names, image and pod come from [`metadata::MetadataCache`], filled from runtime
//! labels by the runtime event sources. When the Kubernetes API is enabled, the cache's
//! [`metadata::PodLookup`] adds, by pod uid, the pod's owners and allow-listed labels,
//! and its name and namespace when no runtime said them (attribution by cgroup path
//! alone then still names the pod).
//!
//! A record naming a container no runtime has announced yet waits for its names in
//! [`awaiting`] (on the sink thread), for a few seconds at most.

pub mod awaiting;
pub mod cgroup_path;
pub mod metadata;
pub mod path_attribution;
pub mod pid_map;

use serde::Serialize;

use self::{
    cgroup_path::{ContainerRef, QosClass, Runtime},
    metadata::{MetadataCache, PodLabels, PodOwners, SharedMetadata},
    path_attribution::{PathKind, PathRules},
    pid_map::{CgroupIdMap, PidMap},
};
use crate::event::IoRecord;

/// How a record was tied to its container or pod (serialized as [`Self::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributionMethod {
    /// The thread was in the container's cgroup.
    Cgroup,
    /// The file's path names the container or pod.
    Path(PathKind),
    /// It overlapped the container's startup phases in time (shared runtime files).
    TimeOverlap,
    /// Not tied to any container.
    None,
}

impl AttributionMethod {
    /// The attribute value: `cgroup`, `path`, `time_overlap` or `none`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Path(_) => "path",
            Self::TimeOverlap => "time_overlap",
            Self::None => "none",
        }
    }
}

impl Serialize for AttributionMethod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a record gains from enrichment. In JSON its keys are the OpenTelemetry
/// attribute names, so JSON lines and OTLP read alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrichment {
    /// How it was attributed.
    #[serde(rename = "iostall.attribution")]
    pub method: AttributionMethod,
    /// The container id.
    #[serde(rename = "container.id")]
    pub container_id: Option<String>,
    /// The runtime.
    #[serde(rename = "container.runtime.name")]
    pub runtime: Option<Runtime>,
    /// The container's name in its pod.
    #[serde(rename = "k8s.container.name")]
    pub container_name: Option<String>,
    /// The image reference.
    #[serde(rename = "container.image.name")]
    pub image: Option<String>,
    /// The pod uid.
    #[serde(rename = "k8s.pod.uid")]
    pub pod_uid: Option<String>,
    /// The pod name.
    #[serde(rename = "k8s.pod.name")]
    pub pod_name: Option<String>,
    /// The pod namespace.
    #[serde(rename = "k8s.namespace.name")]
    pub pod_namespace: Option<String>,
    /// The pod's QoS class (from the cgroup path).
    #[serde(rename = "iostall.pod.qos")]
    pub qos: Option<QosClass>,
    /// The pod sandbox id.
    #[serde(rename = "iostall.sandbox.id")]
    pub sandbox_id: Option<String>,
    /// The pod's owners (Kubernetes API): `k8s.deployment.name`, `k8s.replicaset.name`…
    #[serde(flatten)]
    pub owners: PodOwners,
    /// The pod's allow-listed labels (Kubernetes API): `k8s.pod.label.<key>`.
    #[serde(flatten)]
    pub pod_labels: PodLabels,
}

impl Enrichment {
    /// Nothing known.
    #[must_use]
    pub fn none() -> Self {
        Self {
            method: AttributionMethod::None,
            container_id: None,
            runtime: None,
            container_name: None,
            image: None,
            pod_uid: None,
            pod_name: None,
            pod_namespace: None,
            qos: None,
            sandbox_id: None,
            owners: PodOwners::default(),
            pod_labels: PodLabels::default(),
        }
    }

    fn from_container(container: ContainerRef) -> Self {
        Self {
            method: AttributionMethod::Cgroup,
            runtime: Some(container.runtime),
            pod_uid: container.pod_uid,
            qos: container.qos,
            container_id: Some(container.id),
            ..Self::none()
        }
    }

    /// Fills what is still unknown from the metadata cache (container, then pod).
    fn fill_from(&mut self, metadata: &MetadataCache) {
        if let Some(meta) = self
            .container_id
            .as_deref()
            .and_then(|id| metadata.container(id))
        {
            self.fill_from_container(meta);
        }
        if let Some(pod) = self.pod_uid.as_deref().and_then(|uid| metadata.pod(uid)) {
            fill(&mut self.pod_name, &pod.name);
            fill(&mut self.pod_namespace, &pod.namespace);
        }
        self.fill_from_kube(metadata);
    }

    /// Adds what the Kubernetes API knows of the pod (by uid, else by namespace/name):
    /// owners and labels, and the pod's ids where still unknown.
    fn fill_from_kube(&mut self, metadata: &MetadataCache) {
        let Some(kube) = metadata.pod_lookup() else {
            return;
        };
        let pod = match (&self.pod_uid, &self.pod_namespace, &self.pod_name) {
            (Some(uid), _, _) => kube.pod_by_uid(uid),
            (None, Some(namespace), Some(name)) => kube.pod_by_name(namespace, name),
            _ => None,
        };
        let Some(pod) = pod else {
            return;
        };
        fill(&mut self.pod_uid, &Some(pod.uid));
        fill(&mut self.pod_name, &Some(pod.name));
        fill(&mut self.pod_namespace, &Some(pod.namespace));
        self.owners = pod.owners;
        self.pod_labels = pod.labels;
    }
}

fn fill(slot: &mut Option<String>, from: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

/// Attributes records with the cgroup, pid and path lookups and the metadata cache.
#[derive(Debug)]
pub struct Enricher {
    /// pid → container.
    pub pids: PidMap,
    /// cgroup v2 id → cgroup path; `None` when no unified hierarchy is mounted.
    pub cgroup_ids: Option<CgroupIdMap>,
    /// Path rules.
    pub paths: PathRules,
    /// Container and pod metadata, filled by the runtime sources.
    pub metadata: SharedMetadata,
}

impl Enricher {
    /// An enricher for this host: `/proc`, the discovered unified hierarchy (if any),
    /// default path rules, empty metadata.
    #[must_use]
    pub fn for_host() -> Self {
        Self {
            pids: PidMap::default(),
            cgroup_ids: CgroupIdMap::discover().ok(),
            paths: PathRules::default(),
            metadata: SharedMetadata::default(),
        }
    }

    /// Who `record` belongs to: cgroup id, then pid, then the file path.
    pub fn enrich(&mut self, record: &IoRecord) -> Enrichment {
        let by_cgroup = match (&mut self.cgroup_ids, record.cgroup_id) {
            (Some(ids), id) if id != 0 => ids.resolve_container(id),
            _ => None,
        };
        let mut out = match by_cgroup.or_else(|| self.pids.resolve(record.pid)) {
            Some(container) => Enrichment::from_container(container),
            None => match record.file_path.as_deref().map_or_else(
                || {
                    self.paths
                        .attribute_partial(&record.parents, &record.file_name)
                },
                |p| self.paths.attribute(p),
            ) {
                Some(found) => Enrichment {
                    method: found
                        .kind
                        .map_or(AttributionMethod::None, AttributionMethod::Path),
                    container_id: found.container_id,
                    container_name: found.container_name,
                    pod_uid: found.pod_uid,
                    pod_name: found.pod_name,
                    pod_namespace: found.pod_namespace,
                    ..Enrichment::none()
                },
                None => return Enrichment::none(),
            },
        };
        self.refill(&mut out);
        out
    }

    /// The metadata cache as it is now.
    fn metadata_now(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        // A poisoned lock only means a writer panicked mid-insert; the map is still usable.
        self.metadata
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the metadata cache knows container `id` (a runtime announced or listed it).
    #[must_use]
    pub fn knows_container(&self, id: &str) -> bool {
        self.metadata_now().container(id).is_some()
    }

    /// The container a record should wait for before it is sent: one the record names
    /// but the metadata cache does not know yet, while nothing (such as the Kubernetes
    /// API, by pod uid) named its pod either (see [`awaiting`]).
    #[must_use]
    pub fn unannounced_container<'a>(&self, enrichment: &'a Enrichment) -> Option<&'a str> {
        if enrichment.pod_name.is_some() {
            return None;
        }
        enrichment
            .container_id
            .as_deref()
            .filter(|id| !self.knows_container(id))
    }

    /// Fills what is still unknown of `enrichment` from the metadata cache as it is now
    /// (also for a record that waited for its container's announcement).
    pub fn refill(&self, enrichment: &mut Enrichment) {
        enrichment.fill_from(&self.metadata_now());
    }

    /// Who a runtime event's container (or, without one, its pod) is, from the metadata
    /// cache. Callers then fill the rest from the event's own labels
    /// ([`Enrichment::fill_from_container`]): a deleted container may already be gone
    /// from the cache.
    #[must_use]
    pub fn enrich_container(
        &self,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
    ) -> Enrichment {
        let mut out = Enrichment {
            container_id: container_id.map(str::to_owned),
            pod_uid: pod_uid.map(str::to_owned),
            ..Enrichment::none()
        };
        if out.container_id.is_none() && out.pod_uid.is_none() {
            return out;
        }
        self.refill(&mut out);
        out
    }
}

impl Enrichment {
    /// Fills what is still unknown from one container's metadata (e.g. built from a
    /// runtime event's labels).
    pub fn fill_from_container(&mut self, meta: &metadata::ContainerMeta) {
        if self.container_id.is_none() {
            self.container_id = Some(meta.id.clone());
        }
        fill(&mut self.container_name, &meta.container_name);
        fill(&mut self.image, &meta.image);
        fill(&mut self.pod_uid, &meta.pod_uid);
        fill(&mut self.pod_name, &meta.pod_name);
        fill(&mut self.pod_namespace, &meta.pod_namespace);
        fill(&mut self.sandbox_id, &meta.sandbox_id);
        if self.runtime.is_none_or(|r| r == Runtime::Unknown) && meta.runtime.is_some() {
            self.runtime = meta.runtime;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{metadata::ContainerMeta, *};
    use crate::event::{AttachMode, FsKind, IoOp};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn record(pid: u32, path: Option<&str>) -> IoRecord {
        IoRecord {
            op: IoOp::Fsync,
            start_unix_ns: 0,
            end_unix_ns: 1,
            latency_ns: 1,
            pid,
            tid: pid,
            comm: "x".into(),
            cgroup_id: 0,
            mntns: 0,
            bytes: 0,
            offset: None,
            ret: 0,
            inode: 1,
            dev_major: 7,
            dev_minor: 0,
            file_name: "f".into(),
            parents: vec![],
            path_complete: true,
            mount_point: None,
            file_path: path.map(str::to_owned),
            datasync: false,
            directory: false,
            via_overlayfs: false,
            attach_mode: AttachMode::Tracepoint,
            fs: FsKind::Ext4,
            why: Default::default(),
        }
    }

    fn enricher(proc_dir: &std::path::Path) -> Enricher {
        let mut metadata = MetadataCache::new();
        metadata.insert(
            ContainerMeta::from_labels(
                ID,
                [
                    (metadata::LABEL_POD_NAME, "web-0"),
                    (metadata::LABEL_POD_NAMESPACE, "shop"),
                    (metadata::LABEL_POD_UID, UID),
                    (metadata::LABEL_CONTAINER_NAME, "nginx"),
                ],
            )
            .expect("meta")
            .with_image("iostall.test/busybox:1")
            .with_runtime(Runtime::Containerd),
        );
        Enricher {
            pids: PidMap::new(proc_dir, 64),
            cgroup_ids: None,
            paths: PathRules::default(),
            metadata: std::sync::Arc::new(std::sync::RwLock::new(metadata)),
        }
    }

    /// A `/proc` with one process, `pid`, whose `cgroup` file says `cgroup`.
    fn fake_proc(pid: u32, cgroup: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join(pid.to_string())).expect("mkdir");
        fs::write(dir.path().join(format!("{pid}/cgroup")), cgroup).expect("write");
        dir
    }

    #[test]
    fn by_cgroup_then_metadata() {
        let proc_dir = fake_proc(
            42,
            &format!("7:blkio:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"),
        );
        let mut e = enricher(proc_dir.path());
        let got = e.enrich(&record(42, Some("/data/x")));
        assert_eq!(got.method, AttributionMethod::Cgroup);
        assert_eq!(got.method.as_str(), "cgroup");
        assert_eq!(got.container_id.as_deref(), Some(ID));
        assert_eq!(got.container_name.as_deref(), Some("nginx"));
        assert_eq!(got.pod_name.as_deref(), Some("web-0"));
        assert_eq!(got.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(got.qos, Some(QosClass::BestEffort));
        // The bare id under a pod cgroup says "unknown runtime"; metadata knows better.
        assert_eq!(got.runtime, Some(Runtime::Containerd));
        assert_eq!(got.image.as_deref(), Some("iostall.test/busybox:1"));
    }

    #[test]
    fn by_path_for_host_processes() {
        let proc_dir = tempfile::tempdir().expect("tempdir");
        let mut e = enricher(proc_dir.path());
        let got = e.enrich(&record(
            7,
            Some(&format!(
                "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/{ID}/status"
            )),
        ));
        assert_eq!(got.method, AttributionMethod::Path(PathKind::CriContainer));
        assert_eq!(got.method.as_str(), "path");
        assert_eq!(got.container_name.as_deref(), Some("nginx"));
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        let got = e.enrich(&record(
            7,
            Some(&format!("/var/lib/kubelet/pods/{UID}/volumes/x")),
        ));
        assert_eq!(got.method, AttributionMethod::Path(PathKind::KubeletPod));
        assert_eq!(got.pod_name.as_deref(), Some("web-0"));
        assert_eq!(got.container_id, None);
    }

    /// A fixed pod list standing in for the Kubernetes API's index.
    #[derive(Debug)]
    struct Pods(Vec<metadata::KubePod>);

    impl metadata::PodLookup for Pods {
        fn pod_by_uid(&self, uid: &str) -> Option<metadata::KubePod> {
            self.0.iter().find(|p| p.uid == uid).cloned()
        }
        fn pod_by_name(&self, namespace: &str, name: &str) -> Option<metadata::KubePod> {
            self.0
                .iter()
                .find(|p| p.namespace == namespace && p.name == name)
                .cloned()
        }
    }

    #[test]
    fn kube_names_a_pod_known_only_by_its_cgroup_and_adds_owners_and_labels() {
        const KUBE_UID: &str = "0c4f7a8e-1111-2222-3333-444455556666";
        // A container no runtime reported.
        let other = "fe".repeat(32);
        let proc_dir = fake_proc(
            43,
            &format!("0::/kubepods/besteffort/pod{KUBE_UID}/{other}\n"),
        );
        let mut e = enricher(proc_dir.path());
        // Without the API: the uid from the path, no name (no runtime knows the pod).
        let before = e.enrich(&record(43, None));
        assert_eq!(before.pod_uid.as_deref(), Some(KUBE_UID));
        assert_eq!(before.pod_name, None);
        assert!(before.owners.is_empty());

        let pod = metadata::KubePod {
            uid: KUBE_UID.into(),
            name: "web-5d4f8c7b9-x7k2p".into(),
            namespace: "shop".into(),
            owners: PodOwners::from_chain([("ReplicaSet", "web-5d4f8c7b9"), ("Deployment", "web")]),
            labels: PodLabels([("app".to_owned(), "web".to_owned())].into()),
        };
        e.metadata
            .write()
            .expect("lock")
            .set_pod_lookup(std::sync::Arc::new(Pods(vec![pod])));
        let got = e.enrich(&record(43, None));
        assert_eq!(got.method, AttributionMethod::Cgroup);
        assert_eq!(got.pod_name.as_deref(), Some("web-5d4f8c7b9-x7k2p"));
        assert_eq!(got.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(got.owners.deployment.as_deref(), Some("web"));
        assert_eq!(got.owners.replicaset.as_deref(), Some("web-5d4f8c7b9"));
        let v = serde_json::to_value(&got).expect("json");
        assert_eq!(v["k8s.deployment.name"], "web");
        assert_eq!(v["k8s.replicaset.name"], "web-5d4f8c7b9");
        assert_eq!(v["k8s.pod.label.app"], "web");
        assert!(
            v.get("k8s.statefulset.name").is_none(),
            "absent owners left out"
        );

        // Runtime labels name the pod first; the API adds only what they lack.
        fs::write(
            proc_dir.path().join("43/cgroup"),
            format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
        )
        .expect("write");
        let mut e2 = enricher(proc_dir.path());
        let got = e2.enrich(&record(43, None));
        assert_eq!(got.pod_name.as_deref(), Some("web-0"));
        assert!(got.pod_labels.is_empty());
    }

    #[test]
    fn runtime_events_from_cache_then_labels() {
        let proc_dir = tempfile::tempdir().expect("tempdir");
        let e = enricher(proc_dir.path());
        let got = e.enrich_container(Some(ID), None);
        assert_eq!(got.container_name.as_deref(), Some("nginx"));
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        assert_eq!(got.image.as_deref(), Some("iostall.test/busybox:1"));
        // A container the cache no longer knows (deleted): its event's labels name it.
        let mut gone = e.enrich_container(Some("dead"), None);
        assert_eq!(gone.pod_name, None);
        gone.fill_from_container(
            &ContainerMeta::from_labels(
                "dead",
                [
                    (metadata::LABEL_POD_NAME, "web-1"),
                    (metadata::LABEL_POD_UID, "u-2"),
                ],
            )
            .expect("meta"),
        );
        assert_eq!(gone.pod_name.as_deref(), Some("web-1"));
        assert_eq!(gone.pod_uid.as_deref(), Some("u-2"));
        // Nothing to look up (an image event).
        assert_eq!(e.enrich_container(None, None), Enrichment::none());
    }

    #[test]
    fn nothing_known() {
        let proc_dir = tempfile::tempdir().expect("tempdir");
        let mut e = enricher(proc_dir.path());
        let got = e.enrich(&record(
            7,
            Some("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db"),
        ));
        assert_eq!(got, Enrichment::none());
        assert_eq!(got.method.as_str(), "none");
        assert_eq!(e.enrich(&record(7, None)), Enrichment::none());
    }
}
