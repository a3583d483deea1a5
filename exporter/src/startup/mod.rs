//! startup: each pod's startup on this node as one trace, with the IO stalls inside.
//!
//! Sits between enrich and correlate on the sink thread. Its inputs are the enriched
//! runtime events (containerd, CRI, docker, the Kubernetes pod watch, the kernel's
//! signals) and the enriched slow operations; its outputs are the same records, placed
//! in a startup trace when they belong to one, plus the spans it finishes and a summary
//! per startup.
//!
//! - **An attempt** ([`attempt::Attempt`]) opens when a pod's sandbox is created (its
//!   first sign; IO that named the sandbox before the runtime announced it moves the
//!   begin earlier) and ends when its containers known so far all run and nothing new
//!   came for [`StartupConfig::settle`] (without the Kubernetes API iostall cannot know
//!   how many containers a pod will have), or when it fails: a container exiting non-zero
//!   or OOM-killed, the sandbox re-created, stopped or deleted, or
//!   [`StartupConfig::timeout`] passing. A re-created sandbox or a container restarted
//!   after a failure is a new attempt, linked to the previous one's root.
//! - **Phases** follow the kubelet's one-step-at-a-time work: `pod sandbox`, then per
//!   container `container create` and `container start`.
//! - **IO of the pod** (by cgroup or path) is a child of the phase it overlapped most.
//!   It is held until that phase closes, so its parent is right and the phase's summary
//!   is exact; then it goes out at once.
//! - **Shared runtime IO** (a runtime daemon's operation naming no pod: `meta.db`,
//!   `local-kv.db`) goes out once as itself, and is copied, span only, into the trace of
//!   every starting pod whose phase it overlapped, marked `time_overlap` with the number of
//!   pods that shared it.
//! - **Spans** go out a grace time after they end ([`StartupConfig::grace`]: runtime events
//!   and records reach the sink thread by different paths, a few milliseconds apart);
//!   the root last, with the summary.
//! - **Bounded**: at most [`StartupConfig::max_open`] open attempts (the oldest is
//!   ended, `evicted`, and counted), a cap on held IO per attempt and on shared IO.
pub mod attempt;
pub mod ids;
pub mod report;

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use self::{
    attempt::{Attempt, AttemptIds, HeldIo, PhaseContainer, PhaseKind, span_duration, worst_of},
    report::{StartupSpan, StartupSummary},
};
pub use crate::{config::StartupConfig, correlate::Placement};
use crate::{
    correlate::{SpanId, TraceId},
    enrich::Enrichment,
    event::IoRecord,
    runtime::{EventSource, RuntimeEvent, RuntimeEventKind, kube::PodStartupStatus},
};

/// IO held per attempt while its phase is open; past it, records go out unplaced.
pub const MAX_HELD_PER_ATTEMPT: usize = 2048;
/// Shared operations' copies held per attempt while its phase is open (a phase stuck
/// for minutes would otherwise take a copy of every runtime fsync of the node).
pub const MAX_SHARED_HELD_PER_ATTEMPT: usize = 256;
/// Records held across all attempts at once: bounds memory (about 600 bytes a record)
/// whatever `max_open` is; past it, records go out unplaced (own) or are not copied
/// (shared), and are counted.
pub const MAX_HELD_TOTAL: usize = 16_384;
/// Shared runtime operations waiting to be copied into startups.
pub const MAX_SHARED_HELD: usize = 4096;
/// Pods whose last attempt is remembered (for links and restarts).
pub const MAX_HISTORY: usize = 4096;

/// What leaves the stage, in order.
#[derive(Debug)]
pub enum StartupOutput {
    /// A slow operation (placed in a startup, or not).
    Io {
        /// The record.
        record: IoRecord,
        /// Who it belongs to.
        enrichment: Enrichment,
        /// Its startup trace and phase.
        placement: Option<Placement>,
    },
    /// A copy of a shared runtime operation in one starting pod's trace (a span only:
    /// its log record went out once with the original).
    SharedIo {
        /// The record.
        record: IoRecord,
        /// The pod's identity, attributed by `time_overlap`.
        enrichment: Enrichment,
        /// The pod's trace and phase.
        placement: Placement,
    },
    /// A runtime event (its log record placed in a startup, or not).
    Event {
        /// The event.
        event: RuntimeEvent,
        /// Who it is about.
        enrichment: Enrichment,
        /// The span it belongs to.
        placement: Option<Placement>,
    },
    /// A finished root or phase span.
    Span(StartupSpan),
    /// A finished startup.
    Summary(StartupSummary),
}

