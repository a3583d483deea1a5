//! IO pressure (PSI): the operation's cgroup `io.pressure` and the node's
//! `/proc/pressure/io`.
use serde::Serialize;

use super::WhyValue;
use crate::event::IoRecord;

/// PSI when an operation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PressureContext {
    /// The cgroup's `some avg10`, percent.
    pub cgroup_some_avg10: Option<f64>,
}

impl PressureContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        if let Some(v) = self.cgroup_some_avg10 {
            f("iostall.psi.io.some_avg10", WhyValue::Double(v));
        }
    }

    /// The table's part.
    #[must_use]
    pub fn short(&self) -> Option<String> {
        self.cgroup_some_avg10
            .filter(|v| *v >= 1.0)
            .map(|v| format!("psi {v:.0}%"))
    }
}

/// Reads PSI files.
#[derive(Debug, Default)]
pub struct PressureReader {}

impl PressureReader {
    /// The pressure on `record`'s cgroup, if known.
    pub fn context(&mut self, _record: &IoRecord) -> Option<PressureContext> {
        None
    }
}
