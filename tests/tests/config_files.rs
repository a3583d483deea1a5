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
    let startup = config.startup.as_ref().expect("startup traces on");
    assert_eq!(startup.settle, std::time::Duration::from_millis(5000));
    assert_eq!(startup.max_open, 1024);
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

/// The one document of `kind` in a manifest.
fn doc<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/iostall.yaml");
    found[0]
}

fn str_of<'a>(v: &'a serde_yaml::Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

/// The shipped DaemonSet manifest cannot rot: every document parses; the ConfigMap's
/// `iostall.yaml` is accepted by iostall with the environment the DaemonSet gives it
/// (Kubernetes API enrichment on, node name from the downward API); and the DaemonSet,
/// RBAC and config agree on names, paths and ports. (Parsing only: no cluster can run
/// here to apply it.)
#[test]
fn deploy_manifest_is_consistent_and_its_config_valid() {
    use iostall::config::{KubeClientSource, KubeSetting};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/iostall.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/iostall.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{d:?}"
        );
    }

    // RBAC: exactly what the pod index uses, bound to the DaemonSet's account.
    let ds = doc(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let sa = doc(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let binding = doc(&docs, "ClusterRoleBinding");
    let role = doc(&docs, "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
    let mut rules: Vec<String> = role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let group = str_of(&r["apiGroups"][0], "apiGroup").to_owned();
            let verbs: Vec<String> = r["verbs"]
                .as_sequence()
                .expect("verbs")
                .iter()
                .map(|v| str_of(v, "verb").to_owned())
                .collect();
            r["resources"]
                .as_sequence()
                .expect("resources")
                .iter()
                .map(move |res| format!("{group}/{}: {}", str_of(res, "resource"), verbs.join(",")))
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            "/pods: list,watch",
            "apps/replicasets: get",
            "batch/jobs: get"
        ]
    );

    // The container: least privilege, node name from the downward API.
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_ne!(sc["privileged"], serde_yaml::Value::Bool(true));
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| str_of(c, "capability"))
        .collect();
    assert!(
        caps.contains(&"BPF") && caps.contains(&"PERFMON"),
        "{caps:?}"
    );
    assert_eq!(pod["hostPID"], serde_yaml::Value::Bool(true));
    let env: Vec<(String, &serde_yaml::Value)> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| (str_of(&e["name"], "env name").to_owned(), e))
        .collect();
    let env_entry = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("env {name}"))
    };
    assert_eq!(
        env_entry("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let otlp_endpoint = str_of(
        &env_entry("OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
        "endpoint",
    );

    // --config points into the ConfigMap's volume, at its key.
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config PATH");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let config_mount = mount_of(config_path);
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .expect("the config volume");
    let cm = doc(&docs, "ConfigMap");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let key = Path::new(config_path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let embedded = str_of(&cm["data"][key], "ConfigMap data");

    // The embedded config, resolved with the environment the DaemonSet gives it.
    let file = FileConfig::parse(Path::new("deploy/iostall.yaml#iostall.yaml"), embedded)
        .expect("the ConfigMap's iostall.yaml parses");
    let vars = [
        ("NODE_NAME", "node-a"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint),
    ];
    let env_fn = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    };
    let config = Config::resolve(&CliOverrides::default(), &file, &env_fn).expect("valid config");
    let KubeSetting::On(kube) = &config.kube else {
        panic!(
            "kube enrichment must be on in the DaemonSet: {:?}",
            config.kube
        );
    };
    assert_eq!(kube.node_name, "node-a");
    assert_eq!(kube.client, KubeClientSource::Infer);
    assert!(!kube.pod_labels.is_empty());
    assert_eq!(config.outputs, vec![OutputKind::Otlp]);
    assert_eq!(config.otlp.traces.endpoint, otlp_endpoint);
    // The runtime socket it uses is mounted; the probes and port are the metrics'.
    let socket = config
        .sources
        .containerd_socket
        .as_ref()
        .expect("containerd socket");
    mount_of(&socket.to_string_lossy());
    let port = config.metrics_listen.expect("metrics on").port();
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64(),
        Some(u64::from(port))
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["port"].as_u64(),
        Some(u64::from(port))
    );
    for path in ["/sys/kernel/tracing", "/sys/fs/cgroup"] {
        mount_of(path);
    }
}
