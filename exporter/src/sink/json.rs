//! One JSON object per record, one per line, every field, plus `trace_id` and `span_id`
//! (hex, as in OTLP/JSON) to join with the exported spans. Runtime lifecycle events are
//! lines too, told apart by `"type": "runtime"` (and `"event.name"`), with the trace id
//! of their container's IO of the same window (or of their pod's startup). A finished pod
//! startup is a line of `"type": "startup"` (its phases, durations and IO stall).
use std::io::Write;

use super::Sink;
use crate::correlate::{CorrelatedEvent, CorrelatedRecord};

/// A runtime event as a JSON line: flat, `kind` and its fields (`exit_code`) at the top.
#[derive(serde::Serialize)]
struct RuntimeLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    #[serde(rename = "event.name")]
    event_name: &'static str,
    time_unix_ns: u64,
    runtime: crate::runtime::EventSource,
    #[serde(flatten)]
    kind: &'a crate::runtime::RuntimeEventKind,
    container_id: &'a Option<String>,
    sandbox_id: &'a Option<String>,
    namespace: &'a Option<String>,
    image: &'a Option<String>,
    labels: &'a std::collections::BTreeMap<String, String>,
    attributes: &'a std::collections::BTreeMap<String, String>,
    trace_id: crate::correlate::TraceId,
    span_id: crate::correlate::SpanId,
}

/// JSON lines to any writer.
pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write + Send> JsonSink<W> {
    /// JSON lines on `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// The writer back (tests read what was written).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for JsonSink<W> {
    fn record(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn runtime_event(&mut self, correlated: &CorrelatedEvent) -> std::io::Result<()> {
        let event = &correlated.event;
        let line = RuntimeLine {
            line_type: "runtime",
            event_name: event.kind.name(),
            time_unix_ns: event.time_unix_ns,
            runtime: event.runtime,
            kind: &event.kind,
            container_id: &event.container_id,
            sandbox_id: &event.sandbox_id,
            namespace: &event.namespace,
            image: &event.image,
            labels: &event.labels,
            attributes: &event.attributes,
            trace_id: correlated.trace_id,
            span_id: correlated.span_id,
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    fn startup_summary(
        &mut self,
        summary: &crate::startup::report::StartupSummary,
    ) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, summary)?;
        self.out.write_all(b"\n")
    }

    fn idle(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
