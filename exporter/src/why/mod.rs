//! Why a slow operation was slow: the state of its disk, its journal and the pressure on
//! its cgroup at the moment it ended, put beside the operation itself.
//!
//! "Disk busy is a lie" (the field report): a span that says `fsync 948 ms` tells an SRE
//! where; this stage adds why, on the same span: the device flat at its IOPS ceiling,
//! the jbd2 commit the fsync waited for, the cgroup's IO pressure.
//!
//! It runs on the sink thread between decode and enrich ([`Explainer::explain`]), so
//! "the moment" is when the record arrives, a few milliseconds after the operation ended.
//! Each source is optional and cheap; one that is off or knows nothing leaves its part
//! `None`, never blocks.
use serde::Serialize;

pub mod disk;
pub mod ebs;
pub mod journal;
pub mod pressure;

pub use disk::{DiskContext, DiskView};
pub use ebs::{EbsContext, EbsView};
pub use journal::{JournalContext, JournalView};
pub use pressure::{PressureContext, PressureReader};

/// A value one of the parts sets on a span (the `why` attributes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WhyValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// A boolean.
    Bool(bool),
}

/// Why one operation was slow, as far as iostall can tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StallContext {
    /// The block device under the file at the moment the operation ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskContext>,
    /// The journal commit an fsync waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalContext>,
    /// IO pressure (PSI) of the operation's cgroup and of the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure: Option<PressureContext>,
    /// An AWS EBS volume's own account of time over its limits (none off AWS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsContext>,
}

impl StallContext {
    /// Whether no part knows anything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.disk.is_none()
            && self.journal.is_none()
            && self.pressure.is_none()
            && self.ebs.is_none()
    }

    /// Calls `f` with each attribute, in a fixed order (span and log record alike).
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        if let Some(disk) = &self.disk {
            disk.for_each_attribute(f);
        }
        if let Some(journal) = &self.journal {
            journal.for_each_attribute(f);
        }
        if let Some(pressure) = &self.pressure {
            pressure.for_each_attribute(f);
        }
        if let Some(ebs) = &self.ebs {
            ebs.for_each_attribute(f);
        }
    }

    /// The table's short "why" column: the parts that point at a cause, e.g.
    /// `sat 500/s jbd2 310ms psi 62%`; `-` when none does.
    #[must_use]
    pub fn short(&self) -> String {
        let parts: Vec<String> = [
            self.disk.as_ref().and_then(DiskContext::short),
            self.journal.as_ref().and_then(JournalContext::short),
            self.pressure.as_ref().and_then(PressureContext::short),
            self.ebs.as_ref().and_then(EbsContext::short),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// A cause one part of a [`StallContext`] points at. A part points at its cause when its
/// `short()` is `Some` (the table shows exactly the parts that are causes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The device sat flat at its IOPS ceiling.
    DiskSaturated,
    /// An fsync waited for a jbd2 commit.
    Journal,
    /// The cgroup was stalled on IO (PSI).
    Pressure,
}

impl Cause {
    /// The `iostall.stall.cause` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DiskSaturated => "disk_saturated",
            Self::Journal => "journal",
            Self::Pressure => "pressure",
        }
    }
}

impl StallContext {
    /// The causes its parts point at, disk first: an fsync that waited for a commit on a
    /// saturated disk waited, at bottom, for the disk.
    #[must_use]
    pub fn causes(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        if self.disk.as_ref().and_then(DiskContext::short).is_some() {
            out.push(Cause::DiskSaturated);
        }
        if self
            .journal
            .as_ref()
            .and_then(JournalContext::short)
            .is_some()
        {
            out.push(Cause::Journal);
        }
        if self
            .pressure
            .as_ref()
            .and_then(PressureContext::short)
            .is_some()
        {
            out.push(Cause::Pressure);
        }
        out
    }
}

/// Stall time by cause, summed over the slow operations of a span (a startup, a phase):
/// each operation's time counts for every cause its [`StallContext`] points at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CauseTally {
    /// Time of operations made while their disk was saturated, ns.
    pub disk_saturated_ns: u64,
    /// The highest ceiling those saw, IOPS (rounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_iops: Option<u64>,
    /// Time of fsyncs that waited for a journal commit, ns.
    pub journal_ns: u64,
    /// Time of operations made under IO pressure, ns.
    pub pressure_ns: u64,
}

