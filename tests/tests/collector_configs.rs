//! The OpenTelemetry Collector configurations in `otel-config/` (`collector-jaeger.yaml`,
//! `collector-tempo.yaml`, `collector-vendor.yaml`) parse, name only components of the
//! contrib distribution, and wire iostall's OTLP the way the design needs:
//! `memory_limiter` first and `batch` last in every pipeline, `k8sattributes` keyed on
//! Resource attributes iostall really sends. The official `otelcol-contrib` binary
//! cannot be installed here (its `validate` command would be the real check), so the
//! component list is the distribution's manifest, kept in
//! `tests/data/otelcol-contrib-components.txt`.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use iostall::{
    config::ResourceConfig,
    correlate::{ResourceKey, Workload},
    enrich::metadata::PodLabels,
    otlp::resource::Resources,
};
use serde_yaml::Value;

/// The component kinds of a Collector configuration: top-level key → manifest kind.
const KINDS: [(&str, &str); 5] = [
    ("receivers", "receiver"),
    ("processors", "processor"),
    ("exporters", "exporter"),
    ("extensions", "extension"),
    ("connectors", "connector"),
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// kind → Go module names (last path element) of the contrib distribution.
fn contrib_components() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/otelcol-contrib-components.txt");
    let text = std::fs::read_to_string(&path).expect("the contrib component list");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (kind, module) = line.split_once(' ').expect("<kind> <module>");
        out.entry(kind.to_owned())
            .or_default()
            .insert(module.to_owned());
    }
    out
}

/// Whether a component type (`memory_limiter`, `otlphttp`…) is one of `modules` of
/// `kind`: a component's Go module is its type without underscores, followed by its kind
/// (`memorylimiterprocessor`), by `auth` and its kind (`oidcauthextension`), or by
/// nothing (`filestorage`, `receivercreator`).
fn is_contrib(modules: &BTreeSet<String>, kind: &str, ty: &str) -> bool {
    let bare = ty.replace('_', "");
    [
        bare.clone(),
        format!("{bare}{kind}"),
        format!("{bare}auth{kind}"),
    ]
    .iter()
    .any(|m| modules.contains(m))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what}: {s:?} is not a string"))
                .to_owned()
        })
        .collect()
}

/// The Resource attribute keys iostall puts on a pod's (and container's) Resource.
fn iostall_resource_keys() -> BTreeSet<String> {
    let workload = Workload {
        pod_uid: Some("uid".into()),
        pod_name: Some("web-0".into()),
        namespace: Some("shop".into()),
        container_id: Some("0123".into()),
        container_name: Some("app".into()),
        owners: Vec::new(),
        labels: PodLabels::default(),
    };
    let resources = Resources::new(
        &ResourceConfig {
            service_name: "iostall".into(),
            attributes: Vec::new(),
        },
        Some("node-a".into()),
    );
    resources
        .get(&ResourceKey::Workload(workload))
        .attributes
        .iter()
        .map(|kv| kv.key.clone())
        .collect()
}