/// Counters of the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartupStats {
    /// Attempts opened.
    pub opened: u64,
    /// Attempts ended by eviction (too many open).
    pub evicted: u64,
    /// IO placed after its phase went out.
    pub late_io: u64,
    /// IO sent unplaced because an attempt held too much.
    pub held_overflow: u64,
    /// Shared operations not copied because too many waited.
    pub shared_overflow: u64,
}

/// A shared runtime operation waiting until every phase it overlapped is known.
#[derive(Debug)]
struct SharedHeld {
    record: IoRecord,
    arrival_wall_ns: u64,
}

/// What is remembered of a pod's last attempt.
#[derive(Debug, Clone)]
struct PodHistory {
    root: (TraceId, SpanId),
    sandbox_id: String,
    attempts: u32,
    end_ns: u64,
    failed: bool,
}

/// The startup stage: per-pod attempts, shared IO, history.
#[derive(Debug, Default)]
pub struct StartupStage {
    config: StartupConfig,
    /// By pod uid: its open attempt (last) and ended ones still flushing.
    pods: HashMap<String, Vec<Attempt>>,
    shared: VecDeque<SharedHeld>,
    history: HashMap<String, PodHistory>,
    history_order: VecDeque<String>,
    /// What the Kubernetes API said last of each pod's startup.
    kube: HashMap<String, PodStartupStatus>,
    /// Pods with a running container when the runtime was listed: no startup.
    started_pods: std::collections::HashSet<String>,
    stats: StartupStats,
    /// Attempts not ended yet (kept, not counted, on every open).
    open: usize,
    /// Records held in all attempts: counted up as they are held, recounted every tick.
    held_total: usize,
}

impl StartupStage {
    /// A stage with `config`.
    #[must_use]
    pub fn new(config: StartupConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Its counters.
    #[must_use]
    pub fn stats(&self) -> StartupStats {
        self.stats
    }

    /// Attempts open now.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.open
    }

    /// Attempts tracked (open or flushing) and shared records held: what memory holds.
    #[must_use]
    pub fn tracked(&self) -> (usize, usize, usize) {
        (
            self.pods.values().map(Vec::len).sum(),
            self.shared.len(),
            self.history.len(),
        )
    }

    /// Records held in attempts now (waiting for their phase to close).
    #[must_use]
    pub fn held(&self) -> usize {
        self.pods.values().flatten().map(|a| a.held.len()).sum()
    }

    /// Takes one slow operation.
    pub fn io(
        &mut self,
        record: IoRecord,
        enrichment: Enrichment,
        now_wall_ns: u64,
        out: &mut Vec<StartupOutput>,
    ) {
        if self.pods.is_empty() {
            out.push(StartupOutput::Io {
                record,
                enrichment,
                placement: None,
            });
            return;
        }
        let (start, end) = (record.start_unix_ns, record.end_unix_ns);
        if let Some(attempts) = enrichment
            .pod_uid
            .as_deref()
            .and_then(|uid| self.pods.get_mut(uid))
            && let Some(attempt) = attempts
                .iter_mut()
                .rev()
                .find(|a| a.phase_for(start, end).is_some())
        {
            let Some(i) = attempt.phase_for(start, end) else {
                return;
            };
            if i == 0 {
                attempt.reach_back(start);
            }
            let held = HeldIo {
                record,
                enrichment,
                shared_by: None,
            };
            if attempt.phases[i].end_ns.is_some() {
                place(attempt, i, held, out);
            } else if attempt.held.len() < MAX_HELD_PER_ATTEMPT && self.held_total < MAX_HELD_TOTAL
            {
                attempt.held.push(held);
                self.held_total += 1;
            } else {
                let HeldIo {
                    record, enrichment, ..
                } = held;
                self.stats.held_overflow += 1;
                out.push(StartupOutput::Io {
                    record,
                    enrichment,
                    placement: None,
                });
            }
            return;
        }
        let shared = is_shared_runtime_io(&record, &enrichment);
        if shared {
            if self.shared.len() >= MAX_SHARED_HELD {
                self.shared.pop_front();
                self.stats.shared_overflow += 1;
            }
            self.shared.push_back(SharedHeld {
                record: record.clone(),
                arrival_wall_ns: now_wall_ns,
            });
        }
        out.push(StartupOutput::Io {
            record,
            enrichment,
            placement: None,
        });
    }

    /// Takes one runtime event.
    pub fn event(
        &mut self,
        event: RuntimeEvent,
        enrichment: Enrichment,
        now_wall_ns: u64,
        out: &mut Vec<StartupOutput>,
    ) {
        let placement = self.apply(&event, &enrichment, now_wall_ns, out);
        out.push(StartupOutput::Event {
            event,
            enrichment,
            placement,
        });
    }

