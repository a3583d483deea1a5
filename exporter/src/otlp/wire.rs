//! The exporter's hot path: OTLP protobuf bytes written directly from records, with no
//! intermediate message structs (and so no per-attribute allocation).
//!
//! It produces exactly the messages [`super::encode::build_requests`] builds with
//! `opentelemetry-proto` (the unit tests decode these bytes with `opentelemetry-proto`
//! and compare), using the same attribute definition
//! ([`super::encode::for_each_attribute`]). Building those structs, then encoding and
//! freeing them, cost about three times as much CPU per record, mostly in `malloc`.
use prost::Message;

use super::{
    ExportItem,
    encode::{
        AttrValue, EVENT_NAME, RUNTIME_EVENT_PREFIX, error_message, for_each_attribute,
        for_each_event_attribute, for_each_startup_attribute, runtime_event_warns, scope,
        span_name,
    },
    resource::Resources,
};
use crate::{
    correlate::{CorrelatedEvent, CorrelatedRecord, ResourceKey},
    sink::console::{format_row, format_runtime_event},
    startup::report::StartupSpan,
};

const LEN: u32 = 2;
const VARINT: u32 = 0;
const I64: u32 = 1;
const I32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

/// Length of an `AnyValue` message holding `v`.
fn any_value_len(v: &AttrValue<'_>) -> usize {
    match v {
        AttrValue::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        AttrValue::Int(i) => 1 + varint_len(*i as u64),
        AttrValue::Double(_) => 9,
        AttrValue::Bool(_) => 2,
    }
}

/// A `KeyValue` as field `field` of its parent.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, v: &AttrValue<'_>) {
    let any_len = any_value_len(v);
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    tag(buf, field, LEN);
    varint(buf, kv_len as u64);
    bytes_field(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any_len as u64);
    match v {
        AttrValue::Str(s) => bytes_field(buf, 1, s.as_bytes()),
        AttrValue::Int(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        AttrValue::Double(d) => fixed64_field(buf, 4, d.to_bits()),
        AttrValue::Bool(b) => {
            tag(buf, 2, VARINT);
            buf.push(u8::from(*b));
        }
    }
}

/// Reusable buffers: one encoder per export task.
#[derive(Debug, Default)]
pub struct WireEncoder {
    item: Vec<u8>,
    items: Vec<u8>,
    scope: Vec<u8>,
}

impl WireEncoder {
    /// A new encoder.
    #[must_use]
    pub fn new() -> Self {
        Self {
            scope: scope().encode_to_vec(),
            ..Self::default()
        }
    }

