//! Records to OTLP messages.
//!
//! A slow operation becomes a span named `{fs} {op}` (`ext4 fsync`, `xfs write`; kind INTERNAL) whose start and end
//! are the kernel's, and a log record carrying the same attributes and the span's ids.
//!
//! # Attributes
//!
//! OpenTelemetry semantic conventions where they exist: `process.pid` (int),
//! `process.command` (comm), `thread.id` (int), `file.name`, `file.path` (only when the
//! full path is known), `file.inode` (a string, per the conventions), `error.type` (the
//! errno name, on failure), `system.filesystem.type` (`ext4`, `xfs`, `btrfs`: the
//! registry's filesystem type attribute, on every record). The rest live under the
//! project prefix **`iostall.`**:
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `iostall.io.operation` | string | `read`, `write`, `open`, `fsync` |
//! | `iostall.io.latency_ms` | double | the kernel-measured latency (also the span's duration; kept for logs and queries) |
//! | `iostall.io.bytes` | int | bytes asked for (read, write) |
//! | `iostall.io.offset` | int | file offset (read, write), when known |
//! | `iostall.io.return` | int | the syscall's return value (bytes, fd, 0 or -errno) |
//! | `iostall.io.datasync` | bool | fdatasync rather than fsync (fsync only) |
//! | `iostall.fsync.directory` | bool | the fsync was of a directory (only set when true) |
//! | `iostall.file.device` | string | `major:minor` of the filesystem |
//! | `iostall.file.via_overlayfs` | bool | reached through overlayfs (a container's root filesystem): the file, inode and device are the real ones below it (only set when true) |
//! | `iostall.file.partial_path` | string | `…/parent/name` when the full path is unknown |
//! | `iostall.cgroup.id` | int | cgroup v2 id of the thread |
//! | `iostall.mntns` | int | mount namespace inode |
//! | `iostall.attach_mode` | string | `fentry`, `kprobe` or `tracepoint` |
//!
//! Then why it was slow ([`crate::why`]): the device's state, the journal commit an fsync
//! waited for, and the IO pressure, each only when known (see README's attribute
//! reference). The disk's, when `why.disk` knows the device:
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `iostall.disk.device` | string | `major:minor` of the whole device (a partition's disk) |
//! | `iostall.disk.name` | string | its kernel name (`sda`, `loop3`) |
//! | `iostall.disk.iops` | double | requests completed per second, last second |
//! | `iostall.disk.bytes_per_second` | double | bytes read and written per second |
//! | `iostall.disk.in_flight` | int | requests in flight at the last sample |
//! | `iostall.disk.await_ms` | double | mean request time, queue and device, last second |
//! | `iostall.disk.saturated` | bool | flat at a ceiling while requests wait |
//! | `iostall.disk.ceiling_iops` | double | the ceiling's IOPS (only while saturated) |
//!
//! On an AWS EBS volume over its limits in the last interval, `iostall.ebs.exceeded`
//! (string: which limits) and `iostall.ebs.exceeded_ratio` (double).
//!
//! | `iostall.journal.commit_ms` | double | the fsync's own jbd2 commit, ms |
//! | `iostall.journal.{tid,blocks,handles}` | int | its transaction id, metadata blocks, handles |
//! | `iostall.journal.commit_began_before` | bool | it was running when the fsync began |
//! | `iostall.journal.commits` | int | commits that ended during the fsync |
//! | `iostall.journal.wait_ms`, `…wait_share` | double | fsync time they covered (ms, 0–1) |
//! | `iostall.journal.{blocks_total,handles_total}` | int | summed over those commits |
//! | `iostall.psi.io.{some,full}_avg10` | double | the cgroup's `io.pressure`, % |
//! | `iostall.psi.node.io.{some,full}_avg10` | double | `/proc/pressure/io`, % |
//! | `iostall.psi.io.some_avg10_max` | double | startup and phase spans: the highest cgroup PSI on the pod's own IO |
//!
//! # Runtime events
//!
//! A runtime lifecycle event becomes a log record only (no span): event name
//! `iostall.` + the kind's name (`iostall.container.exited`: the `container.` and `k8s.`
//! namespaces belong to the semantic conventions, which may define events of their own
//! there), body = the console line, time = the runtime's, severity WARN for a non-zero
//! exit code or an OOM, INFO otherwise; the trace id of its container's IO of the same
//! window and a span id of its own. Attributes: `container.id`, `container.runtime.name`,
//! `container.image.name`, `process.exit.code` (int, exits), and
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `iostall.runtime.source` | string | who reported it: `containerd`, `docker`, `cri`, `kube`… |
//! | `iostall.sandbox.id` | string | the pod sandbox id |
//! | `iostall.runtime.namespace` | string | the runtime's namespace (`k8s.io`, `moby`) |
//! | `iostall.runtime.{field}` | any | the kind's other fields (`running` of a listing, `signal` of a process exit) |
//! | `iostall.runtime.{key}` | string | the source's own attributes (`pid`, `topic`, `exitCode`…; at most [`MAX_RUNTIME_ATTRIBUTES`]) |
//!
//! Source attributes whose key is already a dotted attribute name (the kernel source's
//! `process.pid`, `process.command`, `iostall.cgroup.id`…) keep it; pids are ints. A key
//! is never repeated: the ones above win. The container's labels are not copied
//! (unbounded and user-controlled); the pod and container it is about are on the
//! Resource.
use std::{
    borrow::Cow,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status,
        span::{self, SpanKind},
        status::StatusCode,
    },
};

