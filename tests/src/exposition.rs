//! A strict parser of the two text formats `/metrics` serves: OpenMetrics 1.0.0 (with
//! exemplars) and Prometheus text 0.0.4. Strict where iostall could go wrong: family
//! names against their samples' suffixes (`_total` of counters), families not split or
//! repeated, label syntax and escapes, exemplars only where OpenMetrics allows them (and
//! never in 0.0.4), cumulative histogram buckets ending in `+Inf` equal to `_count`, the
//! `# EOF` terminator. Written here because no well-kept crate parses OpenMetrics
//! exemplars (`openmetrics-parser` is unmaintained; `prometheus-parse` reads 0.0.4 only).
use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result, bail, ensure};

/// Which format to hold the text to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Prometheus,
}

/// An exemplar: `# {labels} value [timestamp]` after a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Its labels (`trace_id`, `span_id`).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// Its timestamp (seconds), if given.
    pub timestamp: Option<f64>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`x_total`, `x_bucket`…).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// Its exemplar (OpenMetrics only).
    pub exemplar: Option<Exemplar>,
}

/// A metric family: its descriptor lines and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family name (`# TYPE` name).
    pub name: String,
    /// `counter`, `gauge`, `histogram`…
    pub kind: String,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    valid_name(s) && !s.contains(':')
}

fn parse_float(s: &str) -> Result<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            ensure!(
                s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)),
                "not a number: {s:?}"
            );
            s.parse().with_context(|| format!("not a number: {s:?}"))
        }
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut rest = s.strip_prefix('{').context("labels start with {")?;
    let mut labels = BTreeMap::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').context("label without =")?;
        let name = &rest[..eq];
        ensure!(valid_label_name(name), "bad label name {name:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .context("label value starts with \"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => bail!("bad escape in label value: {other:?}"),
                },
                Some((_, '\n')) | None => bail!("unterminated label value"),
                Some((_, c)) => value.push(c),
            }
        };
        ensure!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} repeated"
        );
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
            // OpenMetrics and 0.0.4 both allow a trailing comma only before `}`.
            ensure!(!rest.starts_with(','), "empty label");
        } else {
            ensure!(rest.starts_with('}'), "labels must be separated by ,");
        }
    }
}

/// The suffixes a family's samples may have.
fn suffixes(kind: &str, dialect: Dialect) -> &'static [&'static str] {
    match (kind, dialect) {
        ("counter", Dialect::OpenMetrics) => &["_total", "_created"],
        ("counter" | "gauge" | "untyped" | "unknown", _) => &[""],
        ("histogram", _) => &["_bucket", "_count", "_sum", "_created"],
        ("summary", _) => &["", "_count", "_sum", "_created"],
        _ => &[""],
    }
}