/// Every problem found in the Collector configuration `text` (empty: it is fine).
fn problems(text: &str) -> Vec<String> {
    let contrib = contrib_components();
    let resource_keys = iostall_resource_keys();
    let mut bad = Vec::new();
    let config: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    // Components: each of a contrib type; every one used somewhere.
    let mut defined: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (section, kind) in KINDS {
        let Some(map) = config[section].as_mapping() else {
            continue;
        };
        for id in map.keys() {
            let id = id.as_str().unwrap_or_default().to_owned();
            let ty = id.split('/').next().unwrap_or_default();
            if !is_contrib(&contrib[kind], kind, ty) {
                bad.push(format!(
                    "{section}: {id}: no {kind} of type {ty:?} in otelcol-contrib"
                ));
            }
            defined.entry(section).or_default().insert(id);
        }
    }
    // `${scheme:…}` references: only the distribution's confmap providers.
    for (i, _) in text.match_indices("${") {
        let rest = &text[i + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        if let Some((scheme, _)) = rest[..end].split_once(':')
            && !contrib["provider"].contains(&format!("{scheme}provider"))
        {
            bad.push(format!("${{{scheme}:…}}: no such confmap provider"));
        }
    }
    let service = &config["service"];
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    if !service["extensions"].is_null() {
        for e in strings(&service["extensions"], "service.extensions") {
            used.entry("extensions").or_default().insert(e);
        }
    }
    let Some(pipelines) = service["pipelines"].as_mapping() else {
        bad.push("no service.pipelines".into());
        return bad;
    };
    if !pipelines.keys().any(|k| k.as_str() == Some("traces")) {
        bad.push("no traces pipeline".into());
    }
    for (name, p) in pipelines {
        let name = name.as_str().unwrap_or_default();
        let signal = name.split('/').next().unwrap_or_default();
        if !["traces", "logs", "metrics"].contains(&signal) {
            bad.push(format!("pipeline {name}: unknown signal"));
        }
        for section in ["receivers", "processors", "exporters"] {
            if p[section].is_null() {
                if section != "processors" {
                    bad.push(format!("pipeline {name}: no {section}"));
                }
                continue;
            }
            for id in strings(&p[section], section) {
                if !defined.get(section).is_some_and(|d| d.contains(&id)) {
                    bad.push(format!("pipeline {name}: {section} {id} is not defined"));
                }
                used.entry(section).or_default().insert(id);
            }
        }
        let procs = if p["processors"].is_null() {
            Vec::new()
        } else {
            strings(&p["processors"], "processors")
        };
        if procs.first().map(String::as_str) != Some("memory_limiter") {
            bad.push(format!("pipeline {name}: memory_limiter must come first"));
        }
        if procs.last().map(String::as_str) != Some("batch") {
            bad.push(format!("pipeline {name}: batch must come last"));
        }
        if !procs.iter().any(|p| p == "k8sattributes") {
            bad.push(format!("pipeline {name}: no k8sattributes"));
        }
    }
    for (section, ids) in &defined {
        for id in ids {
            if !used.get(section).is_some_and(|u| u.contains(id)) {
                bad.push(format!("{section}: {id} is defined but used nowhere"));
            }
        }
    }
    // k8sattributes: associate by Resource attributes iostall sends, never by the
    // connection (a DaemonSet's connection is iostall's own pod).
    let assoc = &config["processors"]["k8sattributes"]["pod_association"];
    match assoc.as_sequence() {
        None => bad.push("k8sattributes: no pod_association".into()),
        Some(rules) => {
            for rule in rules {
                for source in rule["sources"].as_sequence().into_iter().flatten() {
                    let from = source["from"].as_str().unwrap_or_default();
                    let key = source["name"].as_str().unwrap_or_default();
                    if from != "resource_attribute" {
                        bad.push(format!("k8sattributes: associates by {from:?}"));
                    } else if !resource_keys.contains(key) {
                        bad.push(format!(
                            "k8sattributes: associates by {key:?}, which iostall's Resource lacks"
                        ));
                    }
                }
            }
        }
    }
    let otlp = &config["receivers"]["otlp"]["protocols"];
    if otlp["grpc"].is_null() || otlp["http"].is_null() {
        bad.push("the otlp receiver must take both gRPC and HTTP".into());
    }
    bad
}

fn load(name: &str) -> (String, Value) {
    let text = std::fs::read_to_string(repo_path(&format!("otel-config/{name}")))
        .unwrap_or_else(|e| panic!("otel-config/{name}: {e}"));
    let value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    (text, value)
}

fn assert_fine(name: &str) -> Value {
    let (text, value) = load(name);
    let bad = problems(&text);
    assert!(bad.is_empty(), "otel-config/{name}:\n{}", bad.join("\n"));
    value
}

/// The exporters of the pipeline `pipeline`, with their configurations.
fn exporters_of<'a>(config: &'a Value, pipeline: &str) -> Vec<(String, &'a Value)> {
    strings(
        &config["service"]["pipelines"][pipeline]["exporters"],
        "exporters",
    )
    .into_iter()
    .map(|id| {
        let c = &config["exporters"][id.as_str()];
        (id, c)
    })
    .collect()
}