use super::{ExportItem, resource::Resources};
use crate::{
    correlate::{CorrelatedEvent, CorrelatedRecord, ResourceKey},
    enrich::cgroup_path::Runtime,
    event::{FsKind, IoOp},
    runtime::{RuntimeEvent, RuntimeEventKind},
    sink::console::{format_row, format_runtime_event},
    startup::report::{SpanValue, StartupSpan},
    why::WhyValue,
};

/// The log record's event name (the LogRecord `event_name` field).
pub const EVENT_NAME: &str = "iostall.io.slow";
/// What a runtime event's log record event name starts with (then the kind's name).
pub const RUNTIME_EVENT_PREFIX: &str = "iostall.";
/// Most of a runtime event's own attributes one log record carries.
pub const MAX_RUNTIME_ATTRIBUTES: usize = 32;
/// The instrumentation scope's name.
pub const SCOPE_NAME: &str = "iostall";

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// The span name: `{fs} {op}` (`ext4 fsync`, `xfs write`), low-cardinality.
#[must_use]
pub fn span_name(fs: FsKind, op: IoOp) -> &'static str {
    match (fs, op) {
        (FsKind::Ext4, IoOp::Read) => "ext4 read",
        (FsKind::Ext4, IoOp::Write) => "ext4 write",
        (FsKind::Ext4, IoOp::Open) => "ext4 open",
        (FsKind::Ext4, IoOp::Fsync) => "ext4 fsync",
        (FsKind::Xfs, IoOp::Read) => "xfs read",
        (FsKind::Xfs, IoOp::Write) => "xfs write",
        (FsKind::Xfs, IoOp::Open) => "xfs open",
        (FsKind::Xfs, IoOp::Fsync) => "xfs fsync",
        (FsKind::Btrfs, IoOp::Read) => "btrfs read",
        (FsKind::Btrfs, IoOp::Write) => "btrfs write",
        (FsKind::Btrfs, IoOp::Open) => "btrfs open",
        (FsKind::Btrfs, IoOp::Fsync) => "btrfs fsync",
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
    f("system.filesystem.type", AttrValue::Str(r.fs.as_str()));
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
        if r.directory {
            f("iostall.fsync.directory", AttrValue::Bool(true));
        }
    }
    f("iostall.io.return", AttrValue::Int(r.ret));
    let mut dev = StackStr::new();
    let _ = write!(dev, "{}:{}", r.dev_major, r.dev_minor);
    f("iostall.file.device", AttrValue::Str(dev.as_str()));
    if r.via_overlayfs {
        f("iostall.file.via_overlayfs", AttrValue::Bool(true));
    }
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
    if let Some(n) = c.shared_by {
        f("iostall.overlap.pods", AttrValue::Int(i64::from(n)));
        f("iostall.overlap.note", AttrValue::Str(OVERLAP_NOTE));
    }
    if let Some(errno) = r.errno() {
        f("error.type", AttrValue::Str(&errno_name(errno)));
    }
    r.why.for_each_attribute(&mut |key, value| {
        f(
            key,
            match value {
                WhyValue::Str(s) => AttrValue::Str(s),
                WhyValue::Int(i) => AttrValue::Int(i),
                WhyValue::Double(d) => AttrValue::Double(d),
                WhyValue::Bool(b) => AttrValue::Bool(b),
            },
        );
    });
}