    /// Moves the attempts on by `event`; returns where its log record belongs.
    fn apply(
        &mut self,
        event: &RuntimeEvent,
        identity: &Enrichment,
        now: u64,
        out: &mut Vec<StartupOutput>,
    ) -> Option<Placement> {
        use RuntimeEventKind as K;
        let uid = identity.pod_uid.as_deref()?;
        let t = event.time_unix_ns;
        match event.kind {
            K::SandboxCreated | K::SandboxStarted => {
                let sandbox = event.container_id.as_deref()?;
                self.open_for_sandbox(uid, sandbox, identity, t, now, out);
                let attempt = self.open_attempt(uid)?;
                attempt.learn_names(identity);
                if event.kind == K::SandboxStarted {
                    attempt.close_phase(
                        t,
                        now,
                        PhaseKind::Sandbox,
                        None,
                        Some(PhaseKind::ContainerCreate),
                    );
                    settle_held(attempt, out);
                    return phase_placement(attempt, PhaseKind::Sandbox, "");
                }
                return Some(root_placement(attempt));
            }
            K::ContainerCreated => {
                let container = phase_container(event, identity)?;
                if self.open_attempt(uid).is_none() {
                    let restart_count = event.container_meta().and_then(|m| m.attempt);
                    self.open_for_restart(uid, identity, restart_count, t, now);
                }
                let attempt = self.open_attempt(uid)?;
                attempt.learn_names(identity);
                attempt
                    .containers
                    .entry(container.id.clone())
                    .or_default()
                    .name = container.name.clone();
                let id = container.id.clone();
                attempt.close_phase(
                    t,
                    now,
                    PhaseKind::ContainerCreate,
                    Some(container),
                    Some(PhaseKind::ContainerStart),
                );
                settle_held(attempt, out);
                return phase_placement(attempt, PhaseKind::ContainerCreate, &id);
            }
            K::ContainerStarted => {
                let container = phase_container(event, identity)?;
                let attempt = self.open_attempt(uid)?;
                let id = container.id.clone();
                let progress = attempt.containers.entry(id.clone()).or_default();
                progress.started = true;
                if progress.name.is_none() {
                    progress.name.clone_from(&container.name);
                }
                attempt.close_phase(
                    t,
                    now,
                    PhaseKind::ContainerStart,
                    Some(container),
                    Some(PhaseKind::ContainerCreate),
                );
                let placement = phase_placement(attempt, PhaseKind::ContainerStart, &id);
                let done = all_expected_started(attempt);
                if done {
                    attempt.finish(t, now, "all_containers_running", None);
                }
                settle_held(attempt, out);
                if done {
                    self.open -= 1;
                }
                return placement;
            }
            K::ContainerExited { exit_code } => {
                let container = phase_container(event, identity)?;
                let attempt = self.open_attempt(uid)?;
                if exit_code == 0 {
                    attempt
                        .containers
                        .entry(container.id.clone())
                        .or_default()
                        .completed = true;
                    return Some(root_placement(attempt));
                }
                let what = container_label(&container);
                run_phase_of(attempt, container);
                let error = format!("container {what} exited with code {exit_code}");
                return self.fail(uid, t, now, "container_failed", error, out);
            }
            K::ContainerOom | K::OomKill => {
                let container = phase_container(event, identity)?;
                let attempt = self.open_attempt(uid)?;
                let what = container_label(&container);
                run_phase_of(attempt, container);
                let error = format!("container {what} was OOM-killed");
                return self.fail(uid, t, now, "oom_killed", error, out);
            }
            K::SandboxStopped | K::SandboxDeleted => {
                let attempt = self.open_attempt(uid)?;
                if event.container_id.as_deref() != Some(attempt.sandbox_id.as_str()) {
                    return None;
                }
                let verb = if event.kind == K::SandboxStopped {
                    "stopped"
                } else {
                    "deleted"
                };
                let error = format!("pod sandbox {verb} during startup");
                return self.fail(uid, t, now, "sandbox_stopped", error, out);
            }
            K::ContainerDeleted => {
                let attempt = self.open_attempt(uid)?;
                let id = event.container_id.as_deref()?;
                if !attempt.containers.contains_key(id) {
                    return None;
                }
                let error = format!("container {} deleted during startup", short(id));
                return self.fail(uid, t, now, "deleted", error, out);
            }
            K::PodAdded | K::PodUpdated if event.runtime == EventSource::Kube => {
                let status = PodStartupStatus::from_attributes(&event.attributes)?;
                self.kube_status(uid, status, now, out);
                return self.open_attempt(uid).map(|a| root_placement(a));
            }
            K::ContainerListed { running } => {
                self.listed(event, identity, running, now);
                return self.open_attempt(uid).map(|a| root_placement(a));
            }
            K::PodDeleted => {
                self.open_attempt(uid)?;
                let error = "pod deleted during startup".to_owned();
                return self.fail(uid, t, now, "deleted", error, out);
            }
            _ => {}
        }
        self.open_attempt(uid).map(|a| root_placement(a))
    }