#[test]
fn jaeger_config_sends_traces_over_otlp() {
    let c = assert_fine("collector-jaeger.yaml");
    let traces = exporters_of(&c, "traces");
    assert_eq!(traces.len(), 1);
    assert!(traces[0].0.starts_with("otlp/"), "{traces:?}");
    assert!(
        traces[0].1["endpoint"]
            .as_str()
            .is_some_and(|e| e.contains("jaeger") && e.ends_with(":4317")),
        "{traces:?}"
    );
}

#[test]
fn tempo_config_sends_traces_to_tempo_and_logs_to_loki() {
    let c = assert_fine("collector-tempo.yaml");
    let traces = exporters_of(&c, "traces");
    assert!(
        traces[0].1["endpoint"]
            .as_str()
            .is_some_and(|e| e.contains("tempo")),
        "{traces:?}"
    );
    let logs = exporters_of(&c, "logs");
    assert!(logs[0].0.starts_with("otlphttp/"), "{logs:?}");
    assert!(
        logs[0].1["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with("/otlp")),
        "Loki takes OTLP under /otlp: {logs:?}"
    );
}

#[test]
fn vendor_config_takes_its_api_key_from_the_environment() {
    let c = assert_fine("collector-vendor.yaml");
    for signal in ["traces", "logs"] {
        let exporters = exporters_of(&c, signal);
        assert_eq!(exporters.len(), 1, "{signal}");
        let (id, e) = &exporters[0];
        assert!(id.starts_with("otlphttp/"), "{id}");
        assert!(
            e["endpoint"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://")),
            "{e:?}"
        );
        let headers = e["headers"].as_mapping().expect("headers");
        assert!(!headers.is_empty());
        for (k, v) in headers {
            assert!(
                v.as_str()
                    .is_some_and(|v| v.starts_with("${env:") && v.ends_with('}')),
                "header {k:?} must come from an environment variable, not the file: {v:?}"
            );
        }
    }
}

/// Every `collector-*.yaml` is one of the checked three (a new one gets a test too).
#[test]
fn every_collector_config_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(repo_path("otel-config"))
        .expect("otel-config/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("collector"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "collector-jaeger.yaml",
            "collector-tempo.yaml",
            "collector-vendor.yaml"
        ]
    );
}

/// The check itself catches what it is there for: a component that is not in contrib
/// (the `jaeger` exporter, removed in v0.85), an unknown provider, processors out of
/// order, and association by the connection or by an attribute iostall does not send.
#[test]
fn the_check_rejects_what_it_should() {
    let (text, _) = load("collector-jaeger.yaml");
    assert!(problems(&text).is_empty());
    let cases = [
        (
            text.replace("otlp/jaeger", "jaeger"),
            "no exporter of type \"jaeger\"",
        ),
        (
            text.replace(
                "[memory_limiter, k8sattributes, batch]",
                "[k8sattributes, batch, memory_limiter]",
            ),
            "memory_limiter must come first",
        ),
        (
            text.replace("name: container.id", "name: k8s.pod.ip"),
            "\"k8s.pod.ip\", which iostall's Resource lacks",
        ),
        (
            text.replace(
                "from: resource_attribute\n            name: k8s.pod.uid",
                "from: connection",
            ),
            "associates by \"connection\"",
        ),
        (
            text.replace("insecure: true", "insecure: ${vault:secret}"),
            "no such confmap provider",
        ),
        (
            text.replace("exporters: [otlp/jaeger]", "exporters: [otlp/tempo]"),
            "exporters otlp/tempo is not defined",
        ),
    ];
    for (broken, expected) in cases {
        assert_ne!(broken, text, "the case {expected:?} changed nothing");
        let bad = problems(&broken);
        assert!(
            bad.iter().any(|b| b.contains(expected)),
            "expected {expected:?} in {bad:?}"
        );
    }
}
