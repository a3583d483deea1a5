//! `deploy/` renders, for every overlay, into a DaemonSet that keeps its promises: no
//! privileged container; exactly the capabilities the image test proved enough; the
//! host mounts iostall reads, read-only; minimal RBAC; the OTLP endpoint and headers
//! from a ConfigMap and a Secret; node-critical priority on every node; `/healthz`
//! probes and scrape annotations on the metrics port; requests and limits; and an
//! iostall config that is valid with the environment the pod gets. Rendering is
//! `kubectl kustomize` (no API server is needed; none can run here).
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, ensure};
use iostall::config::{CliOverrides, Config, FileConfig, KubeSetting, OutputKind};
use iostall_tests::deploy::{
    self, OVERLAYS, PROVEN_CAPS, data_of, named, one, quantity, str_of, strings,
};
use serde_json::Value;

/// The runtime socket each overlay mounts: (path in the pod, path on the node).
fn runtime_socket(overlay: &str) -> (&'static str, &'static str) {
    match overlay {
        "k3s" => (
            "/run/containerd/containerd.sock",
            "/run/k3s/containerd/containerd.sock",
        ),
        "docker" => ("/var/run/docker.sock", "/var/run/docker.sock"),
        _ => (
            "/run/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ),
    }
}

/// The value after `flag` in `args`.
fn arg_after(args: &[&str], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|s| (*s).to_owned())
}