/// The cause behind most of a span's stall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dominant {
    /// Which.
    pub cause: Cause,
    /// Its stall time, ns.
    pub ns: u64,
    /// Its share of the span's stall time, percent (0..=100).
    pub percent: u64,
    /// The disk's ceiling, for [`Cause::DiskSaturated`].
    pub ceiling_iops: Option<u64>,
}

impl Dominant {
    /// `mostly: disk saturated at 10 IOPS` (half the stall or more), else
    /// `partly: …` with its share.
    #[must_use]
    pub fn text(&self) -> String {
        let what = match (self.cause, self.ceiling_iops) {
            (Cause::DiskSaturated, Some(c)) => format!("disk saturated at {c} IOPS"),
            (Cause::DiskSaturated, None) => "disk saturated".to_owned(),
            (Cause::Journal, _) => "journal commits".to_owned(),
            (Cause::Pressure, _) => "IO pressure".to_owned(),
        };
        if self.percent >= 50 {
            format!("mostly: {what}")
        } else {
            format!("partly: {what} ({}%)", self.percent)
        }
    }
}

impl CauseTally {
    /// Counts one operation of `ns` with its context.
    pub fn add(&mut self, ns: u64, why: &StallContext) {
        for cause in why.causes() {
            match cause {
                Cause::DiskSaturated => {
                    self.disk_saturated_ns += ns;
                    let c = why
                        .disk
                        .as_ref()
                        .and_then(|d| d.ceiling_iops)
                        .map(|c| c.round() as u64);
                    self.ceiling_iops = self.ceiling_iops.max(c);
                }
                Cause::Journal => self.journal_ns += ns,
                Cause::Pressure => self.pressure_ns += ns,
            }
        }
    }

    /// Adds another tally (a phase's, into the root's).
    pub fn merge(&mut self, other: &Self) {
        self.disk_saturated_ns += other.disk_saturated_ns;
        self.ceiling_iops = self.ceiling_iops.max(other.ceiling_iops);
        self.journal_ns += other.journal_ns;
        self.pressure_ns += other.pressure_ns;
    }

    /// The cause with the most time, out of `total_ns` of stall; ties go to the disk,
    /// then the journal. `None` when no operation had a cause.
    #[must_use]
    pub fn dominant(&self, total_ns: u64) -> Option<Dominant> {
        let (cause, ns) = [
            (Cause::DiskSaturated, self.disk_saturated_ns),
            (Cause::Journal, self.journal_ns),
            (Cause::Pressure, self.pressure_ns),
        ]
        .into_iter()
        .rev()
        .max_by_key(|(_, ns)| *ns)?;
        if ns == 0 {
            return None;
        }
        Some(Dominant {
            cause,
            ns,
            percent: (u128::from(ns) * 100 / u128::from(total_ns.max(ns))) as u64,
            ceiling_iops: (cause == Cause::DiskSaturated)
                .then_some(self.ceiling_iops)
                .flatten(),
        })
    }
}

/// What the sources need to know of a slow operation to say why it was slow: the
/// pipeline builds it from its record (`IoRecord::stall`), so that this stage depends on
/// no record type and records depend on it only for [`StallContext`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    /// The device of the file: `(major, minor)`.
    pub dev: (u32, u32),
    /// The cgroup of the thread that waited.
    pub cgroup_id: u64,
    /// Whether it was an fsync (only an fsync waits for a journal commit).
    pub fsync: bool,
    /// When it began and ended, Unix ns.
    pub start_unix_ns: u64,
    /// See `start_unix_ns`.
    pub end_unix_ns: u64,
}

/// Says why a stall was slow from the sources that are on.
#[derive(Debug, Default)]
pub struct Explainer {
    /// Per-device rolling view (IOPS, in flight, await, saturation).
    pub disk: Option<DiskView>,
    /// Recent jbd2 commits per journal device.
    pub journal: Option<JournalView>,
    /// cgroup and node PSI.
    pub pressure: Option<PressureReader>,
    /// AWS EBS volumes' log page 0xD0 ([`crate::ebs_nvme`]).
    pub ebs: Option<EbsView>,
}