/// What a time-overlap copy says of itself.
pub const OVERLAP_NOTE: &str = "a runtime daemon's shared file; this operation overlapped \
     the phase in time and is not proven to be this pod's IO";

/// Calls `f` with each attribute of a startup root or phase span.
pub fn for_each_startup_attribute(s: &StartupSpan, mut f: impl FnMut(&str, AttrValue<'_>)) {
    for (key, value) in &s.attributes {
        let v = match value {
            SpanValue::Str(v) => AttrValue::Str(v),
            SpanValue::Int(v) => AttrValue::Int(*v),
            SpanValue::Bool(v) => AttrValue::Bool(*v),
            SpanValue::Double(v) => AttrValue::Double(*v),
        };
        f(key, v);
    }
}

/// The span of a startup's root or phase.
#[must_use]
pub fn startup_span(s: &StartupSpan) -> Span {
    let mut attributes = Vec::with_capacity(s.attributes.len());
    for_each_startup_attribute(s, |k, v| attributes.push(kv(k, owned(v))));
    Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: s.name.to_owned(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns.max(s.start_unix_ns),
        attributes,
        links: s
            .links
            .iter()
            .map(|(t, sp)| span::Link {
                trace_id: t.0.to_vec(),
                span_id: sp.0.to_vec(),
                ..span::Link::default()
            })
            .collect(),
        status: s.error.as_ref().map(|message| Status {
            code: StatusCode::Error as i32,
            message: message.clone(),
        }),
        ..Span::default()
    }
}

/// The attributes shared by a record's span and log record.
#[must_use]
pub fn attributes(c: &CorrelatedRecord) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(20);
    for_each_attribute(c, |key, value| a.push(kv(key, owned(value))));
    a
}

fn owned(value: AttrValue<'_>) -> Value {
    match value {
        AttrValue::Str(s) => Value::StringValue(s.to_owned()),
        AttrValue::Int(i) => Value::IntValue(i),
        AttrValue::Double(d) => Value::DoubleValue(d),
        AttrValue::Bool(b) => Value::BoolValue(b),
    }
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
        parent_span_id: c.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: span_name(r.fs, r.op).to_owned(),
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

/// A runtime event's log record event name: `iostall.container.exited`.
#[must_use]
pub fn runtime_event_name(kind: RuntimeEventKind) -> String {
    format!("{RUNTIME_EVENT_PREFIX}{}", kind.name())
}

/// The fields of an event's kind (`exit_code`, `running`…), by name, read through serde
/// so that every kind, present or future, is covered.
fn kind_fields(kind: &RuntimeEventKind) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.remove("kind");
            fields
        }
        _ => serde_json::Map::new(),
    }
}

/// Whether a runtime event deserves WARN: a container's non-zero exit code
/// (Kubernetes' `Error` reason, 137 = killed) or an OOM kill. Stops and deletions are
/// routine: INFO. A process inside a container exiting non-zero is routine too (probes,
/// `grep`, shell tests): only a process killed by a signal is a WARN — and any exit of a
/// runtime daemon (containerd, dockerd, kubelet…), since that is what the field report's
/// fsync stalls ended in.
#[must_use]
pub fn runtime_event_warns(event: &RuntimeEvent) -> bool {
    if let RuntimeEventKind::ProcessExit { signal, .. } = event.kind {
        let daemon = event
            .attributes
            .get(crate::lifecycle::attr::WATCHED_AS)
            .is_some_and(|w| w == "runtime-daemon");
        return daemon || signal.is_some();
    }
    let failed = kind_fields(&event.kind)
        .get("exit_code")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|code| code != 0);
    failed || event.kind.name().split('.').any(|part| part == "oom")
}