fn check_overlay(overlay: &str) -> Result<()> {
    let docs = deploy::render(overlay)?;
    let ds = one(&docs, "DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().context("containers")?;
    ensure!(containers.len() == 1, "one container");
    let c = &containers[0];

    // Not privileged, anywhere.
    for d in &docs {
        let spec = &d["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().into_iter().flatten() {
            ensure!(c["securityContext"]["privileged"] == false, "{c}");
            ensure!(c["securityContext"]["allowPrivilegeEscalation"] == false);
        }
        ensure!(spec["initContainers"].is_null(), "no init containers");
        ensure!(spec["hostNetwork"].is_null() || spec["hostNetwork"] == false);
        ensure!(spec["hostIPC"].is_null() || spec["hostIPC"] == false);
    }
    let sc = &c["securityContext"];
    ensure!(strings(&sc["capabilities"]["drop"], "drop")? == ["ALL"]);
    ensure!(
        strings(&sc["capabilities"]["add"], "add")? == PROVEN_CAPS,
        "capabilities.add {} is not the proven set {PROVEN_CAPS:?}",
        sc["capabilities"]["add"]
    );
    ensure!(sc["readOnlyRootFilesystem"] == true);
    ensure!(
        pod["hostPID"] == true,
        "hostPID: node pids and /proc/1/mountinfo"
    );
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");

    // Every node, node-critical.
    ensure!(pod["priorityClassName"] == "system-node-critical");
    let tolerations = pod["tolerations"].as_array().context("tolerations")?;
    ensure!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "no toleration of every taint: {tolerations:?}"
    );

    // Host mounts: present and read-only; the runtime socket is this overlay's.
    let volumes = pod["volumes"].as_array().context("volumes")?;
    let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
    let host_path_of = |mount_path: &str| -> Result<(String, bool)> {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .with_context(|| format!("nothing mounted at {mount_path}"))?;
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .with_context(|| format!("no volume for {mount_path}"))?;
        let path = str_of(&v["hostPath"]["path"], "hostPath.path")?.to_owned();
        Ok((path, m["readOnly"] == true))
    };
    let (socket_in_pod, socket_on_node) = runtime_socket(overlay);
    for (in_pod, on_node) in [
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        (socket_in_pod, socket_on_node),
    ] {
        ensure!(
            host_path_of(in_pod)? == (on_node.to_owned(), true),
            "{in_pod} must be {on_node} from the node, read-only"
        );
    }
    for m in mounts {
        ensure!(m["readOnly"] == true, "a writable mount: {m}");
    }
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    ensure!(
        host_paths.len() == 3,
        "only the three host paths: {host_paths:?}"
    );

    // RBAC: exactly what the pod index uses, bound to the DaemonSet's account, read-only.
    let sa = one(&docs, "ServiceAccount")?;
    ensure!(pod["serviceAccountName"] == sa["metadata"]["name"]);
    ensure!(
        docs.iter()
            .all(|d| d["kind"] != "Role" && d["kind"] != "RoleBinding"),
        "only the ClusterRole"
    );
    let role = one(&docs, "ClusterRole")?;
    let binding = one(&docs, "ClusterRoleBinding")?;
    ensure!(binding["roleRef"]["name"] == role["metadata"]["name"]);
    ensure!(binding["subjects"].as_array().map(Vec::len) == Some(1));
    ensure!(binding["subjects"][0]["name"] == sa["metadata"]["name"]);
    ensure!(binding["subjects"][0]["namespace"] == sa["metadata"]["namespace"]);
    let mut rules = Vec::new();
    for r in role["rules"].as_array().context("rules")? {
        let verbs = strings(&r["verbs"], "verbs")?.join(",");
        for group in strings(&r["apiGroups"], "apiGroups")? {
            for res in strings(&r["resources"], "resources")? {
                rules.push(format!("{group}/{res}: {verbs}"));
            }
        }
        ensure!(r["resourceNames"].is_null() && r["nonResourceURLs"].is_null());
    }
    rules.sort();
    ensure!(
        rules
            == [
                "/pods: list,watch",
                "apps/replicasets: get",
                "batch/jobs: get"
            ],
        "RBAC beyond the pod index's needs: {rules:?}"
    );

    // OTLP endpoint from a ConfigMap, headers from a Secret, both through envFrom.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut from_secret = Vec::new();
    for from in c["envFrom"].as_array().context("envFrom")? {
        if let Some(n) = from["configMapRef"]["name"].as_str() {
            env.extend(data_of(named(&docs, "ConfigMap", n)?)?);
        } else if let Some(n) = from["secretRef"]["name"].as_str() {
            let data = data_of(named(&docs, "Secret", n)?)?;
            from_secret.extend(data.keys().cloned());
            env.extend(data);
        }
    }
    ensure!(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .is_some_and(|e| e.starts_with("http")),
        "no OTLP endpoint from the ConfigMap: {env:?}"
    );
    ensure!(
        from_secret == ["OTEL_EXPORTER_OTLP_HEADERS"],
        "the headers come from the Secret: {from_secret:?}"
    );
    let mut node_name = None;
    for e in c["env"].as_array().context("env")? {
        let name = str_of(&e["name"], "env name")?;
        ensure!(
            !name.starts_with("OTEL_"),
            "{name}: OTLP settings come from envFrom"
        );
        if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            node_name = Some(name);
        }
    }
    ensure!(
        node_name == Some("NODE_NAME"),
        "NODE_NAME from the downward API"
    );

    // The config it runs with: --config in the ConfigMap volume, its flags, the env.
    let args = strings(&c["args"], "args")?;
    let config_path = arg_after(&args, "--config").context("--config PATH")?;
    let config_dir = Path::new(&config_path).parent().context("config dir")?;
    let config_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == config_dir.to_string_lossy().as_ref())
        .context("the config volume's mount")?;
    let config_volume = volumes
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .context("the config volume")?;
    let cm = named(
        &docs,
        "ConfigMap",
        str_of(&config_volume["configMap"]["name"], "configMap name")?,
    )?;
    let key = Path::new(&config_path)
        .file_name()
        .and_then(|n| n.to_str())
        .context("config file name")?;
    let embedded = data_of(cm)?
        .remove(key)
        .with_context(|| format!("no {key} in the ConfigMap"))?;
    let file = FileConfig::parse(Path::new("iostall.yaml"), &embedded)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    env.insert("NODE_NAME".into(), "node-a".into());
    env.insert("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into());
    let cli = CliOverrides {
        containerd_socket: arg_after(&args, "--containerd-socket"),
        docker_socket: arg_after(&args, "--docker-socket"),
        ..CliOverrides::default()
    };
    let config = Config::resolve(&cli, &file, &|k| env.get(k).cloned())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let KubeSetting::On(kube) = &config.kube else {
        anyhow::bail!("kube enrichment must be on: {:?}", config.kube);
    };
    ensure!(kube.node_name == "node-a");
    ensure!(config.outputs == vec![OutputKind::Otlp]);
    ensure!(Some(&config.otlp.traces.endpoint) == env.get("OTEL_EXPORTER_OTLP_ENDPOINT"));
    // The one runtime it reads is the socket this overlay mounts.
    let sockets: Vec<String> = [
        &config.sources.containerd_socket,
        &config.sources.docker_socket,
    ]
    .into_iter()
    .flatten()
    .map(|p| p.to_string_lossy().into_owned())
    .collect();
    ensure!(sockets == [socket_in_pod], "runtime sockets {sockets:?}");

    // Metrics: port, probes and scrape annotations agree with the config.
    let port = config.metrics_listen.context("metrics on")?.port();
    let ports = c["ports"].as_array().context("ports")?;
    let metrics_port = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
        .context("the metrics port")?;
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        ensure!(get["path"] == "/healthz", "{probe}: {get}");
        ensure!(
            get["port"] == metrics_port["name"] || get["port"].as_u64() == Some(port.into()),
            "{probe} port: {get}"
        );
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    ensure!(annotations["prometheus.io/scrape"] == "true");
    ensure!(annotations["prometheus.io/port"] == port.to_string().as_str());
    ensure!(annotations["prometheus.io/path"] == "/metrics");

    // Requests and limits, limits at or above requests.
    let res = &c["resources"];
    for what in ["cpu", "memory"] {
        let request = quantity(str_of(&res["requests"][what], what)?)?;
        let limit = quantity(str_of(&res["limits"][what], what)?)?;
        ensure!(request > 0 && limit >= request, "{what}: {res}");
    }
    Ok(())
}

#[test]
fn every_overlay_renders_a_least_privilege_daemonset() -> Result<()> {
    for overlay in OVERLAYS {
        check_overlay(overlay).with_context(|| format!("overlay {overlay}"))?;
    }
    Ok(())
}

/// The overlays differ from the base only in the runtime they read.
#[test]
fn overlays_differ_only_in_the_runtime_socket() -> Result<()> {
    let strip = |mut docs: Vec<Value>| {
        for d in &mut docs {
            if d["kind"] == "DaemonSet" {
                let pod = &mut d["spec"]["template"]["spec"];
                pod["volumes"] = Value::Null;
                pod["containers"][0]["volumeMounts"] = Value::Null;
                pod["containers"][0]["args"] = Value::Null;
            }
        }
        docs
    };
    let base = strip(deploy::render("containerd")?);
    for overlay in OVERLAYS {
        ensure!(
            strip(deploy::render(overlay)?) == base,
            "{overlay} changes more than the runtime's volume, mount and flags"
        );
    }
    Ok(())
}
