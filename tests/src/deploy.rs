//! `deploy/` as Kubernetes would see it: each kustomize overlay rendered with
//! `kubectl kustomize`, and the DaemonSet's pod turned into the CRI requests a kubelet
//! would send for it, so the image test runs exactly what the manifest grants.
//!
//! [`PodRun::from_manifest`] maps every field it meets and refuses the ones it does not
//! know: a new security setting in the manifest fails the image test until the mapping
//! (and so the proof) covers it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::{self as cri, security_profile::ProfileType};
use serde_json::Value;

/// The overlays under `deploy/overlays/`.
pub const OVERLAYS: &[&str] = &["containerd", "k3s", "docker"];

/// The capabilities `tests/tests/container_image.rs` proves enough (iostall attaches and
/// reports) and each necessary (without it iostall stops): every overlay adds exactly
/// these, after dropping `ALL`.
pub const PROVEN_CAPS: &[&str] = &["BPF", "PERFMON"];

/// Where `kubectl` is expected.
pub const KUBECTL: &str = "kubectl";

/// The repository's `deploy/` directory.
#[must_use]
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Renders `deploy/overlays/<overlay>` with `kubectl kustomize`; one value per document.
pub fn render(overlay: &str) -> Result<Vec<Value>> {
    let dir = deploy_dir().join("overlays").join(overlay);
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .context(
            "failed to run `kubectl` (scripts/setup.sh installs it; `kubectl kustomize` \
             renders the overlays)",
        )?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
    parse_documents(&text)
}

/// Parses a multi-document YAML stream into JSON values (empty documents dropped).
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let yaml: serde_yaml::Value =
            serde::Deserialize::deserialize(d).context("a YAML document")?;
        if yaml.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(yaml).context("YAML to JSON")?);
    }
    Ok(docs)
}

/// The one document of `kind` in `docs`.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    ensure!(found.len() == 1, "{} documents of kind {kind}", found.len());
    Ok(found[0])
}

/// The document of `kind` whose name starts with `prefix` (generated names carry a
/// hash suffix).
pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} named {name}"))
}

/// `s` as a string or an error naming `what`.
pub fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what} is not a string: {v}"))
}

/// The strings of a sequence (`[]` when absent).
pub fn strings<'a>(v: &'a Value, what: &str) -> Result<Vec<&'a str>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(|i| str_of(i, what)).collect(),
        other => bail!("{what} is not a list: {other}"),
    }
}

/// The data of a ConfigMap, or of a Secret (base64-decoded).
pub fn data_of(doc: &Value) -> Result<BTreeMap<String, String>> {
    let secret = doc["kind"] == "Secret";
    let mut out = BTreeMap::new();
    if let Some(map) = doc["data"].as_object() {
        for (k, v) in map {
            let text = str_of(v, k)?;
            let value = if secret {
                String::from_utf8(base64_decode(text)?).context("secret value is not UTF-8")?
            } else {
                text.to_owned()
            };
            out.insert(k.clone(), value);
        }
    }
    Ok(out)
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let v = ALPHABET
            .iter()
            .position(|a| *a == b)
            .with_context(|| format!("not base64: {text:?}"))?;
        acc = (acc << 6) | u32::try_from(v).context("base64 digit")?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).context("base64 byte")?);
        }
    }
    Ok(out)
}

/// Kubernetes memory/CPU quantity → bytes or millicores (the suffixes the manifest
/// uses: `Mi`, `Gi`, `m`, plain).
pub fn quantity(q: &str) -> Result<u64> {
    let (num, mult) = if let Some(n) = q.strip_suffix("Gi") {
        (n, 1024 * 1024 * 1024)
    } else if let Some(n) = q.strip_suffix("Mi") {
        (n, 1024 * 1024)
    } else if let Some(n) = q.strip_suffix("Ki") {
        (n, 1024)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1)
    } else {
        (q, 1000)
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("unsupported quantity {q:?}"))?;
    Ok(n * mult)
}

/// What the kubelet asks of the runtime for the DaemonSet's pod, as CRI settings: the
/// pod's namespaces and the container's security context, mounts, limits, environment
/// and arguments.
#[derive(Debug, Clone, Default)]
pub struct PodRun {
    /// The pid namespace of the node (`hostPID`).
    pub host_pid: bool,
    /// The container's security context.
    pub security: cri::LinuxContainerSecurityContext,
    /// Memory and CPU limits (and CPU shares from the request), as the kubelet sets them.
    pub resources: cri::LinuxContainerResources,
    /// Bind mounts (host paths, and the ConfigMap written to a directory).
    pub mounts: Vec<cri::Mount>,
    /// The environment.
    pub envs: Vec<(String, String)>,
    /// The container's arguments (the image's entrypoint runs them).
    pub args: Vec<String>,
    /// The capabilities added, in the manifest's order (after any removal).
    pub caps_added: Vec<String>,
}