/// Parses `text` as `dialect`, strictly.
pub fn parse(text: &str, dialect: Dialect) -> Result<Vec<Family>> {
    let om = dialect == Dialect::OpenMetrics;
    let body = if om {
        text.strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .context("OpenMetrics must end with # EOF")?
    } else {
        ensure!(
            !text.lines().any(|l| l.trim() == "# EOF"),
            "# EOF in 0.0.4 text"
        );
        text
    };
    let mut families: Vec<Family> = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            ensure!(!om, "blank line in OpenMetrics ({})", at());
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            match keyword {
                "HELP" | "TYPE" | "UNIT" => {
                    ensure!(valid_name(name), "bad family name ({})", at());
                    let same = families.last().is_some_and(|f| f.name == name);
                    if !same {
                        ensure!(
                            seen.insert(name.to_owned()),
                            "family {name} split or repeated ({})",
                            at()
                        );
                        families.push(Family {
                            name: name.to_owned(),
                            kind: "unknown".into(),
                            samples: Vec::new(),
                        });
                    }
                    let family = families.last_mut().context("a family")?;
                    ensure!(
                        family.samples.is_empty(),
                        "descriptor after samples ({})",
                        at()
                    );
                    if keyword == "TYPE" {
                        let kinds: &[&str] = if om {
                            &[
                                "counter",
                                "gauge",
                                "histogram",
                                "gaugehistogram",
                                "stateset",
                                "info",
                                "summary",
                                "unknown",
                            ]
                        } else {
                            &["counter", "gauge", "histogram", "summary", "untyped"]
                        };
                        ensure!(kinds.contains(&rest), "bad type ({})", at());
                        family.kind = rest.to_owned();
                    }
                    if keyword == "HELP" && om {
                        // Only \\, \n and \" escapes; a bare " is not allowed.
                        let mut chars = rest.chars();
                        while let Some(c) = chars.next() {
                            match c {
                                '\\' => ensure!(
                                    matches!(chars.next(), Some('\\' | 'n' | '"')),
                                    "bad escape in HELP ({})",
                                    at()
                                ),
                                '"' => bail!("unescaped \" in HELP ({})", at()),
                                _ => {}
                            }
                        }
                    }
                    ensure!(keyword != "UNIT" || om, "UNIT in 0.0.4 ({})", at());
                }
                _ => ensure!(!om, "comment in OpenMetrics ({})", at()),
            }
            continue;
        }
        // A sample.
        let name_end = line.find(['{', ' ']).context(at())?;
        let name = &line[..name_end];
        ensure!(valid_name(name), "bad sample name ({})", at());
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).with_context(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest.strip_prefix(' ').context("space before the value")?;
        let (sample_part, exemplar_part) = match rest.split_once(" # ") {
            Some((s, e)) => (s, Some(e)),
            None => (rest, None),
        };
        let mut fields = sample_part.split(' ');
        let value = parse_float(fields.next().unwrap_or_default()).with_context(at)?;
        if let Some(ts) = fields.next() {
            parse_float(ts).with_context(at)?;
        }
        ensure!(fields.next().is_none(), "trailing fields ({})", at());
        let exemplar = match exemplar_part {
            None => None,
            Some(_) if !om => bail!("exemplar in 0.0.4 text ({})", at()),
            Some(e) => {
                let (labels, rest) = parse_labels(e).with_context(at)?;
                let len: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
                ensure!(len <= 128, "exemplar labels over 128 characters ({})", at());
                let rest = rest
                    .strip_prefix(' ')
                    .context("space before exemplar value")?;
                let mut fields = rest.split(' ');
                let value = parse_float(fields.next().unwrap_or_default()).with_context(at)?;
                let timestamp = fields
                    .next()
                    .map(parse_float)
                    .transpose()
                    .with_context(at)?;
                ensure!(
                    fields.next().is_none(),
                    "trailing exemplar fields ({})",
                    at()
                );
                Some(Exemplar {
                    labels,
                    value,
                    timestamp,
                })
            }
        };
        // Which family: the current one if the name fits it, else (no descriptor) a
        // family of its own.
        let fits = |f: &Family| {
            suffixes(&f.kind, dialect)
                .iter()
                .any(|s| name.strip_suffix(s) == Some(f.name.as_str()))
        };
        if !families.last().is_some_and(fits) {
            ensure!(
                seen.insert(name.to_owned()),
                "sample {name} outside its family ({})",
                at()
            );
            families.push(Family {
                name: name.to_owned(),
                kind: if om { "unknown" } else { "untyped" }.into(),
                samples: Vec::new(),
            });
        }
        let family = families.last_mut().context("a family")?;
        if exemplar.is_some() {
            let allowed = (family.kind == "counter" && name.ends_with("_total"))
                || (family.kind == "histogram" && name.ends_with("_bucket"));
            ensure!(allowed, "exemplar on {name} ({})", at());
        }
        if family.kind == "counter" {
            ensure!(value >= 0.0, "negative counter ({})", at());
        }
        family.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
            exemplar,
        });
    }
    for f in families.iter().filter(|f| f.kind == "histogram") {
        check_histogram(f)?;
    }
    Ok(families)
}

