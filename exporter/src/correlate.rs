//! Correlate: gives each record the trace, span and Resource it belongs to.
//!
//! This is the minimal version of the stage (issue #3). Ids are deterministic, so the
//! same kernel event always gets the same ids and a restarted exporter joins the same
//! traces:
//!
//! - **trace id**: one trace per container (or, outside containers, per process) and
//!   [`TRACE_WINDOW_NS`] window of wall-clock time: 128 bits of a stable hash of
//!   `(host name, container id | pod uid | pid, start_unix_ns / 10 s)`. A container's
//!   slow IO of the same 10 seconds shows as one trace; windows are aligned to the Unix
//!   epoch, so every exporter on the node agrees on them.
//! - **span id**: 64 bits of a stable hash of `(host name, pid, tid, op, start_unix_ns,
//!   inode)`: unique per operation.
//! - **Resource**: IO of a pod or container goes under its own Resource
//!   ([`ResourceKey::Workload`]): the Collector's `k8sattributes` processor matches
//!   Resource attributes only. IO of no pod stays under [`ResourceKey::Node`].
//! - **runtime events** ([`Correlator::correlate_event`]): the trace of their container
//!   (else pod) and window, as its IO; a span id of their own; the same Resource.
//!
//! During a pod's startup, [`crate::startup`] places records and events in the startup's
//! own trace instead ([`Correlator::correlate_placed`]): trace id from the pod uid and
//! attempt, IO spans under phase spans.
use std::borrow::Cow;

use serde::Serialize;

use crate::{
    enrich::{Enrichment, metadata::PodLabels},
    event::IoRecord,
    runtime::RuntimeEvent,
};

/// Where a record or event goes in a pod's startup trace (decided by
/// [`crate::startup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The startup's trace.
    pub trace_id: TraceId,
    /// The span it is a child of (an IO span), or belongs to (a log record).
    pub parent: SpanId,
    /// For a copy of a shared runtime operation: how many starting pods it overlapped.
    pub shared_by: Option<u32>,
}

/// Width of the time window that groups a process's slow IO into one trace.
pub const TRACE_WINDOW_NS: u64 = 10_000_000_000;

/// Which Resource a record is exported under. Exports group records into one
/// `ResourceSpans`/`ResourceLogs` per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKey {
    /// The node itself (`service.name`, `host.name`, `k8s.node.name`, …): IO that
    /// belongs to no known pod or container.
    Node,
    /// A pod, or one container (of a pod or not): the node's attributes plus these.
    Workload(Workload),
}

/// The identity of a pod (and container) that goes on its Resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Workload {
    /// `k8s.pod.uid`.
    pub pod_uid: Option<String>,
    /// `k8s.pod.name`.
    pub pod_name: Option<String>,
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `container.id`, when one container is meant.
    pub container_id: Option<String>,
    /// `k8s.container.name`, when one container is meant.
    pub container_name: Option<String>,
    /// `(k8s.deployment.name, web)`, `(k8s.replicaset.name, web-5d4f)`… (Kubernetes
    /// API; a list rather than [`crate::enrich::metadata::PodOwners`] keeps this key
    /// small).
    pub owners: Vec<(&'static str, String)>,
    /// `k8s.pod.label.<key>` (Kubernetes API, allow-listed).
    pub labels: PodLabels,
}

impl Workload {
    /// The identity of what `enrichment` found, if it found a pod or a container.
    #[must_use]
    pub fn of(enrichment: &Enrichment) -> Option<Self> {
        if enrichment.pod_uid.is_none() && enrichment.container_id.is_none() {
            return None;
        }
        Some(Self {
            pod_uid: enrichment.pod_uid.clone(),
            pod_name: enrichment.pod_name.clone(),
            namespace: enrichment.pod_namespace.clone(),
            container_id: enrichment.container_id.clone(),
            container_name: enrichment.container_name.clone(),
            owners: enrichment
                .owners
                .attributes()
                .map(|(k, v)| (k, v.to_owned()))
                .collect(),
            labels: enrichment.pod_labels.clone(),
        })
    }

