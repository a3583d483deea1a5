//! Kernel lifecycle signals → [`RuntimeEvent`]s with [`EventSource::Kernel`].
//!
//! The eBPF `lifecycle` programs write to their own ring buffer: cgroup mkdir/rmdir in
//! the unified hierarchy, exec and exit of processes in watched (container) cgroups and
//! of container runtime daemons, and the OOM killer's victims. This stage decodes those
//! records (kernel time to wall-clock time, once, here), keeps the kernel's set of
//! watched cgroups current (a startup scan, then mkdir/rmdir), feeds cgroup id → path to
//! the enrich stage ([`CgroupFeed`]), and turns what concerns a container or a runtime
//! daemon into events for the sinks. Host cgroups are noise and produce no event.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use exporter_common::{
    CgroupEvent, EventHeader, ExecEvent, ExitEvent, OomEvent, event_kind, watch,
};

use crate::{
    clock::MonotonicToUnix,
    decode::{DecodeError, c_str, read_pod},
    enrich::{
        cgroup_path::{ContainerRef, parse_cgroup_path, parse_proc_cgroup},
        pid_map::{CgroupFeed, CgroupUpdate, PidMapError, scan_tree},
    },
    runtime::{EventSource, RuntimeEvent, RuntimeEventKind},
};

/// How a process ended, from the `wait` status the kernel keeps in `task_struct.exit_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)` (or returned from `main`).
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a `wait` status; `None` for the "unknown" marker (`u32::MAX`).
    #[must_use]
    pub fn from_wait_status(status: u32) -> Option<Self> {
        if status == u32::MAX {
            return None;
        }
        let signal = (status & 0x7f) as i32;
        Some(if signal == 0 {
            Self::Exited(((status >> 8) & 0xff) as i32)
        } else {
            Self::Signaled {
                signal,
                core_dumped: status & 0x80 != 0,
            }
        })
    }

    /// The exit code a shell shows: the code, or 128 + the signal.
    #[must_use]
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled { signal, .. } => 128 + signal,
        }
    }

    /// The signal that killed it, if one did.
    #[must_use]
    pub fn signal(self) -> Option<i32> {
        match self {
            Self::Exited(_) => None,
            Self::Signaled { signal, .. } => Some(signal),
        }
    }
}

/// What a lifecycle record says, past its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleKind {
    /// A unified-hierarchy cgroup was made.
    CgroupCreated {
        /// Its id.
        id: u64,
        /// Its depth.
        level: u32,
        /// Its path from the hierarchy's root.
        path: String,
    },
    /// A unified-hierarchy cgroup was removed.
    CgroupRemoved {
        /// Its id.
        id: u64,
        /// Its depth.
        level: u32,
        /// Its path from the hierarchy's root.
        path: String,
    },
    /// `execve` of a watched process.
    Exec {
        /// The file executed.
        filename: String,
        /// Bits of [`watch`]: why it was reported.
        why: u32,
    },
    /// A watched process ended.
    Exit {
        /// How; `None` when the kernel's `exit_code` offset was unknown.
        status: Option<ExitStatus>,
        /// Bits of [`watch`].
        why: u32,
    },
    /// The OOM killer chose a victim.
    Oom {
        /// The victim's pid.
        victim_pid: u32,
        /// The victim's comm (empty on kernels whose tracepoint lacks it).
        victim_comm: String,
        /// Its `oom_score_adj`, when the kernel says.
        oom_score_adj: Option<i32>,
        /// Its anonymous resident memory, kB.
        anon_rss_kb: u64,
        /// Its file-backed resident memory, kB.
        file_rss_kb: u64,
        /// Its shared-memory resident memory, kB.
        shmem_rss_kb: u64,
        /// Its virtual memory, kB.
        total_vm_kb: u64,
    },
}

/// One decoded lifecycle record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRecord {
    /// When, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The current task's process id (for OOM: the task that ran the OOM killer).
    pub pid: u32,
    /// Its thread id.
    pub tid: u32,
    /// Its comm.
    pub comm: String,
    /// Its cgroup v2 id.
    pub cgroup_id: u64,
    /// What happened.
    pub kind: LifecycleKind,
}

