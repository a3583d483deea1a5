//! Recent jbd2 commits per journal device, so an fsync that waited for a commit full of
//! other writers' blocks says so.
use serde::Serialize;

use super::WhyValue;
use crate::event::IoRecord;

/// The journal commit an fsync waited for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalContext {
    /// How long the commit took, milliseconds.
    pub commit_ms: f64,
    /// Blocks it carried.
    pub blocks: u64,
}

impl JournalContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        f(
            "iostall.journal.commit_ms",
            WhyValue::Double(self.commit_ms),
        );
        f(
            "iostall.journal.blocks",
            WhyValue::Int(i64::try_from(self.blocks).unwrap_or(i64::MAX)),
        );
    }

    /// The table's part.
    #[must_use]
    pub fn short(&self) -> Option<String> {
        Some(format!("jbd2 {:.0}ms", self.commit_ms))
    }
}

/// Recent commits, per journal device.
#[derive(Debug, Default)]
pub struct JournalView {}

impl JournalView {
    /// The commit `record` (an fsync) waited for, if any.
    pub fn context(&mut self, _record: &IoRecord) -> Option<JournalContext> {
        None
    }
}
