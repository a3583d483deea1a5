//! Exemplars, end to end, as root: a real slow ext4 (loop device throttled to 10 write
//! IOPS by blk-throttle), iostall exporting over OTLP/gRPC to an in-process receiver, and
//! a workload doing write+fsync. `/metrics` scraped with the OpenMetrics content type
//! must parse strictly as OpenMetrics 1.0.0, and the fsync latency histogram of the
//! loop device must carry exemplars whose trace and span ids are spans the receiver got
//! (`ext4 fsync`, of that device, as long as the exemplar says). Scraped without
//! `Accept`, the same metrics must be valid Prometheus text 0.0.4 with no exemplar.
use std::{
    collections::{BTreeMap, HashMap},
    process::{Command, Stdio},
    time::Duration,
};

use iostall_tests::{
    exposition::{Dialect, Family, parse, scrape_as},
    iostall_proc::Iostall,
    otlp_receiver::{OtlpReceiver, metrics_addr_from_log, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");
const COUNT: usize = 5;
const HISTOGRAM: &str = "iostall_io_latency_seconds";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The histogram's samples for `device` and `op`.
fn series<'a>(
    families: &'a [Family],
    device: &str,
    op: &str,
) -> Vec<&'a iostall_tests::exposition::Sample> {
    families
        .iter()
        .find(|f| f.name == HISTOGRAM)
        .unwrap_or_else(|| panic!("{HISTOGRAM} served"))
        .samples
        .iter()
        .filter(|s| {
            s.labels.get("device").map(String::as_str) == Some(device)
                && s.labels.get("op").map(String::as_str) == Some(op)
        })
        .collect()
}

#[test]
fn fsync_latency_exemplars_point_at_exported_spans() {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    let fs = SlowExt4::create(SlowExt4Options {
        size_mib: 64,
        write_iops: Some(10),
        read_iops: None,
    })
    .expect("slow ext4");
    let (maj, min) = fs.device();
    let device = format!("{maj}:{min}");
    let mut rx = OtlpReceiver::grpc().expect("receiver");
    let comm = "exemplar-e2e";
    let iostall = Iostall::start_with_env(
        &[
            "-o",
            "otlp",
            "--comm",
            comm,
            "-t",
            "20",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .expect("start iostall");
    let addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address in log");

    let out = Command::new(WORKLOAD)
        .arg("--prime-throttle")
        .arg("--cgroup")
        .arg(fs.cgroup_dir())
        .args(["--comm", comm, "write-fsync", "--dir"])
        .arg(fs.mount_point())
        .args(["--count", &COUNT.to_string(), "--size", "4096"])
        .stdin(Stdio::null())
        .output()
        .expect("run iostall-workload");
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Slow fsyncs on the device are counted, and each bucket that has any names one.
    let fsync_spans = |c: &iostall_tests::otlp_receiver::Collected| {
        c.spans
            .iter()
            .filter(|(_, s)| {
                s.name == "ext4 fsync"
                    && str_attr(&s.attributes, "iostall.file.device").as_deref()
                        == Some(device.as_str())
            })
            .count()
    };
    rx.collect_until(Duration::from_secs(15), |c| fsync_spans(c) >= COUNT - 2);
    let (ctype, om) = scrape_as(
        addr,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .expect("OpenMetrics scrape");
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ctype}"
    );
    let families = parse(&om, Dialect::OpenMetrics)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:#}\n{om}"));
    // Every existing family is still there, counters under their OpenMetrics name.
    for name in [
        "iostall_records",
        "iostall_dropped_records",
        "iostall_pod_startup_duration_seconds",
    ] {
        assert!(families.iter().any(|f| f.name == name), "{name} in\n{om}");
    }
    let fsync = series(&families, &device, "fsync");
    let count = fsync
        .iter()
        .find(|s| s.name == format!("{HISTOGRAM}_count"))
        .map_or(0.0, |s| s.value);
    assert!(
        count >= (COUNT - 2) as f64,
        "{count} slow fsyncs counted on {device}:\n{om}"
    );
    // (trace id, span id) → (exemplar value, bucket le) of every exemplar.
    let exemplars: BTreeMap<(String, String), (f64, String)> = fsync
        .iter()
        .filter_map(|s| {
            let e = s.exemplar.as_ref()?;
            Some((
                (
                    e.labels.get("trace_id")?.clone(),
                    e.labels.get("span_id")?.clone(),
                ),
                (e.value, s.labels.get("le")?.clone()),
            ))
        })
        .collect();
    let buckets_with_counts = {
        let mut prev = 0.0;
        fsync
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .filter(|s| {
                let grew = s.value > prev;
                prev = s.value;
                grew
            })
            .count()
    };
    assert_eq!(
        exemplars.len(),
        buckets_with_counts,
        "one exemplar per non-empty bucket:\n{om}"
    );
    assert!(!exemplars.is_empty(), "exemplars on {device} fsync:\n{om}");
    for e in families
        .iter()
        .flat_map(|f| &f.samples)
        .filter_map(|s| s.exemplar.as_ref())
    {
        assert_eq!(
            e.labels.keys().map(String::as_str).collect::<Vec<_>>(),
            ["span_id", "trace_id"]
        );
        assert!(e.timestamp.is_some(), "exemplar timestamps");
    }

    // Each exemplar is a span the receiver got (maybe in a later export).
    let got = rx.collect_until(Duration::from_secs(15), |c| {
        exemplars.keys().all(|(t, s)| {
            c.spans
                .iter()
                .any(|(_, sp)| hex(&sp.trace_id) == *t && hex(&sp.span_id) == *s)
        })
    });
    let spans: HashMap<(String, String), _> = got
        .spans
        .iter()
        .map(|(_, s)| ((hex(&s.trace_id), hex(&s.span_id)), s))
        .collect();
    for ((trace, span), (value, le)) in &exemplars {
        let s = spans
            .get(&(trace.clone(), span.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "exemplar trace {trace} span {span} (le={le}) is no span the receiver got; \
                 stderr:\n{}",
                    iostall.stderr_text()
                )
            });
        assert_eq!(s.name, "ext4 fsync");
        assert_eq!(
            str_attr(&s.attributes, "iostall.file.device").as_deref(),
            Some(device.as_str())
        );
        let secs = (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e9;
        assert!(
            (secs - value).abs() < 1e-6,
            "span lasted {secs} s, its exemplar says {value}"
        );
        assert!(*value >= 0.02, "slow: {value}");
    }

    // Without Accept: Prometheus text 0.0.4, no exemplar, the same counts.
    let (ctype, text) = scrape_as(addr, "/metrics", None).expect("plain scrape");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let plain = parse(&text, Dialect::Prometheus)
        .unwrap_or_else(|e| panic!("not valid Prometheus text 0.0.4: {e:#}\n{text}"));
    assert!(!text.contains("trace_id"), "{text}");
    assert!(
        plain
            .iter()
            .flat_map(|f| &f.samples)
            .all(|s| s.exemplar.is_none())
    );
    assert!(
        plain
            .iter()
            .any(|f| f.name == "iostall_records_total" && f.kind == "counter")
    );
    let plain_count = series(&plain, &device, "fsync")
        .iter()
        .find(|s| s.name == format!("{HISTOGRAM}_count"))
        .map_or(0.0, |s| s.value);
    assert!(plain_count >= count, "{plain_count} < {count}");
    iostall.stop().expect("stop iostall");
}