/// Decodes one record of the lifecycle ring buffer.
pub fn decode(bytes: &[u8], clock: &MonotonicToUnix) -> Result<LifecycleRecord, DecodeError> {
    let header: EventHeader = read_pod(bytes)?;
    let kind = match header.kind {
        event_kind::CGROUP_MKDIR | event_kind::CGROUP_RMDIR => {
            let ev: CgroupEvent = read_pod(bytes)?;
            let (id, level, path) = (ev.id, ev.level, c_str(&ev.path));
            if header.kind == event_kind::CGROUP_MKDIR {
                LifecycleKind::CgroupCreated { id, level, path }
            } else {
                LifecycleKind::CgroupRemoved { id, level, path }
            }
        }
        event_kind::EXEC => {
            let ev: ExecEvent = read_pod(bytes)?;
            LifecycleKind::Exec {
                filename: c_str(&ev.filename),
                why: ev.why,
            }
        }
        event_kind::EXIT => {
            let ev: ExitEvent = read_pod(bytes)?;
            LifecycleKind::Exit {
                status: ExitStatus::from_wait_status(ev.exit_code),
                why: ev.why,
            }
        }
        event_kind::OOM => {
            let ev: OomEvent = read_pod(bytes)?;
            LifecycleKind::Oom {
                victim_pid: ev.victim_pid,
                victim_comm: c_str(&ev.victim_comm),
                oom_score_adj: (ev.oom_score_adj != i32::from(i16::MIN))
                    .then_some(ev.oom_score_adj),
                anon_rss_kb: ev.anon_rss_kb,
                file_rss_kb: ev.file_rss_kb,
                shmem_rss_kb: ev.shmem_rss_kb,
                total_vm_kb: ev.total_vm_kb,
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(LifecycleRecord {
        time_unix_ns: clock.to_unix_ns(header.start_ns),
        pid: header.pid,
        tid: header.tid,
        comm: c_str(&header.comm),
        cgroup_id: header.cgroup_id,
        kind,
    })
}

/// The kernel's set of watched cgroup ids (the `WATCHED_CGROUPS` map; a plain set in
/// tests).
pub trait WatchSet: Send {
    /// Watches `id`; false when the set is full or refused it.
    fn watch(&mut self, id: u64) -> bool;
    /// Stops watching `id`.
    fn unwatch(&mut self, id: u64);
}

impl WatchSet for aya::maps::HashMap<aya::maps::MapData, u64, u8> {
    fn watch(&mut self, id: u64) -> bool {
        self.insert(id, 1, 0).is_ok()
    }

    fn unwatch(&mut self, id: u64) {
        // Absent is fine: it may never have fit.
        let _ = self.remove(&id);
    }
}

impl WatchSet for HashSet<u64> {
    fn watch(&mut self, id: u64) -> bool {
        self.insert(id);
        true
    }

    fn unwatch(&mut self, id: u64) {
        self.remove(&id);
    }
}

/// A watched cgroup: its path and the container it names.
#[derive(Debug, Clone)]
struct Watched {
    path: String,
    container: ContainerRef,
}

/// Attribute keys of kernel events (OpenTelemetry names where one exists).
pub mod attr {
    /// The process (for OOM: the victim).
    pub const PID: &str = "process.pid";
    /// Its comm.
    pub const COMMAND: &str = "process.command";
    /// The executed file.
    pub const EXECUTABLE: &str = "process.executable.path";
    /// Exit code (128 + signal when killed).
    pub const EXIT_CODE: &str = "process.exit.code";
    /// The killing signal.
    pub const SIGNAL: &str = "iostall.exit.signal";
    /// Whether it dumped core.
    pub const CORE_DUMPED: &str = "iostall.exit.core_dumped";
    /// The cgroup v2 id.
    pub const CGROUP_ID: &str = "iostall.cgroup.id";
    /// The cgroup path.
    pub const CGROUP_PATH: &str = "iostall.cgroup.path";
    /// The pod uid, from the cgroup path.
    pub const POD_UID: &str = "k8s.pod.uid";
    /// The runtime the cgroup naming points to.
    pub const RUNTIME: &str = "container.runtime.name";
    /// The pod's QoS class, from the cgroup path.
    pub const QOS: &str = "iostall.pod.qos";
    /// Why the process was watched: `container` or `runtime-daemon`.
    pub const WATCHED_AS: &str = "iostall.watched_as";
    /// How an OOM victim's container was found: `victim-cgroup` (its
    /// `/proc/<pid>/cgroup`) or `killer-cgroup` (the cgroup of the task that ran the
    /// OOM killer, which for a memory limit is the limited container).
    pub const ATTRIBUTION: &str = "iostall.attribution";
    /// The task that ran the OOM killer.
    pub const OOM_TRIGGER_PID: &str = "iostall.oom.trigger.pid";
    /// Its comm.
    pub const OOM_TRIGGER_COMMAND: &str = "iostall.oom.trigger.command";
    /// The victim's anonymous rss, kB.
    pub const OOM_ANON_RSS_KB: &str = "iostall.oom.anon_rss_kb";
    /// The victim's file rss, kB.
    pub const OOM_FILE_RSS_KB: &str = "iostall.oom.file_rss_kb";
    /// The victim's shmem rss, kB.
    pub const OOM_SHMEM_RSS_KB: &str = "iostall.oom.shmem_rss_kb";
    /// The victim's virtual memory, kB.
    pub const OOM_TOTAL_VM_KB: &str = "iostall.oom.total_vm_kb";
    /// The victim's `oom_score_adj`.
    pub const OOM_SCORE_ADJ: &str = "iostall.oom.score_adj";
}

/// Counters of a [`LifecycleStage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifecycleStats {
    /// Container cgroups the kernel could not be told to watch (map full).
    pub watch_full: u64,
    /// Records turned into events.
    pub events: u64,
    /// Container process events held back by the [`ProcessEventLimit`].
    pub rate_limited: u64,
}

/// A budget per container for its process events (execs, and exits not by a signal):
/// a token bucket per cgroup, `burst` events at once, refilled at `per_second`.
///
/// A container running a build or a shell loop execs thousands of times a second; each
/// would become a log record at the collector. A startup (the entrypoint and its first
/// scripts) fits in the burst, exec probes fit in the rate, and what needs attention is
/// never held back: exits by a signal, OOM kills, cgroup events and runtime daemons.
/// Held-back events are counted (`iostall_runtime_events_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessEventLimit {
    /// Events a container may have at once; 0 reports none of them.
    pub burst: u32,
    /// Refill rate, events per second.
    pub per_second: f64,
}

impl Default for ProcessEventLimit {
    fn default() -> Self {
        Self {
            burst: 64,
            per_second: 2.0,
        }
    }
}

/// One container's bucket; time is the events' own (kernel) time, so a backlog read
/// late is judged by when it happened.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
}

