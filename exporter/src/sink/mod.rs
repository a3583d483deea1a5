//! The last stage: where records go (`console` table, `json` lines, `otlp`; several at
//! once). Each sink takes records one by one from the
//! pipeline's sink task; none of them may block the kernel reader (the channel before
//! them is bounded and drops are counted there).
pub mod console;
pub mod json;
pub mod otlp;

use crate::correlate::{CorrelatedEvent, CorrelatedRecord};

/// A destination for records.
pub trait Sink: Send {
    /// Takes one record (with its trace and span ids).
    fn record(&mut self, record: &CorrelatedRecord) -> std::io::Result<()>;
    /// Takes one runtime lifecycle event (with its trace and span ids, container and
    /// pod); sinks that do not show them ignore it.
    fn runtime_event(&mut self, event: &CorrelatedEvent) -> std::io::Result<()> {
        let _ = event;
        Ok(())
    }
    /// Called when no record is waiting: a chance to flush buffered output.
    fn idle(&mut self) -> std::io::Result<()>;
}
