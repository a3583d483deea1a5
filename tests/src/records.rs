//! Reading what iostall printed: JSON records and its "stopped" log line.
use serde_json::Value;

use crate::workload::WorkloadOp;

/// A string field of a JSON record (empty when absent).
#[must_use]
pub fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// An unsigned field of a JSON record (`u64::MAX` when absent, so it matches nothing).
#[must_use]
pub fn u64_field(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(u64::MAX)
}

/// iostall's name for a workload op.
#[must_use]
pub fn iostall_op(workload_op: &str) -> &str {
    match workload_op {
        "pread" | "read" => "read",
        other => other,
    }
}

/// The iostall record that measured `op`: same thread, operation and file, and a kernel
/// interval inside the interval the workload measured around the syscall.
#[must_use]
pub fn matching<'a>(records: &'a [Value], op: &WorkloadOp) -> Option<&'a Value> {
    let (s, n) = (str_field, u64_field);
    records.iter().find(|e| {
        s(e, "op") == iostall_op(&op.op)
            && n(e, "tid") == op.tid
            && s(e, "file_name") == op.file_name
            && n(e, "start_unix_ns") + 2_000_000 >= op.start_unix_ns
            && n(e, "start_unix_ns") <= op.start_unix_ns + op.duration_ns
    })
}

/// An integer field of iostall's "stopped" log line (`kernel_events=18`).
///
/// # Panics
/// When there is no such line or field: the test reading it cannot go on.
#[must_use]
pub fn stopped_field(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("no 'stopped' line in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