/// What the test supplies that a node would: where the host paths are, the node name,
/// and the values of the ConfigMap/Secret variables it replaces.
#[derive(Debug, Clone, Default)]
pub struct NodeSide {
    /// Volume name → host path, replacing the manifest's `hostPath.path`.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Where the ConfigMap volumes' files are written (one sub-directory per volume).
    pub scratch: PathBuf,
    /// `spec.nodeName` for the downward API.
    pub node_name: String,
    /// Environment values replacing those of the manifest's ConfigMaps/Secrets.
    pub env_overrides: BTreeMap<String, String>,
    /// A capability to leave out of `capabilities.add` (the least-privilege proof).
    pub without_cap: Option<String>,
}

/// The paths the kubelet masks and makes read-only in every unprivileged container
/// (its default `procMount`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

impl PodRun {
    /// Maps the DaemonSet of `docs` to CRI settings, as the kubelet does. Fails on a
    /// field it cannot map, so the container never runs with less (or more) than the
    /// manifest says.
    pub fn from_manifest(docs: &[Value], node: &NodeSide) -> Result<Self> {
        let ds = one(docs, "DaemonSet")?;
        let pod = &ds["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().context("containers")?;
        ensure!(containers.len() == 1, "one container expected");
        let c = &containers[0];
        let mut run = PodRun::default();

        // Pod level.
        let mut seccomp = None;
        for (key, value) in pod.as_object().context("pod spec")? {
            match key.as_str() {
                "hostPID" => run.host_pid = value == true,
                "securityContext" => {
                    for (k, v) in value.as_object().context("pod securityContext")? {
                        match (k.as_str(), v["type"].as_str()) {
                            ("seccompProfile", Some("RuntimeDefault")) => {
                                seccomp = Some(ProfileType::RuntimeDefault);
                            }
                            ("seccompProfile", Some("Unconfined")) => {
                                seccomp = Some(ProfileType::Unconfined);
                            }
                            _ => bail!("pod securityContext.{k} = {v} is not mapped"),
                        }
                    }
                }
                "serviceAccountName" | "priorityClassName" | "tolerations" | "containers"
                | "volumes" => {}
                other => bail!("pod spec field {other} is not mapped"),
            }
        }
        // Kubernetes' default without a profile is Unconfined.
        let seccomp = seccomp.unwrap_or(ProfileType::Unconfined);

        // Container security context.
        let mut security = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: seccomp as i32,
                ..cri::SecurityProfile::default()
            }),
            masked_paths: MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            ..cri::LinuxContainerSecurityContext::default()
        };
        let sc = &c["securityContext"];
        for (key, value) in sc.as_object().context("container securityContext")? {
            match key.as_str() {
                "privileged" => ensure!(value == false, "privileged must be false"),
                "runAsUser" => {
                    security.run_as_user = Some(cri::Int64Value {
                        value: value.as_i64().context("runAsUser")?,
                    });
                }
                "allowPrivilegeEscalation" => security.no_new_privs = value == false,
                "readOnlyRootFilesystem" => security.readonly_rootfs = value == true,
                "capabilities" => {
                    let mut caps = cri::Capability {
                        drop_capabilities: strings(&value["drop"], "capabilities.drop")?
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                        ..cri::Capability::default()
                    };
                    for cap in strings(&value["add"], "capabilities.add")? {
                        if node.without_cap.as_deref() == Some(cap) {
                            continue;
                        }
                        caps.add_capabilities.push(cap.to_owned());
                        run.caps_added.push(cap.to_owned());
                    }
                    security.capabilities = Some(caps);
                }
                other => bail!("container securityContext.{other} is not mapped"),
            }
        }
        ensure!(
            !sc["capabilities"]["drop"].is_null(),
            "capabilities.drop is not set: the runtime's default set would be kept"
        );
        run.security = security;

        // Limits as the kubelet turns them into cgroup settings.
        let res = &c["resources"];
        if let Some(mem) = res["limits"]["memory"].as_str() {
            run.resources.memory_limit_in_bytes =
                i64::try_from(quantity(mem)?).context("memory limit")?;
        }
        if let Some(cpu) = res["limits"]["cpu"].as_str() {
            run.resources.cpu_period = 100_000;
            run.resources.cpu_quota = i64::try_from(quantity(cpu)? * 100).context("cpu")?;
        }
        if let Some(cpu) = res["requests"]["cpu"].as_str() {
            run.resources.cpu_shares = i64::try_from(quantity(cpu)? * 1024 / 1000)?;
        }

        // Volumes.
        let volumes = pod["volumes"].as_array().context("volumes")?;
        for m in c["volumeMounts"].as_array().context("volumeMounts")? {
            let name = str_of(&m["name"], "mount name")?;
            let target = str_of(&m["mountPath"], "mountPath")?;
            let volume = volumes
                .iter()
                .find(|v| v["name"] == name)
                .with_context(|| format!("no volume {name}"))?;
            let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
                node.host_paths
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(path))
            } else if let Some(cm) = volume["configMap"]["name"].as_str() {
                let dir = node.scratch.join(name);
                fs::create_dir_all(&dir).context("config volume dir")?;
                for (k, v) in data_of(named(docs, "ConfigMap", cm)?)? {
                    fs::write(dir.join(&k), v).with_context(|| format!("writing {k}"))?;
                }
                dir
            } else {
                bail!("volume {name} is neither hostPath nor configMap: {volume}");
            };
            ensure!(
                source.exists(),
                "host side of {name} missing: {}",
                source.display()
            );
            run.mounts.push(cri::Mount {
                container_path: target.to_owned(),
                host_path: source.to_string_lossy().into_owned(),
                readonly: m["readOnly"] == true,
                ..cri::Mount::default()
            });
        }

        // Environment: literal values, the downward API's node name, envFrom.
        let mut env = BTreeMap::new();
        for from in c["envFrom"].as_array().into_iter().flatten() {
            let doc = if let Some(n) = from["configMapRef"]["name"].as_str() {
                named(docs, "ConfigMap", n)?
            } else if let Some(n) = from["secretRef"]["name"].as_str() {
                named(docs, "Secret", n)?
            } else {
                bail!("envFrom entry not mapped: {from}");
            };
            env.extend(data_of(doc)?);
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = str_of(&e["name"], "env name")?.to_owned();
            if let Some(v) = e["value"].as_str() {
                env.insert(name, v.to_owned());
            } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
                env.insert(name, node.node_name.clone());
            } else {
                bail!("env {name} not mapped: {e}");
            }
        }
        for (k, v) in &node.env_overrides {
            ensure!(
                env.contains_key(k),
                "override of {k}, which the manifest does not set"
            );
            env.insert(k.clone(), v.clone());
        }
        run.envs = env.into_iter().collect();

        ensure!(c["command"].is_null(), "command is not mapped");
        run.args = strings(&c["args"], "args")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(run)
    }

    /// Sets the pod-level namespaces on a sandbox config (host network stays: no CNI
    /// runs here).
    pub fn apply_to_sandbox(&self, config: &mut cri::PodSandboxConfig) {
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            && self.host_pid
        {
            ns.pid = cri::NamespaceMode::Node as i32;
        }
    }

    /// Sets everything else on a container config.
    pub fn apply_to_container(&self, config: &mut cri::ContainerConfig, extra_args: &[&str]) {
        config.command = Vec::new();
        config.args = self.args.clone();
        config
            .args
            .extend(extra_args.iter().map(|s| (*s).to_owned()));
        config.envs = self
            .envs
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        config.mounts = self.mounts.clone();
        let linux = config.linux.get_or_insert_with(Default::default);
        let namespaces = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone());
        let mut security = self.security.clone();
        security.namespace_options = namespaces.map(|mut ns| {
            if self.host_pid {
                ns.pid = cri::NamespaceMode::Node as i32;
            }
            ns
        });
        linux.security_context = Some(security);
        linux.resources = Some(self.resources.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_secret_data_decode() -> Result<()> {
        assert_eq!(quantity("64Mi")?, 64 << 20);
        assert_eq!(quantity("1Gi")?, 1 << 30);
        assert_eq!(quantity("250m")?, 250);
        assert_eq!(quantity("2")?, 2000);
        assert!(
            quantity("1.5").is_err(),
            "fractions are not used, so not parsed"
        );
        assert!(quantity("lots").is_err());
        let secret = serde_json::json!({
            "kind": "Secret",
            "data": { "A": "YXBpLWtleT14eXo=", "EMPTY": "" },
        });
        let data = data_of(&secret)?;
        assert_eq!(data["A"], "api-key=xyz");
        assert_eq!(data["EMPTY"], "");
        Ok(())
    }
}