/// Calls `f` with each attribute of a runtime event's log record, in a fixed order: the
/// single definition both encoders ([`event_attributes`] and [`super::wire`]) use.
pub fn for_each_event_attribute(c: &CorrelatedEvent, mut f: impl FnMut(&str, AttrValue<'_>)) {
    let (e, who) = (&c.event, &c.enrichment);
    if let Some(id) = e.container_id.as_deref().or(who.container_id.as_deref()) {
        f("container.id", AttrValue::Str(id));
    }
    if let Some(runtime) = who.runtime.filter(|r| *r != Runtime::Unknown) {
        f("container.runtime.name", AttrValue::Str(runtime.as_str()));
    }
    f("iostall.runtime.source", AttrValue::Str(e.runtime.as_str()));
    if let Some(image) = e.image.as_deref().or(who.image.as_deref()) {
        f("container.image.name", AttrValue::Str(image));
    }
    if let Some(sandbox) = e.sandbox_id.as_deref().or(who.sandbox_id.as_deref()) {
        f("iostall.sandbox.id", AttrValue::Str(sandbox));
    }
    if let Some(ns) = &e.namespace {
        f("iostall.runtime.namespace", AttrValue::Str(ns));
    }
    let fields = kind_fields(&e.kind);
    // Runtime events are rare next to IO: allocations per key are fine here.
    let mut seen: Vec<String> = [
        "container.id",
        "container.runtime.name",
        "container.image.name",
        "iostall.runtime.source",
        "iostall.sandbox.id",
        "iostall.runtime.namespace",
        // Identity is on the Resource (a source may repeat it among its attributes).
        "k8s.pod.uid",
        "k8s.pod.name",
        "k8s.namespace.name",
        "k8s.container.name",
    ]
    .map(str::to_owned)
    .into();
    let mut first = |key: String| {
        let new = !seen.contains(&key);
        if new {
            seen.push(key.clone());
        }
        new.then_some(key)
    };
    for (name, value) in &fields {
        let key = if name == "exit_code" {
            "process.exit.code".to_owned()
        } else {
            attribute_key(name)
        };
        let Some(key) = first(key) else {
            continue;
        };
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) => f(&key, AttrValue::Bool(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => f(&key, AttrValue::Int(i)),
                None => f(&key, AttrValue::Double(n.as_f64().unwrap_or_default())),
            },
            serde_json::Value::String(s) => f(&key, AttrValue::Str(s)),
            other => f(&key, AttrValue::Str(&other.to_string())),
        }
    }
    // The source's own attributes, unless they repeat a field or a key set above.
    let own = e
        .attributes
        .iter()
        .filter(|(name, _)| !fields.contains_key(*name))
        .filter_map(|(name, value)| Some((first(attribute_key(name))?, value)))
        .take(MAX_RUNTIME_ATTRIBUTES);
    for (key, value) in own {
        // Pids are ints in the conventions (and never anything else: no type clash).
        match value.parse::<i64>() {
            Ok(pid) if key == "process.pid" || key.ends_with(".pid") => {
                f(&key, AttrValue::Int(pid));
            }
            _ => f(&key, AttrValue::Str(value)),
        }
    }
}

/// The attribute name of a source's attribute or a kind's field: a dotted name
/// (`process.pid`, `iostall.cgroup.id`: the kernel source names its attributes so) is
/// kept; a bare one (`pid`, `topic`, `exitCode`) goes under `iostall.runtime.`.
fn attribute_key(name: &str) -> String {
    if name.contains('.') {
        name.to_owned()
    } else {
        format!("iostall.runtime.{name}")
    }
}

/// The attributes of a runtime event's log record.
#[must_use]
pub fn event_attributes(c: &CorrelatedEvent) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(12);
    for_each_event_attribute(c, |key, value| a.push(kv(key, owned(value))));
    a
}

/// The log record of a runtime event: event name [`runtime_event_name`], body = the
/// console line, time = the runtime's, WARN per [`runtime_event_warns`], the trace and
/// span ids [`crate::correlate::Correlator::correlate_event`] gave it.
#[must_use]
pub fn event_log_record(
    c: &CorrelatedEvent,
    attributes: Vec<KeyValue>,
    observed_unix_ns: u64,
) -> LogRecord {
    let warn = runtime_event_warns(&c.event);
    let severity = if warn {
        SeverityNumber::Warn
    } else {
        SeverityNumber::Info
    };
    LogRecord {
        time_unix_nano: c.event.time_unix_ns,
        observed_time_unix_nano: observed_unix_ns,
        severity_number: severity as i32,
        severity_text: if warn { "WARN" } else { "INFO" }.to_owned(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(format_runtime_event(&c.event))),
        }),
        attributes,
        flags: 1,
        trace_id: c.trace_id.0.to_vec(),
        span_id: c.span_id.0.to_vec(),
        event_name: runtime_event_name(c.event.kind),
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
/// Resource key (in first-seen order; a Resource with runtime events only has no
/// `ResourceSpans`). (The exporter sends the same messages encoded by [`super::wire`],
/// which avoids building these structs; this is the reference.)
#[must_use]
pub fn build_requests(
    batch: &[ExportItem],
    resources: &Resources,
    warn_threshold_ns: u64,
) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
    build_requests_at(batch, resources, warn_threshold_ns, now_unix_ns())
}

