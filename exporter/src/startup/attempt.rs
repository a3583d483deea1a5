//! One pod startup attempt: its phases, in order, as the runtime's events draw them.
//!
//! The kubelet works through a pod one step at a time (sandbox, then each container's
//! create and start, init containers first), so the phases form one line: each event
//! closes the phase that was open and opens the next. A phase's kind is known when it
//! closes (the event that closes it says what it was), so IO that falls in the open
//! phase is held here until then; that also keeps each phase's summary exact.
use std::collections::BTreeMap;

use super::report::{IoTally, PhaseSummary, SpanValue, StartupSpan, StartupSummary, WorstIo};
use crate::{
    correlate::{ResourceKey, SpanId, TraceId},
    enrich::Enrichment,
    event::IoRecord,
};

/// What a phase was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// RunPodSandbox: from the first sign of the pod to its sandbox running.
    Sandbox,
    /// From the previous step's end to a container created (includes an image pull).
    ContainerCreate,
    /// From a container created to it started.
    ContainerStart,
    /// From a container started to its failure (only in failed startups).
    ContainerRun,
}

impl PhaseKind {
    /// The span name.
    #[must_use]
    pub fn span_name(self) -> &'static str {
        match self {
            Self::Sandbox => "pod sandbox",
            Self::ContainerCreate => "container create",
            Self::ContainerStart => "container start",
            Self::ContainerRun => "container run",
        }
    }
}

/// The container a phase is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseContainer {
    /// `container.id`.
    pub id: String,
    /// `k8s.container.name`.
    pub name: Option<String>,
    /// `container.image.name`.
    pub image: Option<String>,
}

/// One phase of an attempt.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What it was (for the open phase: what it will be unless an event says otherwise).
    pub kind: PhaseKind,
    /// The container it is about.
    pub container: Option<PhaseContainer>,
    /// Unix ns.
    pub start_ns: u64,
    /// Unix ns; `None` while open.
    pub end_ns: Option<u64>,
    /// When (wall clock, Unix ns) it closed: it is exported a grace time later.
    pub closed_wall_ns: u64,
    /// Its id, set when it closes.
    pub span_id: Option<SpanId>,
    /// The slow IO placed in it.
    pub io: IoTally,
    /// Whether its span went out (later IO goes to a phase not out yet, or is late).
    pub exported: bool,
}

impl Phase {
    fn open(kind: PhaseKind, start_ns: u64) -> Self {
        Self {
            kind,
            container: None,
            start_ns,
            end_ns: None,
            closed_wall_ns: 0,
            span_id: None,
            io: IoTally::default(),
            exported: false,
        }
    }

