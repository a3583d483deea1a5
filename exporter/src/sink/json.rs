//! One JSON object per record, one per line, every field, plus `trace_id` and `span_id`
//! (hex, as in OTLP/JSON) to join with the exported spans.
use std::io::Write;

use super::Sink;
use crate::correlate::CorrelatedRecord;

/// JSON lines to any writer.
pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write + Send> JsonSink<W> {
    /// JSON lines on `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for JsonSink<W> {
    fn record(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn idle(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
