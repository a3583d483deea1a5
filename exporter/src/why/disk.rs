//! Per block device, a rolling view cheap enough to leave on: IOPS, throughput, requests
//! in flight, await, and whether the device sits flat at a ceiling (saturated).
use serde::Serialize;

use super::WhyValue;
use crate::event::IoRecord;

/// The device's state when an operation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskContext {
    /// `major:minor` of the whole device measured.
    pub device: String,
    /// Completed operations per second over the last second.
    pub iops: f64,
    /// Whether completed IOPS sit flat near a ceiling while latency rises.
    pub saturated: bool,
}

impl DiskContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        f("iostall.disk.device", WhyValue::Str(&self.device));
        f("iostall.disk.iops", WhyValue::Double(self.iops));
        f("iostall.disk.saturated", WhyValue::Bool(self.saturated));
    }

    /// The table's part, when the disk is a cause.
    #[must_use]
    pub fn short(&self) -> Option<String> {
        self.saturated.then(|| format!("sat {:.0}/s", self.iops))
    }
}

/// The rolling per-device view.
#[derive(Debug, Default)]
pub struct DiskView {}

impl DiskView {
    /// The state of the device under `record`'s file, if known.
    pub fn context(&mut self, _record: &IoRecord) -> Option<DiskContext> {
        None
    }
}