impl ProcessEventLimit {
    /// Takes one token at `now_ns` if there is one.
    fn take(&self, bucket: &mut Bucket, now_ns: u64) -> bool {
        // Records of different CPUs may arrive slightly out of order: never go back.
        let elapsed_s = now_ns.saturating_sub(bucket.last_ns) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed_s * self.per_second).min(f64::from(self.burst));
        bucket.last_ns = bucket.last_ns.max(now_ns);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets kept at most: cgroups whose removal was never seen (a full ring) must not
/// grow the map for ever.
const MAX_BUCKETS: usize = 16384;

/// Decodes lifecycle records, keeps the watched set and the enrich feed current, and
/// makes events.
pub struct LifecycleStage<W: WatchSet> {
    clock: MonotonicToUnix,
    watched: W,
    by_id: HashMap<u64, Watched>,
    feed: Option<CgroupFeed>,
    proc_root: PathBuf,
    stats: LifecycleStats,
    process_limit: ProcessEventLimit,
    buckets: HashMap<u64, Bucket>,
}

impl<W: WatchSet> LifecycleStage<W> {
    /// A stage writing the kernel's watched set `watched` and feeding `feed` (the enrich
    /// stage's [`crate::enrich::pid_map::CgroupIdMap`]), reading `/proc`.
    #[must_use]
    pub fn new(watched: W, feed: Option<CgroupFeed>) -> Self {
        Self {
            clock: MonotonicToUnix::new(),
            watched,
            by_id: HashMap::new(),
            feed,
            proc_root: PathBuf::from("/proc"),
            stats: LifecycleStats::default(),
            process_limit: ProcessEventLimit::default(),
            buckets: HashMap::new(),
        }
    }

