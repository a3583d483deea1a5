//! IO pressure (PSI): the operation's cgroup `io.pressure` and the node's
//! `/proc/pressure/io`, as they were when the record arrived.
//!
//! PSI is task-based stall accounting: a task waiting on IO (in `io_schedule`, whatever
//! made it wait: the device, blk-throttle, a journal commit) counts as stalled in its
//! cgroup v2 cgroup and every ancestor, so `some avg10` is the share of the last 10 s
//! in which at least one of the cgroup's tasks was stalled on IO, `full` all of them.
//!
//! The cgroup comes from the record's cgroup v2 id (the inode of the cgroup's directory
//! in the unified hierarchy), resolved to a path by a [`CgroupIdMap`] of our own: the
//! enrich stage's map drains the kernel's mkdir feed, this one rescans on a miss, at most
//! once a second. Each file is read at most once a [`PressureReader::ttl`] (1 s: PSI's
//! shortest average moves little faster), so a storm of slow operations costs one read
//! per cgroup per second, and one of the node's file.
//!
//! Where the node's pressure goes: on every record, as `iostall.psi.node.*`, not on the
//! node's OTLP Resource. A Resource names who emitted (the Collector's `k8sattributes`
//! matches on it, backends key series by it); a value that changes every second there
//! would split the node into a new Resource per export. And the node's pressure matters
//! to a pod's record as much as to a host process's: they share the disk.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Stall, WhyValue};
use crate::enrich::pid_map::CgroupIdMap;

/// How long a PSI reading is reused, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);
/// cgroups whose last reading is kept, at most; older ones go past it.
const CACHE_CAPACITY: usize = 4096;

/// One PSI file's `avg10` figures, percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Psi {
    /// Share of the last 10 s in which some task was stalled on IO.
    pub some_avg10: f64,
    /// Share in which every non-idle task was (absent from the node file on old kernels).
    pub full_avg10: Option<f64>,
}

impl Psi {
    /// Parses a PSI file (`some avg10=… avg60=… avg300=… total=…` then `full …`).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let avg10 = |kind: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(kind))
                .and_then(|rest| {
                    rest.split_whitespace()
                        .find_map(|field| field.strip_prefix("avg10="))
                })
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some(Self {
            some_avg10: avg10("some ")?,
            full_avg10: avg10("full "),
        })
    }
}

/// A cgroup's `some avg10` (percent) from which its pressure counts as a cause (the WHY
/// column, the startup's dominant cause): below it, a few stalls in ten seconds.
pub const MIN_CAUSE_PERCENT: f64 = 10.0;

/// PSI when an operation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PressureContext {
    /// The operation's cgroup's `io.pressure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Psi>,
    /// The node's `/proc/pressure/io`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Psi>,
}

impl PressureContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        if let Some(psi) = &self.cgroup {
            f(
                "iostall.psi.io.some_avg10",
                WhyValue::Double(psi.some_avg10),
            );
            if let Some(full) = psi.full_avg10 {
                f("iostall.psi.io.full_avg10", WhyValue::Double(full));
            }
        }
        if let Some(psi) = &self.node {
            f(
                "iostall.psi.node.io.some_avg10",
                WhyValue::Double(psi.some_avg10),
            );
            if let Some(full) = psi.full_avg10 {
                f("iostall.psi.node.io.full_avg10", WhyValue::Double(full));
            }
        }
    }

    /// The table's part: the cgroup's pressure when it is a cause (≥ 1%).
    #[must_use]
    pub fn short(&self) -> Option<String> {
        self.cgroup
            .map(|p| p.some_avg10)
            .filter(|v| *v >= MIN_CAUSE_PERCENT)
            .map(|v| format!("psi {v:.0}%"))
    }
}

/// Files read, and lookups answered from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureStats {
    /// PSI files read (cgroups' and the node's).
    pub reads: u64,
    /// Lookups answered by a reading younger than the TTL.
    pub hits: u64,
}

/// Reads PSI files, each at most once a TTL.
#[derive(Debug)]
pub struct PressureReader {
    /// cgroup id → path; `None` without a unified hierarchy (then only the node's).
    cgroups: Option<CgroupIdMap>,
    node_file: PathBuf,
    ttl: Duration,
    by_cgroup: HashMap<u64, (Instant, Option<Psi>)>,
    node: Option<(Instant, Option<Psi>)>,
    stats: PressureStats,
}

impl Default for PressureReader {
    fn default() -> Self {
        Self::discover()
    }
}

impl PressureReader {
    /// A reader of this host's unified hierarchy and `/proc/pressure/io`.
    #[must_use]
    pub fn discover() -> Self {
        Self::new(CgroupIdMap::discover().ok(), "/proc/pressure/io")
    }

    /// A reader resolving cgroups with `cgroups` and reading the node's PSI at `node_file`.
    #[must_use]
    pub fn new(cgroups: Option<CgroupIdMap>, node_file: impl Into<PathBuf>) -> Self {
        Self {
            cgroups,
            node_file: node_file.into(),
            ttl: DEFAULT_TTL,
            by_cgroup: HashMap::new(),
            node: None,
            stats: PressureStats::default(),
        }
    }