impl Explainer {
    /// What each source knows now of `stall`.
    pub fn explain(&mut self, stall: &Stall) -> StallContext {
        StallContext {
            disk: self.disk.as_mut().and_then(|d| d.context(stall)),
            journal: self.journal.as_mut().and_then(|j| j.context(stall)),
            pressure: self.pressure.as_mut().and_then(|p| p.context(stall)),
            ebs: self.ebs.as_mut().and_then(|e| e.context(stall)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(saturated: bool, ceiling: f64) -> Option<DiskContext> {
        Some(DiskContext {
            device: "7:3".into(),
            name: "loop3".into(),
            iops: ceiling,
            bytes_per_second: 0.0,
            in_flight: 1,
            await_ms: 130.0,
            saturated,
            ceiling_iops: saturated.then_some(ceiling),
        })
    }

    fn journal() -> Option<JournalContext> {
        Some(JournalContext {
            commit_ms: 310.0,
            tid: 7,
            blocks: 40,
            handles: 12,
            commit_began_before: true,
            commits: 1,
            wait_ms: 310.0,
            wait_share: 0.9,
            blocks_total: 40,
            handles_total: 12,
        })
    }

    fn pressure(avg10: f64) -> Option<PressureContext> {
        Some(PressureContext {
            cgroup: Some(pressure::Psi {
                some_avg10: avg10,
                full_avg10: Some(avg10 / 2.0),
            }),
            node: None,
        })
    }

    #[test]
    fn the_dominant_cause_is_the_one_with_most_stall_time() {
        let mut t = CauseTally::default();
        assert_eq!(t.dominant(0), None);
        // 800 ms on a saturated disk (one of them also behind a commit), 100 ms under
        // pressure, 100 ms unexplained.
        let on_disk = StallContext {
            disk: disk(true, 9.8),
            ..Default::default()
        };
        let both = StallContext {
            disk: disk(true, 10.2),
            journal: journal(),
            ..Default::default()
        };
        let psi = StallContext {
            disk: disk(false, 300.0),
            pressure: pressure(62.0),
            ..Default::default()
        };
        t.add(500_000_000, &on_disk);
        t.add(300_000_000, &both);
        t.add(100_000_000, &psi);
        t.add(100_000_000, &StallContext::default());
        let d = t.dominant(1_000_000_000).expect("a cause");
        assert_eq!(d.cause, Cause::DiskSaturated);
        assert_eq!(
            (d.ns, d.percent, d.ceiling_iops),
            (800_000_000, 80, Some(10))
        );
        assert_eq!(d.text(), "mostly: disk saturated at 10 IOPS");
        // Merged into a root, a phase of journal waits can outweigh it.
        let mut phase = CauseTally::default();
        phase.add(
            2_000_000_000,
            &StallContext {
                journal: journal(),
                ..Default::default()
            },
        );
        t.merge(&phase);
        let d = t.dominant(3_000_000_000).expect("a cause");
        assert_eq!(d.cause, Cause::Journal);
        assert_eq!(d.text(), "mostly: journal commits");
        // A cause under half the stall says so.
        let mut p = CauseTally::default();
        p.add(
            200_000_000,
            &StallContext {
                pressure: pressure(40.0),
                ..Default::default()
            },
        );
        let d = p.dominant(1_000_000_000).expect("a cause");
        assert_eq!(d.text(), "partly: IO pressure (20%)");
    }

    #[test]
    fn a_tie_goes_to_the_disk_and_quiet_parts_are_no_cause() {
        let ctx = StallContext {
            disk: disk(true, 10.0),
            journal: journal(),
            pressure: pressure(0.2),
            ebs: None,
        };
        assert_eq!(ctx.causes(), [Cause::DiskSaturated, Cause::Journal]);
        let mut t = CauseTally::default();
        t.add(100, &ctx);
        assert_eq!(t.dominant(100).map(|d| d.cause), Some(Cause::DiskSaturated));
        let calm = StallContext {
            disk: disk(false, 10.0),
            ..Default::default()
        };
        assert!(calm.causes().is_empty());
    }
}