/// Buckets cumulative and ordered by `le`, ending in `+Inf` equal to `_count`;
/// exemplars inside their bucket.
fn check_histogram(f: &Family) -> Result<()> {
    let mut series: BTreeMap<Vec<(String, String)>, Vec<&Sample>> = BTreeMap::new();
    for s in &f.samples {
        let mut key: Vec<_> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        series.entry(key).or_default().push(s);
    }
    for (key, samples) in series {
        let buckets: Vec<_> = samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .collect();
        let (mut le_prev, mut n_prev) = (f64::NEG_INFINITY, 0.0);
        for b in &buckets {
            let le = parse_float(b.labels.get("le").context("bucket without le")?)?;
            ensure!(le > le_prev, "{} {key:?}: le not increasing", f.name);
            ensure!(
                b.value >= n_prev,
                "{} {key:?}: buckets not cumulative",
                f.name
            );
            if let Some(e) = &b.exemplar {
                ensure!(
                    e.value <= le && e.value > le_prev,
                    "{} {key:?}: exemplar {} outside bucket ({le_prev}, {le}]",
                    f.name,
                    e.value
                );
            }
            (le_prev, n_prev) = (le, b.value);
        }
        ensure!(
            le_prev == f64::INFINITY,
            "{} {key:?}: no +Inf bucket",
            f.name
        );
        let count = samples
            .iter()
            .find(|s| s.name.ends_with("_count"))
            .context("histogram without _count")?;
        ensure!(
            count.value == n_prev,
            "{} {key:?}: _count {} != +Inf bucket {n_prev}",
            f.name,
            count.value
        );
    }
    Ok(())
}

/// `GET path` from `addr` with `Accept: accept` (none when `None`): the response's
/// `Content-Type` and body; fails unless the status is 200.
pub fn scrape_as(
    addr: std::net::SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("no HTTP header/body separator")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    let ctype = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .context("no Content-Type")?;
    Ok((ctype, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_openmetrics_and_rejects_what_is_not() {
        let good = "# HELP a Help \\\"q\\\".\n# TYPE a counter\na_total{x=\"1\"} 3 # {trace_id=\"ab\"} 1 2.5\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1 # {span_id=\"cd\"} 0.5\nh_bucket{le=\"+Inf\"} 2\n\
                    h_sum 3\nh_count 2\n# EOF\n";
        let f = parse(good, Dialect::OpenMetrics).expect("valid");
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1].samples[0].exemplar.as_ref().map(|e| e.value),
            Some(0.5)
        );
        for (bad, why) in [
            (good.replace("# EOF\n", ""), "no EOF"),
            (
                good.replace("TYPE a counter", "TYPE a_total counter"),
                "counter named _total",
            ),
            (good.replace("h_count 2", "h_count 3"), "count != +Inf"),
            (good.replace("0.5\n", "1.5\n"), "exemplar outside bucket"),
            (
                good.replace("h_sum 3", "h_sum 3 # {a=\"b\"} 1"),
                "exemplar on _sum",
            ),
            (
                good.replace("Help \\\"q\\\"", "Help \"q\""),
                "bare quote in HELP",
            ),
            (good.replace("x=\"1\"", "x=\"1\",x=\"2\""), "repeated label"),
            (format!("{good}a_total 1\n"), "after EOF"),
            (
                good.replace("# TYPE h histogram\n", "# TYPE h histogram\n\n"),
                "blank line",
            ),
        ] {
            assert!(parse(&bad, Dialect::OpenMetrics).is_err(), "{why}: {bad}");
        }
        // 0.0.4: no exemplars, no EOF.
        let text = "# HELP a_total Help.\n# TYPE a_total counter\na_total 3\n";
        assert!(parse(text, Dialect::Prometheus).is_ok());
        assert!(parse(&format!("{text}# EOF\n"), Dialect::Prometheus).is_err());
        assert!(
            parse(
                "# TYPE a_total counter\na_total 3 # {x=\"y\"} 1\n",
                Dialect::Prometheus
            )
            .is_err()
        );
        assert!(
            parse(
                "# TYPE a_total counter\na_total 3\n# TYPE b gauge\nb 1\na_total 4\n",
                Dialect::Prometheus
            )
            .is_err(),
            "split family"
        );
    }
}