    /// Holds each container's process events to `limit` instead of the default.
    #[must_use]
    pub fn with_process_limit(mut self, limit: ProcessEventLimit) -> Self {
        self.process_limit = limit;
        self
    }

    /// Reads `<proc_root>/<pid>/cgroup` for OOM victims instead of `/proc`.
    #[must_use]
    pub fn with_proc_root(mut self, proc_root: impl Into<PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// Watches every container cgroup already in the unified hierarchy at `root` (the
    /// containers that started before iostall). Returns how many.
    pub fn scan(&mut self, root: &Path) -> Result<usize, PidMapError> {
        let tree = scan_tree(root)?;
        let before = self.by_id.len();
        for (id, path) in tree {
            self.watch(id, path);
        }
        Ok(self.by_id.len() - before)
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> LifecycleStats {
        self.stats
    }

    /// How many container cgroups are watched and how many process-event budgets are
    /// kept (`iostall_cache_entries`).
    #[must_use]
    pub fn tracked(&self) -> (usize, usize) {
        (self.by_id.len(), self.buckets.len())
    }

    /// The watched set (tests look into it).
    #[must_use]
    pub fn watched(&self) -> &W {
        &self.watched
    }

    /// Watches `id` if `path` names a container; returns the container.
    fn watch(&mut self, id: u64, path: String) -> Option<ContainerRef> {
        let container = parse_cgroup_path(&path)?;
        if !self.watched.watch(id) {
            self.stats.watch_full += 1;
            if self.stats.watch_full == 1 {
                tracing::warn!(
                    "the kernel's watched-cgroup map is full: exec/exit of newer containers \
                     is not reported"
                );
            }
        }
        self.by_id.insert(
            id,
            Watched {
                path,
                container: container.clone(),
            },
        );
        Some(container)
    }

    /// Handles one ring-buffer record: the event for the sinks, if it concerns a
    /// container or a runtime daemon.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Option<RuntimeEvent>, DecodeError> {
        self.clock.refresh_if_stale();
        let record = decode(bytes, &self.clock)?;
        let event = self.event_for(record);
        if event.is_some() {
            self.stats.events += 1;
        }
        Ok(event)
    }

    fn event_for(&mut self, record: LifecycleRecord) -> Option<RuntimeEvent> {
        match record.kind.clone() {
            LifecycleKind::CgroupCreated { id, level, path } => {
                if let Some(feed) = &self.feed {
                    feed.send(CgroupUpdate::Created {
                        id,
                        path: path.clone(),
                    });
                }
                let container = self.watch(id, path.clone())?;
                let mut event = self.event(&record, RuntimeEventKind::CgroupCreated);
                cgroup_attributes(&mut event, id, &path, &container);
                event
                    .attributes
                    .insert("iostall.cgroup.level".into(), level.to_string());
                Some(event)
            }
            LifecycleKind::CgroupRemoved { id, level, path } => {
                if let Some(feed) = &self.feed {
                    feed.send(CgroupUpdate::Removed { id });
                }
                self.buckets.remove(&id);
                let container = match self.by_id.remove(&id) {
                    Some(watched) => {
                        self.watched.unwatch(id);
                        watched.container
                    }
                    None => parse_cgroup_path(&path)?,
                };
                let mut event = self.event(&record, RuntimeEventKind::CgroupRemoved);
                cgroup_attributes(&mut event, id, &path, &container);
                event
                    .attributes
                    .insert("iostall.cgroup.level".into(), level.to_string());
                Some(event)
            }
            LifecycleKind::Exec { filename, why } => {
                if !self.within_budget(&record, why) {
                    return None;
                }
                let mut event = self.event(&record, RuntimeEventKind::ProcessExec);
                self.process_attributes(&mut event, &record, why);
                event.attributes.insert(attr::EXECUTABLE.into(), filename);
                Some(event)
            }
            LifecycleKind::Exit { status, why } => {
                let signaled = matches!(status, Some(ExitStatus::Signaled { .. }));
                if !signaled && !self.within_budget(&record, why) {
                    return None;
                }
                let kind = RuntimeEventKind::ProcessExit {
                    exit_code: status.map_or(-1, ExitStatus::exit_code),
                    signal: status.and_then(ExitStatus::signal),
                };
                let mut event = self.event(&record, kind);
                self.process_attributes(&mut event, &record, why);
                if let Some(status) = status {
                    event
                        .attributes
                        .insert(attr::EXIT_CODE.into(), status.exit_code().to_string());
                    if let ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    } = status
                    {
                        event
                            .attributes
                            .insert(attr::SIGNAL.into(), signal.to_string());
                        event
                            .attributes
                            .insert(attr::CORE_DUMPED.into(), core_dumped.to_string());
                    }
                }
                Some(event)
            }
            LifecycleKind::Oom {
                victim_pid,
                victim_comm,
                oom_score_adj,
                anon_rss_kb,
                file_rss_kb,
                shmem_rss_kb,
                total_vm_kb,
            } => {
                let mut event = self.event(&record, RuntimeEventKind::OomKill);
                let victim = std::fs::read_to_string(
                    self.proc_root.join(victim_pid.to_string()).join("cgroup"),
                )
                .ok()
                .and_then(|text| parse_proc_cgroup(&text));
                let (container, how) = match victim {
                    Some(container) => (Some(container), "victim-cgroup"),
                    None => (
                        self.by_id
                            .get(&record.cgroup_id)
                            .map(|w| w.container.clone()),
                        "killer-cgroup",
                    ),
                };
                if let Some(container) = container {
                    container_attributes(&mut event, &container);
                    event
                        .attributes
                        .insert(attr::ATTRIBUTION.into(), how.into());
                }
                let a = &mut event.attributes;
                a.insert(attr::PID.into(), victim_pid.to_string());
                if !victim_comm.is_empty() {
                    a.insert(attr::COMMAND.into(), victim_comm);
                }
                a.insert(attr::OOM_TRIGGER_PID.into(), record.pid.to_string());
                a.insert(attr::OOM_TRIGGER_COMMAND.into(), record.comm.clone());
                a.insert(attr::CGROUP_ID.into(), record.cgroup_id.to_string());
                if let Some(adj) = oom_score_adj {
                    a.insert(attr::OOM_SCORE_ADJ.into(), adj.to_string());
                }
                for (key, kb) in [
                    (attr::OOM_ANON_RSS_KB, anon_rss_kb),
                    (attr::OOM_FILE_RSS_KB, file_rss_kb),
                    (attr::OOM_SHMEM_RSS_KB, shmem_rss_kb),
                    (attr::OOM_TOTAL_VM_KB, total_vm_kb),
                ] {
                    a.insert(key.into(), kb.to_string());
                }
                Some(event)
            }
        }
    }

