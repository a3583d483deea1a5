//! The OTLP sink against a real in-process receiver (no kernel needed): gRPC and
//! HTTP/protobuf, gzip, headers, ids shared by spans and logs, and drop accounting
//! when the collector is down.
use std::{sync::Arc, time::Duration};

use iostall::{
    config::{CliOverrides, Config, FileConfig, OtlpConfig},
    correlate::Correlator,
    event::{AttachMode, FsKind, IoOp, IoRecord},
    metrics::{DropReason, Metrics},
    otlp::resource::Resources,
    sink::{Sink, otlp::OtlpSink},
};
use iostall_tests::otlp_receiver::{OtlpReceiver, str_attr};

fn record(i: u64) -> IoRecord {
    let start = 1_700_000_000_000_000_000 + i * 1_000_000;
    IoRecord {
        op: IoOp::Fsync,
        start_unix_ns: start,
        end_unix_ns: start + 20_000_000,
        latency_ns: 20_000_000,
        pid: 4242,
        tid: 4243,
        comm: "synthetic".into(),
        cgroup_id: 7,
        mntns: 4026531841,
        bytes: 0,
        offset: None,
        ret: 0,
        inode: 1000 + i,
        dev_major: 7,
        dev_minor: 3,
        file_name: format!("f{i}"),
        parents: vec!["dir".into()],
        path_complete: true,
        mount_point: Some("/mnt".into()),
        file_path: Some(format!("/mnt/dir/f{i}")),
        datasync: false,
        directory: false,
        via_overlayfs: false,
        attach_mode: AttachMode::Tracepoint,
        fs: FsKind::Ext4,
        why: Default::default(),
    }
}

