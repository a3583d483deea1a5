//! Records to OTLP messages.
//!
//! A slow operation becomes a span named `ext4 {op}` (kind INTERNAL) whose start and end
//! are the kernel's, and a log record carrying the same attributes and the span's ids.
//!
//! # Attributes
//!
//! OpenTelemetry semantic conventions where they exist: `process.pid` (int),
//! `process.command` (comm), `thread.id` (int), `file.name`, `file.path` (only when the
//! full path is known), `file.inode` (a string, per the conventions), `error.type` (the
//! errno name, on failure). The rest live under the project prefix **`iostall.`**:
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `iostall.io.operation` | string | `read`, `write`, `open`, `fsync` |
//! | `iostall.io.latency_ms` | double | the kernel-measured latency (also the span's duration; kept for logs and queries) |
//! | `iostall.io.bytes` | int | bytes asked for (read, write) |
//! | `iostall.io.offset` | int | file offset (read, write), when known |
//! | `iostall.io.return` | int | the syscall's return value (bytes, fd, 0 or -errno) |
//! | `iostall.io.datasync` | bool | fdatasync rather than fsync (fsync only) |
//! | `iostall.file.device` | string | `major:minor` of the filesystem |
//! | `iostall.file.partial_path` | string | `…/parent/name` when the full path is unknown |
//! | `iostall.cgroup.id` | int | cgroup v2 id of the thread |
//! | `iostall.mntns` | int | mount namespace inode |
//! | `iostall.attach_mode` | string | `fentry`, `kprobe` or `tracepoint` |
use std::{
    borrow::Cow,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

use super::resource::Resources;
use crate::{
    correlate::{CorrelatedRecord, ResourceKey},
    event::IoOp,
    sink::console::format_row,
};

/// The log record's event name (the LogRecord `event_name` field).
pub const EVENT_NAME: &str = "iostall.io.slow";
/// The instrumentation scope's name.
pub const SCOPE_NAME: &str = "iostall";

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// The span name: `ext4 {op}`.
#[must_use]
pub fn span_name(op: IoOp) -> &'static str {
    match op {
        IoOp::Read => "ext4 read",
        IoOp::Write => "ext4 write",
        IoOp::Open => "ext4 open",
        IoOp::Fsync => "ext4 fsync",
    }
}

/// The symbolic name of an errno (`EIO`), or `E{n}` for rare ones.
#[must_use]
pub fn errno_name(errno: i32) -> Cow<'static, str> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return Cow::Owned(format!("E{errno}")),
    };
    Cow::Borrowed(name)
}

/// An attribute value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// An int64.
    Int(i64),
    /// A double.
    Double(f64),
    /// A bool.
    Bool(bool),
}

