//! What the startup stage hands the sinks besides records: the spans it finished (root
//! and phases) and one summary per finished startup.
use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    correlate::{ResourceKey, SpanId, TraceId},
    event::IoOp,
    why::{CauseTally, Dominant, StallContext},
};

/// A span attribute value the startup stage sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SpanValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Double(f64),
}

impl From<&str> for SpanValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for SpanValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<u64> for SpanValue {
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u32> for SpanValue {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<bool> for SpanValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A finished `pod startup` root or phase span.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupSpan {
    /// The startup's trace.
    pub trace_id: TraceId,
    /// Its own id (deterministic: see [`super::ids`]).
    pub span_id: SpanId,
    /// The root's id for a phase; `None` for the root.
    pub parent: Option<SpanId>,
    /// `pod startup`, `pod sandbox`, `container create`…
    pub name: &'static str,
    /// Unix nanoseconds.
    pub start_unix_ns: u64,
    /// Unix nanoseconds.
    pub end_unix_ns: u64,
    /// The pod's Resource.
    pub resource: ResourceKey,
    /// Attributes, in order.
    pub attributes: Vec<(&'static str, SpanValue)>,
    /// Set when the startup (or phase) failed: the span's status message.
    pub error: Option<String>,
    /// Links: the previous attempt's root (trace id, span id).
    pub links: Vec<(TraceId, SpanId)>,
}

impl StartupSpan {
    /// The attribute `key`, if set.
    #[must_use]
    pub fn attribute(&self, key: &str) -> Option<&SpanValue> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }
}

/// The worst slow operation inside a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorstIo {
    /// Its latency.
    pub latency_ns: u64,
    /// Its operation.
    pub op: IoOp,
    /// Its file, as shown (full path when known).
    pub path: String,
    /// The process that waited.
    pub comm: String,
    /// For a shared runtime file: how many starting pods it overlapped.
    pub shared_by: Option<u32>,
}

/// The slow IO inside a span: own (attributed by cgroup or path) and time-overlap
/// (a runtime daemon's shared files while the phase ran).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IoTally {
    /// Time of the pod's own slow operations, nanoseconds (sum of their spans).
    pub own_ns: u64,
    /// Their count.
    pub own_ops: u32,
    /// Time of the shared runtime operations that overlapped, nanoseconds.
    pub shared_ns: u64,
    /// Their count.
    pub shared_ops: u32,
    /// The slowest of either kind.
    pub worst: Option<WorstIo>,
    /// The same time by cause ([`crate::why`]), own and shared alike.
    pub causes: CauseTally,
    /// The highest IO pressure (`some avg10` of the operation's cgroup,
    /// [`crate::why::pressure`]) seen on the pod's own operations, in hundredths of a
    /// percent (PSI files give two decimals): how stalled the pod's cgroup was while
    /// it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi_some_max_centi: Option<u32>,
}

impl IoTally {
    /// Keeps `psi` (a cgroup's `some avg10`, percent) if it is the highest seen.
    pub fn note_psi(&mut self, psi: Option<f64>) {
        let Some(centi) = psi.map(|p| (p * 100.0).round().clamp(0.0, 10_000.0) as u32) else {
            return;
        };
        self.psi_some_max_centi = Some(self.psi_some_max_centi.map_or(centi, |m| m.max(centi)));
    }

    /// Counts one operation of `duration_ns`.
    pub fn add(&mut self, duration_ns: u64, shared: bool, worst: impl FnOnce() -> WorstIo) {
        if shared {
            self.shared_ns += duration_ns;
            self.shared_ops += 1;
        } else {
            self.own_ns += duration_ns;
            self.own_ops += 1;
        }
        if self
            .worst
            .as_ref()
            .is_none_or(|w| duration_ns > w.latency_ns)
        {
            self.worst = Some(worst());
        }
    }

    /// Counts why one operation of `duration_ns` (already [`IoTally::add`]ed) was slow.
    pub fn add_why(&mut self, duration_ns: u64, why: &StallContext) {
        self.causes.add(duration_ns, why);
    }

    /// The cause behind most of the stall time, if any operation had one.
    #[must_use]
    pub fn dominant(&self) -> Option<Dominant> {
        self.causes.dominant(self.total_ns())
    }

    /// Adds another tally (a phase's, into the root's).
    pub fn merge(&mut self, other: &Self) {
        self.causes.merge(&other.causes);
        self.own_ns += other.own_ns;
        self.own_ops += other.own_ops;
        self.shared_ns += other.shared_ns;
        self.shared_ops += other.shared_ops;
        self.note_psi(other.psi_some_max_centi.map(|c| f64::from(c) / 100.0));
        if let Some(w) = &other.worst
            && self
                .worst
                .as_ref()
                .is_none_or(|mine| w.latency_ns > mine.latency_ns)
        {
            self.worst = Some(w.clone());
        }
    }