    /// Whether a process event may be reported: always for runtime daemons, within
    /// its container's [`ProcessEventLimit`] for processes watched only as part of a
    /// container (counted when not).
    fn within_budget(&mut self, record: &LifecycleRecord, why: u32) -> bool {
        if why != watch::CGROUP {
            return true;
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&record.cgroup_id) {
            let by_id = &self.by_id;
            self.buckets.retain(|id, _| by_id.contains_key(id));
        }
        let limit = self.process_limit;
        let bucket = self.buckets.entry(record.cgroup_id).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            last_ns: record.time_unix_ns,
        });
        if limit.take(bucket, record.time_unix_ns) {
            return true;
        }
        self.stats.rate_limited += 1;
        if self.stats.rate_limited == 1 {
            tracing::info!(
                cgroup = self
                    .by_id
                    .get(&record.cgroup_id)
                    .map_or("", |w| w.path.as_str()),
                "a container's process events exceed lifecycle.process_event_burst \
                 ({}) at lifecycle.process_events_per_second ({}): the rest are counted \
                 in iostall_runtime_events_rate_limited_total, not reported",
                limit.burst,
                limit.per_second
            );
        }
        false
    }

    fn event(&self, record: &LifecycleRecord, kind: RuntimeEventKind) -> RuntimeEvent {
        RuntimeEvent::new(record.time_unix_ns, EventSource::Kernel, kind)
    }

    /// pid, comm, why, and the container of the process's cgroup.
    fn process_attributes(&self, event: &mut RuntimeEvent, record: &LifecycleRecord, why: u32) {
        let a = &mut event.attributes;
        a.insert(attr::PID.into(), record.pid.to_string());
        a.insert(attr::COMMAND.into(), record.comm.clone());
        a.insert(attr::CGROUP_ID.into(), record.cgroup_id.to_string());
        let watched_as = if why & watch::CGROUP != 0 {
            "container"
        } else {
            "runtime-daemon"
        };
        a.insert(attr::WATCHED_AS.into(), watched_as.into());
        if let Some(watched) = self.by_id.get(&record.cgroup_id) {
            event
                .attributes
                .insert(attr::CGROUP_PATH.into(), watched.path.clone());
            container_attributes(event, &watched.container);
        }
    }
}