/// A small stack buffer for formatting numbers without allocating.
struct StackStr {
    buf: [u8; 48],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Calls `f` with each attribute of a record's span and log record, in a fixed order:
/// the single definition both encoders ([`attributes`] and [`super::wire`]) use.
pub fn for_each_attribute(c: &CorrelatedRecord, mut f: impl FnMut(&'static str, AttrValue<'_>)) {
    use std::fmt::Write as _;
    let r = &c.record;
    f("process.pid", AttrValue::Int(i64::from(r.pid)));
    f("process.command", AttrValue::Str(&r.comm));
    f("thread.id", AttrValue::Int(i64::from(r.tid)));
    f("file.name", AttrValue::Str(&r.file_name));
    match &r.file_path {
        Some(path) => f("file.path", AttrValue::Str(path)),
        None => f(
            "iostall.file.partial_path",
            AttrValue::Str(&r.display_path()),
        ),
    }
    let mut inode = StackStr::new();
    let _ = write!(inode, "{}", r.inode);
    f("file.inode", AttrValue::Str(inode.as_str()));
    f("iostall.io.operation", AttrValue::Str(r.op.as_str()));
    f(
        "iostall.io.latency_ms",
        AttrValue::Double(r.latency_ns as f64 / 1e6),
    );
    if matches!(r.op, IoOp::Read | IoOp::Write) {
        f("iostall.io.bytes", AttrValue::Int(r.bytes as i64));
        if let Some(off) = r.offset {
            f("iostall.io.offset", AttrValue::Int(off));
        }
    }
    if r.op == IoOp::Fsync {
        f("iostall.io.datasync", AttrValue::Bool(r.datasync));
    }
    f("iostall.io.return", AttrValue::Int(r.ret));
    let mut dev = StackStr::new();
    let _ = write!(dev, "{}:{}", r.dev_major, r.dev_minor);
    f("iostall.file.device", AttrValue::Str(dev.as_str()));
    f("iostall.cgroup.id", AttrValue::Int(r.cgroup_id as i64));
    f("iostall.mntns", AttrValue::Int(i64::from(r.mntns)));
    f(
        "iostall.attach_mode",
        AttrValue::Str(r.attach_mode.as_str()),
    );
    // Who the IO belongs to is on the Resource; how that was decided is on each span.
    f(
        "iostall.attribution",
        AttrValue::Str(c.enrichment.method.as_str()),
    );
    if let Some(errno) = r.errno() {
        f("error.type", AttrValue::Str(&errno_name(errno)));
    }
}

/// The attributes shared by a record's span and log record.
#[must_use]
pub fn attributes(c: &CorrelatedRecord) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(19);
    for_each_attribute(c, |key, value| {
        a.push(kv(
            key,
            match value {
                AttrValue::Str(s) => Value::StringValue(s.to_owned()),
                AttrValue::Int(i) => Value::IntValue(i),
                AttrValue::Double(d) => Value::DoubleValue(d),
                AttrValue::Bool(b) => Value::BoolValue(b),
            },
        ));
    });
    a
}

/// The span status of a failed operation: ERROR with `EIO: Input/output error`.
#[must_use]
pub fn error_message(errno: i32) -> String {
    format!(
        "{}: {}",
        errno_name(errno),
        std::io::Error::from_raw_os_error(errno)
    )
}

/// The span of one record.
#[must_use]
pub fn span(c: &CorrelatedRecord, attributes: Vec<KeyValue>) -> Span {
    let r = &c.record;
    let status = r.errno().map(|errno| Status {
        code: StatusCode::Error as i32,
        message: error_message(errno),
    });
    Span {
        trace_id: c.trace_id.0.to_vec(),
        span_id: c.span_id.0.to_vec(),
        name: span_name(r.op).to_owned(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: r.start_unix_ns,
        end_time_unix_nano: r.end_unix_ns.max(r.start_unix_ns),
        attributes,
        status,
        ..Span::default()
    }
}

/// The log record of one record: body = the console table's row, WARN from
/// `warn_threshold_ns` on (INFO below), timestamp = the operation's end, observed =
/// `observed_unix_ns`, the span's trace and span ids, event name [`EVENT_NAME`].
#[must_use]
pub fn log_record(
    c: &CorrelatedRecord,
    attributes: Vec<KeyValue>,
    warn_threshold_ns: u64,
    observed_unix_ns: u64,
) -> LogRecord {
    let r = &c.record;
    let severity = if r.latency_ns >= warn_threshold_ns {
        SeverityNumber::Warn
    } else {
        SeverityNumber::Info
    };
    LogRecord {
        time_unix_nano: r.end_unix_ns,
        observed_time_unix_nano: observed_unix_ns,
        severity_number: severity as i32,
        severity_text: if severity == SeverityNumber::Warn {
            "WARN".to_owned()
        } else {
            "INFO".to_owned()
        },
        body: Some(AnyValue {
            value: Some(Value::StringValue(format_row(c))),
        }),
        attributes,
        flags: 1,
        trace_id: c.trace_id.0.to_vec(),
        span_id: c.span_id.0.to_vec(),
        event_name: EVENT_NAME.to_owned(),
        ..LogRecord::default()
    }
}

/// The instrumentation scope of every export.
#[must_use]
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    }
}

/// Wall-clock now in Unix nanoseconds.
#[must_use]
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Both export requests for a batch, with one `ResourceSpans`/`ResourceLogs` per
/// Resource key (in first-seen order). (The exporter sends the same messages encoded
/// by [`super::wire`], which avoids building these structs; this is the reference.)
#[must_use]
pub fn build_requests(
    batch: &[CorrelatedRecord],
    resources: &Resources,
    warn_threshold_ns: u64,
) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
    build_requests_at(batch, resources, warn_threshold_ns, now_unix_ns())
}

