//! The configuration files shipped in `otel-config/` stay valid for iostall (`deploy/`'s
//! are checked by `deploy_kustomize.rs`).
use std::path::Path;

use iostall::config::{CliOverrides, Compression, Config, FileConfig, OutputKind, Protocol};

#[test]
fn shipped_iostall_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config/iostall.yaml");
    let file = FileConfig::load(&path).expect("otel-config/iostall.yaml parses");
    let config = Config::resolve(&CliOverrides::default(), &file, &|_| None).expect("valid");
    assert_eq!(config.outputs, vec![OutputKind::Otlp]);
    assert_eq!(config.otlp.traces.protocol, Protocol::Grpc);
    assert_eq!(config.otlp.logs.compression, Compression::Gzip);
    assert_eq!(
        config.otlp.traces.endpoint,
        "http://otel-collector.observability.svc:4317"
    );
    assert_eq!(config.metrics_listen.map(|a| a.port()), Some(9464));
    let startup = config.startup.as_ref().expect("startup traces on");
    assert_eq!(startup.settle, std::time::Duration::from_millis(5000));
    assert_eq!(startup.max_open, 1024);
    assert_eq!(
        config.sources.unannounced_hold,
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(config.process_event_limit.burst, 64);
    // `kube.enabled: auto`: off without a cluster, on in a pod with the file's labels.
    assert!(matches!(
        config.kube,
        iostall::config::KubeSetting::Off { .. }
    ));
    let in_pod = |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_owned()),
        "NODE_NAME" => Some("node-a".to_owned()),
        _ => None,
    };
    let config = Config::resolve(&CliOverrides::default(), &file, &in_pod).expect("valid");
    let iostall::config::KubeSetting::On(kube) = &config.kube else {
        panic!("kube must be on in a pod: {:?}", config.kube);
    };
    assert_eq!(kube.node_name, "node-a");
    assert_eq!(kube.pod_labels, iostall::config::DEFAULT_POD_LABELS);
}
