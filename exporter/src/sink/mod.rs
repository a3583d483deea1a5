//! The last stage: where records go. Each sink takes records one by one from the
//! pipeline's sink task; none of them may block the kernel reader (the channel before
//! them is bounded and drops are counted there).
pub mod console;
pub mod json;

use crate::event::IoRecord;

/// A destination for records.
pub trait Sink: Send {
    /// Takes one record.
    fn record(&mut self, record: &IoRecord) -> std::io::Result<()>;
    /// Called when no record is waiting: a chance to flush buffered output.
    fn idle(&mut self) -> std::io::Result<()>;
}