    /// How long a reading is reused.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> PressureStats {
        self.stats
    }

    /// The pressure on `record`'s cgroup and on the node, if known.
    pub fn context(&mut self, stall: &Stall) -> Option<PressureContext> {
        self.context_at(stall.cgroup_id, Instant::now())
    }

    /// The pressure on `cgroup_id`'s cgroup (see [`crate::enrich::pid_map`]) and on the
    /// node, at `now`.
    pub fn context_at(&mut self, cgroup_id: u64, now: Instant) -> Option<PressureContext> {
        let cgroup = self.cgroup_psi(cgroup_id, now);
        let node = self.node_psi(now);
        (cgroup.is_some() || node.is_some()).then_some(PressureContext { cgroup, node })
    }

    fn node_psi(&mut self, now: Instant) -> Option<Psi> {
        if let Some((at, psi)) = self.node
            && now.saturating_duration_since(at) < self.ttl
        {
            self.stats.hits += 1;
            return psi;
        }
        self.stats.reads += 1;
        let psi = read_psi(&self.node_file);
        self.node = Some((now, psi));
        psi
    }

    fn cgroup_psi(&mut self, cgroup_id: u64, now: Instant) -> Option<Psi> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(&(at, psi)) = self.by_cgroup.get(&cgroup_id)
            && now.saturating_duration_since(at) < self.ttl
        {
            self.stats.hits += 1;
            return psi;
        }
        let cgroups = self.cgroups.as_mut()?;
        let psi = cgroups.resolve(cgroup_id).and_then(|rel| {
            self.stats.reads += 1;
            let dir = cgroups.root().join(rel.trim_start_matches('/'));
            read_psi(&dir.join("io.pressure"))
        });
        if self.by_cgroup.len() >= CACHE_CAPACITY && !self.by_cgroup.contains_key(&cgroup_id) {
            // Readings past their TTL are worth nothing: drop them, else everything.
            let ttl = self.ttl;
            self.by_cgroup
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.by_cgroup.len() >= CACHE_CAPACITY {
                self.by_cgroup.clear();
            }
        }
        self.by_cgroup.insert(cgroup_id, (now, psi));
        psi
    }
}

/// Reads and parses one PSI file; `None` when it is missing or unreadable (PSI off:
/// `psi=0` on the kernel command line).
fn read_psi(path: &Path) -> Option<Psi> {
    fs::read_to_string(path)
        .ok()
        .as_deref()
        .and_then(Psi::parse)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const FILE: &str = "some avg10=62.50 avg60=20.00 avg300=5.00 total=123\n\
                        full avg10=40.25 avg60=10.00 avg300=2.00 total=45\n";

    #[test]
    fn parses_some_and_full() {
        assert_eq!(
            Psi::parse(FILE),
            Some(Psi {
                some_avg10: 62.5,
                full_avg10: Some(40.25)
            })
        );
        let some_only = "some avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(Psi::parse(some_only).and_then(|p| p.full_avg10), None);
        assert_eq!(Psi::parse(""), None);
        assert_eq!(Psi::parse("some avg10=lots\n"), None);
    }

    /// A fake unified hierarchy: a cgroup directory with an `io.pressure` file.
    fn tree() -> (tempfile::TempDir, u64) {
        let root = tempfile::tempdir().expect("tempdir");
        let pod = root.path().join("kubepods/pod1");
        fs::create_dir_all(&pod).expect("mkdir");
        fs::write(pod.join("io.pressure"), FILE).expect("write");
        fs::write(root.path().join("node-io"), FILE.replace("62.50", "7.00")).expect("write");
        let id = fs::metadata(&pod).expect("stat").ino();
        (root, id)
    }

    #[test]
    fn reads_the_cgroup_and_the_node_once_a_ttl() {
        let (root, id) = tree();
        let mut reader = PressureReader::new(
            Some(CgroupIdMap::new(root.path())),
            root.path().join("node-io"),
        );
        let t0 = Instant::now();
        // A storm: 1000 slow operations of one cgroup within a second.
        for i in 0..1000u64 {
            let ctx = reader
                .context_at(id, t0 + Duration::from_micros(i * 900))
                .expect("known");
            assert_eq!(ctx.cgroup.map(|p| p.some_avg10), Some(62.5));
            assert_eq!(ctx.node.map(|p| p.some_avg10), Some(7.0));
        }
        assert_eq!(reader.stats().reads, 2, "one read per file per second");
        // The pressure moves; the next second reads it.
        fs::write(
            root.path().join("kubepods/pod1/io.pressure"),
            FILE.replace("62.50", "3.00"),
        )
        .expect("write");
        let ctx = reader
            .context_at(id, t0 + Duration::from_millis(1001))
            .expect("known");
        assert_eq!(ctx.cgroup.map(|p| p.some_avg10), Some(3.0));
        assert_eq!(reader.stats().reads, 4);
        assert_eq!(ctx.short(), None, "3% is a few stalls, not a cause");
    }

    #[test]
    fn unknown_cgroups_still_get_the_nodes_pressure() {
        let (root, _) = tree();
        let mut reader = PressureReader::new(
            Some(CgroupIdMap::new(root.path())),
            root.path().join("node-io"),
        );
        let ctx = reader
            .context_at(999_999_999, Instant::now())
            .expect("node");
        assert_eq!(ctx.cgroup, None);
        assert_eq!(ctx.node.map(|p| p.some_avg10), Some(7.0));
        assert_eq!(ctx.short(), None);
        let mut none = PressureReader::new(None, root.path().join("missing"));
        assert_eq!(none.context_at(1, Instant::now()), None);
    }

    #[test]
    fn attributes_name_cgroup_and_node() {
        let ctx = PressureContext {
            cgroup: Psi::parse(FILE),
            node: Some(Psi {
                some_avg10: 1.0,
                full_avg10: None,
            }),
        };
        let mut names = Vec::new();
        ctx.for_each_attribute(&mut |k, _| names.push(k));
        assert_eq!(
            names,
            [
                "iostall.psi.io.some_avg10",
                "iostall.psi.io.full_avg10",
                "iostall.psi.node.io.some_avg10"
            ]
        );
    }
}