/// [`build_requests`] with a given observed time.
#[must_use]
pub fn build_requests_at(
    batch: &[ExportItem],
    resources: &Resources,
    warn_threshold_ns: u64,
    observed: u64,
) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
    let mut groups: Vec<(&ResourceKey, Vec<Span>, Vec<LogRecord>)> = Vec::new();
    for item in batch {
        let key = item.resource();
        let idx = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                groups.push((key, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        let group = &mut groups[idx];
        match item {
            ExportItem::Io(c) => {
                let attrs = attributes(c);
                group
                    .2
                    .push(log_record(c, attrs.clone(), warn_threshold_ns, observed));
                group.1.push(span(c, attrs));
            }
            ExportItem::Runtime(c) => {
                group
                    .2
                    .push(event_log_record(c, event_attributes(c), observed));
            }
            ExportItem::SharedIo(c) => group.1.push(span(c, attributes(c))),
            ExportItem::Startup(s) => group.1.push(startup_span(s)),
        }
    }
    let mut traces = ExportTraceServiceRequest::default();
    let mut logs = ExportLogsServiceRequest::default();
    for (key, spans, records) in groups {
        let resource = resources.get(key).into_owned();
        if !spans.is_empty() {
            traces.resource_spans.push(ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            });
        }
        if records.is_empty() {
            continue;
        }
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
pub(crate) mod tests {
    use super::*;
    use crate::{
        config::ResourceConfig,
        correlate::{Correlator, tests::record},
        enrich::{
            AttributionMethod, Enrichment,
            metadata::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID},
        },
        runtime::EventSource,
    };

    pub(crate) const CONTAINER: &str = "c0ffee00c0ffee00";
    pub(crate) const SANDBOX: &str = "5a4db0c5a4db0c00";

    /// An event about container [`CONTAINER`] of pod `shop/web-0`, as containerd
    /// reports it, enriched and correlated as the sink thread does.
    pub(crate) fn runtime_event(
        corr: &Correlator,
        time_unix_ns: u64,
        kind: RuntimeEventKind,
    ) -> CorrelatedEvent {
        let mut ev = RuntimeEvent::new(time_unix_ns, EventSource::Containerd, kind);
        ev.container_id = Some(CONTAINER.into());
        ev.sandbox_id = Some(SANDBOX.into());
        ev.namespace = Some("k8s.io".into());
        ev.image = Some("iostall.test/busybox:1".into());
        for (k, v) in [
            (LABEL_POD_NAME, "web-0"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_UID, "uid-1"),
            (LABEL_CONTAINER_NAME, "app"),
        ] {
            ev.labels.insert(k.into(), v.into());
        }
        for (k, v) in [
            ("pid", "4242"),
            ("topic", "/tasks/exit"),
            ("exit_code", "137"),
        ] {
            ev.attributes.insert(k.into(), v.into());
        }
        let mut enrichment = Enrichment::none();
        if let Some(meta) = ev.container_meta() {
            enrichment.fill_from_container(&meta);
        }
        corr.correlate_event(ev, enrichment)
    }

    /// An image pull: no container, no pod.
    pub(crate) fn image_event(corr: &Correlator, time_unix_ns: u64) -> CorrelatedEvent {
        let mut ev = RuntimeEvent::new(
            time_unix_ns,
            EventSource::Containerd,
            RuntimeEventKind::ImagePulled,
        );
        ev.image = Some("iostall.test/busybox:1".into());
        ev.namespace = Some("k8s.io".into());
        corr.correlate_event(ev, Enrichment::none())
    }

    /// The container's slow IO, as the cgroup lookup attributes it.
    pub(crate) fn container_io(corr: &Correlator, start_unix_ns: u64) -> CorrelatedRecord {
        let enrichment = Enrichment {
            method: AttributionMethod::Cgroup,
            container_id: Some(CONTAINER.into()),
            container_name: Some("app".into()),
            pod_uid: Some("uid-1".into()),
            pod_name: Some("web-0".into()),
            pod_namespace: Some("shop".into()),
            ..Enrichment::none()
        };
        corr.correlate_enriched(record(77, start_unix_ns), enrichment)
    }

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
        let (traces, _) = build_requests(&[c.clone().into()], &resources(), 1_000_000_000);
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
            attr(a, "system.filesystem.type"),
            Some(&Value::StringValue("ext4".into()))
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
                    || [
                        "process.",
                        "thread.",
                        "file.",
                        "error.",
                        "system.filesystem."
                    ]
                    .iter()
                    .any(|p| kv.key.starts_with(p)),
                "unexpected attribute namespace: {}",
                kv.key
            );
        }
    }

    #[test]
    fn span_name_and_attribute_name_the_filesystem() {
        let mut r = record(10, 1_700_000_000_000_000_000);
        r.fs = FsKind::Xfs;
        r.op = IoOp::Write;
        let c = Correlator::new("n").correlate(r);
        let (traces, logs) = build_requests(&[c.into()], &resources(), 0);
        let s = &traces.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.name, "xfs write");
        assert_eq!(
            attr(&s.attributes, "system.filesystem.type"),
            Some(&Value::StringValue("xfs".into()))
        );
        let l = &logs.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(
            attr(&l.attributes, "system.filesystem.type"),
            Some(&Value::StringValue("xfs".into()))
        );
        assert_eq!(span_name(FsKind::Btrfs, IoOp::Fsync), "btrfs fsync");
        assert_eq!(span_name(FsKind::Ext4, IoOp::Read), "ext4 read");
    }

    #[test]
    fn error_sets_status_and_error_type() {
        let mut r = record(10, 1_700_000_000_000_000_000);
        r.ret = -i64::from(libc::EIO);
        let c = Correlator::new("n").correlate(r);
        let (traces, logs) = build_requests(&[c.into()], &resources(), 0);
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
        let batch = [fast.clone().into(), slow.into()];
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
            .map(|i| {
                corr.correlate(record(10 + i, 1_700_000_000_000_000_000))
                    .into()
            })
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

    #[test]
    fn directory_fsync_is_marked_and_file_fsync_is_not() {
        let mut r = record(10, 1);
        r.op = IoOp::Fsync;
        let a = attributes(&Correlator::new("n").correlate(r.clone()));
        assert!(attr(&a, "iostall.fsync.directory").is_none());
        r.directory = true;
        let a = attributes(&Correlator::new("n").correlate(r));
        assert_eq!(
            attr(&a, "iostall.fsync.directory"),
            Some(&Value::BoolValue(true))
        );
    }

    #[test]
    fn io_through_overlayfs_is_marked_and_other_io_is_not() {
        let mut r = record(10, 1);
        r.op = IoOp::Write;
        let a = attributes(&Correlator::new("n").correlate(r.clone()));
        assert!(attr(&a, "iostall.file.via_overlayfs").is_none());
        r.via_overlayfs = true;
        let a = attributes(&Correlator::new("n").correlate(r));
        assert_eq!(
            attr(&a, "iostall.file.via_overlayfs"),
            Some(&Value::BoolValue(true))
        );
    }

    #[test]
    fn runtime_event_is_a_log_record_under_its_pods_resource_in_its_containers_trace() {
        let corr = Correlator::new("n");
        let t0 = 1_700_000_000_000_000_000;
        let io = container_io(&corr, t0 + 1_000_000_000);
        let exit = runtime_event(
            &corr,
            t0 + 2_000_000_000,
            RuntimeEventKind::ContainerExited { exit_code: 137 },
        );
        let image = image_event(&corr, t0 + 3_000_000_000);
        let host_io = corr.correlate(record(10, t0));
        let batch: Vec<ExportItem> = vec![
            host_io.clone().into(),
            io.clone().into(),
            exit.clone().into(),
            image.clone().into(),
        ];
        let (traces, logs) = build_requests_at(&batch, &resources(), 1_000_000_000, t0 + 9);
        // Spans for the IO only; log records for everything, grouped per Resource.
        let span_count: usize = traces
            .resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.len())
            .sum();
        assert_eq!(span_count, 2);
        assert_eq!(logs.resource_logs.len(), 2, "the node's and the pod's");
        let node = &logs.resource_logs[0];
        let pod = &logs.resource_logs[1];
        let names = |rl: &ResourceLogs| -> Vec<String> {
            rl.scope_logs[0]
                .log_records
                .iter()
                .map(|l| l.event_name.clone())
                .collect()
        };
        assert_eq!(names(node), ["iostall.io.slow", "iostall.image.pulled"]);
        assert_eq!(names(pod), ["iostall.io.slow", "iostall.container.exited"]);
        let res = &pod.resource.as_ref().expect("resource").attributes;
        for (k, v) in [
            ("k8s.pod.uid", "uid-1"),
            ("k8s.pod.name", "web-0"),
            ("k8s.namespace.name", "shop"),
            ("container.id", CONTAINER),
            ("k8s.container.name", "app"),
            ("service.name", "iostall"),
        ] {
            assert_eq!(attr(res, k), Some(&Value::StringValue(v.into())), "{k}");
        }
        let node_res = &node.resource.as_ref().expect("resource").attributes;
        assert!(attr(node_res, "k8s.pod.uid").is_none());

        let l = &pod.scope_logs[0].log_records[1];
        assert_eq!(l.time_unix_nano, t0 + 2_000_000_000);
        assert_eq!(l.observed_time_unix_nano, t0 + 9);
        assert_eq!(l.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(l.severity_text, "WARN");
        // The same trace as the container's IO of that window; a span id of its own.
        assert_eq!(l.trace_id, io.trace_id.0);
        assert_eq!(l.span_id, exit.span_id.0);
        assert_ne!(l.span_id, io.span_id.0);
        assert_ne!(l.span_id, vec![0u8; 8]);
        assert_eq!(l.flags, 1);
        let body = match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("body {other:?}"),
        };
        assert!(
            body.ends_with("[containerd] container.exited c0ffee00c0ff shop/web-0 app exit_code=137 image=iostall.test/busybox:1"),
            "{body}"
        );
        let a = &l.attributes;
        let s = |v: &str| Some(Value::StringValue(v.into()));
        assert_eq!(attr(a, "container.id").cloned(), s(CONTAINER));
        assert_eq!(attr(a, "container.runtime.name").cloned(), s("containerd"));
        assert_eq!(attr(a, "iostall.runtime.source").cloned(), s("containerd"));
        assert_eq!(
            attr(a, "container.image.name").cloned(),
            s("iostall.test/busybox:1")
        );
        assert_eq!(attr(a, "iostall.sandbox.id").cloned(), s(SANDBOX));
        assert_eq!(attr(a, "iostall.runtime.namespace").cloned(), s("k8s.io"));
        assert_eq!(attr(a, "process.exit.code"), Some(&Value::IntValue(137)));
        assert_eq!(attr(a, "iostall.runtime.pid"), Some(&Value::IntValue(4242)));
        assert_eq!(attr(a, "iostall.runtime.topic").cloned(), s("/tasks/exit"));
        assert!(
            attr(a, "iostall.runtime.exit_code").is_none(),
            "the exit code once, typed"
        );
        assert!(attr(a, "event.name").is_none(), "deprecated attribute");
        assert!(
            attr(a, "k8s.pod.uid").is_none(),
            "identity is on the Resource"
        );
        let mut keys: Vec<&str> = a.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), a.len(), "duplicate attribute keys");

        let l = &node.scope_logs[0].log_records[1];
        assert_eq!(l.severity_number, SeverityNumber::Info as i32);
        assert_eq!(l.trace_id, image.trace_id.0);
        assert_ne!(l.trace_id, host_io.trace_id.0);
        assert!(attr(&l.attributes, "container.id").is_none());
    }

    #[test]
    fn runtime_event_severity_and_kind_fields() {
        use RuntimeEventKind as K;
        let corr = Correlator::new("n");
        let severity = |kind| {
            let c = runtime_event(&corr, 1, kind);
            event_log_record(&c, event_attributes(&c), 2).severity_text
        };
        for (kind, want) in [
            (K::ContainerCreated, "INFO"),
            (K::ContainerStarted, "INFO"),
            (K::ContainerExited { exit_code: 0 }, "INFO"),
            (K::ContainerExited { exit_code: 1 }, "WARN"),
            (K::ContainerOom, "WARN"),
            (K::SandboxStopped, "INFO"),
            (K::SandboxDeleted, "INFO"),
            (K::ContainerDeleted, "INFO"),
            (
                K::ProcessExit {
                    exit_code: 1,
                    signal: None,
                },
                "INFO",
            ),
            (
                K::ProcessExit {
                    exit_code: 137,
                    signal: Some(9),
                },
                "WARN",
            ),
        ] {
            assert_eq!(severity(kind), want, "{kind:?}");
        }
        let mut daemon = runtime_event(
            &corr,
            1,
            K::ProcessExit {
                exit_code: 0,
                signal: None,
            },
        );
        daemon.event.attributes.insert(
            crate::lifecycle::attr::WATCHED_AS.into(),
            "runtime-daemon".into(),
        );
        assert_eq!(
            event_log_record(&daemon, event_attributes(&daemon), 2).severity_text,
            "WARN",
            "any exit of containerd is news"
        );
        let listed = runtime_event(&corr, 1, K::ContainerListed { running: true });
        let a = event_attributes(&listed);
        assert_eq!(
            attr(&a, "iostall.runtime.running"),
            Some(&Value::BoolValue(true))
        );
        assert!(attr(&a, "process.exit.code").is_none());
        assert_eq!(
            event_log_record(&listed, a, 2).event_name,
            "iostall.container.listed"
        );
    }

    #[test]
    fn runtime_attributes_are_bounded() {
        let corr = Correlator::new("n");
        let mut c = runtime_event(&corr, 1, RuntimeEventKind::ContainerStarted);
        for i in 0..100 {
            c.event.attributes.insert(format!("k{i:03}"), "v".into());
        }
        c.event
            .attributes
            .insert("namespace".into(), "repeats a key".into());
        let a = event_attributes(&c);
        let mut keys: Vec<&str> = a.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), a.len(), "duplicate attribute keys");
        let own = a
            .iter()
            .filter(|kv| {
                kv.key.starts_with("iostall.runtime.")
                    && kv.key != "iostall.runtime.source"
                    && kv.key != "iostall.runtime.namespace"
            })
            .count();
        assert_eq!(own, MAX_RUNTIME_ATTRIBUTES);
    }

    #[test]
    fn kernel_events_keep_their_attribute_names_without_repeats() {
        let corr = Correlator::new("n");
        let kernel = |kind| {
            let mut ev = RuntimeEvent::new(7, EventSource::Kernel, kind);
            ev.container_id = Some(CONTAINER.into());
            for (k, v) in [
                ("process.pid", "42"),
                ("process.command", "sh"),
                ("process.exit.code", "137"),
                ("iostall.exit.signal", "9"),
                ("k8s.pod.uid", "uid-1"),
                ("container.runtime.name", "containerd"),
            ] {
                ev.attributes.insert(k.into(), v.into());
            }
            let enrichment = Enrichment {
                container_id: Some(CONTAINER.into()),
                ..Enrichment::none()
            };
            corr.correlate_event(ev, enrichment)
        };
        let killed = kernel(RuntimeEventKind::ProcessExit {
            exit_code: 137,
            signal: Some(9),
        });
        let a = event_attributes(&killed);
        let l = event_log_record(&killed, a.clone(), 8);
        assert_eq!(l.event_name, "iostall.process.exit");
        assert_eq!(l.severity_text, "WARN");
        assert_eq!(attr(&a, "process.exit.code"), Some(&Value::IntValue(137)));
        assert_eq!(attr(&a, "process.pid"), Some(&Value::IntValue(42)));
        assert_eq!(
            attr(&a, "process.command"),
            Some(&Value::StringValue("sh".into()))
        );
        assert_eq!(
            attr(&a, "iostall.runtime.signal"),
            Some(&Value::IntValue(9))
        );
        assert_eq!(
            attr(&a, "iostall.runtime.source"),
            Some(&Value::StringValue("kernel".into()))
        );
        assert!(
            attr(&a, "k8s.pod.uid").is_none(),
            "identity is on the Resource"
        );
        assert!(attr(&a, "iostall.runtime.process.pid").is_none());
        let mut keys: Vec<&str> = a.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), a.len(), "duplicate attribute keys");
        let exited = kernel(RuntimeEventKind::ProcessExit {
            exit_code: 0,
            signal: None,
        });
        let a = event_attributes(&exited);
        assert!(
            attr(&a, "iostall.runtime.signal").is_none(),
            "no null attribute"
        );
        assert_eq!(event_log_record(&exited, a, 8).severity_text, "INFO");
        let oom = kernel(RuntimeEventKind::OomKill);
        assert_eq!(
            event_log_record(&oom, event_attributes(&oom), 8).severity_text,
            "WARN"
        );
    }
}