    /// Total stall time, own and shared.
    #[must_use]
    pub fn total_ns(&self) -> u64 {
        self.own_ns + self.shared_ns
    }

    /// Its span attributes (`iostall.stall.*`).
    #[must_use]
    pub fn attributes(&self) -> Vec<(&'static str, SpanValue)> {
        let mut out = vec![
            ("iostall.stall.ns", self.total_ns().into()),
            ("iostall.stall.own_ns", self.own_ns.into()),
            ("iostall.stall.shared_ns", self.shared_ns.into()),
            (
                "iostall.stall.ops",
                (u64::from(self.own_ops) + u64::from(self.shared_ops)).into(),
            ),
            ("iostall.stall.own_ops", self.own_ops.into()),
            ("iostall.stall.shared_ops", self.shared_ops.into()),
        ];
        if let Some(w) = &self.worst {
            out.extend([
                ("iostall.stall.worst.latency_ns", w.latency_ns.into()),
                ("iostall.stall.worst.op", w.op.as_str().into()),
                ("iostall.stall.worst.file.path", w.path.clone().into()),
                ("iostall.stall.worst.process.command", w.comm.clone().into()),
            ]);
            if let Some(n) = w.shared_by {
                out.push(("iostall.stall.worst.shared_by_pods", n.into()));
            }
        }
        if let Some(d) = self.dominant() {
            out.extend([
                ("iostall.stall.cause", d.cause.as_str().into()),
                ("iostall.stall.cause_ns", d.ns.into()),
                ("iostall.stall.cause_text", d.text().into()),
            ]);
            if let Some(c) = d.ceiling_iops {
                out.push(("iostall.stall.cause_ceiling_iops", c.into()));
            }
        }
        if let Some(centi) = self.psi_some_max_centi {
            out.push((
                "iostall.psi.io.some_avg10_max",
                SpanValue::Double(f64::from(centi) / 100.0),
            ));
        }
        out
    }
}

/// One phase's line in a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// `pod sandbox`, `container create`…
    pub name: &'static str,
    /// The container it is about, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Its duration.
    pub duration_ns: u64,
    /// The slow IO inside it.
    pub io: IoTally,
}

/// A finished startup, for the console line and the JSON `startup` record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartupSummary {
    /// `startup`, so JSON lines tell it apart.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The startup's trace (hex in JSON).
    pub trace_id: TraceId,
    /// The root span's id.
    pub span_id: SpanId,
    /// `k8s.pod.uid`.
    #[serde(rename = "k8s.pod.uid")]
    pub pod_uid: String,
    /// `k8s.pod.name`.
    #[serde(rename = "k8s.pod.name")]
    pub pod_name: Option<String>,
    /// `k8s.namespace.name`.
    #[serde(rename = "k8s.namespace.name")]
    pub namespace: Option<String>,
    /// Which attempt (0 first).
    pub attempt: u32,
    /// Unix nanoseconds.
    pub start_unix_ns: u64,
    /// Unix nanoseconds.
    pub end_unix_ns: u64,
    /// Why it ended (`settled`, `container_failed`…).
    pub end_reason: &'static str,
    /// The failure, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Phases, in order.
    pub phases: Vec<PhaseSummary>,
    /// All slow IO inside.
    pub io: IoTally,
}

impl StartupSummary {
    /// Its duration.
    #[must_use]
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// The console line: `pod startup shop/web-0 22.4s (sandbox 18.9s, create 3.1s,
    /// start 0.4s) io stall 14.2s in 104 ops, worst 948ms fsync …/meta.db (containerd,
    /// shared by 5 pods)`.
    #[must_use]
    pub fn line(&self) -> String {
        let pod = match (&self.namespace, &self.pod_name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => self.pod_uid.clone(),
        };
        let mut out = format!("pod startup {pod} {}", secs(self.duration_ns()));
        if self.attempt > 0 {
            let _ = write!(out, " attempt {}", self.attempt);
        }
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| {
                let short = p
                    .name
                    .strip_prefix("pod ")
                    .or_else(|| p.name.strip_prefix("container "))
                    .unwrap_or(p.name);
                format!("{short} {}", secs(p.duration_ns))
            })
            .collect();
        if !phases.is_empty() {
            let _ = write!(out, " ({})", phases.join(", "));
        }
        let ops = u64::from(self.io.own_ops) + u64::from(self.io.shared_ops);
        let _ = write!(out, " io stall {} in {ops} ops", secs(self.io.total_ns()));
        if self.io.shared_ops > 0 {
            let _ = write!(
                out,
                " ({} own, {} shared)",
                secs(self.io.own_ns),
                secs(self.io.shared_ns)
            );
        }
        if let Some(w) = &self.io.worst {
            let _ = write!(
                out,
                ", worst {}ms {} {} ({}",
                w.latency_ns / 1_000_000,
                w.op.as_str(),
                w.path,
                w.comm
            );
            if let Some(n) = w.shared_by {
                let _ = write!(out, ", shared by {n} pod{}", if n == 1 { "" } else { "s" });
            }
            out.push(')');
        }
        if let Some(d) = self.io.dominant() {
            let _ = write!(out, "; {}", d.text());
        }
        match &self.error {
            Some(e) => {
                let _ = write!(out, " FAILED: {e}");
            }
            None => {
                let _ = write!(out, " [{}]", self.end_reason);
            }
        }
        out
    }
}

fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_highest_pressure_on_the_pods_io_goes_on_its_spans() {
        let mut phase = super::IoTally::default();
        phase.note_psi(Some(12.5));
        phase.note_psi(None);
        phase.note_psi(Some(3.0));
        let mut root = super::IoTally::default();
        assert!(
            !root
                .attributes()
                .iter()
                .any(|(k, _)| *k == "iostall.psi.io.some_avg10_max"),
            "no PSI seen, none said"
        );
        root.note_psi(Some(7.25));
        root.merge(&phase);
        let psi = root
            .attributes()
            .into_iter()
            .find(|(k, _)| *k == "iostall.psi.io.some_avg10_max")
            .map(|(_, v)| v);
        assert_eq!(psi, Some(super::SpanValue::Double(12.5)));
    }

    use super::*;

    #[test]
    fn the_line_reads_like_the_issue_says() {
        let mut io = IoTally::default();
        io.add(948_000_000, true, || WorstIo {
            latency_ns: 948_000_000,
            op: IoOp::Fsync,
            path: "/var/lib/containerd/meta.db".into(),
            comm: "containerd".into(),
            shared_by: Some(5),
        });
        io.add(10_000_000, false, || unreachable!("not the worst"));
        let summary = StartupSummary {
            kind: "startup",
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            pod_uid: "uid".into(),
            pod_name: Some("web-0".into()),
            namespace: Some("shop".into()),
            attempt: 0,
            start_unix_ns: 0,
            end_unix_ns: 22_400_000_000,
            end_reason: "settled",
            error: None,
            phases: vec![PhaseSummary {
                name: "pod sandbox",
                container: None,
                duration_ns: 18_900_000_000,
                io: io.clone(),
            }],
            io,
        };
        assert_eq!(
            summary.line(),
            "pod startup shop/web-0 22.4s (sandbox 18.9s) io stall 1.0s in 2 ops \
             (0.0s own, 0.9s shared), worst 948ms fsync /var/lib/containerd/meta.db \
             (containerd, shared by 5 pods) [settled]"
        );
        // What the IO waited for, when its context says.
        let mut with_cause = summary.clone();
        with_cause.io.add_why(
            948_000_000,
            &StallContext {
                disk: Some(crate::why::DiskContext {
                    device: "8:0".into(),
                    name: "sda".into(),
                    iops: 10.0,
                    bytes_per_second: 40960.0,
                    in_flight: 3,
                    await_ms: 290.0,
                    saturated: true,
                    ceiling_iops: Some(10.0),
                }),
                ..Default::default()
            },
        );
        assert!(
            with_cause.line().ends_with(
                "(containerd, shared by 5 pods); mostly: disk saturated at 10 IOPS [settled]"
            ),
            "{}",
            with_cause.line()
        );
        let attrs = with_cause.io.attributes();
        let get = |k: &str| attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("iostall.stall.cause"), Some("disk_saturated".into()));
        assert_eq!(get("iostall.stall.cause_ceiling_iops"), Some(10u64.into()));
        assert_eq!(get("iostall.stall.cause_ns"), Some(948_000_000u64.into()));
        assert_eq!(
            summary
                .io
                .attributes()
                .iter()
                .find(|(n, _)| *n == "iostall.stall.cause"),
            None
        );
        let json = serde_json::to_value(&with_cause).expect("json");
        assert_eq!(json["io"]["causes"]["ceiling_iops"], 10);
        let json = serde_json::to_value(&summary).expect("json");
        assert_eq!(json["type"], "startup");
        assert_eq!(json["k8s.pod.name"], "web-0");
        assert_eq!(json["io"]["shared_ops"], 1);
        assert_eq!(json["phases"][0]["name"], "pod sandbox");
    }
}
