//! The two text formats `/metrics` speaks, and which one a scraper asked for.
//!
//! [`crate::metrics`] writes Prometheus text 0.0.4. A scraper that sends
//! `Accept: application/openmetrics-text` (Prometheus does by default) gets OpenMetrics
//! 1.0.0 instead: the same families, with the differences the two formats have
//! ([`to_openmetrics`]), and exemplars — a trace and span id on a histogram bucket — which
//! only OpenMetrics can carry. That is how a latency spike in Grafana leads to the trace
//! of the fsync that made it ([`crate::io_latency`]).
//!
//! Rewriting the 0.0.4 text (rather than a second renderer, or the `prometheus-client`
//! crate) keeps every existing metric's code and name as it is: the differences are
//! line-local (a counter family's name on its `# HELP`/`# TYPE` lines, quotes in help
//! text, the `# EOF` terminator).
use std::{collections::HashSet, fmt::Write as _};

use crate::correlate::{SpanId, TraceId};

/// `Content-Type` of Prometheus text 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics text 1.0.0.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: no exemplars.
    Prometheus,
    /// OpenMetrics text 1.0.0: exemplars, `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The format to answer a request whose `Accept` header is `accept` with: OpenMetrics
    /// when it is acceptable (version 1.0.0, 0.0.1 or unspecified) and no less preferred
    /// than plain text (`text/plain`, `text/*`, `*/*` — named or not), else Prometheus
    /// text, which is also the answer to no header or nothing acceptable.
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Prometheus;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
                {
                    openmetrics = openmetrics.max(q);
                }
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// Its `Content-Type`.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_TEXT,
            Self::OpenMetrics => OPENMETRICS_TEXT,
        }
    }
}

/// Prometheus text 0.0.4 (as [`crate::metrics::Metrics`] writes it, exemplars included)
/// as OpenMetrics 1.0.0: a counter family is named without its `_total` suffix on its
/// `# HELP` and `# TYPE` lines (its samples keep it), `untyped` is `unknown`, quotes in
/// help text are escaped, and the exposition ends with `# EOF`.
///
/// Every counter served must end in `_total` (OpenMetrics requires it of the sample);
/// `counters_end_in_total` in [`crate::metrics`]'s tests holds every metric to it.
#[must_use]
pub fn to_openmetrics(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let family = |name: &str| -> String {
        if counters.contains(name) {
            name.strip_suffix("_total").unwrap_or(name).to_owned()
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {}", family(name), help.replace('"', "\\\""));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = if kind == "untyped" { "unknown" } else { kind };
            let _ = writeln!(out, "# TYPE {} {kind}", family(name));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// One observation kept beside a histogram bucket: the trace and span it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The trace of the span.
    pub trace_id: TraceId,
    /// The span (as exported over OTLP).
    pub span_id: SpanId,
    /// The observed value (seconds).
    pub value: f64,
    /// When it was observed (Unix nanoseconds): the operation's end.
    pub unix_ns: u64,
}

impl Exemplar {
    /// Appends ` # {trace_id="…",span_id="…"} VALUE TIMESTAMP` to a sample line (the
    /// OpenMetrics exemplar; 63 characters of labels, under the 128 allowed).
    pub fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}.{:03}",
            self.trace_id,
            self.span_id,
            self.value,
            self.unix_ns / 1_000_000_000,
            self.unix_ns % 1_000_000_000 / 1_000_000
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        use Format::{OpenMetrics as Om, Prometheus as Text};
        for (accept, want) in [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("application/openmetrics-text"), Om),
            (Some("application/openmetrics-text; version=1.0.0"), Om),
            (Some("application/openmetrics-text;version=0.0.1"), Om),
            (Some("Application/OpenMetrics-Text; Version=1.0.0"), Om),
            // A version we do not speak.
            (Some("application/openmetrics-text; version=2.0.0"), Text),
            // Prometheus 2.x's default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Om,
            ),
            // Plain text preferred.
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (Some("application/openmetrics-text;q=0"), Text),
            (Some("*/*, application/openmetrics-text"), Om),
            (Some("application/json"), Text),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn counters_lose_total_on_their_family_lines_only() {
        let text = "# HELP a_total Things \"quoted\".\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                    # HELP b_seconds Latency.\n# TYPE b_seconds histogram\n\
                    b_seconds_bucket{le=\"+Inf\"} 1 # {trace_id=\"ab\",span_id=\"cd\"} 0.5 1.000\n\
                    b_seconds_sum 0.5\nb_seconds_count 1\n\
                    # TYPE c_total gauge\nc_total 1\n# TYPE d untyped\nd 2\n";
        assert_eq!(
            to_openmetrics(text),
            "# HELP a Things \\\"quoted\\\".\n# TYPE a counter\na_total{x=\"1\"} 3\n\
             # HELP b_seconds Latency.\n# TYPE b_seconds histogram\n\
             b_seconds_bucket{le=\"+Inf\"} 1 # {trace_id=\"ab\",span_id=\"cd\"} 0.5 1.000\n\
             b_seconds_sum 0.5\nb_seconds_count 1\n\
             # TYPE c_total gauge\nc_total 1\n# TYPE d unknown\nd 2\n# EOF\n"
        );
    }

    #[test]
    fn exemplar_has_hex_ids_value_and_a_seconds_timestamp() {
        let mut out = String::from("x_bucket{le=\"1\"} 1");
        Exemplar {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01; 8]),
            value: 0.948,
            unix_ns: 1_700_000_000_123_456_789,
        }
        .write(&mut out);
        assert_eq!(
            out,
            format!(
                "x_bucket{{le=\"1\"}} 1 # {{trace_id=\"{}\",span_id=\"0101010101010101\"}} \
                 0.948 1700000000.123",
                "ab".repeat(16)
            )
        );
    }
}