fn config(yaml: &str, env: &[(&str, &str)]) -> Config {
    let file = FileConfig::parse("test.yaml".as_ref(), yaml).expect("yaml");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    Config::resolve(&CliOverrides::default(), &file, &|k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("config")
}

fn send(otlp: &OtlpConfig, n: u64) -> Arc<Metrics> {
    let metrics = Metrics::new();
    let resources = Resources::new(&config("", &[]).resource, Some("node-x".into()));
    let mut sink = OtlpSink::start(otlp, resources, metrics.clone()).expect("start");
    let corr = Correlator::new("test-host");
    for i in 0..n {
        sink.record(&corr.correlate(record(i))).expect("record");
    }
    sink.close();
    metrics
}

fn round_trip(mut rx: OtlpReceiver, otlp: &OtlpConfig, want_gzip: bool) {
    let n = 1200;
    let metrics = send(otlp, n);
    let got = rx.collect_until(Duration::from_secs(10), |c| {
        c.spans.len() as u64 >= n && c.logs.len() as u64 >= n
    });
    assert_eq!(got.spans.len() as u64, n);
    assert_eq!(got.logs.len() as u64, n);
    assert_eq!(metrics.exported_spans(), n);
    assert_eq!(metrics.exported_logs(), n);
    // Batches of 512: 3 requests per signal, each with one Resource (the node's).
    assert_eq!(
        got.resource_spans, 3,
        "one ResourceSpans per batch and resource"
    );
    for meta in &got.requests {
        assert_eq!(meta.protocol, rx.protocol());
        assert!(
            meta.headers
                .iter()
                .any(|(k, v)| k == "x-api-key" && v == "s3cr=t x"),
            "headers: {:?}",
            meta.headers
        );
        if rx.protocol() == "http/protobuf" {
            assert_eq!(meta.gzip, want_gzip);
        }
    }
    for ((res, span), (lres, log)) in got.spans.iter().zip(&got.logs) {
        assert_eq!(span.name, "ext4 fsync");
        assert_eq!(span.trace_id, log.trace_id);
        assert_eq!(span.span_id, log.span_id);
        assert_eq!(log.event_name, "iostall.io.slow");
        assert_eq!(
            str_attr(&res.attributes, "service.name").as_deref(),
            Some("iostall")
        );
        assert_eq!(
            str_attr(&lres.attributes, "k8s.node.name").as_deref(),
            Some("node-x")
        );
    }
}

#[test]
fn grpc_gzip_with_headers() {
    let rx = OtlpReceiver::grpc().expect("receiver");
    let c = config(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr%3Dt%20x"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    round_trip(rx, &c.otlp, true);
}

#[test]
fn http_protobuf_plain_and_gzip() {
    for gzip in [false, true] {
        let rx = OtlpReceiver::http().expect("receiver");
        let yaml = format!(
            "otlp:\n  endpoint: {}\n  protocol: http/protobuf\n  compression: {}\n  headers:\n    x-api-key: \"s3cr=t x\"\n",
            rx.endpoint(),
            if gzip { "gzip" } else { "none" }
        );
        let c = config(&yaml, &[]);
        assert!(c.otlp.traces.endpoint.ends_with("/v1/traces"));
        round_trip(rx, &c.otlp, gzip);
    }
}

#[test]
fn collector_down_counts_every_lost_record() {
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let c = config(
        &format!(
            "otlp:\n  endpoint: http://127.0.0.1:{port}\n  max_attempts: 2\n  initial_backoff_ms: 10\n  batch_timeout_ms: 50\n  queue_size: 100\n"
        ),
        &[],
    );
    let n = 1000;
    let metrics = send(&c.otlp, n);
    let lost =
        metrics.dropped(DropReason::OtlpQueueFull) + metrics.dropped(DropReason::OtlpExportFailed);
    assert_eq!(metrics.exported_spans(), 0);
    assert_eq!(
        lost, n,
        "every record is either exported or counted as dropped"
    );
    assert!(
        metrics.dropped(DropReason::OtlpQueueFull) > 0,
        "a 100-record queue must overflow"
    );
}

/// A collector that stays down: the first batch is retried, the next ones get one try
/// each (an outage must not keep a backlog of records queued, one batch retrying after
/// another), every record is still counted, and the first batch after the collector
/// comes back is exported.
#[test]
fn an_outage_retries_one_batch_then_tries_each_once() {
    use iostall_tests::otlp_receiver::metric;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let c = config(
        &format!(
            "otlp:\n  endpoint: http://127.0.0.1:{port}\n  max_attempts: 4\n  initial_backoff_ms: 50\n  \
             batch_size: 10\n  batch_timeout_ms: 50\n"
        ),
        &[],
    );
    let metrics = Metrics::new();
    let resources = Resources::new(&config("", &[]).resource, Some("node-x".into()));
    let mut sink = OtlpSink::start(&c.otlp, resources, metrics.clone()).expect("start");
    let corr = Correlator::new("test-host");
    let mut i = 0;
    let mut batch = |sink: &mut OtlpSink| {
        for _ in 0..10 {
            sink.record(&corr.correlate(record(i))).expect("record");
            i += 1;
        }
        // The first batch's retries (50+100+200 ms, +25% jitter) or one try, then some.
        std::thread::sleep(Duration::from_millis(800));
    };
    for _ in 0..3 {
        batch(&mut sink);
    }
    let text = metrics.render();
    let requests = |signal: &str, result: &str| {
        metric(
            &text,
            &format!(
                "iostall_otlp_export_requests_total{{signal=\"{signal}\",result=\"{result}\"}}"
            ),
        )
        .unwrap_or(0)
    };
    for signal in ["traces", "logs"] {
        assert_eq!(
            requests(signal, "retry"),
            3,
            "{signal}: only the first batch is retried\n{text}"
        );
        assert_eq!(
            requests(signal, "failed"),
            3,
            "{signal}: each batch fails once\n{text}"
        );
    }
    assert_eq!(metrics.dropped(DropReason::OtlpExportFailed), 30);
    // Back: the next batch goes through at its one try.
    let mut rx = OtlpReceiver::grpc_on(([127, 0, 0, 1], port).into()).expect("receiver");
    batch(&mut sink);
    sink.close();
    let got = rx.collect_until(Duration::from_secs(5), |c| c.spans.len() >= 10);
    assert_eq!(got.spans.len(), 10);
    assert_eq!(metrics.exported_spans(), 10);
    assert_eq!(metrics.dropped(DropReason::OtlpExportFailed), 30);
}

#[test]
fn close_does_not_hang_on_a_silent_collector() {
    // Accepts connections (kernel backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    for protocol in ["grpc", "http/protobuf"] {
        let c = config(
            &format!(
                "otlp:\n  endpoint: http://{addr}\n  protocol: {protocol}\n  timeout_ms: 60000\n  batch_timeout_ms: 50\n"
            ),
            &[],
        );
        let started = std::time::Instant::now();
        let n = 2000;
        let metrics = send(&c.otlp, n);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "{protocol}: close took {took:?}"
        );
        assert_eq!(metrics.exported_spans(), 0);
        assert_eq!(
            metrics.dropped(DropReason::OtlpQueueFull)
                + metrics.dropped(DropReason::OtlpExportFailed),
            n,
            "{protocol}"
        );
    }
}