/// The container id, pod uid, runtime and QoS a cgroup path gave.
fn container_attributes(event: &mut RuntimeEvent, container: &ContainerRef) {
    event.container_id = Some(container.id.clone());
    let a = &mut event.attributes;
    if let Some(uid) = &container.pod_uid {
        a.insert(attr::POD_UID.into(), uid.clone());
    }
    a.insert(attr::RUNTIME.into(), container.runtime.as_str().into());
    if let Some(qos) = container.qos {
        a.insert(attr::QOS.into(), qos.as_str().into());
    }
}

fn cgroup_attributes(event: &mut RuntimeEvent, id: u64, path: &str, container: &ContainerRef) {
    container_attributes(event, container);
    event
        .attributes
        .insert(attr::CGROUP_ID.into(), id.to_string());
    event
        .attributes
        .insert(attr::CGROUP_PATH.into(), path.into());
}

#[cfg(test)]
mod tests {
    use exporter_common::{CGROUP_PATH_LEN, COMM_LEN, EXEC_FILENAME_LEN};

    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn name<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: the record types are plain old data.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: u32, pid: u32, cgroup_id: u64, comm: &str) -> EventHeader {
        EventHeader {
            kind,
            pid,
            tid: pid,
            mntns: 0,
            start_ns: 1_000,
            cgroup_id,
            comm: name::<COMM_LEN>(comm),
        }
    }

    fn mkdir(id: u64, path: &str) -> Vec<u8> {
        bytes_of(&CgroupEvent {
            header: header(event_kind::CGROUP_MKDIR, 1, 1, "runc"),
            id,
            level: 4,
            root: 0,
            path: name::<CGROUP_PATH_LEN>(path),
        })
    }

    fn container_path() -> String {
        format!("/kubepods/besteffort/pod{UID}/{ID}")
    }

    #[test]
    fn wait_statuses_decode_like_a_shell() {
        assert_eq!(
            ExitStatus::from_wait_status(7 << 8),
            Some(ExitStatus::Exited(7))
        );
        let killed = ExitStatus::from_wait_status(9).expect("known");
        assert_eq!((killed.exit_code(), killed.signal()), (137, Some(9)));
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 6),
            Some(ExitStatus::Signaled {
                signal: 6,
                core_dumped: true
            })
        );
        assert_eq!(ExitStatus::from_wait_status(u32::MAX), None);
    }

    #[test]
    fn container_cgroups_are_watched_fed_and_reported_host_ones_only_fed() {
        let (feed, rx) = CgroupFeed::channel(16);
        let mut stage = LifecycleStage::new(HashSet::new(), Some(feed));
        let event = stage
            .handle(&mkdir(4242, &container_path()))
            .expect("decodes")
            .expect("a container's cgroup is an event");
        assert_eq!(event.kind, RuntimeEventKind::CgroupCreated);
        assert_eq!(event.kind.name(), "cgroup.created");
        assert_eq!(event.runtime, EventSource::Kernel);
        assert_eq!(event.container_id.as_deref(), Some(ID));
        assert_eq!(event.attributes[attr::POD_UID], UID);
        assert_eq!(event.attributes[attr::CGROUP_PATH], container_path());
        assert_eq!(event.attributes[attr::QOS], "BestEffort");
        assert!(event.time_unix_ns > 1_600_000_000_000_000_000, "wall clock");
        assert!(stage.watched().contains(&4242));

        assert_eq!(
            stage
                .handle(&mkdir(7, "/system.slice/cron.service"))
                .expect("decodes"),
            None,
            "host cgroups are noise"
        );
        assert!(!stage.watched().contains(&7));
        let updates: Vec<CgroupUpdate> = rx.try_iter().collect();
        assert_eq!(
            updates.len(),
            2,
            "the enrich stage learns both ids: {updates:?}"
        );

        let mut rmdir: CgroupEvent = read_pod(&mkdir(4242, &container_path())).expect("pod");
        rmdir.header.kind = event_kind::CGROUP_RMDIR;
        let event = stage
            .handle(&bytes_of(&rmdir))
            .expect("decodes")
            .expect("event");
        assert_eq!(event.kind, RuntimeEventKind::CgroupRemoved);
        assert!(!stage.watched().contains(&4242), "no longer watched");
        assert_eq!(rx.try_recv().ok(), Some(CgroupUpdate::Removed { id: 4242 }));
    }

    /// An exec (`exit_code: None`) or exit of `pid` in cgroup `cgroup_id` at `start_ns`.
    fn process_record(
        cgroup_id: u64,
        pid: u32,
        start_ns: u64,
        why: u32,
        exit_code: Option<u32>,
    ) -> Vec<u8> {
        let mut header = header(event_kind::EXEC, pid, cgroup_id, "true");
        header.start_ns = start_ns;
        match exit_code {
            None => bytes_of(&ExecEvent {
                header,
                why,
                pad: 0,
                filename: name::<EXEC_FILENAME_LEN>("/bin/true"),
            }),
            Some(exit_code) => {
                header.kind = event_kind::EXIT;
                bytes_of(&ExitEvent {
                    header,
                    exit_code,
                    why,
                })
            }
        }
    }

    #[test]
    fn a_containers_process_events_are_held_to_its_budget_and_counted() {
        let mut stage =
            LifecycleStage::new(HashSet::new(), None).with_process_limit(ProcessEventLimit {
                burst: 3,
                per_second: 1.0,
            });
        stage
            .handle(&mkdir(4242, &container_path()))
            .expect("decodes");
        let reported = |stage: &mut LifecycleStage<HashSet<u64>>, record: &[u8]| {
            stage.handle(record).expect("decodes").is_some()
        };
        const T0: u64 = 5_000_000_000;
        let execs: Vec<bool> = (0..5)
            .map(|pid| {
                reported(
                    &mut stage,
                    &process_record(4242, pid, T0, watch::CGROUP, None),
                )
            })
            .collect();
        assert_eq!(
            execs,
            [true, true, true, false, false],
            "the burst, then nothing"
        );
        assert_eq!(stage.stats().rate_limited, 2);

        // What needs attention is never held back.
        assert!(
            reported(
                &mut stage,
                &process_record(4242, 9, T0, watch::CGROUP, Some(9))
            ),
            "an exit by SIGKILL"
        );
        assert!(
            reported(
                &mut stage,
                &process_record(4242, 10, T0, watch::CGROUP | watch::DAEMON, None)
            ),
            "a runtime daemon in a container"
        );
        assert!(
            !reported(
                &mut stage,
                &process_record(4242, 11, T0, watch::CGROUP, Some(0))
            ),
            "a clean exit is a process event like an exec"
        );
        // Another container has its own budget.
        assert!(reported(
            &mut stage,
            &process_record(777, 12, T0, watch::CGROUP, None)
        ));
        // 1.5 s later one token is back (time is the records', not the reader's).
        let later = T0 + 1_500_000_000;
        assert!(reported(
            &mut stage,
            &process_record(4242, 13, later, watch::CGROUP, None)
        ));
        assert!(!reported(
            &mut stage,
            &process_record(4242, 14, later, watch::CGROUP, None)
        ));
        // A record of another CPU, slightly older, does not refill anything.
        assert!(!reported(
            &mut stage,
            &process_record(4242, 15, T0, watch::CGROUP, None)
        ));
        assert_eq!(stage.stats().rate_limited, 5);

        let off = ProcessEventLimit {
            burst: 0,
            per_second: 100.0,
        };
        let mut stage = LifecycleStage::new(HashSet::new(), None).with_process_limit(off);
        assert!(!reported(
            &mut stage,
            &process_record(4242, 1, T0, watch::CGROUP, None)
        ));
        assert!(
            !reported(
                &mut stage,
                &process_record(4242, 1, T0 + 10_000_000_000, watch::CGROUP, None)
            ),
            "burst 0: no container process events at all"
        );
    }

    #[test]
    fn exec_exit_and_oom_carry_the_container_and_the_process() {
        let mut stage =
            LifecycleStage::new(HashSet::new(), None).with_proc_root("/nonexistent-proc");
        stage
            .handle(&mkdir(4242, &container_path()))
            .expect("decodes");

        let exec = ExecEvent {
            header: header(event_kind::EXEC, 77, 4242, "sh"),
            why: watch::CGROUP,
            pad: 0,
            filename: name::<EXEC_FILENAME_LEN>("/bin/sh"),
        };
        let event = stage.handle(&bytes_of(&exec)).expect("ok").expect("event");
        assert_eq!(event.kind.name(), "process.exec");
        assert_eq!(event.container_id.as_deref(), Some(ID));
        assert_eq!(event.attributes[attr::PID], "77");
        assert_eq!(event.attributes[attr::EXECUTABLE], "/bin/sh");
        assert_eq!(event.attributes[attr::WATCHED_AS], "container");

        let exit = ExitEvent {
            header: header(event_kind::EXIT, 88, 1, "containerd"),
            exit_code: 9,
            why: watch::DAEMON,
        };
        let event = stage.handle(&bytes_of(&exit)).expect("ok").expect("event");
        assert_eq!(
            event.kind,
            RuntimeEventKind::ProcessExit {
                exit_code: 137,
                signal: Some(9)
            }
        );
        assert_eq!(event.container_id, None, "a host daemon");
        assert_eq!(event.attributes[attr::COMMAND], "containerd");
        assert_eq!(event.attributes[attr::WATCHED_AS], "runtime-daemon");
        assert_eq!(event.attributes[attr::SIGNAL], "9");

        let oom = OomEvent {
            header: header(event_kind::OOM, 99, 4242, "tail"),
            victim_pid: 99,
            oom_score_adj: 1000,
            total_vm_kb: 70_000,
            anon_rss_kb: 16_000,
            file_rss_kb: 1,
            shmem_rss_kb: 0,
            victim_comm: name::<COMM_LEN>("tail"),
        };
        let event = stage.handle(&bytes_of(&oom)).expect("ok").expect("event");
        assert_eq!(event.kind.name(), "oom.kill");
        assert_eq!(event.container_id.as_deref(), Some(ID));
        assert_eq!(event.attributes[attr::ATTRIBUTION], "killer-cgroup");
        assert_eq!(event.attributes[attr::OOM_ANON_RSS_KB], "16000");
        assert_eq!(event.attributes[attr::OOM_SCORE_ADJ], "1000");
    }

    #[test]
    fn oom_victim_found_by_its_proc_cgroup_first() {
        let proc_dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(proc_dir.path().join("99")).expect("mkdir");
        std::fs::write(
            proc_dir.path().join("99/cgroup"),
            format!("4:memory:{}\n0::/\n", container_path()),
        )
        .expect("write");
        let mut stage = LifecycleStage::new(HashSet::new(), None).with_proc_root(proc_dir.path());
        let oom = OomEvent {
            header: header(event_kind::OOM, 5, 1, "other"),
            victim_pid: 99,
            oom_score_adj: i32::from(i16::MIN),
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            victim_comm: [0; COMM_LEN],
        };
        let event = stage.handle(&bytes_of(&oom)).expect("ok").expect("event");
        assert_eq!(event.container_id.as_deref(), Some(ID));
        assert_eq!(event.attributes[attr::ATTRIBUTION], "victim-cgroup");
        assert!(!event.attributes.contains_key(attr::OOM_SCORE_ADJ));
        assert!(!event.attributes.contains_key(attr::COMMAND));
    }

    #[test]
    fn startup_scan_watches_existing_containers() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join(&container_path()[1..])).expect("mkdir");
        std::fs::create_dir_all(root.path().join("system.slice/x.service")).expect("mkdir");
        let mut stage = LifecycleStage::new(HashSet::new(), None);
        assert_eq!(stage.scan(root.path()).expect("scan"), 1);
        assert_eq!(stage.watched().len(), 1);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let clock = MonotonicToUnix::new();
        let bytes = mkdir(1, "/x");
        assert!(matches!(
            decode(&bytes[..60], &clock),
            Err(DecodeError::Short { len: 60, .. })
        ));
        let mut ev: CgroupEvent = read_pod(&bytes).expect("pod");
        ev.header.kind = 42;
        assert_eq!(
            decode(&bytes_of(&ev), &clock),
            Err(DecodeError::UnknownKind(42))
        );
    }
}
