//! End to end, as root, on a real slow ext4 (loop device, 10 write IOPS): iostall
//! attached with `-o otlp,json`, a workload doing write+fsync, and an in-process OTLP
//! receiver. Each fsync must arrive as a span whose times are the kernel's, with the
//! semantic-convention attributes, plus a log record with the same ids — over gRPC
//! (endpoint from `OTEL_EXPORTER_OTLP_*` env vars) and over HTTP/protobuf (endpoint from
//! the config file).
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use iostall_tests::{
    iostall_proc::Iostall,
    otlp_receiver::{Collected, OtlpReceiver, metric, metrics_addr_from_log, scrape, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value::Value},
    logs::v1::SeverityNumber,
    trace::v1::span::SpanKind,
};
use serde_json::Value as Json;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");
const COUNT: usize = 6;
/// iostall's threshold in these tests.
const THRESHOLD_NS: u64 = 20_000_000;

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs write-fsync in the throttled cgroup; returns its fsync JSON lines.
fn workload(fs: &SlowExt4, comm: &str, prefix: &str, count: usize) -> Vec<Json> {
    let out = Command::new(WORKLOAD)
        .arg("--prime-throttle")
        .arg("--cgroup")
        .arg(fs.cgroup_dir())
        .args(["--comm", comm, "write-fsync", "--dir"])
        .arg(fs.mount_point())
        .args([
            "--count",
            &count.to_string(),
            "--size",
            "4096",
            "--name-prefix",
            prefix,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run iostall-workload");
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["op"] == "fsync")
        .collect()
}

fn check(
    fs: &SlowExt4,
    mut rx: OtlpReceiver,
    iostall: Iostall,
    comm: &str,
    prefix: &str,
) -> Collected {
    let metrics_addr =
        metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address in log");
    assert_eq!(
        scrape(metrics_addr, "/healthz").expect("healthz").trim(),
        "ok"
    );
    let fsyncs = workload(fs, comm, prefix, COUNT);
    assert_eq!(fsyncs.len(), COUNT, "workload fsyncs: {fsyncs:?}");
    // blk-throttle may let an fsync through below the threshold now and then: expect a
    // span for every fsync the workload itself saw as clearly slow, and no more than
    // one per fsync.
    let slow: Vec<&Json> = fsyncs
        .iter()
        .filter(|w| {
            w["duration_ns"]
                .as_u64()
                .is_some_and(|d| d >= THRESHOLD_NS + 10_000_000)
        })
        .collect();
    assert!(slow.len() >= COUNT - 2, "throttling works: {fsyncs:?}");
    let data_name = format!("{prefix}data");
    let ours = |c: &Collected| {
        c.spans
            .iter()
            .filter(|(_, s)| {
                s.name == "ext4 fsync"
                    && str_attr(&s.attributes, "file.name").as_deref() == Some(&data_name)
            })
            .count()
    };
    let got = rx.collect_until(Duration::from_secs(15), |c| {
        ours(c) >= slow.len() && c.logs.len() >= c.spans.len()
    });
    let metrics = scrape(metrics_addr, "/metrics").expect("metrics");
    let finished = iostall.stop().expect("stop iostall");
    let json = finished.json().expect("json lines");
    let json_by_span: HashMap<String, &Json> = json
        .iter()
        .filter_map(|v| Some((v["span_id"].as_str()?.to_owned(), v)))
        .collect();

    let spans: Vec<_> = got
        .spans
        .iter()
        .filter(|(_, s)| str_attr(&s.attributes, "file.name").as_deref() == Some(&data_name))
        .filter(|(_, s)| s.name == "ext4 fsync")
        .collect();
    assert!(
        spans.len() >= slow.len() && spans.len() <= COUNT,
        "{} spans of {data_name} for {} slow fsyncs; stderr:\n{}",
        spans.len(),
        slow.len(),
        finished.stderr
    );
    let (maj, min) = fs.device();
    for w in &slow {
        let w_start = w["start_unix_ns"].as_u64().expect("start_unix_ns");
        let w_dur = w["duration_ns"].as_u64().expect("duration_ns");
        let (res, span) = spans
            .iter()
            .min_by_key(|(_, s)| s.start_time_unix_nano.abs_diff(w_start))
            .expect("a span");
        let skew = span.start_time_unix_nano.abs_diff(w_start);
        assert!(
            skew < 50_000_000,
            "span starts {skew} ns from the workload's fsync call"
        );
        let dur = span.end_time_unix_nano - span.start_time_unix_nano;
        assert!(dur >= 20_000_000, "a throttled fsync is slow, got {dur} ns");
        assert!(
            dur.abs_diff(w_dur) < 20_000_000,
            "span {dur} ns vs workload-measured {w_dur} ns"
        );
        // Same kernel latency as the JSON output (joined by span id).
        let j = json_by_span
            .get(&hex(&span.span_id))
            .expect("JSON line with the span's span_id");
        assert_eq!(j["trace_id"].as_str(), Some(hex(&span.trace_id).as_str()));
        let j_lat = j["latency_ns"].as_u64().expect("latency_ns");
        assert!(
            dur.abs_diff(j_lat) <= 1_000_000,
            "span {dur} vs json {j_lat}"
        );

        assert_eq!(span.kind, SpanKind::Internal as i32);
        assert!(span.status.is_none(), "fsync succeeded");
        let a = &span.attributes;
        let pid = w["pid"].as_i64().expect("pid");
        assert_eq!(attr(a, "process.pid"), Some(&Value::IntValue(pid)));
        assert_eq!(
            attr(a, "thread.id"),
            Some(&Value::IntValue(w["tid"].as_i64().expect("tid")))
        );
        assert_eq!(str_attr(a, "process.command").as_deref(), Some(comm));
        assert_eq!(
            str_attr(a, "iostall.io.operation").as_deref(),
            Some("fsync")
        );
        assert_eq!(
            str_attr(a, "iostall.file.device"),
            Some(format!("{maj}:{min}"))
        );
        assert_eq!(
            str_attr(a, "iostall.attach_mode").as_deref(),
            Some("tracepoint")
        );
        let inode = str_attr(a, "file.inode").expect("file.inode is a string");
        assert!(inode.parse::<u64>().is_ok_and(|i| i > 0), "{inode}");
        if let Some(path) = str_attr(a, "file.path") {
            assert_eq!(path, w["path"].as_str().expect("path"));
        }
        assert!(matches!(
            attr(a, "iostall.cgroup.id"),
            Some(Value::IntValue(_))
        ));
        assert!(matches!(
            attr(a, "iostall.io.latency_ms"),
            Some(Value::DoubleValue(_))
        ));

        // The log record of the same operation.
        let (_, log) = got
            .logs
            .iter()
            .find(|(_, l)| l.span_id == span.span_id)
            .expect("a log record with the span's span_id");
        assert_eq!(log.trace_id, span.trace_id);
        assert_eq!(log.event_name, "iostall.io.slow");
        assert_eq!(log.time_unix_nano, span.end_time_unix_nano);
        assert!(log.observed_time_unix_nano >= log.time_unix_nano);
        assert_eq!(
            log.severity_number,
            SeverityNumber::Info as i32,
            "~100 ms < 1 s"
        );
        assert_eq!(log.attributes, span.attributes);

        // The node's Resource.
        let r = &res.attributes;
        assert_eq!(str_attr(r, "service.name").as_deref(), Some("iostall-e2e"));
        assert_eq!(str_attr(r, "k8s.node.name").as_deref(), Some("e2e-node"));
        assert_eq!(str_attr(r, "os.type").as_deref(), Some("linux"));
        assert_eq!(
            str_attr(r, "deployment.environment.name").as_deref(),
            Some("test")
        );
        assert!(str_attr(r, "host.name").is_some());
    }
    // Spans of one process in one 10 s window share a trace.
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|(_, s)| s.trace_id.clone()).collect();
    assert!(
        traces.len() <= 2,
        "{} traces for {} fsyncs",
        traces.len(),
        COUNT
    );
    assert!(
        metric(&metrics, "iostall_records_total").is_some_and(|n| n >= slow.len() as u64),
        "{metrics}"
    );
    got
}