    /// How much of `[start, end]` it covers (an open phase reaches to the future).
    #[must_use]
    pub fn overlap(&self, start: u64, end: u64) -> u64 {
        let to = self.end_ns.unwrap_or(u64::MAX).min(end);
        to.saturating_sub(self.start_ns.max(start))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd {
    /// Unix ns.
    pub at_ns: u64,
    /// `iostall.startup.end_reason`.
    pub reason: &'static str,
    /// The root's error status message, if it failed.
    pub error: Option<String>,
    /// When (wall clock) it ended: the root is exported a grace time later.
    pub wall_ns: u64,
}

/// A container of the pod, as far as the events told.
#[derive(Debug, Clone, Default)]
pub struct ContainerProgress {
    /// Its name in the pod.
    pub name: Option<String>,
    /// Started.
    pub started: bool,
    /// Exited with 0 (an init container done).
    pub completed: bool,
}

/// An IO record waiting for its phase to close.
#[derive(Debug)]
pub struct HeldIo {
    /// The record.
    pub record: IoRecord,
    /// Who it belongs to (for a shared copy: this pod, by `time_overlap`).
    pub enrichment: Enrichment,
    /// For a shared runtime operation's copy: how many starting pods it overlapped.
    pub shared_by: Option<u32>,
}

/// One startup attempt of one pod.
#[derive(Debug)]
pub struct Attempt {
    /// `k8s.pod.uid`.
    pub pod_uid: String,
    /// The sandbox of this attempt.
    pub sandbox_id: String,
    /// Shown as `iostall.startup.attempt`: sandboxes and restarts seen before, this run.
    pub attempt: u32,
    /// Its trace.
    pub trace_id: TraceId,
    /// The root span's id.
    pub root_span_id: SpanId,
    /// The pod's Resource.
    pub resource: ResourceKey,
    /// `k8s.pod.name`, `k8s.namespace.name`.
    pub pod_name: Option<String>,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// Unix ns of the first sign of the pod.
    pub begin_ns: u64,
    /// The phases, oldest first; the last is open until the attempt ends.
    pub phases: Vec<Phase>,
    /// The pod's containers, by id.
    pub containers: BTreeMap<String, ContainerProgress>,
    /// Set once it ended.
    pub end: Option<AttemptEnd>,
    /// IO of the open phase.
    pub held: Vec<HeldIo>,
    /// How many of `held` are shared copies.
    pub held_shared: usize,
    /// The previous attempt's root.
    pub link: Option<(TraceId, SpanId)>,
    /// IO that came after every phase it overlapped went out: own IO sent unplaced,
    /// shared copies dropped (in no summary).
    pub late_io: u32,
    /// Resumed after an iostall restart (what came before is not in this run's spans).
    pub resumed: bool,
    /// Containers the pod's spec has (Kubernetes API), init containers included.
    pub expected: Option<u32>,
}

impl Attempt {
    /// A new attempt beginning at `begin_ns` with its sandbox phase open (or, for a
    /// container restart, the next container create).
    #[must_use]
    pub fn new(ids: AttemptIds, identity: &Enrichment, begin_ns: u64, first: PhaseKind) -> Self {
        Self {
            pod_uid: ids.pod_uid,
            sandbox_id: ids.sandbox_id,
            attempt: ids.attempt,
            trace_id: ids.trace_id,
            root_span_id: ids.root_span_id,
            resource: pod_resource(identity),
            pod_name: identity.pod_name.clone(),
            namespace: identity.pod_namespace.clone(),
            begin_ns,
            phases: vec![Phase::open(first, begin_ns)],
            containers: BTreeMap::new(),
            end: None,
            held: Vec::new(),
            held_shared: 0,
            link: ids.link,
            late_io: 0,
            resumed: false,
            expected: None,
        }
    }

    /// Still running.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.end.is_none()
    }

    /// The open phase.
    #[must_use]
    pub fn open_phase(&self) -> Option<&Phase> {
        self.phases.last().filter(|p| p.end_ns.is_none())
    }

    /// This pod's identity for a shared runtime operation's copy.
    #[must_use]
    pub fn overlap_identity(&self) -> Enrichment {
        Enrichment {
            method: crate::enrich::AttributionMethod::TimeOverlap,
            pod_uid: Some(self.pod_uid.clone()),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.namespace.clone(),
            sandbox_id: Some(self.sandbox_id.clone()),
            ..Enrichment::none()
        }
    }

    /// Fills the pod's names when a later event knows them.
    pub fn learn_names(&mut self, identity: &Enrichment) {
        if self.pod_name.is_none() && identity.pod_name.is_some() {
            self.pod_name.clone_from(&identity.pod_name);
            self.namespace.clone_from(&identity.pod_namespace);
            self.resource = pod_resource(identity);
        }
    }

    /// Closes the open phase at `at_ns` as `kind` (about `container`), and opens
    /// `next` from there unless `next` is `None`.
    pub fn close_phase(
        &mut self,
        at_ns: u64,
        wall_ns: u64,
        kind: PhaseKind,
        container: Option<PhaseContainer>,
        next: Option<PhaseKind>,
    ) {
        let Some(phase) = self.phases.last_mut().filter(|p| p.end_ns.is_none()) else {
            return;
        };
        phase.kind = kind;
        phase.container = container;
        phase.end_ns = Some(at_ns.max(phase.start_ns));
        phase.closed_wall_ns = wall_ns;
        phase.span_id = Some(super::ids::phase_span_id(
            self.trace_id,
            kind.span_name(),
            phase.container.as_ref().map_or("", |c| c.id.as_str()),
        ));
        let end = phase.end_ns.unwrap_or(at_ns);
        if let Some(next) = next {
            self.phases.push(Phase::open(next, end));
        }
    }

    /// Ends the attempt at `at_ns`. A failure closes the open phase as what it was
    /// about to be; a success drops the open tail (the wait after the last start, which
    /// is not startup).
    pub fn finish(
        &mut self,
        at_ns: u64,
        wall_ns: u64,
        reason: &'static str,
        error: Option<String>,
    ) {
        if self.end.is_some() {
            return;
        }
        if let Some(open) = self.open_phase() {
            if error.is_some() {
                let (kind, container) = (open.kind, open.container.clone());
                self.close_phase(at_ns, wall_ns, kind, container, None);
            } else {
                self.phases.pop();
            }
        }
        let at_ns = if error.is_none() {
            self.phases.last().and_then(|p| p.end_ns).unwrap_or(at_ns)
        } else {
            at_ns
        };
        self.end = Some(AttemptEnd {
            at_ns: at_ns.max(self.begin_ns),
            reason,
            error,
            wall_ns,
        });
    }

    /// Index of the phase `[start, end]` belongs to: the one it overlaps most; IO before
    /// the first sign belongs to the first phase (and moves the begin earlier while that
    /// phase is not out). `None`: not this attempt's (after its end).
    #[must_use]
    pub fn phase_for(&self, start: u64, end: u64) -> Option<usize> {
        if let Some(e) = &self.end
            && start >= e.at_ns
        {
            return None;
        }
        let best = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| (p.overlap(start, end), i))
            .filter(|(o, _)| *o > 0)
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        match best {
            Some((_, i)) => Some(i),
            None if end <= self.begin_ns && !self.phases.is_empty() => Some(0),
            // A zero-length record at a boundary: the phase it starts in.
            None => self
                .phases
                .iter()
                .rposition(|p| p.start_ns <= start && p.end_ns.is_none_or(|e| start <= e)),
        }
    }