    /// Its Resource attributes, semantic-convention names, known values only: the ids,
    /// then the owners and labels (pod identity too, as `k8sattributes` sets them).
    #[must_use]
    pub fn attributes(&self) -> Vec<(Cow<'static, str>, &str)> {
        let ids = [
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.pod.name", &self.pod_name),
            ("k8s.namespace.name", &self.namespace),
            ("container.id", &self.container_id),
            ("k8s.container.name", &self.container_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (Cow::Borrowed(k), v)));
        ids.chain(
            self.owners
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), v.as_str())),
        )
        .chain(self.labels.attributes().map(|(k, v)| (Cow::Owned(k), v)))
        .collect()
    }
}

/// A 16-byte trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A record with its place in the trace model: what every sink receives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorrelatedRecord {
    /// The decoded record.
    #[serde(flatten)]
    pub record: IoRecord,
    /// The trace it belongs to (hex in JSON).
    pub trace_id: TraceId,
    /// Its own span id (hex in JSON).
    pub span_id: SpanId,
    /// The startup phase span it is a child of, when it happened during its pod's
    /// startup (see [`crate::startup`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// For a copy of a shared runtime operation in a starting pod's trace: how many
    /// starting pods it overlapped (`iostall.overlap.pods`).
    #[serde(
        rename = "iostall.overlap.pods",
        skip_serializing_if = "Option::is_none"
    )]
    pub shared_by: Option<u32>,
    /// Who it belongs to and how that was found (JSON: `container.id`, `k8s.pod.name`…).
    #[serde(flatten)]
    pub enrichment: Enrichment,
    /// The Resource it is exported under.
    #[serde(skip)]
    pub resource: ResourceKey,
}

/// A runtime lifecycle event with its place in the trace model: what sinks receive.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatedEvent {
    /// The event as its source reported it.
    pub event: RuntimeEvent,
    /// The trace of its container's (or pod's) activity in the event's window.
    pub trace_id: TraceId,
    /// Its own id (no span is exported for it yet: pod startup phases come later).
    pub span_id: SpanId,
    /// Its container and pod, from the metadata cache and the event's labels.
    pub enrichment: Enrichment,
    /// The Resource it is exported under.
    pub resource: ResourceKey,
}

/// Assigns ids; holds what is constant for the node.
#[derive(Debug, Clone)]
pub struct Correlator {
    host_seed: u64,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new(&crate::host::host_name())
    }
}

impl Correlator {
    /// A correlator for the node called `host`.
    #[must_use]
    pub fn new(host: &str) -> Self {
        Self {
            host_seed: StableHasher::new(0x696f_7374_616c_6c00)
                .bytes(host.as_bytes())
                .finish(),
        }
    }

    /// Wraps a record that belongs to no known pod with its ids and Resource.
    #[must_use]
    pub fn correlate(&self, record: IoRecord) -> CorrelatedRecord {
        self.correlate_enriched(record, Enrichment::none())
    }

    /// Wraps a record with its ids and the Resource of the pod/container it belongs to.
    #[must_use]
    pub fn correlate_enriched(&self, record: IoRecord, enrichment: Enrichment) -> CorrelatedRecord {
        // Group by the most specific owner known: container, pod, else the process.
        let owner = match owner_of(&enrichment) {
            Some(owner) => TraceOwner::Named(owner),
            None => TraceOwner::Pid(record.pid),
        };
        let trace_id = self.trace_id(owner, record.start_unix_ns);
        let span = StableHasher::new(self.host_seed ^ 0x7370_616e)
            .u64(u64::from(record.pid))
            .u64(u64::from(record.tid))
            .u64(record.op as u64)
            .u64(record.start_unix_ns)
            .u64(record.inode)
            .finish();
        let span = if span == 0 { 1 } else { span };
        let resource = Workload::of(&enrichment).map_or(ResourceKey::Node, ResourceKey::Workload);
        CorrelatedRecord {
            record,
            trace_id,
            span_id: SpanId(span.to_be_bytes()),
            parent_span_id: None,
            shared_by: None,
            enrichment,
            resource,
        }
    }

