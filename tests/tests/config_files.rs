//! The configuration files shipped in `otel-config/` stay valid for iostall.
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
}