    /// Moves the begin (and the first phase's start) to `start_ns` if earlier, while
    /// the first phase is not out yet.
    pub fn reach_back(&mut self, start_ns: u64) {
        if start_ns < self.begin_ns
            && let Some(first) = self.phases.first_mut()
            && !first.exported
        {
            self.begin_ns = start_ns;
            first.start_ns = start_ns;
        }
    }

    /// The finished phase `i` as a span.
    #[must_use]
    pub fn phase_span(&self, i: usize) -> Option<StartupSpan> {
        let p = self.phases.get(i)?;
        let (end, span_id) = (p.end_ns?, p.span_id?);
        let mut attributes: Vec<(&'static str, SpanValue)> = vec![
            ("k8s.pod.uid", self.pod_uid.as_str().into()),
            ("iostall.sandbox.id", self.sandbox_id.as_str().into()),
        ];
        if let Some(c) = &p.container {
            attributes.push(("container.id", c.id.as_str().into()));
            if let Some(name) = &c.name {
                attributes.push(("k8s.container.name", name.as_str().into()));
            }
            if let Some(image) = &c.image {
                attributes.push(("container.image.name", image.as_str().into()));
            }
        }
        attributes.extend(p.io.attributes());
        let failed_here = self
            .end
            .as_ref()
            .and_then(|e| e.error.as_ref().filter(|_| i + 1 == self.phases.len()));
        Some(StartupSpan {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.root_span_id),
            name: p.kind.span_name(),
            start_unix_ns: p.start_ns,
            end_unix_ns: end,
            resource: self.resource.clone(),
            attributes,
            error: failed_here.cloned(),
            links: Vec::new(),
        })
    }

    /// The whole attempt's IO (the sum of its phases').
    #[must_use]
    pub fn io(&self) -> IoTally {
        let mut io = IoTally::default();
        for p in &self.phases {
            io.merge(&p.io);
        }
        io
    }

    /// The root span, once ended.
    #[must_use]
    pub fn root_span(&self) -> Option<StartupSpan> {
        let end = self.end.as_ref()?;
        let mut attributes: Vec<(&'static str, SpanValue)> = vec![
            ("k8s.pod.uid", self.pod_uid.as_str().into()),
            ("iostall.sandbox.id", self.sandbox_id.as_str().into()),
            ("iostall.startup.attempt", self.attempt.into()),
            ("iostall.startup.end_reason", end.reason.into()),
            (
                "iostall.startup.containers",
                u32::try_from(self.containers.len())
                    .unwrap_or(u32::MAX)
                    .into(),
            ),
            (
                "iostall.startup.phases",
                u32::try_from(self.phases.len()).unwrap_or(0).into(),
            ),
        ];
        if let Some(name) = &self.pod_name {
            attributes.push(("k8s.pod.name", name.as_str().into()));
        }
        if let Some(ns) = &self.namespace {
            attributes.push(("k8s.namespace.name", ns.as_str().into()));
        }
        if let Some(n) = self.expected {
            attributes.push(("iostall.startup.expected_containers", n.into()));
        }
        attributes.extend(self.io().attributes());
        if self.late_io > 0 {
            attributes.push(("iostall.stall.late_ops", self.late_io.into()));
        }
        if self.resumed {
            attributes.push(("iostall.startup.resumed", true.into()));
        }
        Some(StartupSpan {
            trace_id: self.trace_id,
            span_id: self.root_span_id,
            parent: None,
            name: "pod startup",
            start_unix_ns: self.begin_ns,
            end_unix_ns: end.at_ns,
            resource: self.resource.clone(),
            attributes,
            error: end.error.clone(),
            links: self.link.into_iter().collect(),
        })
    }

    /// The console / JSON summary, once ended.
    #[must_use]
    pub fn summary(&self) -> Option<StartupSummary> {
        let end = self.end.as_ref()?;
        Some(StartupSummary {
            kind: "startup",
            trace_id: self.trace_id,
            span_id: self.root_span_id,
            pod_uid: self.pod_uid.clone(),
            pod_name: self.pod_name.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
            start_unix_ns: self.begin_ns,
            end_unix_ns: end.at_ns,
            end_reason: end.reason,
            error: end.error.clone(),
            phases: self
                .phases
                .iter()
                .map(|p| PhaseSummary {
                    name: p.kind.span_name(),
                    container: p
                        .container
                        .as_ref()
                        .map(|c| c.name.clone().unwrap_or_else(|| short_id(&c.id))),
                    duration_ns: p.end_ns.unwrap_or(p.start_ns).saturating_sub(p.start_ns),
                    io: p.io.clone(),
                })
                .collect(),
            io: self.io(),
        })
    }
}

