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