    /// Wraps a record with its ids and Resource, in the startup trace and phase of
    /// `placement` when it has one. A copy of a shared runtime operation
    /// (`placement.shared_by`) gets a span id of its own in that trace.
    #[must_use]
    pub fn correlate_placed(
        &self,
        record: IoRecord,
        enrichment: Enrichment,
        placement: Option<Placement>,
    ) -> CorrelatedRecord {
        let mut c = self.correlate_enriched(record, enrichment);
        if let Some(p) = placement {
            if p.shared_by.is_some() {
                // The copy's own id, so that each pod's copy is a distinct span.
                let id = StableHasher::new(0x7368_6172_6564)
                    .bytes(&p.trace_id.0)
                    .bytes(&c.span_id.0)
                    .finish();
                c.span_id = SpanId(if id == 0 { 1 } else { id }.to_be_bytes());
            }
            c.trace_id = p.trace_id;
            c.parent_span_id = Some(p.parent);
            c.shared_by = p.shared_by;
        }
        c
    }

    /// Wraps a runtime event; in a startup, its log record carries the startup's trace
    /// and the span it belongs to (`placement`).
    #[must_use]
    pub fn correlate_event_placed(
        &self,
        event: RuntimeEvent,
        enrichment: Enrichment,
        placement: Option<Placement>,
    ) -> CorrelatedEvent {
        let mut c = self.correlate_event(event, enrichment);
        if let Some(p) = placement {
            c.trace_id = p.trace_id;
            c.span_id = p.parent;
        }
        c
    }

    /// Wraps a runtime lifecycle event with its ids and Resource. Its trace is the one
    /// its container's (else its pod's) slow IO of the same [`TRACE_WINDOW_NS`] window
    /// gets, so a backend shows "container exited 137" beside the fsync stalls before
    /// it; events of no container or pod (an image pull) share one trace per source and
    /// window. Its span id is its own, a stable hash of the event.
    #[must_use]
    pub fn correlate_event(&self, event: RuntimeEvent, enrichment: Enrichment) -> CorrelatedEvent {
        let owner = match owner_of(&enrichment) {
            Some(owner) => TraceOwner::Named(owner),
            None => TraceOwner::Source(event.runtime.as_str()),
        };
        let trace_id = self.trace_id(owner, event.time_unix_ns);
        let span = StableHasher::new(self.host_seed ^ 0x0065_7665_6e74)
            .bytes(event.runtime.as_str().as_bytes())
            .bytes(event.kind.name().as_bytes())
            .bytes(event.container_id.as_deref().unwrap_or_default().as_bytes())
            .bytes(enrichment.pod_uid.as_deref().unwrap_or_default().as_bytes())
            .u64(event.time_unix_ns)
            .finish();
        let span = if span == 0 { 1 } else { span };
        let resource = Workload::of(&enrichment).map_or(ResourceKey::Node, ResourceKey::Workload);
        CorrelatedEvent {
            event,
            trace_id,
            span_id: SpanId(span.to_be_bytes()),
            enrichment,
            resource,
        }
    }

    /// The trace of `owner`'s activity in the window holding `unix_ns`.
    fn trace_id(&self, owner: TraceOwner<'_>, unix_ns: u64) -> TraceId {
        let window = unix_ns / TRACE_WINDOW_NS;
        let trace = |salt: u64| {
            let h = StableHasher::new(self.host_seed ^ salt);
            let h = match owner {
                TraceOwner::Named(owner) => h.bytes(owner.as_bytes()),
                TraceOwner::Pid(pid) => h.u64(u64::from(pid)),
                TraceOwner::Source(source) => h.bytes(b"source:").bytes(source.as_bytes()),
            };
            h.u64(window).finish()
        };
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&trace(0x7472_6163_6531).to_be_bytes());
        trace_id[8..].copy_from_slice(&trace(0x7472_6163_6532).to_be_bytes());
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceId(trace_id)
    }
}