    /// What the Kubernetes API says of pod `uid`: how many containers it will have (so
    /// its startup ends when they all started, without waiting to settle) and when it
    /// was bound to the node (its startup begins then).
    fn kube_status(
        &mut self,
        uid: &str,
        status: PodStartupStatus,
        now: u64,
        out: &mut Vec<StartupOutput>,
    ) {
        if let Some(attempt) = self.open_attempt(uid) {
            apply_kube(attempt, &status);
            // The pod's container statuses say they all run: the startup is over, even if
            // the runtime's start event has not come (or never will: no runtime socket).
            let api_done = status.containers > 0 && status.containers_running >= status.containers;
            let done = all_expected_started(attempt) || api_done;
            if done && !all_expected_started(attempt) {
                close_at_api_start(attempt, &status, now);
            }
            if done {
                attempt.finish(now, now, "all_containers_running", None);
                settle_held(attempt, out);
                self.open -= 1;
            }
        }
        if self.kube.len() >= MAX_HISTORY && !self.kube.contains_key(uid) {
            self.kube.clear();
        }
        self.kube.insert(uid.to_owned(), status);
    }

    /// A container that existed when the runtime source (re)connected. A running
    /// sandbox made less than the startup timeout ago, whose pod has no running
    /// container, is a startup iostall was restarted in the middle of: it resumes with
    /// the same ids (the root begins when the sandbox was made). A running container
    /// means the pod started already: no startup.
    fn listed(&mut self, event: &RuntimeEvent, identity: &Enrichment, running: bool, now: u64) {
        use crate::enrich::metadata::ContainerKind;
        let Some(uid) = identity.pod_uid.as_deref() else {
            return;
        };
        let Some(meta) = event.container_meta() else {
            return;
        };
        let t = event.time_unix_ns;
        match meta.kind {
            Some(ContainerKind::Sandbox) if running => {
                let created = event
                    .attributes
                    .get(crate::runtime::CREATED_ATTRIBUTE)
                    .and_then(|v| v.parse::<u64>().ok());
                let Some(created) = created else {
                    return;
                };
                let fresh = now.saturating_sub(created) < as_ns(self.config.timeout);
                let known = self.pods.contains_key(uid)
                    || self.history.contains_key(uid)
                    || self.started_pods.contains(uid);
                if !fresh || known {
                    return;
                }
                self.open(
                    uid,
                    &meta.id,
                    0,
                    identity,
                    created,
                    now,
                    PhaseKind::ContainerCreate,
                );
                if let Some(attempt) = self.open_attempt(uid) {
                    attempt.resumed = true;
                    // What happened while iostall was away is not known: the phase that
                    // goes on now starts now.
                    if let Some(open) = attempt.phases.last_mut() {
                        open.start_ns = t.max(created);
                    }
                }
            }
            Some(ContainerKind::Container) if running => {
                if self.started_pods.len() >= MAX_HISTORY {
                    self.started_pods.clear();
                }
                self.started_pods.insert(uid.to_owned());
                // Its sandbox was listed first: that was no startup after all.
                if let Some(v) = self.pods.get_mut(uid)
                    && v.last().is_some_and(|a| a.resumed && a.is_open())
                {
                    v.pop();
                    self.open -= 1;
                    if v.is_empty() {
                        self.pods.remove(uid);
                    }
                }
            }
            Some(ContainerKind::Container) => {
                let Some(attempt) = self.open_attempt(uid).filter(|a| a.resumed) else {
                    return;
                };
                // Created, not started yet: the start phase is the one going on.
                attempt.containers.entry(meta.id.clone()).or_default().name =
                    meta.container_name.clone();
                if let Some(open) = attempt.phases.last_mut() {
                    open.kind = PhaseKind::ContainerStart;
                    open.container = phase_container(event, identity);
                }
            }
            _ => {}
        }
    }

    /// The open attempt of pod `uid`.
    fn open_attempt(&mut self, uid: &str) -> Option<&mut Attempt> {
        self.pods
            .get_mut(uid)
            .and_then(|v| v.last_mut())
            .filter(|a| a.is_open())
    }