/// [`build_requests`] with a given observed time.
#[must_use]
pub fn build_requests_at(
    batch: &[CorrelatedRecord],
    resources: &Resources,
    warn_threshold_ns: u64,
    observed: u64,
) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
    let mut groups: Vec<(&ResourceKey, Vec<Span>, Vec<LogRecord>)> = Vec::new();
    for c in batch {
        let idx = match groups.iter().position(|(k, _, _)| *k == &c.resource) {
            Some(i) => i,
            None => {
                groups.push((&c.resource, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        let attrs = attributes(c);
        let group = &mut groups[idx];
        group
            .2
            .push(log_record(c, attrs.clone(), warn_threshold_ns, observed));
        group.1.push(span(c, attrs));
    }
    let mut traces = ExportTraceServiceRequest::default();
    let mut logs = ExportLogsServiceRequest::default();
    for (key, spans, records) in groups {
        let resource = resources.get(key).into_owned();
        traces.resource_spans.push(ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        });
        logs.resource_logs.push(ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        });
    }
    (traces, logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::ResourceConfig,
        correlate::{Correlator, tests::record},
    };

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn resources() -> Resources {
        Resources::new(
            &ResourceConfig {
                service_name: "iostall".into(),
                attributes: vec![("team".into(), "sre".into())],
            },
            Some("node-1".into()),
        )
    }

    #[test]
    fn span_has_kernel_times_name_kind_and_attribute_types() {
        let c = Correlator::new("n").correlate(record(10, 1_700_000_000_000_000_000));
        let (traces, _) = build_requests(std::slice::from_ref(&c), &resources(), 1_000_000_000);
        let s = &traces.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.name, "ext4 fsync");
        assert_eq!(s.kind, SpanKind::Internal as i32);
        assert_eq!(s.start_time_unix_nano, c.record.start_unix_ns);
        assert_eq!(s.end_time_unix_nano, c.record.end_unix_ns);
        assert_eq!(s.trace_id, c.trace_id.0);
        assert_eq!(s.span_id, c.span_id.0);
        assert!(s.status.is_none());
        let a = &s.attributes;
        assert_eq!(attr(a, "process.pid"), Some(&Value::IntValue(10)));
        assert_eq!(attr(a, "thread.id"), Some(&Value::IntValue(11)));
        assert_eq!(
            attr(a, "process.command"),
            Some(&Value::StringValue("containerd".into()))
        );
        assert_eq!(
            attr(a, "file.inode"),
            Some(&Value::StringValue("12".into()))
        );
        assert_eq!(
            attr(a, "file.name"),
            Some(&Value::StringValue("meta.db".into()))
        );
        assert_eq!(
            attr(a, "file.path"),
            Some(&Value::StringValue(
                "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".into()
            ))
        );
        assert_eq!(
            attr(a, "iostall.io.operation"),
            Some(&Value::StringValue("fsync".into()))
        );
        assert_eq!(
            attr(a, "iostall.file.device"),
            Some(&Value::StringValue("7:3".into()))
        );
        assert_eq!(attr(a, "iostall.cgroup.id"), Some(&Value::IntValue(42)));
        assert_eq!(
            attr(a, "iostall.attach_mode"),
            Some(&Value::StringValue("tracepoint".into()))
        );
        assert_eq!(
            attr(a, "iostall.io.latency_ms"),
            Some(&Value::DoubleValue(108.0))
        );
        assert!(attr(a, "error.type").is_none());
        assert!(attr(a, "iostall.io.offset").is_none());
        for kv in a {
            assert!(
                !kv.key.contains('.')
                    || kv.key.starts_with("iostall.")
                    || ["process.", "thread.", "file.", "error."]
                        .iter()
                        .any(|p| kv.key.starts_with(p)),
                "unexpected attribute namespace: {}",
                kv.key
            );
        }
    }

    #[test]
    fn error_sets_status_and_error_type() {
        let mut r = record(10, 1_700_000_000_000_000_000);
        r.ret = -i64::from(libc::EIO);
        let c = Correlator::new("n").correlate(r);
        let (traces, logs) = build_requests(std::slice::from_ref(&c), &resources(), 0);
        let s = &traces.resource_spans[0].scope_spans[0].spans[0];
        let status = s.status.as_ref().expect("status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert!(status.message.starts_with("EIO"), "{}", status.message);
        assert_eq!(
            attr(&s.attributes, "error.type"),
            Some(&Value::StringValue("EIO".into()))
        );
        let l = &logs.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(
            attr(&l.attributes, "error.type"),
            Some(&Value::StringValue("EIO".into()))
        );
    }

    #[test]
    fn log_matches_span_ids_and_has_severity_and_event_name() {
        let corr = Correlator::new("n");
        let fast = corr.correlate(record(10, 1_700_000_000_000_000_000));
        let mut slow = record(10, 1_700_000_000_500_000_000);
        slow.latency_ns = 1_500_000_000;
        slow.end_unix_ns = slow.start_unix_ns + slow.latency_ns;
        let slow = corr.correlate(slow);
        let batch = [fast.clone(), slow.clone()];
        let (traces, logs) = build_requests(&batch, &resources(), 1_000_000_000);
        let spans = &traces.resource_spans[0].scope_spans[0].spans;
        let records = &logs.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(spans.len(), 2);
        assert_eq!(records.len(), 2);
        for (s, l) in spans.iter().zip(records) {
            assert_eq!(s.trace_id, l.trace_id);
            assert_eq!(s.span_id, l.span_id);
            assert_eq!(l.event_name, EVENT_NAME);
            assert_eq!(l.time_unix_nano, s.end_time_unix_nano);
            assert!(l.observed_time_unix_nano >= l.time_unix_nano);
            assert_eq!(s.attributes, l.attributes);
            assert!(attr(&l.attributes, "event.name").is_none());
        }
        assert_eq!(records[0].severity_number, SeverityNumber::Info as i32);
        assert_eq!(records[0].severity_text, "INFO");
        assert_eq!(records[1].severity_number, SeverityNumber::Warn as i32);
        assert_eq!(records[1].severity_text, "WARN");
        let body = match records[0].body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("body {other:?}"),
        };
        assert_eq!(body, format_row(&fast));
    }

    #[test]
    fn one_resource_group_per_key_with_node_attributes() {
        let corr = Correlator::new("n");
        let batch: Vec<_> = (0..5)
            .map(|i| corr.correlate(record(10 + i, 1_700_000_000_000_000_000)))
            .collect();
        let (traces, logs) = build_requests(&batch, &resources(), 1_000_000_000);
        assert_eq!(traces.resource_spans.len(), 1);
        assert_eq!(logs.resource_logs.len(), 1);
        assert_eq!(traces.resource_spans[0].scope_spans[0].spans.len(), 5);
        let res = traces.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        let a = &res.attributes;
        assert_eq!(
            attr(a, "service.name"),
            Some(&Value::StringValue("iostall".into()))
        );
        assert_eq!(
            attr(a, "k8s.node.name"),
            Some(&Value::StringValue("node-1".into()))
        );
        assert_eq!(
            attr(a, "os.type"),
            Some(&Value::StringValue("linux".into()))
        );
        assert_eq!(attr(a, "team"), Some(&Value::StringValue("sre".into())));
        assert!(attr(a, "host.name").is_some());
        assert!(attr(a, "os.version").is_some());
        assert!(attr(a, "service.version").is_some());
        assert_eq!(
            traces.resource_spans[0].scope_spans[0]
                .scope
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("iostall")
        );
    }

    #[test]
    fn read_write_carry_bytes_and_offset() {
        let mut r = record(10, 1);
        r.op = IoOp::Write;
        r.bytes = 4096;
        r.offset = Some(8192);
        let a = attributes(&Correlator::new("n").correlate(r));
        assert_eq!(attr(&a, "iostall.io.bytes"), Some(&Value::IntValue(4096)));
        assert_eq!(attr(&a, "iostall.io.offset"), Some(&Value::IntValue(8192)));
        assert!(attr(&a, "iostall.io.datasync").is_none());
    }
}
