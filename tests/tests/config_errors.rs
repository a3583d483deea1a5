//! A bad configuration stops iostall at start, with an error naming the field, before
//! anything is attached (no "attached in" line, no eBPF loaded).
use std::process::{Command, Stdio};

use iostall_tests::iostall_proc::{READY_MARKER, iostall_binary};

/// Runs iostall (10 s at most) and returns (success, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let bin = iostall_binary().expect("iostall binary");
    // Keep the metrics port free unless the test is about a config file (which then
    // fails before binding it; a CLI flag would override the file's metrics.listen).
    let metrics_off: &[&str] = if args.contains(&"--config") {
        &[]
    } else {
        &["--metrics-listen", "off"]
    };
    let mut child = Command::new(bin)
        .args(args)
        .args(["--duration", "2"])
        .args(metrics_off)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iostall");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_config_error(args: &[&str], env: &[(&str, &str)], want: &str) {
    let (ok, stderr) = run(args, env);
    assert!(!ok, "iostall {args:?} must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains("config error: ") && stderr.contains(want),
        "stderr must name {want:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains(READY_MARKER),
        "nothing may be attached on a config error:\n{stderr}"
    );
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("tempfile");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
    f
}

#[test]
fn malformed_endpoint_in_config_file() {
    let f = config_file("outputs: [otlp]\notlp:\n  endpoint: \"htp:/x\"\n");
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(
        &["--config", path],
        &[],
        "otlp.endpoint: \"htp:/x\" is not a valid http(s) URL",
    );
}

#[test]
fn unknown_key_in_config_file() {
    let f = config_file("threshold_ms: 5\notlp:\n  endpiont: http://x:4317\n");
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(&["--config", path], &[], "unknown field `endpiont`");
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let f = config_file("threshold_ms: [5\n");
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(&["--config", path], &[], path);
}

#[test]
fn missing_config_file() {
    assert_config_error(
        &["--config", "/nonexistent/iostall.yaml"],
        &[],
        "/nonexistent/iostall.yaml: cannot read",
    );
}

#[test]
fn malformed_header_env() {
    assert_config_error(
        &["-o", "otlp"],
        &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=1,novalue")],
        "OTEL_EXPORTER_OTLP_HEADERS: entry \"novalue\" is not key=value",
    );
}

#[test]
fn malformed_endpoint_env_and_flag() {
    assert_config_error(
        &["-o", "otlp"],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector")],
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: \"ftp://collector\" is not a valid http(s) URL",
    );
    assert_config_error(
        &["-o", "otlp", "--otlp-endpoint", "collector:4317"],
        &[],
        "--otlp-endpoint:",
    );
}

#[test]
fn bad_values_name_their_field() {
    let f = config_file("otlp:\n  timeout_ms: 0\n");
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(&["--config", path], &[], "otlp.timeout_ms: must be > 0");
    assert_config_error(
        &["-o", "otlp"],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        "OTEL_EXPORTER_OTLP_PROTOCOL: \"http/json\" is not a supported protocol",
    );
    assert_config_error(
        &["--threshold-ms=-3"],
        &[],
        "--threshold-ms: must be a number",
    );
    let f = config_file("metrics:\n  listen: everywhere\n");
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(&["--config", path], &[], "metrics.listen:");
}

#[test]
fn metrics_port_in_use_is_an_error_when_asked_for() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let f = config_file(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(
        &["--config", path],
        &[],
        &format!("metrics.listen: cannot listen on 127.0.0.1:{port}"),
    );
}

#[test]
fn kube_settings_name_their_field() {
    // On, with no API server configured or discoverable.
    assert_config_error(
        &["--kube", "on"],
        &[
            ("KUBERNETES_SERVICE_HOST", ""),
            ("KUBECONFIG", ""),
            ("HOME", "/nonexistent"),
        ],
        "--kube: is on, but there is no API server to talk to",
    );
    assert_config_error(
        &["--kube-api-server", "localhost:6443"],
        &[],
        "--kube-api-server: \"localhost:6443\" is not a valid http(s) URL",
    );
    let f = config_file(
        "kube:\n  enabled: on\n  api_server: http://127.0.0.1:1\n  node_name: Node_1\n",
    );
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(
        &["--config", path],
        &[],
        "kube.node_name: \"Node_1\" is not a valid node name",
    );
    // A kubeconfig that exists but is not one: read at start, before anything attaches.
    let bad = config_file("this: [is not a kubeconfig\n");
    let f = config_file(&format!(
        "kube:\n  enabled: on\n  node_name: node-a\n  kubeconfig: {}\n",
        bad.path().display()
    ));
    let path = f.path().to_str().expect("utf8 path");
    assert_config_error(
        &["--config", path],
        &[],
        "kube.kubeconfig: failed to load the kubeconfig",
    );
}