    /// Opens an attempt for `sandbox` unless one is open for it; a different sandbox of
    /// the same pod ends the open attempt (`sandbox_recreated`) first.
    fn open_for_sandbox(
        &mut self,
        uid: &str,
        sandbox: &str,
        identity: &Enrichment,
        t: u64,
        now: u64,
        out: &mut Vec<StartupOutput>,
    ) {
        if let Some(open) = self.open_attempt(uid) {
            if open.sandbox_id == sandbox {
                return;
            }
            let error = format!("pod sandbox re-created (new sandbox {})", short(sandbox));
            self.fail(uid, t, now, "sandbox_recreated", error, out);
        }
        let known = self
            .pods
            .get(uid)
            .is_some_and(|v| v.iter().any(|a| a.sandbox_id == sandbox))
            || self
                .history
                .get(uid)
                .is_some_and(|h| h.sandbox_id == sandbox);
        if known {
            // This sandbox's attempt already ended (its start event came late).
            return;
        }
        self.open(uid, sandbox, 0, identity, t, now, PhaseKind::Sandbox);
    }

    /// A container created again in a sandbox whose last attempt failed (the kubelet
    /// restarting it): a new attempt from the failure, linked to it. Its generation is
    /// the kubelet's restart count (`io.kubernetes.container.restartCount`), so that a
    /// restarted iostall derives the same ids; else the attempts seen.
    fn open_for_restart(
        &mut self,
        uid: &str,
        identity: &Enrichment,
        restart_count: Option<u32>,
        t: u64,
        now: u64,
    ) {
        let Some(h) = self.last_attempt(uid) else {
            return;
        };
        let same_sandbox = identity
            .sandbox_id
            .as_deref()
            .is_none_or(|s| s == h.sandbox_id);
        if !h.failed || !same_sandbox || t < h.end_ns {
            return;
        }
        let generation = restart_count.filter(|n| *n > 0).unwrap_or(h.attempts);
        self.open(
            uid,
            &h.sandbox_id,
            generation,
            identity,
            h.end_ns,
            now,
            PhaseKind::ContainerCreate,
        );
    }