fn setup() -> SlowExt4 {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    SlowExt4::create(SlowExt4Options {
        size_mib: 64,
        write_iops: Some(10),
        read_iops: None,
    })
    .expect("slow ext4")
}

#[test]
fn fsync_spans_and_logs_over_grpc_configured_by_env() {
    let fs = setup();
    let rx = OtlpReceiver::grpc().expect("receiver");
    let comm = "otlp-e2e-grpc";
    let endpoint = rx.endpoint();
    let iostall = Iostall::start_with_env(
        &[
            "-o",
            "otlp,json",
            "--comm",
            comm,
            "-t",
            "20",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "iostall-e2e"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
            ("NODE_NAME", "e2e-node"),
        ],
    )
    .expect("start iostall");
    let got = check(&fs, rx, iostall, comm, "grpc-");
    assert!(got.requests.iter().all(|r| r.protocol == "grpc"));
}

#[test]
fn fsync_spans_and_logs_over_http_configured_by_file() {
    let fs = setup();
    let rx = OtlpReceiver::http().expect("receiver");
    let comm = "otlp-e2e-http";
    let mut file = tempfile::NamedTempFile::new().expect("tempfile");
    let yaml = format!(
        "threshold_ms: 20\ncomm: {comm}\noutputs: [otlp, json]\nmetrics:\n  listen: 127.0.0.1:0\n\
         resource:\n  service_name: iostall-e2e\n  attributes:\n    deployment.environment.name: test\n\
         otlp:\n  endpoint: {}\n  protocol: http/protobuf\n  compression: gzip\n  headers:\n    x-api-key: abc\n",
        rx.endpoint()
    );
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("write config");
    let path = file.path().to_str().expect("utf8").to_owned();
    // The env points elsewhere: the config file must win over OTEL_* variables.
    let iostall = Iostall::start_with_env(
        &["--config", &path],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("NODE_NAME", "e2e-node"),
        ],
    )
    .expect("start iostall");
    let got = check(&fs, rx, iostall, comm, "http-");
    for r in &got.requests {
        assert_eq!(r.protocol, "http/protobuf");
        assert!(r.gzip, "compression: gzip from the config file");
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "x-api-key" && v == "abc"),
            "headers from the config file: {:?}",
            r.headers
        );
    }
}
