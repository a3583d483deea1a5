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

use crate::event::IoRecord;

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

/// Fills [`IoRecord::why`] from the sources that are on.
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
    /// Sets `record.why` from what each source knows now.
    pub fn explain(&mut self, record: &mut IoRecord) {
        let why = StallContext {
            disk: self.disk.as_mut().and_then(|d| d.context(record)),
            journal: self.journal.as_mut().and_then(|j| j.context(record)),
            pressure: self.pressure.as_mut().and_then(|p| p.context(record)),
            ebs: self.ebs.as_mut().and_then(|e| e.context(record)),
        };
        record.why = why;
    }
}