    /// What is known of pod `uid`'s last attempt: remembered, or still flushing.
    fn last_attempt(&self, uid: &str) -> Option<PodHistory> {
        self.history.get(uid).cloned().or_else(|| {
            let a = self.pods.get(uid)?.last()?;
            Some(PodHistory {
                root: (a.trace_id, a.root_span_id),
                sandbox_id: a.sandbox_id.clone(),
                attempts: a.attempt + 1,
                end_ns: a.end.as_ref().map_or(0, |e| e.at_ns),
                failed: a.end.as_ref().is_some_and(|e| e.error.is_some()),
            })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        uid: &str,
        sandbox: &str,
        generation: u32,
        identity: &Enrichment,
        begin_ns: u64,
        now: u64,
        first: PhaseKind,
    ) {
        if self.open_count() >= self.config.max_open {
            self.evict_oldest(now);
        }
        let previous = self.last_attempt(uid);
        let trace_id = ids::trace_id(uid, sandbox, generation);
        let attempt = Attempt::new(
            AttemptIds {
                pod_uid: uid.to_owned(),
                sandbox_id: sandbox.to_owned(),
                attempt: previous.as_ref().map_or(0, |p| p.attempts),
                trace_id,
                root_span_id: ids::root_span_id(trace_id),
                link: previous.map(|p| p.root),
            },
            identity,
            begin_ns,
            first,
        );
        let mut attempt = attempt;
        if let Some(status) = self.kube.get(uid) {
            apply_kube(&mut attempt, status);
        }
        self.stats.opened += 1;
        self.open += 1;
        self.pods.entry(uid.to_owned()).or_default().push(attempt);
    }

    /// Ends the open attempt of `uid` as failed; returns the root's placement.
    fn fail(
        &mut self,
        uid: &str,
        t: u64,
        now: u64,
        reason: &'static str,
        error: String,
        out: &mut Vec<StartupOutput>,
    ) -> Option<Placement> {
        let attempt = self
            .pods
            .get_mut(uid)
            .and_then(|v| v.last_mut())
            .filter(|a| a.is_open())?;
        attempt.finish(t, now, reason, Some(error));
        settle_held(attempt, out);
        self.open -= 1;
        Some(root_placement(attempt))
    }

    fn evict_oldest(&mut self, now: u64) {
        let oldest = self
            .pods
            .values_mut()
            .flatten()
            .filter(|a| a.is_open())
            .min_by_key(|a| a.begin_ns);
        if let Some(a) = oldest {
            a.finish(now, now, "evicted", None);
            self.stats.evicted += 1;
            self.open -= 1;
        }
    }

    /// A second went by (wall clock `now`): ends settled and timed-out attempts, copies
    /// decided shared IO, and hands out the spans whose grace time passed.
    pub fn tick(&mut self, now: u64, out: &mut Vec<StartupOutput>) {
        let (settle, timeout) = (as_ns(self.config.settle), as_ns(self.config.timeout));
        for attempt in self.pods.values_mut().flatten().filter(|a| a.is_open()) {
            if now >= attempt.begin_ns.saturating_add(timeout) {
                let error = format!("startup still not done after {}s", timeout / 1_000_000_000);
                attempt.finish(now, now, "timeout", Some(error));
            } else if settled(attempt, now, settle) {
                attempt.finish(now, now, "settled", None);
            } else {
                continue;
            }
            settle_held(attempt, out);
            self.open -= 1;
        }
        self.decide_shared(now, false, out);
        self.export(now, false, out);
        self.held_total = self.held();
    }

    /// iostall is stopping: what is finished goes out now; IO of attempts still open
    /// goes out unplaced.
    pub fn finish(&mut self, now: u64, out: &mut Vec<StartupOutput>) {
        self.decide_shared(now, true, out);
        for attempt in self.pods.values_mut().flatten() {
            for held in attempt.held.drain(..).filter(|h| h.shared_by.is_none()) {
                out.push(StartupOutput::Io {
                    record: held.record,
                    enrichment: held.enrichment,
                    placement: None,
                });
            }
        }
        self.export(now, true, out);
    }

    /// Copies each shared operation, once its grace time passed (startups may reach
    /// back before their first event), into the startups whose phases it overlapped:
    /// at once into a closed phase, or held in the attempt until its open phase closes.
    fn decide_shared(&mut self, now: u64, force: bool, out: &mut Vec<StartupOutput>) {
        let grace = as_ns(self.config.grace);
        while let Some(s) = self.shared.front() {
            if !force && now < s.arrival_wall_ns.saturating_add(grace) {
                break;
            }
            let Some(s) = self.shared.pop_front() else {
                break;
            };
            let (start, end) = (s.record.start_unix_ns, s.record.end_unix_ns);
            let mut targets: Vec<(&mut Attempt, usize)> = self
                .pods
                .values_mut()
                .flatten()
                .filter(|a| a.begin_ns < end && a.end.as_ref().is_none_or(|e| e.at_ns > start))
                .filter_map(|a| {
                    let i = a.phase_for(start, end)?;
                    let p = &a.phases[i];
                    (!p.exported && p.overlap(start, end) > 0).then_some((a, i))
                })
                .collect();
            let n = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            for (attempt, i) in &mut targets {
                let closed = attempt.phases[*i].end_ns.is_some();
                if !closed
                    && (attempt.held_shared >= MAX_SHARED_HELD_PER_ATTEMPT
                        || self.held_total >= MAX_HELD_TOTAL)
                {
                    self.stats.shared_overflow += 1;
                    continue;
                }
                let held = HeldIo {
                    record: s.record.clone(),
                    enrichment: attempt.overlap_identity(),
                    shared_by: Some(n),
                };
                if closed {
                    place(attempt, *i, held, out);
                } else {
                    attempt.held_shared += 1;
                    attempt.held.push(held);
                    self.held_total += 1;
                }
            }
        }
    }

    /// Hands out finished phases whose grace passed and that no waiting shared
    /// operation overlaps; then finished attempts' roots and summaries.
    fn export(&mut self, now: u64, force: bool, out: &mut Vec<StartupOutput>) {
        let grace = as_ns(self.config.grace);
        let shared = &self.shared;
        for attempt in self.pods.values_mut().flatten() {
            for i in 0..attempt.phases.len() {
                let p = &attempt.phases[i];
                // Not while a record that may still land in it waits: a shared
                // operation not decided yet, or IO held in the open phase that overlaps
                // this one too (its best phase is known when the open one closes).
                let overlaps = |r: &IoRecord| p.overlap(r.start_unix_ns, r.end_unix_ns) > 0;
                let ready = p.end_ns.is_some()
                    && !p.exported
                    && (force
                        || (now >= p.closed_wall_ns.saturating_add(grace)
                            && !shared.iter().any(|s| overlaps(&s.record))
                            && !attempt.held.iter().any(|h| overlaps(&h.record))));
                if ready && let Some(span) = attempt.phase_span(i) {
                    out.push(StartupOutput::Span(span));
                    attempt.phases[i].exported = true;
                }
            }
        }
        let mut done: Vec<Attempt> = Vec::new();
        for attempts in self.pods.values_mut() {
            let mut i = 0;
            while i < attempts.len() {
                let a = &attempts[i];
                let finished = a.end.as_ref().is_some_and(|e| {
                    a.phases.iter().all(|p| p.exported)
                        && (force || now >= e.wall_ns.saturating_add(grace))
                });
                if finished {
                    done.push(attempts.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.pods.retain(|_, v| !v.is_empty());
        for attempt in done {
            if let (Some(root), Some(summary)) = (attempt.root_span(), attempt.summary()) {
                out.push(StartupOutput::Span(root));
                out.push(StartupOutput::Summary(summary));
            }
            self.stats.late_io += u64::from(attempt.late_io);
            self.remember(&attempt);
        }
    }

    fn remember(&mut self, attempt: &Attempt) {
        let Some(end) = &attempt.end else {
            return;
        };
        let entry = PodHistory {
            root: (attempt.trace_id, attempt.root_span_id),
            sandbox_id: attempt.sandbox_id.clone(),
            attempts: attempt.attempt + 1,
            end_ns: end.at_ns,
            failed: end.error.is_some(),
        };
        if self
            .history
            .insert(attempt.pod_uid.clone(), entry)
            .is_none()
        {
            self.history_order.push_back(attempt.pod_uid.clone());
            while self.history_order.len() > MAX_HISTORY {
                if let Some(old) = self.history_order.pop_front() {
                    self.history.remove(&old);
                }
            }
        }
    }
}

/// Places held IO whose phase is now closed; IO after the attempt's end goes unplaced.
fn settle_held(attempt: &mut Attempt, out: &mut Vec<StartupOutput>) {
    let held = std::mem::take(&mut attempt.held);
    attempt.held_shared = 0;
    for h in held {
        match attempt.phase_for(h.record.start_unix_ns, h.record.end_unix_ns) {
            Some(i) if attempt.phases[i].end_ns.is_some() => place(attempt, i, h, out),
            Some(_) => {
                attempt.held_shared += usize::from(h.shared_by.is_some());
                attempt.held.push(h);
            }
            // A shared copy after the attempt's end is not this startup's.
            None if h.shared_by.is_some() => {}
            None => out.push(StartupOutput::Io {
                record: h.record,
                enrichment: h.enrichment,
                placement: None,
            }),
        }
    }
}

/// Puts a record under closed phase `i` (or, if that one went out already, the phase
/// not out yet it overlaps most) and counts it there, so that every phase's sums equal
/// its children's: the pod's own IO as itself, a shared operation as a copy in this
/// pod's trace. With no such phase, own IO goes out unplaced and a copy is dropped;
/// both are counted as late.
fn place(attempt: &mut Attempt, i: usize, held: HeldIo, out: &mut Vec<StartupOutput>) {
    let (start, end) = (held.record.start_unix_ns, held.record.end_unix_ns);
    let i = if attempt.phases[i].exported {
        attempt
            .phases
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.exported && p.end_ns.is_some())
            .map(|(j, p)| (p.overlap(start, end), j))
            .filter(|(o, _)| *o > 0)
            .max()
            .map(|(_, j)| j)
    } else {
        Some(i)
    };
    let HeldIo {
        record,
        enrichment,
        shared_by,
    } = held;
    let Some((i, parent)) = i.and_then(|i| Some((i, attempt.phases[i].span_id?))) else {
        attempt.late_io += 1;
        if shared_by.is_none() {
            out.push(StartupOutput::Io {
                record,
                enrichment,
                placement: None,
            });
        }
        return;
    };
    attempt.phases[i]
        .io
        .add(span_duration(&record), shared_by.is_some(), || {
            worst_of(&record, shared_by)
        });
    attempt.phases[i]
        .io
        .add_why(span_duration(&record), &record.why);
    if shared_by.is_none() {
        // The pod's own operations ran in its cgroup: their PSI is the pod's.
        let psi = record.why.pressure.as_ref().and_then(|p| p.cgroup);
        attempt.phases[i].io.note_psi(psi.map(|p| p.some_avg10));
    }
    let placement = Placement {
        trace_id: attempt.trace_id,
        parent,
        shared_by,
    };
    out.push(match shared_by {
        Some(_) => StartupOutput::SharedIo {
            record,
            enrichment,
            placement,
        },
        None => StartupOutput::Io {
            record,
            enrichment,
            placement: Some(placement),
        },
    });
}

/// Takes the API's word: the containers to expect, and the binding time as the begin.
fn apply_kube(attempt: &mut Attempt, status: &PodStartupStatus) {
    if status.containers > 0 {
        attempt.expected = Some(status.containers + status.init_containers);
    }
    if let Some(bound) = status.scheduled_unix_ns
        && attempt
            .phases
            .first()
            .is_some_and(|p| p.kind == PhaseKind::Sandbox)
        && !attempt.resumed
    {
        attempt.reach_back(bound);
    }
}

/// The API reports every container running before the runtime's start event: the phase
/// going on (a container's start, or its create) ends at the latest `startedAt` the API
/// gives, so that it is not dropped as the wait after the last start.
fn close_at_api_start(attempt: &mut Attempt, status: &PodStartupStatus, now: u64) {
    let Some(open) = attempt.open_phase() else {
        return;
    };
    // The wait after a start (a create with no container yet) is not startup.
    if open.kind == PhaseKind::ContainerCreate && open.container.is_none() {
        return;
    }
    let (kind, container) = (open.kind, open.container.clone());
    let at = status
        .last_started_unix_ns
        .unwrap_or(now)
        .max(open.start_ns);
    let kind = if kind == PhaseKind::ContainerCreate {
        // Created and started with no event between: the start is what ended.
        PhaseKind::ContainerStart
    } else {
        kind
    };
    attempt.close_phase(at, now, kind, container, Some(PhaseKind::ContainerCreate));
}

/// With the API: whether as many containers started as the pod's spec has (init
/// containers included).
fn all_expected_started(attempt: &Attempt) -> bool {
    let started = attempt
        .containers
        .values()
        .filter(|c| c.started || c.completed)
        .count();
    attempt
        .expected
        .is_some_and(|n| u32::try_from(started).unwrap_or(u32::MAX) >= n)
        && attempt
            .open_phase()
            .is_some_and(|p| p.kind == PhaseKind::ContainerCreate)
}

/// Whether the attempt's containers all run and its open (waiting) phase began at
/// least `settle` ago.
fn settled(attempt: &Attempt, now: u64, settle: u64) -> bool {
    let Some(open) = attempt.open_phase() else {
        return false;
    };
    // With the API, the spec's container count ends it (or the timeout does).
    attempt.expected.is_none()
        && open.kind == PhaseKind::ContainerCreate
        && attempt.containers.values().any(|c| c.started)
        && attempt
            .containers
            .values()
            .all(|c| c.started || c.completed)
        && now >= open.start_ns.saturating_add(settle)
}

/// The open phase becomes the failing container's `container run` when it was waiting
/// after that container's start.
fn run_phase_of(attempt: &mut Attempt, container: PhaseContainer) {
    let started = attempt
        .containers
        .get(&container.id)
        .is_some_and(|c| c.started);
    if let Some(open) = attempt.phases.last_mut().filter(|p| p.end_ns.is_none()) {
        if started && open.kind == PhaseKind::ContainerCreate {
            open.kind = PhaseKind::ContainerRun;
        }
        if open.container.is_none() {
            open.container = Some(container);
        }
    }
}

fn root_placement(attempt: &Attempt) -> Placement {
    Placement {
        trace_id: attempt.trace_id,
        parent: attempt.root_span_id,
        shared_by: None,
    }
}

fn phase_placement(attempt: &Attempt, kind: PhaseKind, container_id: &str) -> Option<Placement> {
    Some(Placement {
        trace_id: attempt.trace_id,
        parent: ids::phase_span_id(attempt.trace_id, kind.span_name(), container_id),
        shared_by: None,
    })
}

fn phase_container(event: &RuntimeEvent, identity: &Enrichment) -> Option<PhaseContainer> {
    let id = event
        .container_id
        .clone()
        .or_else(|| identity.container_id.clone())?;
    Some(PhaseContainer {
        id,
        name: identity.container_name.clone(),
        image: identity.image.clone().or_else(|| event.image.clone()),
    })
}

fn container_label(c: &PhaseContainer) -> String {
    c.name.clone().unwrap_or_else(|| short(&c.id))
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn as_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A runtime daemon's operation that names no pod or container: shared runtime state
/// (`meta.db`, `local-kv.db`, kubelet checkpoints).
#[must_use]
pub fn is_shared_runtime_io(record: &IoRecord, enrichment: &Enrichment) -> bool {
    enrichment.pod_uid.is_none()
        && enrichment.container_id.is_none()
        && crate::tracer::RUNTIME_DAEMONS
            .iter()
            .any(|(comm, _)| record.comm == *comm)
}

#[cfg(test)]
mod tests;
