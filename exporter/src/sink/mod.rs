//! The last stage: where records go (`console` table, `json` lines, `otlp`; several at
//! once). Each sink takes records one by one from the
//! pipeline's sink task; none of them may block the kernel reader (the channel before
//! them is bounded and drops are counted there).
pub mod console;
pub mod json;
pub mod otlp;

use crate::{
    correlate::{CorrelatedEvent, CorrelatedRecord},
    startup::report::{StartupSpan, StartupSummary},
};

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
    /// Takes a shared runtime operation's copy in a starting pod's trace (the original
    /// went to [`Sink::record`] already); only trace sinks use it.
    fn shared_io(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        let _ = record;
        Ok(())
    }
    /// Takes a finished pod startup root or phase span; only trace sinks use it.
    fn startup_span(&mut self, span: &StartupSpan) -> std::io::Result<()> {
        let _ = span;
        Ok(())
    }
    /// Takes a finished pod startup's summary (the console line, the JSON record).
    fn startup_summary(&mut self, summary: &StartupSummary) -> std::io::Result<()> {
        let _ = summary;
        Ok(())
    }
    /// Called when no record is waiting: a chance to flush buffered output.
    fn idle(&mut self) -> std::io::Result<()>;
}