/// One malformed configuration: a config file's text (or `None`), extra flags and
/// variables, and what the error must name.
struct Malformed {
    file: Option<&'static str>,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    names: &'static str,
}

const fn file(text: &'static str, names: &'static str) -> Malformed {
    Malformed {
        file: Some(text),
        args: &[],
        env: &[],
        names,
    }
}

const fn env(env: &'static [(&'static str, &'static str)], names: &'static str) -> Malformed {
    Malformed {
        file: None,
        args: &["-o", "otlp"],
        env,
        names,
    }
}

const fn flags(args: &'static [&'static str], names: &'static str) -> Malformed {
    Malformed {
        file: None,
        args,
        env: &[],
        names,
    }
}

/// Every section, every kind of mistake: wrong type, out of range, unknown value,
/// unknown key, contradictory settings, files that are not there or not what they say.
const MALFORMED: &[Malformed] = &[
    file("threshold_ms: -1\n", "threshold_ms"),
    file("threshold_ms: fast\n", "threshold_ms"),
    file("threshold_ms: .nan\n", "threshold_ms"),
    file("treshold_ms: 5\n", "treshold_ms"),
    file("pid: -5\n", "pid"),
    file("pid: 99999999999\n", "pid"),
    file("comm: \"\"\n", "comm"),
    file("comm: a-comm-name-longer-than-fifteen\n", "comm"),
    file("duration_s: later\n", "duration_s"),
    file("attach: warp\n", "attach"),
    file("outputs: [carrier-pigeon]\n", "outputs"),
    file("outputs: 5\n", "outputs"),
    file("otlp: [1, 2]\n", "otlp"),
    file(
        "outputs: [otlp]\notlp:\n  endpoint: \"\"\n",
        "otlp.endpoint",
    ),
    file(
        "outputs: [otlp]\notlp:\n  protocol: http/json\n",
        "otlp.protocol",
    ),
    file(
        "outputs: [otlp]\notlp:\n  traces:\n    protocol: thrift\n",
        "otlp.traces.protocol",
    ),
    file(
        "outputs: [otlp]\notlp:\n  logs:\n    endpoint: \"udp://x\"\n",
        "otlp.logs.endpoint",
    ),
    file(
        "outputs: [otlp]\notlp:\n  headers: notamap\n",
        "otlp.headers",
    ),
    file(
        "outputs: [otlp]\notlp:\n  headers:\n    \"bad key\": v\n",
        "otlp.headers",
    ),
    file(
        "outputs: [otlp]\notlp:\n  headers:\n    k: \"a\\nb\"\n",
        "otlp.headers",
    ),
    file(
        "outputs: [otlp]\notlp:\n  timeout_ms: -1\n",
        "otlp.timeout_ms",
    ),
    file(
        "outputs: [otlp]\notlp:\n  logs:\n    timeout_ms: 0\n",
        "otlp.logs.timeout_ms",
    ),
    file(
        "outputs: [otlp]\notlp:\n  compression: zstd\n",
        "otlp.compression",
    ),
    file(
        "outputs: [otlp]\notlp:\n  certificate: /nonexistent/ca.pem\n",
        "otlp.certificate",
    ),
    file(
        "outputs: [otlp]\notlp:\n  certificate: /etc/hostname\n",
        "otlp.certificate",
    ),
    file(
        "outputs: [otlp]\notlp:\n  warn_threshold_ms: -5\n",
        "otlp.warn_threshold_ms",
    ),
    file(
        "outputs: [otlp]\notlp:\n  queue_size: 0\n",
        "otlp.queue_size",
    ),
    file(
        "outputs: [otlp]\notlp:\n  batch_size: 0\n",
        "otlp.batch_size",
    ),
    file(
        "outputs: [otlp]\notlp:\n  batch_timeout_ms: 0\n",
        "otlp.batch_timeout_ms",
    ),
    file(
        "outputs: [otlp]\notlp:\n  max_attempts: 0\n",
        "otlp.max_attempts",
    ),
    file(
        "outputs: [otlp]\notlp:\n  initial_backoff_ms: 10000\n  max_backoff_ms: 10\n",
        "otlp.initial_backoff_ms",
    ),
    file("resource:\n  service_name: \"\"\n", "resource.service_name"),
    file("resource:\n  attributes: [1, 2]\n", "resource.attributes"),
    file("metrics:\n  listen: 127.0.0.1:99999\n", "metrics.listen"),
    file(
        "runtime:\n  containerd_socket: \"\"\n",
        "runtime.containerd_socket",
    ),
    file(
        "runtime:\n  unannounced_hold_ms: -1\n",
        "runtime.unannounced_hold_ms",
    ),
    file(
        "runtime:\n  podman_socket: /run/podman.sock\n",
        "podman_socket",
    ),
    file("kube:\n  enabled: maybe\n", "kube.enabled"),
    file(
        "kube:\n  enabled: on\n  api_server: \"not a url\"\n",
        "kube.api_server",
    ),
    file(
        "kube:\n  api_server: http://127.0.0.1:1\n  kubeconfig: /root/.kube/config\n",
        "kube",
    ),
    file(
        "kube:\n  enabled: on\n  kubeconfig: /nonexistent/kubeconfig\n",
        "kube.kubeconfig",
    ),
    file("kube:\n  pod_labels: app\n", "kube.pod_labels"),
    file(
        "kube:\n  resolve_owners: \"yes please\"\n",
        "kube.resolve_owners",
    ),
    file(
        "lifecycle:\n  process_event_burst: -1\n",
        "lifecycle.process_event_burst",
    ),
    file(
        "lifecycle:\n  process_events_per_second: fast\n",
        "lifecycle.process_events_per_second",
    ),
    file("startup:\n  enabled: 3\n", "startup.enabled"),
    file("startup:\n  settle_ms: 10\n", "startup.settle_ms"),
    file("startup:\n  timeout_s: 0\n", "startup.timeout_s"),
    file("startup:\n  max_open: -1\n", "startup.max_open"),
    file("- a\n- b\n", "invalid type"),
    file(
        "outputs: [otlp]\notlp:\n  certificate: /dev/zero\n",
        "otlp.certificate",
    ),
    flags(&["--config", "/dev/zero"], "/dev/zero: cannot read"),
    file("threshold_ms: 5\nthreshold_ms: 6\n", "threshold_ms"),
    env(
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ),
    env(
        &[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ),
    env(
        &[("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "udp")],
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    ),
    env(
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent.pem")],
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ),
    env(
        &[("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
        "OTEL_RESOURCE_ATTRIBUTES",
    ),
    flags(&["--attach", "warp"], "--attach"),
    flags(&["-o", "table,carrier-pigeon"], "--output"),
    flags(&["--pid", "abc"], "--pid"),
    flags(&["--comm", "a-comm-name-longer-than-fifteen"], "--comm"),
    flags(&["--kube", "maybe"], "--kube"),
    flags(&["--otlp-header", "novalue", "-o", "otlp"], "--otlp-header"),
];

#[test]
fn each_malformed_config_names_its_field_and_attaches_nothing() {
    let mut wrong = Vec::new();
    for case in MALFORMED {
        let f = case.file.map(config_file);
        let mut args: Vec<&str> = Vec::new();
        if let Some(f) = &f {
            args.extend(["--config", f.path().to_str().expect("utf8 path")]);
        }
        args.extend(case.args);
        let (ok, stderr) = run(&args, case.env);
        let named = stderr.contains(case.names);
        if ok || !named || stderr.contains(READY_MARKER) || stderr.contains("panicked") {
            wrong.push(format!(
                "{:?} {:?} {:?}: success={ok}, names {:?}: {named}\n{stderr}",
                case.file, case.args, case.env, case.names
            ));
        }
    }
    assert!(MALFORMED.len() >= 50, "{} cases", MALFORMED.len());
    assert!(
        wrong.is_empty(),
        "{} of {} malformed configs were not refused naming their field:\n{}",
        wrong.len(),
        MALFORMED.len(),
        wrong.join("\n---\n")
    );
}