    /// Groups `items` by Resource key, in first-seen order.
    fn groups<'a>(
        items: impl Iterator<Item = &'a ExportItem>,
    ) -> Vec<(&'a ResourceKey, Vec<&'a ExportItem>)> {
        let mut groups: Vec<(&ResourceKey, Vec<&ExportItem>)> = Vec::new();
        for item in items {
            let key = item.resource();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(item),
                None => groups.push((key, vec![item])),
            }
        }
        groups
    }

    /// Writes `Resource{Spans,Logs}` (field 1 of the request) for one group whose
    /// `items` (spans or log records, each already tagged) are in `self.items`.
    fn resource_group(&mut self, out: &mut Vec<u8>, resource: &[u8]) {
        let scope_len =
            1 + varint_len(self.scope.len() as u64) + self.scope.len() + self.items.len();
        let res_len = 1 + varint_len(resource.len() as u64) + resource.len();
        let group_len = res_len + 1 + varint_len(scope_len as u64) + scope_len;
        tag(out, 1, LEN);
        varint(out, group_len as u64);
        bytes_field(out, 1, resource);
        tag(out, 2, LEN);
        varint(out, scope_len as u64);
        bytes_field(out, 1, &self.scope);
        out.extend_from_slice(&self.items);
    }

    /// An `ExportTraceServiceRequest` for `batch`'s spans (runtime events have none).
    pub fn traces(&mut self, batch: &[ExportItem], resources: &Resources) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 700 + 512);
        for (key, items) in Self::groups(batch.iter().filter(|i| i.has_span())) {
            self.items.clear();
            for item in items {
                match item {
                    ExportItem::Io(c) | ExportItem::SharedIo(c) => self.span(c),
                    ExportItem::Startup(s) => self.startup_span(s),
                    ExportItem::Runtime(_) => continue,
                }
                bytes_field(&mut self.items, 2, &self.item);
            }
            self.resource_group(&mut out, &resources.encoded(key));
        }
        out
    }

    /// An `ExportLogsServiceRequest` for `batch`.
    pub fn logs(
        &mut self,
        batch: &[ExportItem],
        resources: &Resources,
        warn_threshold_ns: u64,
        observed_unix_ns: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 800 + 512);
        for (key, items) in Self::groups(batch.iter().filter(|i| i.has_log())) {
            self.items.clear();
            for item in items {
                match item {
                    ExportItem::Io(c) => self.log_record(c, warn_threshold_ns, observed_unix_ns),
                    ExportItem::Runtime(c) => self.event_log_record(c, observed_unix_ns),
                    ExportItem::SharedIo(_) | ExportItem::Startup(_) => continue,
                }
                bytes_field(&mut self.items, 2, &self.item);
            }
            self.resource_group(&mut out, &resources.encoded(key));
        }
        out
    }

    /// One `Span`, into `self.item`.
    fn span(&mut self, c: &CorrelatedRecord) {
        let r = &c.record;
        let b = &mut self.item;
        b.clear();
        bytes_field(b, 1, &c.trace_id.0);
        bytes_field(b, 2, &c.span_id.0);
        if let Some(parent) = &c.parent_span_id {
            bytes_field(b, 4, &parent.0);
        }
        bytes_field(b, 5, span_name(r.fs, r.op).as_bytes());
        varint_field(b, 6, 1); // SPAN_KIND_INTERNAL
        fixed64_field(b, 7, r.start_unix_ns);
        fixed64_field(b, 8, r.end_unix_ns.max(r.start_unix_ns));
        for_each_attribute(c, |key, v| key_value(b, 9, key, &v));
        if let Some(errno) = r.errno() {
            let message = error_message(errno);
            let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
            tag(b, 15, LEN);
            varint(b, len as u64);
            bytes_field(b, 2, message.as_bytes());
            varint_field(b, 3, 2); // STATUS_CODE_ERROR
        }
    }

    /// One startup root or phase `Span`, into `self.item`.
    fn startup_span(&mut self, s: &StartupSpan) {
        let b = &mut self.item;
        b.clear();
        bytes_field(b, 1, &s.trace_id.0);
        bytes_field(b, 2, &s.span_id.0);
        if let Some(parent) = &s.parent {
            bytes_field(b, 4, &parent.0);
        }
        bytes_field(b, 5, s.name.as_bytes());
        varint_field(b, 6, 1); // SPAN_KIND_INTERNAL
        fixed64_field(b, 7, s.start_unix_ns);
        fixed64_field(b, 8, s.end_unix_ns.max(s.start_unix_ns));
        for_each_startup_attribute(s, |key, v| key_value(b, 9, key, &v));
        for (trace, span) in &s.links {
            tag(b, 13, LEN);
            varint(b, 28); // trace_id (2 + 16 bytes), span_id (2 + 8)
            bytes_field(b, 1, &trace.0);
            bytes_field(b, 2, &span.0);
        }
        if let Some(message) = &s.error {
            let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
            tag(b, 15, LEN);
            varint(b, len as u64);
            bytes_field(b, 2, message.as_bytes());
            varint_field(b, 3, 2); // STATUS_CODE_ERROR
        }
    }

    /// One `LogRecord`, into `self.item`.
    fn log_record(&mut self, c: &CorrelatedRecord, warn_threshold_ns: u64, observed: u64) {
        let r = &c.record;
        let head = LogHead {
            time: r.end_unix_ns,
            warn: r.latency_ns >= warn_threshold_ns,
            body: &format_row(c),
            trace_id: &c.trace_id.0,
            span_id: &c.span_id.0,
            observed,
            event_name: ["", EVENT_NAME],
        };
        head.write(&mut self.item, |b| {
            for_each_attribute(c, |key, v| key_value(b, 6, key, &v));
        });
    }

    /// One runtime event's `LogRecord`, into `self.item` (as
    /// [`super::encode::event_log_record`]).
    fn event_log_record(&mut self, c: &CorrelatedEvent, observed: u64) {
        let head = LogHead {
            time: c.event.time_unix_ns,
            warn: runtime_event_warns(&c.event),
            body: &format_runtime_event(&c.event),
            trace_id: &c.trace_id.0,
            span_id: &c.span_id.0,
            observed,
            event_name: [RUNTIME_EVENT_PREFIX, c.event.kind.name()],
        };
        head.write(&mut self.item, |b| {
            for_each_event_attribute(c, |key, v| key_value(b, 6, key, &v));
        });
    }
}