#[test]
fn grpc_tls_with_custom_ca() {
    let ca = iostall_tests::otlp_receiver::TestCa::new().expect("test CA");
    let mut rx = OtlpReceiver::grpc_tls(&ca.server_cert_pem, &ca.server_key_pem).expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.ca_pem).expect("write CA");
    let endpoint = format!("https://127.0.0.1:{}", rx.addr().port());

    // Trusting the CA (OTEL_EXPORTER_OTLP_CERTIFICATE): delivered.
    let c = config(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ca_path.to_str().expect("utf8"),
            ),
        ],
    );
    let metrics = send(&c.otlp, 100);
    let got = rx.collect_until(Duration::from_secs(10), |c| c.spans.len() >= 100);
    assert_eq!(got.spans.len(), 100);
    assert_eq!(metrics.exported_logs(), 100);

    // Without it, the server's certificate is refused, and the loss is counted.
    let c = config(
        "otlp:\n  max_attempts: 1\n",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let metrics = send(&c.otlp, 10);
    assert_eq!(metrics.exported_spans(), 0);
    assert_eq!(metrics.dropped(DropReason::OtlpExportFailed), 10);
}

/// `OTEL_LOGS_EXPORTER=none` (a backend that takes traces only) and
/// `OTEL_TRACES_EXPORTER=none`, as the specification defines them: that signal is not
/// sent at all, and nothing is counted as lost; the other one arrives whole.
#[test]
fn a_signal_turned_off_is_not_sent_and_not_counted_lost() {
    for (off, spans_want, logs_want) in [
        ("OTEL_LOGS_EXPORTER", 30, 0),
        ("OTEL_TRACES_EXPORTER", 0, 30),
    ] {
        let mut rx = OtlpReceiver::grpc().expect("receiver");
        let endpoint = rx.endpoint();
        let c = config(
            "",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), (off, "none")],
        );
        let metrics = send(&c.otlp, 30);
        let got = rx.collect_until(Duration::from_secs(3), |_| false);
        assert_eq!(got.spans.len(), spans_want, "{off}=none");
        assert_eq!(got.logs.len(), logs_want, "{off}=none");
        assert_eq!(metrics.exported_spans(), spans_want as u64);
        assert_eq!(metrics.exported_logs(), logs_want as u64);
        assert_eq!(
            metrics.dropped(DropReason::OtlpExportFailed),
            0,
            "{off}=none is no loss"
        );
    }
}

/// A backend that takes traces but not logs (Arize Phoenix answers gRPC `Unimplemented`
/// and HTTP 405): one warning, then logs are no longer sent, spans keep arriving, and only
/// the first batch's log records are counted as lost.
#[test]
fn a_backend_without_logs_is_said_once_and_logs_stop() {
    iostall_tests::log_capture::capture_logs(tracing::Level::WARN);
    for (traces_only, answer) in [
        (
            OtlpReceiver::grpc_traces_only as fn() -> anyhow::Result<OtlpReceiver>,
            "gRPC Unimplemented",
        ),
        (OtlpReceiver::http_traces_only, "HTTP 405"),
    ] {
        let mut rx = traces_only().expect("receiver");
        let endpoint = rx.endpoint();
        let yaml = format!(
            "otlp:\n  endpoint: {endpoint}\n  protocol: {}\n  batch_size: 10\n",
            rx.protocol()
        );
        let c = config(&yaml, &[]);
        let metrics = send(&c.otlp, 50);
        let got = rx.collect_until(Duration::from_secs(5), |c| c.spans.len() >= 50);
        assert_eq!(
            got.spans.len(),
            50,
            "{}: spans keep arriving",
            rx.protocol()
        );
        assert_eq!(metrics.exported_spans(), 50);
        let refused = metrics.render();
        let failed_log_requests = iostall_tests::otlp_receiver::metric(
            &refused,
            "iostall_otlp_export_requests_total{signal=\"logs\",result=\"failed\"}",
        );
        assert_eq!(failed_log_requests, Some(1), "one logs request, then none");
        let warnings = iostall_tests::log_capture::log_lines(&["does not take logs", answer]);
        assert_eq!(warnings.len(), 1, "said once: {warnings:#?}");
        assert_eq!(
            metrics.dropped(DropReason::OtlpExportFailed),
            10,
            "the first batch's records only"
        );
    }
}