/// Whose activity a trace groups.
#[derive(Clone, Copy)]
enum TraceOwner<'a> {
    /// A container id, else a pod uid.
    Named(&'a str),
    /// A process outside any known container.
    Pid(u32),
    /// A runtime source, for its events about no container or pod.
    Source(&'a str),
}

/// The most specific owner `enrichment` knows: container, else pod.
fn owner_of(enrichment: &Enrichment) -> Option<&str> {
    enrichment
        .container_id
        .as_deref()
        .or(enrichment.pod_uid.as_deref())
}

/// FNV-1a with a splitmix64 finish: stable across Rust releases and platforms (unlike
/// `DefaultHasher`), which deterministic ids need.
pub(crate) struct StableHasher(u64);

impl StableHasher {
    pub(crate) fn new(seed: u64) -> Self {
        Self(0xcbf2_9ce4_8422_2325 ^ seed)
    }
    pub(crate) fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn finish(self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{AttachMode, FsKind, IoOp};

    pub(crate) fn record(pid: u32, start_unix_ns: u64) -> IoRecord {
        IoRecord {
            op: IoOp::Fsync,
            start_unix_ns,
            end_unix_ns: start_unix_ns + 108_000_000,
            latency_ns: 108_000_000,
            pid,
            tid: pid + 1,
            comm: "containerd".into(),
            cgroup_id: 42,
            mntns: 4026531841,
            bytes: 0,
            offset: None,
            ret: 0,
            inode: 12,
            dev_major: 7,
            dev_minor: 3,
            file_name: "meta.db".into(),
            parents: vec!["io.containerd.metadata.v1.bolt".into()],
            path_complete: true,
            mount_point: Some("/var/lib/containerd".into()),
            file_path: Some("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".into()),
            datasync: false,
            directory: false,
            via_overlayfs: false,
            attach_mode: AttachMode::Tracepoint,
            fs: FsKind::Ext4,
            why: Default::default(),
        }
    }

    #[test]
    fn same_process_and_window_share_a_trace() {
        let c = Correlator::new("node-a");
        let t0 = 1_700_000_000_000_000_000;
        let a = c.correlate(record(10, t0));
        let b = c.correlate(record(10, t0 + 1_000_000));
        let other_pid = c.correlate(record(11, t0));
        let later = c.correlate(record(10, t0 + TRACE_WINDOW_NS));
        assert_eq!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_ne!(a.trace_id, other_pid.trace_id);
        assert_ne!(a.trace_id, later.trace_id);
        assert_eq!(a.resource, ResourceKey::Node);
    }

    #[test]
    fn ids_are_deterministic_and_host_specific() {
        let t0 = 1_700_000_000_000_000_000;
        let a = Correlator::new("node-a").correlate(record(10, t0));
        let again = Correlator::new("node-a").correlate(record(10, t0));
        let b = Correlator::new("node-b").correlate(record(10, t0));
        assert_eq!((a.trace_id, a.span_id), (again.trace_id, again.span_id));
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn a_containers_io_gets_its_own_resource_and_trace() {
        use crate::enrich::{AttributionMethod, Enrichment};
        let c = Correlator::new("node-a");
        let t0 = 1_700_000_000_000_000_000;
        let enrichment = Enrichment {
            method: AttributionMethod::Cgroup,
            container_id: Some("c0ffee".into()),
            container_name: Some("app".into()),
            pod_uid: Some("uid-1".into()),
            pod_name: Some("web-0".into()),
            pod_namespace: Some("shop".into()),
            ..Enrichment::none()
        };
        let a = c.correlate_enriched(record(10, t0), enrichment.clone());
        let b = c.correlate_enriched(record(11, t0 + 1), enrichment);
        let host = c.correlate(record(10, t0));
        // Two processes of one container share its trace; the host process does not.
        assert_eq!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, host.trace_id);
        let ResourceKey::Workload(w) = &a.resource else {
            panic!("container IO under the node Resource");
        };
        assert_eq!(
            w.attributes(),
            vec![
                ("k8s.pod.uid".into(), "uid-1"),
                ("k8s.pod.name".into(), "web-0"),
                ("k8s.namespace.name".into(), "shop"),
                ("container.id".into(), "c0ffee"),
                ("k8s.container.name".into(), "app"),
            ]
        );
        assert_eq!(host.resource, ResourceKey::Node);
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["k8s.pod.name"], "web-0");
        assert_eq!(v["container.id"], "c0ffee");
        assert_eq!(v["iostall.attribution"], "cgroup");
    }

    #[test]
    fn a_runtime_event_joins_its_containers_io_trace_of_the_window() {
        use crate::{
            enrich::{AttributionMethod, Enrichment},
            runtime::{EventSource, RuntimeEventKind},
        };
        let c = Correlator::new("node-a");
        let t0 = 1_700_000_000_000_000_000;
        let container = Enrichment {
            container_id: Some("c0ffee".into()),
            pod_uid: Some("uid-1".into()),
            ..Enrichment::none()
        };
        let io = c.correlate_enriched(
            record(10, t0 + 1),
            Enrichment {
                method: AttributionMethod::Cgroup,
                ..container.clone()
            },
        );
        let event = |at: u64, kind| {
            let mut ev = RuntimeEvent::new(at, EventSource::Containerd, kind);
            ev.container_id = Some("c0ffee".into());
            ev
        };
        let exited = RuntimeEventKind::ContainerExited { exit_code: 137 };
        let exit = c.correlate_event(event(t0 + 5_000_000_000, exited), container.clone());
        let again = c.correlate_event(event(t0 + 5_000_000_000, exited), container.clone());
        let started = c.correlate_event(
            event(t0 + 2, RuntimeEventKind::ContainerStarted),
            container.clone(),
        );
        let next_window = c.correlate_event(event(t0 + TRACE_WINDOW_NS, exited), container.clone());
        assert_eq!(exit.trace_id, io.trace_id);
        assert_eq!(started.trace_id, io.trace_id);
        assert_ne!(next_window.trace_id, io.trace_id);
        assert_eq!(
            (exit.trace_id, exit.span_id),
            (again.trace_id, again.span_id)
        );
        assert_ne!(exit.span_id, started.span_id);
        assert_ne!(exit.span_id, io.span_id);
        assert_eq!(exit.resource, io.resource);
        // Nothing to tie it to: the node's Resource, one trace per source and window.
        let image = |at| {
            c.correlate_event(
                RuntimeEvent::new(at, EventSource::Containerd, RuntimeEventKind::ImagePulled),
                Enrichment::none(),
            )
        };
        let (a, b) = (image(t0), image(t0 + 1));
        assert_eq!(a.resource, ResourceKey::Node);
        assert_eq!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_ne!(a.trace_id, io.trace_id);
    }

    #[test]
    fn owners_and_labels_go_on_the_pods_resource() {
        use crate::enrich::{AttributionMethod, Enrichment, metadata::PodOwners};
        let enrichment = Enrichment {
            method: AttributionMethod::Cgroup,
            pod_uid: Some("uid-1".into()),
            owners: PodOwners::from_chain([("ReplicaSet", "web-5d4f"), ("Deployment", "web")]),
            pod_labels: PodLabels([("app.kubernetes.io/name".to_owned(), "web".to_owned())].into()),
            ..Enrichment::none()
        };
        let w = Workload::of(&enrichment).expect("a pod");
        assert_eq!(
            w.attributes(),
            vec![
                ("k8s.pod.uid".into(), "uid-1"),
                ("k8s.deployment.name".into(), "web"),
                ("k8s.replicaset.name".into(), "web-5d4f"),
                ("k8s.pod.label.app.kubernetes.io/name".into(), "web"),
            ]
        );
    }

    #[test]
    fn json_has_hex_ids() {
        let a = Correlator::new("n").correlate(record(10, 1));
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["trace_id"].as_str().map(str::len), Some(32));
        assert_eq!(v["span_id"].as_str().map(str::len), Some(16));
        assert_eq!(v["op"], "fsync");
        assert_eq!(v["trace_id"], a.trace_id.to_string());
    }
}