/// What every `LogRecord` iostall writes has, IO record or runtime event alike.
struct LogHead<'a> {
    time: u64,
    warn: bool,
    body: &'a str,
    trace_id: &'a [u8],
    span_id: &'a [u8],
    observed: u64,
    /// Written one after the other (a prefix, then the name).
    event_name: [&'a str; 2],
}

impl LogHead<'_> {
    /// The record's fields in field order into `b` (cleared first), the attributes
    /// (field 6) from `attributes`.
    fn write(&self, b: &mut Vec<u8>, attributes: impl FnOnce(&mut Vec<u8>)) {
        b.clear();
        fixed64_field(b, 1, self.time);
        varint_field(b, 2, if self.warn { 13 } else { 9 });
        bytes_field(b, 3, if self.warn { b"WARN" } else { b"INFO" });
        tag(b, 5, LEN);
        varint(
            b,
            (1 + varint_len(self.body.len() as u64) + self.body.len()) as u64,
        );
        bytes_field(b, 1, self.body.as_bytes());
        attributes(b);
        tag(b, 8, I32);
        b.extend_from_slice(&1u32.to_le_bytes());
        bytes_field(b, 9, self.trace_id);
        bytes_field(b, 10, self.span_id);
        fixed64_field(b, 11, self.observed);
        let [prefix, name] = self.event_name;
        tag(b, 12, LEN);
        varint(b, (prefix.len() + name.len()) as u64);
        b.extend_from_slice(prefix.as_bytes());
        b.extend_from_slice(name.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest,
    };

    use super::*;
    use crate::{
        config::ResourceConfig,
        correlate::{Correlator, tests::record},
        event::IoOp,
        otlp::encode::{
            build_requests_at,
            tests::{container_io, image_event, runtime_event},
        },
        runtime::RuntimeEventKind,
    };

    fn resources() -> Resources {
        Resources::new(
            &ResourceConfig {
                service_name: "svc".into(),
                attributes: vec![("a".into(), "b".into())],
            },
            Some("node".into()),
        )
    }

    /// Encodes `batch` both ways; the wire bytes must decode to the reference messages.
    fn assert_same_messages(
        batch: &[ExportItem],
    ) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
        let resources = resources();
        let observed = 1_800_000_000_000_000_000;
        let (want_traces, want_logs) =
            build_requests_at(batch, &resources, 1_000_000_000, observed);
        let mut enc = WireEncoder::new();
        let traces = ExportTraceServiceRequest::decode(enc.traces(batch, &resources).as_slice())
            .expect("valid traces protobuf");
        let logs = ExportLogsServiceRequest::decode(
            enc.logs(batch, &resources, 1_000_000_000, observed)
                .as_slice(),
        )
        .expect("valid logs protobuf");
        assert_eq!(traces, want_traces);
        assert_eq!(logs, want_logs);
        (traces, logs)
    }

    #[test]
    fn varint_len_matches_encoding() {
        for v in [
            0u64,
            1,
            127,
            128,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn same_messages_as_opentelemetry_proto() {
        let corr = Correlator::new("n");
        let mut batch = Vec::new();
        for i in 0..20u64 {
            let mut r = record(
                100 + (i % 3) as u32,
                1_700_000_000_000_000_000 + i * 7_000_000,
            );
            match i % 4 {
                0 => {
                    r.op = IoOp::Write;
                    r.bytes = 4096;
                    r.offset = Some(-1 + i as i64 * 4096);
                    r.via_overlayfs = true;
                }
                1 => r.ret = -i64::from(libc::ENOSPC),
                2 => {
                    r.file_path = None;
                    r.path_complete = false;
                    r.latency_ns = 2_000_000_000;
                }
                _ => {
                    r.datasync = true;
                    r.directory = true;
                }
            }
            batch.push(corr.correlate(r).into());
        }
        assert_same_messages(&batch);
    }

    /// A startup's root (failed, linked) and phase, a placed IO span and a shared copy:
    /// the wire bytes decode to the reference messages, and span-only items make no log
    /// record.
    #[test]
    fn startup_spans_same_messages_as_opentelemetry_proto() {
        use crate::{
            correlate::{Placement, SpanId, TraceId},
            enrich::{AttributionMethod, Enrichment},
            startup::report::{SpanValue, StartupSpan},
        };
        let corr = Correlator::new("n");
        let t0 = 1_700_000_000_000_000_000;
        let io = container_io(&corr, t0);
        let resource = io.resource.clone();
        let trace = TraceId([7; 16]);
        let root = StartupSpan {
            trace_id: trace,
            span_id: SpanId([1; 8]),
            parent: None,
            name: "pod startup",
            start_unix_ns: t0,
            end_unix_ns: t0 + 5,
            resource: resource.clone(),
            attributes: vec![
                (
                    "iostall.startup.end_reason",
                    SpanValue::Str("container_failed".into()),
                ),
                ("iostall.stall.ns", SpanValue::Int(12)),
                ("iostall.x", SpanValue::Bool(true)),
            ],
            error: Some("container app exited with code 1".into()),
            links: vec![(TraceId([8; 16]), SpanId([9; 8]))],
        };
        let phase = StartupSpan {
            span_id: SpanId([2; 8]),
            parent: Some(SpanId([1; 8])),
            name: "pod sandbox",
            error: None,
            links: Vec::new(),
            ..root.clone()
        };
        let placement = Placement {
            trace_id: trace,
            parent: SpanId([2; 8]),
            shared_by: None,
        };
        let placed = corr.correlate_placed(record(10, t0), Enrichment::none(), Some(placement));
        let copy = corr.correlate_placed(
            record(11, t0),
            Enrichment {
                method: AttributionMethod::TimeOverlap,
                pod_uid: Some("uid".into()),
                ..Enrichment::none()
            },
            Some(Placement {
                shared_by: Some(3),
                ..placement
            }),
        );
        assert_ne!(copy.span_id, corr.correlate(record(11, t0)).span_id);
        let batch = vec![
            ExportItem::Startup(root),
            ExportItem::Startup(phase),
            ExportItem::Io(placed),
            ExportItem::SharedIo(copy),
        ];
        let (traces, logs) = assert_same_messages(&batch);
        let spans: Vec<_> = traces
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
            .collect();
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[0].links.len(), 1);
        assert_eq!(spans[1].parent_span_id, vec![1; 8]);
        let records: usize = logs
            .resource_logs
            .iter()
            .map(|rl| rl.scope_logs[0].log_records.len())
            .sum();
        assert_eq!(records, 1, "only the placed IO has a log record");
    }

    #[test]
    fn runtime_events_same_messages_as_opentelemetry_proto() {
        use RuntimeEventKind as K;
        let corr = Correlator::new("n");
        let t0 = 1_700_000_000_000_000_000;
        let mut batch: Vec<ExportItem> = vec![corr.correlate(record(10, t0)).into()];
        for (i, kind) in [
            K::ContainerCreated,
            K::ContainerStarted,
            K::ContainerListed { running: false },
            K::ContainerOom,
            K::ContainerExited { exit_code: 137 },
            K::ProcessExit {
                exit_code: 137,
                signal: Some(9),
            },
            K::ProcessExit {
                exit_code: 0,
                signal: None,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let at = t0 + i as u64 * 1_000_000;
            batch.push(container_io(&corr, at).into());
            batch.push(runtime_event(&corr, at + 1, kind).into());
        }
        let mut unnamed = runtime_event(&corr, 0, K::ContainerDeleted);
        unnamed.event.image = None;
        unnamed.event.namespace = None;
        unnamed.event.attributes.clear();
        batch.push(unnamed.into());
        batch.push(image_event(&corr, t0).into());
        let (traces, logs) = assert_same_messages(&batch);
        assert_eq!(traces.resource_spans.len(), 2);
        assert_eq!(logs.resource_logs.len(), 2);
        let events: usize = logs
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs[0].log_records)
            .filter(|l| l.event_name != "iostall.io.slow")
            .count();
        assert_eq!(events, 9);
    }

    #[test]
    fn runtime_events_alone_have_no_spans() {
        let corr = Correlator::new("n");
        let batch: Vec<ExportItem> = vec![
            runtime_event(&corr, 5, RuntimeEventKind::ContainerStarted).into(),
            image_event(&corr, 6).into(),
        ];
        let (traces, logs) = assert_same_messages(&batch);
        assert!(traces.resource_spans.is_empty());
        assert!(WireEncoder::new().traces(&batch, &resources()).is_empty());
        assert_eq!(logs.resource_logs.len(), 2);
    }
}