/// The ids an attempt is made with.
#[derive(Debug, Clone)]
pub struct AttemptIds {
    /// `k8s.pod.uid`.
    pub pod_uid: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Attempt number shown.
    pub attempt: u32,
    /// Trace id.
    pub trace_id: TraceId,
    /// Root span id.
    pub root_span_id: SpanId,
    /// The previous attempt's root.
    pub link: Option<(TraceId, SpanId)>,
}

/// The worst-operation entry of `record`.
#[must_use]
pub fn worst_of(record: &IoRecord, shared_by: Option<u32>) -> WorstIo {
    WorstIo {
        latency_ns: span_duration(record),
        op: record.op,
        path: record.display_path(),
        comm: record.comm.clone(),
        shared_by,
    }
}

/// The duration its span shows.
#[must_use]
pub fn span_duration(record: &IoRecord) -> u64 {
    record.end_unix_ns.saturating_sub(record.start_unix_ns)
}

/// The pod-level Resource of `identity` (no container: the startup is the pod's).
fn pod_resource(identity: &Enrichment) -> ResourceKey {
    let pod = Enrichment {
        container_id: None,
        container_name: None,
        ..identity.clone()
    };
    crate::correlate::Workload::of(&pod).map_or(ResourceKey::Node, ResourceKey::Workload)
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}
