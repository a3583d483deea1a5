//! One configuration, resolved and validated once at start, before anything is attached.
//!
//! # Sources and precedence
//!
//! Every setting is taken from the first source that has it:
//!
//! 1. a command-line flag (`--threshold-ms`, `--otlp-endpoint`, …),
//! 2. the YAML config file (`--config PATH`, keys below),
//! 3. the standard `OTEL_*` environment variables (OTLP exporter and resource only),
//! 4. the documented default.
//!
//! Within the config file and within the environment, a per-signal setting
//! (`otlp.traces.endpoint`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) beats the general one
//! (`otlp.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`). Endpoints keep the OpenTelemetry
//! specification's meaning: a general endpoint is a base URL to which, for
//! `http/protobuf`, `/v1/traces` and `/v1/logs` are appended; a per-signal endpoint is
//! used as is. gRPC endpoints are used as is.
//!
//! # Config file keys
//!
//! ```yaml
//! threshold_ms: 10          # report operations at least this slow (0 = all)
//! pid: 1234                 # only this process
//! comm: containerd          # only threads with this comm
//! attach: auto              # auto | fentry | kprobe | tracepoint
//! fs: [ext4, xfs, btrfs]    # filesystems traced (default: all three), filtered in the kernel
//! duration_s: 60            # stop after this many seconds
//! outputs: [table, otlp]    # any of table (alias console), json, otlp
//! metrics:
//!   listen: 127.0.0.1:9464  # /metrics and /healthz; "off" disables
//! resource:
//!   service_name: iostall
//!   attributes: {deployment.environment.name: prod}
//! otlp:
//!   endpoint: http://collector:4317
//!   protocol: grpc          # grpc | http/protobuf
//!   headers: {x-api-key: secret}
//!   timeout_ms: 10000
//!   compression: gzip       # gzip | none
//!   certificate: /etc/ssl/collector-ca.pem
//!   traces: {endpoint: ..., protocol: ..., headers: ..., timeout_ms: ..., compression: ..., certificate: ...}
//!   logs:   {same keys as traces}
//!   warn_threshold_ms: 1000 # log records at least this slow are WARN, faster ones INFO
//!   queue_size: 8192        # records waiting for export; more are dropped and counted
//!   batch_size: 512         # records per export request
//!   batch_timeout_ms: 1000  # longest wait before a partial batch is sent
//!   max_attempts: 5         # tries per batch (retryable errors only)
//!   initial_backoff_ms: 100 # doubled after each failed try, at most max_backoff_ms
//!   max_backoff_ms: 5000
//! runtime:
//!   containerd_socket: /run/containerd/containerd.sock   # or off
//!   docker_socket: /var/run/docker.sock                  # or off
//!   unannounced_hold_ms: 10000  # IO of a container not announced yet waits this long
//!                               # for its pod's names (0: sent at once, nameless)
//! kube:
//!   enabled: auto           # auto | on | off (auto: on in a pod or with a kubeconfig)
//!   node_name: node-a       # default: NODE_NAME, else the host name
//!   api_server: http://127.0.0.1:8001   # instead of in-cluster/kubeconfig discovery
//!   kubeconfig: /etc/iostall/kubeconfig # a kubeconfig file (its current context)
//!   pod_labels: [app, app.kubernetes.io/*]  # label keys (or prefixes with *) to copy
//!   resolve_owners: true    # ReplicaSet → Deployment, Job → CronJob
//! lifecycle:
//!   process_event_burst: 64         # a container's execs and clean exits at once (0: none)
//!   process_events_per_second: 2    # then this many a second; the rest are counted
//! startup:
//!   enabled: true           # each pod's startup as one trace (the IO stalls inside)
//!   settle_ms: 5000         # no API: the startup ends this long after its last known
//!                           # container started, if nothing new came
//!   timeout_s: 300          # a startup open this long ends as failed (timeout)
//!   max_open: 1024          # startups followed at once; the oldest is evicted past it
//! why:
//!   disk:
//!     enabled: true         # per-device IOPS, in flight, await and saturation on each record
//!     window_s: 8           # seconds the saturation detector looks at (5 to 60)
//!   journal: true           # the jbd2 commit each slow fsync waited for
//!   pressure: true          # the cgroup's and the node's IO pressure (PSI) on each record
//! ```
//!
//! Unknown keys are errors that name the key.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    event::{FsKind, FsSet},
    lifecycle::ProcessEventLimit,
    tracer::AttachRequest,
};

/// Default metrics listen address: Prometheus' registered port for OpenTelemetry
/// exporters, on loopback only (a DaemonSet sets `0.0.0.0:9464` to be scraped).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default OTLP/gRPC endpoint (the specification's).
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default OTLP/HTTP base endpoint (the specification's).
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// Default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "iostall";

/// A configuration error; its message names the field (or variable) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema (unknown keys included).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the YAML parser said (it names the key and the line).
        message: String,
    },
    /// A value is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field: a config key path (`otlp.endpoint`), a flag or an env variable.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The `ext4slower`-style table on stdout.
    #[serde(alias = "console")]
    #[value(alias = "console")]
    Table,
    /// JSON lines on stdout.
    Json,
    /// OTLP traces and logs to a collector.
    Otlp,
}

/// OTLP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC.
    #[serde(rename = "grpc")]
    #[value(name = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(field: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(invalid(
                field,
                format!("{other:?} is not a supported protocol (grpc, http/protobuf)"),
            )),
        }
    }
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
}

impl Compression {
    fn parse(field: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "gzip" => Ok(Self::Gzip),
            "none" | "" => Ok(Self::None),
            other => Err(invalid(
                field,
                format!("{other:?} is not a supported compression (gzip, none)"),
            )),
        }
    }
}

/// Per-signal OTLP settings in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalFile {
    /// Endpoint URL.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<Protocol>,
    /// Extra request headers (vendor API keys).
    pub headers: Option<BTreeMap<String, String>>,
    /// Export timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `gzip` or `none`.
    pub compression: Option<Compression>,
    /// PEM file with the CA certificate(s) to trust.
    pub certificate: Option<PathBuf>,
}

/// The `otlp:` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    /// Endpoint of both signals (a base URL for `http/protobuf`).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<Protocol>,
    /// Extra request headers (vendor API keys).
    pub headers: Option<BTreeMap<String, String>>,
    /// Export timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `gzip` or `none`.
    pub compression: Option<Compression>,
    /// PEM file with the CA certificate(s) to trust.
    pub certificate: Option<PathBuf>,
    /// Traces only.
    pub traces: Option<SignalFile>,
    /// Logs only.
    pub logs: Option<SignalFile>,
    /// WARN from this latency on, INFO below.
    pub warn_threshold_ms: Option<f64>,
    /// Export queue capacity.
    pub queue_size: Option<usize>,
    /// Records per export.
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill.
    pub batch_timeout_ms: Option<u64>,
    /// Tries per batch.
    pub max_attempts: Option<u32>,
    /// First retry delay.
    pub initial_backoff_ms: Option<u64>,
    /// Longest retry delay.
    pub max_backoff_ms: Option<u64>,
}

/// The `metrics:` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// `host:port`, or `off`.
    pub listen: Option<String>,
}

/// The `resource:` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    /// `service.name`.
    pub service_name: Option<String>,
    /// Extra resource attributes.
    pub attributes: Option<BTreeMap<String, String>>,
}

/// The `runtime:` section: where the container runtimes listen.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// containerd's gRPC socket, or `off` (default `/run/containerd/containerd.sock`).
    pub containerd_socket: Option<String>,
    /// dockerd's API socket, or `off` (default `/var/run/docker.sock`).
    pub docker_socket: Option<String>,
    /// How long a record of a container not announced yet waits for its names (0: not).
    pub unannounced_hold_ms: Option<u64>,
}

/// `kube.enabled`: whether the Kubernetes API is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KubeMode {
    /// On when running in a pod (`KUBERNETES_SERVICE_HOST`), with a kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`) or with `api_server`/`kubeconfig` set; else off.
    #[default]
    Auto,
    /// On; a start-up error if there is no API server to talk to.
    On,
    /// Off.
    Off,
}

impl<'de> Deserialize<'de> for KubeMode {
    /// `auto`, `on` or `off`; YAML booleans `true`/`false` too.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KubeMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("auto, on or off")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<KubeMode, E> {
                Ok(if v { KubeMode::On } else { KubeMode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KubeMode, E> {
                match v {
                    "auto" => Ok(KubeMode::Auto),
                    "on" | "true" => Ok(KubeMode::On),
                    "off" | "false" => Ok(KubeMode::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The `kube:` section: Kubernetes API enrichment (owners, pod labels).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeFile {
    /// `auto`, `on` or `off`.
    pub enabled: Option<KubeMode>,
    /// This node's name (`spec.nodeName` of the pods to watch).
    pub node_name: Option<String>,
    /// API server URL (no credentials: `kubectl proxy`, a test server).
    pub api_server: Option<String>,
    /// A kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// Label keys to copy onto records (`prefix*` for a prefix); `[]` copies none.
    pub pod_labels: Option<Vec<String>>,
    /// Resolve ReplicaSet → Deployment and Job → CronJob.
    pub resolve_owners: Option<bool>,
}

/// The `lifecycle:` section: kernel lifecycle signals.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleFile {
    /// A container's process events (execs, exits not by a signal) reported at once.
    pub process_event_burst: Option<u32>,
    /// Their refill rate, per second.
    pub process_events_per_second: Option<f64>,
}

/// The `startup:` section: pod startup traces.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupFile {
    /// Follow pod startups (default true).
    pub enabled: Option<bool>,
    /// Settle time after the last known container started, ms.
    pub settle_ms: Option<u64>,
    /// Startup timeout, seconds.
    pub timeout_s: Option<u64>,
    /// Open startups at most.
    pub max_open: Option<usize>,
}

/// Settings of the startup stage (`startup:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupConfig {
    /// Without the Kubernetes API: how long nothing new must come after the last
    /// container started for the startup to end. Default 5 s.
    pub settle: Duration,
    /// A startup still open after this long ends as failed (`timeout`). Default 5 min.
    pub timeout: Duration,
    /// How long a finished span waits for late records before it goes out. Default 1 s.
    pub grace: Duration,
    /// Open startups at most; the oldest is evicted past it. Default 1024.
    pub max_open: usize,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
            grace: Duration::from_secs(1),
            max_open: 1024,
        }
    }
}

/// The YAML config file, as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Threshold in milliseconds.
    pub threshold_ms: Option<f64>,
    /// Only this pid.
    pub pid: Option<u32>,
    /// Only this comm.
    pub comm: Option<String>,
    /// Attach mode.
    pub attach: Option<AttachRequest>,
    /// Filesystems traced.
    pub fs: Option<Vec<FsKind>>,
    /// Stop after this many seconds.
    pub duration_s: Option<f64>,
    /// Sinks.
    #[serde(alias = "sinks")]
    pub outputs: Option<Vec<OutputKind>>,
    /// OTLP exporter.
    pub otlp: Option<OtlpFile>,
    /// Local metrics endpoint.
    pub metrics: Option<MetricsFile>,
    /// Resource.
    pub resource: Option<ResourceFile>,
    /// Container runtime sockets.
    pub runtime: Option<RuntimeFile>,
    /// Kubernetes API enrichment.
    pub kube: Option<KubeFile>,
    /// Kernel lifecycle signals.
    pub lifecycle: Option<LifecycleFile>,
    /// Pod startup traces.
    pub startup: Option<StartupFile>,
    /// Why each slow operation was slow.
    pub why: Option<WhyFile>,
}

/// The `why:` section: what is put beside each slow operation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhyFile {
    /// The block device's rolling view.
    pub disk: Option<WhyDiskFile>,
    /// The jbd2 commit each slow fsync waited for (default true).
    pub journal: Option<bool>,
    /// cgroup and node IO pressure (PSI) on each record (default true).
    pub pressure: Option<bool>,
}

/// `why.disk`: the per-device view from `/proc/diskstats`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhyDiskFile {
    /// On (default true: it costs one file read a second).
    pub enabled: Option<bool>,
    /// Seconds the saturation detector looks at.
    pub window_s: Option<u64>,
}

/// Settings of the `why` stage (`why:` in the config file). Each source is cheap, so
/// each is on by default: the point is that the why is there without asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhyConfig {
    /// The disk part; `None` when `why.disk.enabled: false`.
    pub disk: Option<WhyDiskConfig>,
    /// jbd2 commits (two tracepoints that run once per commit).
    pub journal: bool,
    /// PSI files, read at most once a second per cgroup.
    pub pressure: bool,
}

impl Default for WhyConfig {
    fn default() -> Self {
        Self {
            disk: Some(WhyDiskConfig::default()),
            journal: true,
            pressure: true,
        }
    }
}

/// Settings of the disk part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhyDiskConfig {
    /// Seconds the saturation detector looks at. Default 8.
    pub window_s: u64,
}

impl Default for WhyDiskConfig {
    fn default() -> Self {
        Self { window_s: 8 }
    }
}

impl FileConfig {
    /// Reads and parses a YAML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = read_bounded(path, MAX_FILE_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".to_owned(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses YAML text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// What the command line sets (`None` = not given).
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--threshold-ms`.
    pub threshold_ms: Option<f64>,
    /// `--pid`.
    pub pid: Option<u32>,
    /// `--comm`.
    pub comm: Option<String>,
    /// `--attach`.
    pub attach: Option<AttachRequest>,
    /// `--fs` (repeatable or comma-separated; empty = not given).
    pub fs: Vec<FsKind>,
    /// `--duration`.
    pub duration_s: Option<f64>,
    /// `--output` (repeatable).
    pub outputs: Vec<OutputKind>,
    /// `--otlp-endpoint` (a base endpoint, like `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// `--otlp-protocol`.
    pub otlp_protocol: Option<Protocol>,
    /// `--otlp-header k=v` (repeatable).
    pub otlp_headers: Vec<String>,
    /// `--metrics-listen` (`off` disables).
    pub metrics_listen: Option<String>,
    /// `--containerd-socket` (`off` disables).
    pub containerd_socket: Option<String>,
    /// `--docker-socket` (`off` disables).
    pub docker_socket: Option<String>,
    /// `--kube`.
    pub kube: Option<KubeMode>,
    /// `--kube-api-server`.
    pub kube_api_server: Option<String>,
    /// `--kube-node-name`.
    pub kube_node_name: Option<String>,
}

/// Fully resolved settings of one signal's exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalConfig {
    /// Full URL requests go to (with `/v1/traces` or `/v1/logs` for HTTP).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Request headers, keys lower-cased.
    pub headers: Vec<(String, String)>,
    /// Per-export timeout.
    pub timeout: Duration,
    /// Body compression.
    pub compression: Compression,
    /// PEM bytes of extra CA certificates to trust.
    pub ca_pem: Option<Vec<u8>>,
    /// Exported at all: `OTEL_TRACES_EXPORTER` / `OTEL_LOGS_EXPORTER` (`otlp`, the
    /// default, or `none`).
    pub enabled: bool,
    /// Where the endpoint was set (`--otlp-endpoint`, `otlp.endpoint`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`…); `None` for the default.
    pub endpoint_source: Option<String>,
}

/// Resolved OTLP exporter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Traces exporter.
    pub traces: SignalConfig,
    /// Logs exporter.
    pub logs: SignalConfig,
    /// Log records at least this slow are WARN.
    pub warn_threshold_ns: u64,
    /// Export queue capacity (records).
    pub queue_size: usize,
    /// Records per export request.
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    pub batch_timeout: Duration,
    /// Tries per batch.
    pub max_attempts: u32,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

/// Resolved Resource settings (the node's Resource).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceConfig {
    /// `service.name`.
    pub service_name: String,
    /// Extra attributes (`OTEL_RESOURCE_ATTRIBUTES`, then the config file's, which win).
    pub attributes: Vec<(String, String)>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Threshold in milliseconds (default 10).
    pub threshold_ms: f64,
    /// Only this pid.
    pub pid: Option<u32>,
    /// Only this comm.
    pub comm: Option<String>,
    /// Attach mode (default auto).
    pub attach: AttachRequest,
    /// Filesystems traced, filtered in the kernel (default: ext4, xfs and btrfs).
    pub filesystems: FsSet,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Sinks, without duplicates (default: table).
    pub outputs: Vec<OutputKind>,
    /// OTLP exporter settings (used when `outputs` has `otlp`).
    pub otlp: OtlpConfig,
    /// Resource settings.
    pub resource: ResourceConfig,
    /// Where `/metrics` and `/healthz` listen; `None` = disabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `metrics_listen` was set (flag or file) rather than defaulted: only then
    /// is a port already in use a start-up error (by default it is a warning, so that
    /// two iostalls on one host still run).
    pub metrics_listen_explicit: bool,
    /// Container runtime sources.
    pub sources: SourcesConfig,
    /// Kubernetes API enrichment.
    pub kube: KubeSetting,
    /// Each container's budget of process events.
    pub process_event_limit: ProcessEventLimit,
    /// Pod startup traces; `None` when `startup.enabled: false`.
    pub startup: Option<StartupConfig>,
    /// What is put beside each slow operation (`why:`).
    pub why: WhyConfig,
    /// What resolving decided that a user may not expect (an endpoint turning OTLP on,
    /// or left unused): said once at start.
    pub notes: Vec<String>,
}

/// Default `kube.pod_labels`: the identity labels Kubernetes recommends
/// (`app.kubernetes.io/{name,instance,component,part-of}`) and the traditional `app`.
/// Low-cardinality and about the workload, not the pod: `pod-template-hash` (owner
/// names carry it), `version` (changes per rollout) and free-form labels (which may
/// hold anything) are left out unless asked for.
pub const DEFAULT_POD_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app",
];

/// [`KubeSettings::node_name_source`] when the node name is only the host name's guess.
pub const NODE_NAME_FROM_HOST: &str = "host name";

/// Whether, and how, the Kubernetes API is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSetting {
    /// Not watched, and why (logged once at start).
    Off {
        /// E.g. "no in-cluster environment and no kubeconfig found".
        reason: String,
    },
    /// Watched.
    On(KubeSettings),
}

/// Where the Kubernetes client's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeClientSource {
    /// Discovered: `KUBECONFIG` / `~/.kube/config`, then the in-cluster service account.
    Infer,
    /// This URL, without credentials.
    ApiServer(String),
    /// This kubeconfig file's current context.
    Kubeconfig(PathBuf),
}

/// Resolved Kubernetes API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This node's name.
    pub node_name: String,
    /// Where `node_name` came from (`--kube-node-name`, `kube.node_name`, `NODE_NAME`,
    /// or [`NODE_NAME_FROM_HOST`]).
    pub node_name_source: String,
    /// Where the client configuration comes from.
    pub client: KubeClientSource,
    /// Label keys (or `prefix*`) copied onto records.
    pub pod_labels: Vec<String>,
    /// Resolve ReplicaSet → Deployment and Job → CronJob.
    pub resolve_owners: bool,
}

/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default dockerd socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where runtime and pod metadata come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesConfig {
    /// containerd's socket (events, containers, CRI); `None` = not watched.
    pub containerd_socket: Option<PathBuf>,
    /// dockerd's socket; `None` = not watched.
    pub docker_socket: Option<PathBuf>,
    /// How long a record of a container no runtime has announced yet waits for its
    /// names; `None` when no runtime is watched (nothing would announce it) or set to 0.
    pub unannounced_hold: Option<Duration>,
}

/// Default `runtime.unannounced_hold_ms`: containerd announces a container well within
/// it even when its metadata fsyncs take a second each.
pub const DEFAULT_UNANNOUNCED_HOLD_MS: u64 = 10_000;

/// Which signal a setting is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Traces.
    Traces,
    /// Logs.
    Logs,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Self::Traces => "TRACES",
            Self::Logs => "LOGS",
        }
    }
    fn lower(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
        }
    }
}

impl Config {
    /// Resolves CLI > file > environment (`env` looks a variable up) > defaults, and
    /// validates every value.
    pub fn resolve(
        cli: &CliOverrides,
        file: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let threshold_ms = cli.threshold_ms.or(file.threshold_ms).unwrap_or(10.0);
        let field = if cli.threshold_ms.is_some() {
            "--threshold-ms"
        } else {
            "threshold_ms"
        };
        if !threshold_ms.is_finite() || threshold_ms < 0.0 {
            return Err(invalid(
                field,
                format!("must be a number ≥ 0, got {threshold_ms}"),
            ));
        }
        let duration = match cli.duration_s.or(file.duration_s) {
            Some(d) if !d.is_finite() || d <= 0.0 => {
                let field = if cli.duration_s.is_some() {
                    "--duration"
                } else {
                    "duration_s"
                };
                return Err(invalid(field, format!("must be > 0 seconds, got {d}")));
            }
            Some(d) => Some(Duration::from_secs_f64(d)),
            None => None,
        };
        if let Some(comm) = cli.comm.as_ref().or(file.comm.as_ref())
            && (comm.is_empty() || comm.len() > 15)
        {
            let field = if cli.comm.is_some() { "--comm" } else { "comm" };
            return Err(invalid(field, format!("{comm:?} must be 1 to 15 bytes")));
        }
        let filesystems = resolve_filesystems(cli, file)?;
        let empty = OtlpFile::default();
        let otlp_file = file.otlp.as_ref().unwrap_or(&empty);
        let otlp = OtlpConfig {
            traces: resolve_signal(Signal::Traces, cli, otlp_file, env)?,
            logs: resolve_signal(Signal::Logs, cli, otlp_file, env)?,
            warn_threshold_ns: {
                let ms = otlp_file.warn_threshold_ms.unwrap_or(1000.0);
                if !ms.is_finite() || ms < 0.0 {
                    return Err(invalid(
                        "otlp.warn_threshold_ms",
                        format!("must be a number ≥ 0, got {ms}"),
                    ));
                }
                (ms * 1e6) as u64
            },
            queue_size: positive("otlp.queue_size", otlp_file.queue_size, 8192)?,
            batch_size: positive("otlp.batch_size", otlp_file.batch_size, 512)?,
            batch_timeout: Duration::from_millis(positive(
                "otlp.batch_timeout_ms",
                otlp_file.batch_timeout_ms,
                1000,
            )?),
            max_attempts: positive("otlp.max_attempts", otlp_file.max_attempts, 5)?,
            initial_backoff: Duration::from_millis(positive(
                "otlp.initial_backoff_ms",
                otlp_file.initial_backoff_ms,
                100,
            )?),
            max_backoff: Duration::from_millis(positive(
                "otlp.max_backoff_ms",
                otlp_file.max_backoff_ms,
                5000,
            )?),
        };
        if otlp.initial_backoff > otlp.max_backoff {
            return Err(invalid(
                "otlp.initial_backoff_ms",
                format!(
                    "{} is above otlp.max_backoff_ms ({})",
                    otlp.initial_backoff.as_millis(),
                    otlp.max_backoff.as_millis()
                ),
            ));
        }
        // An OTLP endpoint set anywhere (flag, file, `OTEL_EXPORTER_OTLP_*`) turns OTLP
        // on when no output was chosen, as every OpenTelemetry component reads it; the
        // table, the default, stays.
        let endpoint_source = [&otlp.traces, &otlp.logs]
            .iter()
            .find_map(|s| s.endpoint_source.clone());
        let chosen = !cli.outputs.is_empty() || file.outputs.is_some();
        let mut notes = Vec::new();
        let mut outputs = if !cli.outputs.is_empty() {
            cli.outputs.clone()
        } else if let Some(outputs) = &file.outputs {
            outputs.clone()
        } else if endpoint_source.is_some() {
            vec![OutputKind::Table, OutputKind::Otlp]
        } else {
            vec![OutputKind::Table]
        };
        let mut seen = Vec::new();
        outputs.retain(|o| {
            let new = !seen.contains(o);
            seen.push(*o);
            new
        });
        if outputs.is_empty() {
            return Err(invalid("outputs", "must name at least one output"));
        }
        if let Some(source) = &endpoint_source {
            if !chosen {
                notes.push(format!("{source} is set: OTLP output on"));
            } else if !outputs.contains(&OutputKind::Otlp) {
                notes.push(format!(
                    "{source} is set, but the outputs chosen leave OTLP out: nothing is sent \
                     (add -o otlp)"
                ));
            }
        }
        if outputs.contains(&OutputKind::Otlp) {
            match (otlp.traces.enabled, otlp.logs.enabled) {
                (false, false) => {
                    return Err(invalid(
                        "OTEL_TRACES_EXPORTER",
                        "and OTEL_LOGS_EXPORTER turn both signals off, but the outputs \
                         include otlp",
                    ));
                }
                (false, true) => notes.push("OTEL_TRACES_EXPORTER: no spans are sent".into()),
                (true, false) => {
                    notes.push("OTEL_LOGS_EXPORTER: no log records are sent".into());
                }
                (true, true) => {}
            }
        }
        let resource = resolve_resource(file.resource.as_ref(), env)?;
        let metrics_listen = resolve_metrics(cli, file)?;
        Ok(Self {
            threshold_ms,
            pid: cli.pid.or(file.pid),
            comm: cli.comm.clone().or_else(|| file.comm.clone()),
            attach: cli.attach.or(file.attach).unwrap_or_default(),
            filesystems,
            duration,
            outputs,
            otlp,
            resource,
            metrics_listen,
            metrics_listen_explicit: cli.metrics_listen.is_some()
                || file.metrics.as_ref().is_some_and(|m| m.listen.is_some()),
            sources: resolve_sources(cli, file)?,
            kube: resolve_kube(cli, file.kube.as_ref(), env)?,
            process_event_limit: resolve_process_event_limit(file.lifecycle.as_ref())?,
            startup: resolve_startup(file.startup.as_ref())?,
            why: resolve_why(file.why.as_ref())?,
            notes,
        })
    }
}

/// `--fs`, else the file's `fs`, else every filesystem; an empty list is an error (it
/// would trace nothing).
fn resolve_filesystems(cli: &CliOverrides, file: &FileConfig) -> Result<FsSet, ConfigError> {
    if !cli.fs.is_empty() {
        return Ok(FsSet::from_kinds(cli.fs.iter().copied()));
    }
    match &file.fs {
        Some(kinds) if kinds.is_empty() => Err(invalid(
            "fs",
            "must name at least one filesystem (ext4, xfs, btrfs)",
        )),
        Some(kinds) => Ok(FsSet::from_kinds(kinds.iter().copied())),
        None => Ok(FsSet::default()),
    }
}

fn resolve_startup(file: Option<&StartupFile>) -> Result<Option<StartupConfig>, ConfigError> {
    let default = StartupConfig::default();
    let Some(file) = file else {
        return Ok(Some(default));
    };
    if file.enabled == Some(false) {
        return Ok(None);
    }
    let settle_ms = file.settle_ms.unwrap_or(5000);
    if !(100..=600_000).contains(&settle_ms) {
        return Err(invalid(
            "startup.settle_ms",
            format!("must be between 100 and 600000, got {settle_ms}"),
        ));
    }
    let timeout_s = file.timeout_s.unwrap_or(300);
    if !(1..=86_400).contains(&timeout_s) {
        return Err(invalid(
            "startup.timeout_s",
            format!("must be between 1 and 86400, got {timeout_s}"),
        ));
    }
    let max_open = file.max_open.unwrap_or(default.max_open);
    if max_open == 0 {
        return Err(invalid("startup.max_open", "must be at least 1".to_owned()));
    }
    Ok(Some(StartupConfig {
        settle: Duration::from_millis(settle_ms),
        timeout: Duration::from_secs(timeout_s),
        max_open,
        ..default
    }))
}

fn resolve_why(file: Option<&WhyFile>) -> Result<WhyConfig, ConfigError> {
    let default = WhyConfig::default();
    let Some(file) = file else {
        return Ok(default);
    };
    let disk = match &file.disk {
        None => default.disk,
        Some(disk) if disk.enabled == Some(false) => None,
        Some(disk) => {
            let window_s = disk.window_s.unwrap_or(WhyDiskConfig::default().window_s);
            if !(5..=60).contains(&window_s) {
                return Err(invalid(
                    "why.disk.window_s",
                    format!("must be between 5 and 60, got {window_s}"),
                ));
            }
            Some(WhyDiskConfig { window_s })
        }
    };
    Ok(WhyConfig {
        disk,
        journal: file.journal.unwrap_or(default.journal),
        pressure: file.pressure.unwrap_or(default.pressure),
    })
}

fn resolve_process_event_limit(
    file: Option<&LifecycleFile>,
) -> Result<ProcessEventLimit, ConfigError> {
    let default = ProcessEventLimit::default();
    let Some(file) = file else {
        return Ok(default);
    };
    let per_second = file.process_events_per_second.unwrap_or(default.per_second);
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(invalid(
            "lifecycle.process_events_per_second",
            format!("must be a number ≥ 0, got {per_second}"),
        ));
    }
    Ok(ProcessEventLimit {
        burst: file.process_event_burst.unwrap_or(default.burst),
        per_second,
    })
}

/// Checks a node name: a DNS subdomain (RFC 1123), as Kubernetes requires.
fn validate_node_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} is not a valid node name (lower-case letters, digits, '-' and '.'); \
                 set kube.node_name or NODE_NAME (the DaemonSet's downward API)"
            ),
        ))
    }
}

/// Checks a `kube.pod_labels` entry: a label key (`[prefix/]name`), or a prefix of one
/// ending in `*`.
fn validate_label_pattern(field: &str, pattern: &str) -> Result<(), ConfigError> {
    let key = pattern.strip_suffix('*').unwrap_or(pattern);
    let chars_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if pattern.is_empty() || !chars_ok || key.matches('/').count() > 1 {
        return Err(invalid(
            field,
            format!(
                "{pattern:?} is not a label key (e.g. app.kubernetes.io/name) nor a prefix \
                 ending in '*'"
            ),
        ));
    }
    Ok(())
}

fn resolve_kube(
    cli: &CliOverrides,
    file: Option<&KubeFile>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KubeSetting, ConfigError> {
    let empty = KubeFile::default();
    let file = file.unwrap_or(&empty);
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());

    // Where the client comes from (validated even when off: a typo is still a typo).
    let api_server = match (&cli.kube_api_server, &file.api_server) {
        (Some(url), _) => Some(validate_url("--kube-api-server", url)?),
        (None, Some(url)) => Some(validate_url("kube.api_server", url)?),
        (None, None) => None,
    };
    if let Some(path) = &file.kubeconfig {
        if api_server.is_some() {
            return Err(invalid(
                "kube.api_server",
                "set either kube.api_server or kube.kubeconfig, not both",
            ));
        }
        if let Err(e) = std::fs::metadata(path) {
            return Err(invalid(
                "kube.kubeconfig",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    let client = match (api_server, &file.kubeconfig) {
        (Some(url), _) => KubeClientSource::ApiServer(url),
        (None, Some(path)) => KubeClientSource::Kubeconfig(path.clone()),
        (None, None) => KubeClientSource::Infer,
    };
    let mut pod_labels = Vec::new();
    match &file.pod_labels {
        Some(keys) => {
            for (i, key) in keys.iter().enumerate() {
                validate_label_pattern(&format!("kube.pod_labels[{i}]"), key.trim())?;
                pod_labels.push(key.trim().to_owned());
            }
        }
        None => pod_labels.extend(DEFAULT_POD_LABELS.iter().map(|k| (*k).to_owned())),
    }

    let (mode, mode_field) = match (cli.kube, file.enabled) {
        (Some(m), _) => (m, "--kube"),
        (None, Some(m)) => (m, "kube.enabled"),
        (None, None) => (KubeMode::Auto, "kube.enabled"),
    };
    let found = if client != KubeClientSource::Infer {
        Some("configured")
    } else if set("KUBERNETES_SERVICE_HOST").is_some() {
        Some("in-cluster")
    } else if set("KUBECONFIG").is_some() {
        Some("KUBECONFIG")
    } else if set("HOME").is_some_and(|home| Path::new(&home).join(".kube/config").is_file()) {
        Some("~/.kube/config")
    } else {
        None
    };
    match (mode, found) {
        (KubeMode::Off, _) => {
            return Ok(KubeSetting::Off {
                reason: format!("{mode_field} is off"),
            });
        }
        (KubeMode::Auto, None) => {
            return Ok(KubeSetting::Off {
                reason: "no in-cluster environment (KUBERNETES_SERVICE_HOST) and no kubeconfig \
                         (KUBECONFIG, ~/.kube/config) found"
                    .to_owned(),
            });
        }
        (KubeMode::On, None) => {
            return Err(invalid(
                mode_field,
                "is on, but there is no API server to talk to: set kube.api_server or \
                 kube.kubeconfig, or run in a pod (KUBERNETES_SERVICE_HOST) or with a kubeconfig",
            ));
        }
        (KubeMode::Auto | KubeMode::On, Some(_)) => {}
    }

    let (node_name, node_name_source) = if let Some(n) = &cli.kube_node_name {
        (n.trim().to_owned(), "--kube-node-name")
    } else if let Some(n) = &file.node_name {
        (n.trim().to_owned(), "kube.node_name")
    } else if let Some(n) = set("NODE_NAME") {
        (n.trim().to_owned(), "NODE_NAME")
    } else {
        (
            crate::host::host_name().to_ascii_lowercase(),
            NODE_NAME_FROM_HOST,
        )
    };
    let field = match node_name_source {
        NODE_NAME_FROM_HOST => "kube.node_name (default: the host name)",
        other => other,
    };
    validate_node_name(field, &node_name)?;
    Ok(KubeSetting::On(KubeSettings {
        node_name,
        node_name_source: node_name_source.to_owned(),
        client,
        pod_labels,
        resolve_owners: file.resolve_owners.unwrap_or(true),
    }))
}

/// A socket setting: `off` disables, a relative path is an error naming the field.
fn socket(field: &str, value: Option<&str>, default: &str) -> Result<Option<PathBuf>, ConfigError> {
    match value.map(str::trim) {
        Some("off" | "none" | "false") => Ok(None),
        Some(path) if !path.starts_with('/') => Err(invalid(
            field,
            format!("{path:?} must be an absolute socket path, or \"off\""),
        )),
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => Ok(Some(PathBuf::from(default))),
    }
}

fn resolve_sources(cli: &CliOverrides, file: &FileConfig) -> Result<SourcesConfig, ConfigError> {
    let runtime = file.runtime.clone().unwrap_or_default();
    let containerd_socket = match &cli.containerd_socket {
        Some(v) => socket("--containerd-socket", Some(v), DEFAULT_CONTAINERD_SOCKET)?,
        None => socket(
            "runtime.containerd_socket",
            runtime.containerd_socket.as_deref(),
            DEFAULT_CONTAINERD_SOCKET,
        )?,
    };
    let docker_socket = match &cli.docker_socket {
        Some(v) => socket("--docker-socket", Some(v), DEFAULT_DOCKER_SOCKET)?,
        None => socket(
            "runtime.docker_socket",
            runtime.docker_socket.as_deref(),
            DEFAULT_DOCKER_SOCKET,
        )?,
    };
    let hold_ms = runtime
        .unannounced_hold_ms
        .unwrap_or(DEFAULT_UNANNOUNCED_HOLD_MS);
    let any_runtime = containerd_socket.is_some() || docker_socket.is_some();
    Ok(SourcesConfig {
        containerd_socket,
        docker_socket,
        unannounced_hold: (any_runtime && hold_ms > 0).then(|| Duration::from_millis(hold_ms)),
    })
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    field: &str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v <= T::default() {
        return Err(invalid(field, format!("must be > 0, got {v}")));
    }
    Ok(v)
}

fn resolve_metrics(
    cli: &CliOverrides,
    file: &FileConfig,
) -> Result<Option<SocketAddr>, ConfigError> {
    let (field, value) = match (
        &cli.metrics_listen,
        file.metrics.as_ref().and_then(|m| m.listen.as_ref()),
    ) {
        (Some(v), _) => ("--metrics-listen", v.as_str()),
        (None, Some(v)) => ("metrics.listen", v.as_str()),
        (None, None) => ("metrics.listen", DEFAULT_METRICS_LISTEN),
    };
    if matches!(value.trim(), "off" | "none" | "false" | "") {
        return Ok(None);
    }
    value.trim().parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid(
            field,
            format!("{value:?} is not host:port (an IP address and a port), nor \"off\""),
        )
    })
}

/// One value and the name of where it came from (for error messages).
struct Sourced<T> {
    value: T,
    field: String,
}

fn sourced<T>(value: T, field: impl Into<String>) -> Sourced<T> {
    Sourced {
        value,
        field: field.into(),
    }
}

fn resolve_signal(
    signal: Signal,
    cli: &CliOverrides,
    file: &OtlpFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SignalConfig, ConfigError> {
    let per_file = match signal {
        Signal::Traces => file.traces.as_ref(),
        Signal::Logs => file.logs.as_ref(),
    };
    let sig = signal.lower();
    let up = signal.upper();
    let env_sig = |name: &str| {
        let key = format!("OTEL_EXPORTER_OTLP_{up}_{name}");
        env(&key)
            .filter(|v| !v.trim().is_empty())
            .map(|v| sourced(v, key))
    };
    let env_all = |name: &str| {
        let key = format!("OTEL_EXPORTER_OTLP_{name}");
        env(&key)
            .filter(|v| !v.trim().is_empty())
            .map(|v| sourced(v, key))
    };

    // Protocol.
    let protocol = if let Some(p) = cli.otlp_protocol {
        p
    } else if let Some(p) = per_file.and_then(|s| s.protocol) {
        p
    } else if let Some(p) = file.protocol {
        p
    } else if let Some(s) = env_sig("PROTOCOL").or_else(|| env_all("PROTOCOL")) {
        Protocol::parse(&s.field, &s.value)?
    } else {
        Protocol::Grpc
    };

    // Endpoint: (value, field, is it a per-signal endpoint used as is); `None` from the
    // default.
    let chosen = if let Some(e) = &cli.otlp_endpoint {
        Some((sourced(e.clone(), "--otlp-endpoint"), false))
    } else if let Some(e) = per_file.and_then(|s| s.endpoint.clone()) {
        Some((sourced(e, format!("otlp.{sig}.endpoint")), true))
    } else if let Some(e) = file.endpoint.clone() {
        Some((sourced(e, "otlp.endpoint"), false))
    } else if let Some(e) = env_sig("ENDPOINT") {
        Some((e, true))
    } else {
        env_all("ENDPOINT").map(|e| (e, false))
    };
    let endpoint_source = chosen.as_ref().map(|(e, _)| e.field.clone());
    let (endpoint, as_is) = chosen.unwrap_or_else(|| {
        let default = match protocol {
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
        };
        (sourced(default.to_owned(), "otlp.endpoint"), false)
    });
    let url = validate_url(&endpoint.field, &endpoint.value)?;
    let endpoint = match protocol {
        Protocol::HttpProtobuf if !as_is => {
            let base = url.trim_end_matches('/');
            format!("{base}/v1/{sig}")
        }
        _ => url,
    };

    // Headers: the first layer that has any wins as a whole (per-signal before general).
    // The field an error names is the one the value came from.
    let (headers, header_field) = if !cli.otlp_headers.is_empty() {
        let mut out = Vec::new();
        for h in &cli.otlp_headers {
            out.extend(parse_key_values("--otlp-header", h)?);
        }
        (out, "--otlp-header".to_owned())
    } else if let Some(h) = per_file.and_then(|s| s.headers.as_ref()) {
        let pairs = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        (pairs, format!("otlp.{sig}.headers"))
    } else if let Some(h) = file.headers.as_ref() {
        let pairs = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        (pairs, "otlp.headers".to_owned())
    } else if let Some(h) = env_sig("HEADERS").or_else(|| env_all("HEADERS")) {
        (parse_key_values(&h.field, &h.value)?, h.field.clone())
    } else {
        (Vec::new(), String::new())
    };
    let headers = headers
        .into_iter()
        .map(|(k, v)| validate_header(&header_field, &k, &v).map(|()| (k.to_ascii_lowercase(), v)))
        .collect::<Result<Vec<_>, _>>()?;

    // Timeout.
    let timeout_ms = if let Some(t) = per_file.and_then(|s| s.timeout_ms) {
        sourced(t, format!("otlp.{sig}.timeout_ms"))
    } else if let Some(t) = file.timeout_ms {
        sourced(t, "otlp.timeout_ms")
    } else if let Some(s) = env_sig("TIMEOUT").or_else(|| env_all("TIMEOUT")) {
        let t = s.value.trim().parse::<u64>().map_err(|_| {
            invalid(
                &s.field,
                format!("{:?} is not a whole number of milliseconds", s.value),
            )
        })?;
        sourced(t, s.field)
    } else {
        sourced(10_000, "otlp.timeout_ms")
    };
    if timeout_ms.value == 0 {
        return Err(invalid(timeout_ms.field, "must be > 0 milliseconds"));
    }

    // Compression.
    let compression = if let Some(c) = per_file.and_then(|s| s.compression) {
        c
    } else if let Some(c) = file.compression {
        c
    } else if let Some(s) = env_sig("COMPRESSION").or_else(|| env_all("COMPRESSION")) {
        Compression::parse(&s.field, &s.value)?
    } else {
        Compression::None
    };

    // CA certificate.
    let cert = if let Some(c) = per_file.and_then(|s| s.certificate.clone()) {
        Some(sourced(c, format!("otlp.{sig}.certificate")))
    } else if let Some(c) = file.certificate.clone() {
        Some(sourced(c, "otlp.certificate"))
    } else {
        env_sig("CERTIFICATE")
            .or_else(|| env_all("CERTIFICATE"))
            .map(|s| sourced(PathBuf::from(s.value), s.field))
    };
    let ca_pem = match cert {
        None => None,
        Some(c) => Some(load_ca(&c.field, &c.value)?),
    };

    Ok(SignalConfig {
        endpoint,
        protocol,
        headers,
        timeout: Duration::from_millis(timeout_ms.value),
        compression,
        ca_pem,
        enabled: signal_exporter(signal, env),
        endpoint_source,
    })
}

/// `OTEL_TRACES_EXPORTER` / `OTEL_LOGS_EXPORTER`, as the specification defines them: a
/// comma-separated list, `otlp` by default; `none` (or a list without `otlp`: iostall
/// has no other exporter) turns the signal off.
fn signal_exporter(signal: Signal, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let Some(value) = env(&format!("OTEL_{}_EXPORTER", signal.upper())) else {
        return true;
    };
    let names: Vec<String> = value
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect();
    names.is_empty() || names.iter().any(|n| n == "otlp")
}

/// Checks that `value` is an absolute `http` or `https` URL with a host.
pub fn validate_url(field: &str, value: &str) -> Result<String, ConfigError> {
    let bad = || invalid(field, format!("{value:?} is not a valid http(s) URL"));
    let url = reqwest::Url::parse(value.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(value.trim().to_owned())
}

fn validate_header(field: &str, key: &str, value: &str) -> Result<(), ConfigError> {
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !key_ok {
        return Err(invalid(
            field,
            format!("{key:?} is not a valid header name"),
        ));
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(invalid(
            field,
            format!("the value of header {key:?} has control characters"),
        ));
    }
    Ok(())
}

/// The largest config or certificate file read: far above any real one, and a
/// `/dev/zero` or a runaway file named by mistake fails instead of filling memory.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads at most `max` bytes of `path`; a longer file is an error.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {} MiB", max >> 20),
        ));
    }
    Ok(bytes)
}

fn load_ca(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read_bounded(path, MAX_FILE_BYTES)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(invalid(
            field,
            format!("{} holds no PEM certificate", path.display()),
        )),
    }
}

/// Parses the `key1=value1,key2=value2` lists of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`: entries separated by `,`, blanks around them trimmed,
/// values (and keys) percent-decoded. `field` names the source in errors.
pub fn parse_key_values(field: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(invalid(field, format!("entry {entry:?} is not key=value")));
        };
        let key = percent_decode(key.trim())
            .ok_or_else(|| invalid(field, format!("entry {entry:?}: bad percent-encoding")))?;
        if key.is_empty() {
            return Err(invalid(field, format!("entry {entry:?} has an empty key")));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| invalid(field, format!("entry {entry:?}: bad percent-encoding")))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn resolve_resource(
    file: Option<&ResourceFile>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResourceConfig, ConfigError> {
    let mut attributes: Vec<(String, String)> = Vec::new();
    let mut push = |k: String, v: String| {
        attributes.retain(|(old, _)| *old != k);
        attributes.push((k, v));
    };
    if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &text)? {
            push(k, v);
        }
    }
    if let Some(attrs) = file.and_then(|f| f.attributes.as_ref()) {
        for (k, v) in attrs {
            if k.is_empty() {
                return Err(invalid("resource.attributes", "empty attribute name"));
            }
            push(k.clone(), v.clone());
        }
    }
    let from_attrs = attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    attributes.retain(|(k, _)| k != "service.name");
    let service_name = file
        .and_then(|f| f.service_name.clone())
        .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
        .or(from_attrs)
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() {
        return Err(invalid("resource.service_name", "must not be empty"));
    }
    Ok(ResourceConfig {
        service_name,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(
        cli: &CliOverrides,
        yaml: &str,
        vars: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(Path::new("test.yaml"), yaml)?;
        Config::resolve(cli, &file, &env_of(vars))
    }

    #[test]
    fn defaults() {
        let c = resolve(&CliOverrides::default(), "", &[]).expect("ok");
        assert_eq!(c.threshold_ms, 10.0);
        assert_eq!(c.outputs, vec![OutputKind::Table]);
        assert_eq!(c.otlp.traces.endpoint, DEFAULT_GRPC_ENDPOINT);
        assert_eq!(c.otlp.traces.protocol, Protocol::Grpc);
        assert_eq!(c.otlp.traces.timeout, Duration::from_secs(10));
        assert_eq!(c.otlp.warn_threshold_ns, 1_000_000_000);
        assert_eq!(c.resource.service_name, "iostall");
        assert_eq!(
            c.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
    }

    #[test]
    fn fs_defaults_to_all_three_and_cli_beats_file() {
        let all = resolve(&CliOverrides::default(), "", &[]).expect("ok");
        assert_eq!(all.filesystems, FsSet::from_kinds(FsKind::ALL));
        let file = resolve(&CliOverrides::default(), "fs: [xfs]\n", &[]).expect("ok");
        assert_eq!(file.filesystems, FsSet::from_kinds([FsKind::Xfs]));
        let cli = CliOverrides {
            fs: vec![FsKind::Ext4, FsKind::Btrfs],
            ..CliOverrides::default()
        };
        let both = resolve(&cli, "fs: [xfs]\n", &[]).expect("ok");
        assert!(both.filesystems.contains(FsKind::Ext4));
        assert!(both.filesystems.contains(FsKind::Btrfs));
        assert!(!both.filesystems.contains(FsKind::Xfs));
        let empty = resolve(&CliOverrides::default(), "fs: []\n", &[]).expect_err("empty fs");
        assert!(empty.to_string().contains("fs"), "{empty}");
        let bad = resolve(&CliOverrides::default(), "fs: [zfs]\n", &[]).expect_err("unknown fs");
        assert!(bad.to_string().contains("zfs"), "{bad}");
    }

    #[test]
    fn http_general_endpoint_gets_signal_paths_and_per_signal_is_as_is() {
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "https://logs.example:443/custom",
                ),
            ],
        )
        .expect("ok");
        assert_eq!(c.otlp.traces.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.otlp.logs.endpoint, "https://logs.example:443/custom");
        assert_eq!(c.otlp.logs.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn grpc_endpoint_is_used_as_is() {
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
        )
        .expect("ok");
        assert_eq!(c.otlp.traces.endpoint, "http://127.0.0.1:4317");
        assert_eq!(c.otlp.logs.endpoint, "http://127.0.0.1:4317");
    }

    #[test]
    fn per_signal_protocol_env() {
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ],
        )
        .expect("ok");
        assert_eq!(c.otlp.traces.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.otlp.traces.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(c.otlp.logs.protocol, Protocol::Grpc);
    }

    #[test]
    fn headers_are_url_decoded_and_lowercased() {
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", " Api-Key = a%20b%3Dc , x=1 "),
                ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "only=logs"),
            ],
        )
        .expect("ok");
        assert_eq!(
            c.otlp.traces.headers,
            vec![("api-key".into(), "a b=c".into()), ("x".into(), "1".into())]
        );
        assert_eq!(c.otlp.logs.headers, vec![("only".into(), "logs".into())]);
    }

    #[test]
    fn bad_header_entry_names_the_variable() {
        let e = resolve(
            &CliOverrides::default(),
            "",
            &[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,novalue")],
        )
        .expect_err("must fail")
        .to_string();
        assert_eq!(
            e,
            "OTEL_EXPORTER_OTLP_HEADERS: entry \"novalue\" is not key=value"
        );
    }

    #[test]
    fn bad_endpoint_names_the_field() {
        let e = resolve(
            &CliOverrides::default(),
            "otlp:\n  endpoint: \"htp:/x\"\n",
            &[],
        )
        .expect_err("must fail")
        .to_string();
        assert_eq!(e, "otlp.endpoint: \"htp:/x\" is not a valid http(s) URL");
        let e = resolve(
            &CliOverrides::default(),
            "",
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")],
        )
        .expect_err("must fail")
        .to_string();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "), "{e}");
    }

    #[test]
    fn bad_timeout_protocol_compression() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ] {
            let e = resolve(&CliOverrides::default(), "", &[(var, value)])
                .expect_err("must fail")
                .to_string();
            assert!(e.starts_with(&format!("{var}: ")), "{e}");
        }
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .expect("ok");
        assert_eq!(c.otlp.logs.timeout, Duration::from_millis(2500));
        assert_eq!(c.otlp.logs.compression, Compression::Gzip);
    }

    #[test]
    fn unknown_yaml_key_is_named() {
        let e = resolve(
            &CliOverrides::default(),
            "otlp:\n  endpont: http://x:1\n",
            &[],
        )
        .expect_err("must fail")
        .to_string();
        assert!(e.contains("unknown field `endpont`"), "{e}");
        let e = resolve(&CliOverrides::default(), "treshold_ms: 5\n", &[])
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("unknown field `treshold_ms`"), "{e}");
    }

    #[test]
    fn precedence_cli_then_file_then_env() {
        let yaml = "threshold_ms: 5\noutputs: [json, otlp]\notlp:\n  endpoint: http://file:4317\n";
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")];
        let c = resolve(&CliOverrides::default(), yaml, &vars).expect("ok");
        assert_eq!(c.threshold_ms, 5.0);
        assert_eq!(c.outputs, vec![OutputKind::Json, OutputKind::Otlp]);
        assert_eq!(c.otlp.traces.endpoint, "http://file:4317");
        let cli = CliOverrides {
            threshold_ms: Some(1.0),
            otlp_endpoint: Some("http://cli:4317".into()),
            outputs: vec![OutputKind::Table],
            ..CliOverrides::default()
        };
        let c = resolve(&cli, yaml, &vars).expect("ok");
        assert_eq!(c.threshold_ms, 1.0);
        assert_eq!(c.outputs, vec![OutputKind::Table]);
        assert_eq!(c.otlp.traces.endpoint, "http://cli:4317");
        let c = resolve(&CliOverrides::default(), "", &vars).expect("ok");
        assert_eq!(c.otlp.traces.endpoint, "http://env:4317");
    }

    #[test]
    fn resource_service_name_and_attributes() {
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=fromattrs,team=sre%2Cops",
                ),
                ("OTEL_SERVICE_NAME", "node-io"),
            ],
        )
        .expect("ok");
        assert_eq!(c.resource.service_name, "node-io");
        assert_eq!(
            c.resource.attributes,
            vec![("team".into(), "sre,ops".into())]
        );
    }

    #[test]
    fn metrics_listen_off_and_bad() {
        let c = resolve(
            &CliOverrides::default(),
            "metrics:\n  listen: \"off\"\n",
            &[],
        )
        .expect("ok");
        assert_eq!(c.metrics_listen, None);
        let e = resolve(
            &CliOverrides::default(),
            "metrics:\n  listen: nowhere\n",
            &[],
        )
        .expect_err("must fail")
        .to_string();
        assert!(e.starts_with("metrics.listen: "), "{e}");
    }

    fn kube_on(c: &Config) -> &KubeSettings {
        match &c.kube {
            KubeSetting::On(k) => k,
            KubeSetting::Off { reason } => panic!("kube is off: {reason}"),
        }
    }

    #[test]
    fn kube_auto_is_off_without_a_cluster_and_on_in_a_pod() {
        let c = resolve(&CliOverrides::default(), "", &[]).expect("ok");
        let KubeSetting::Off { reason } = &c.kube else {
            panic!("auto without a cluster must be off: {:?}", c.kube);
        };
        assert!(reason.contains("KUBERNETES_SERVICE_HOST"), "{reason}");
        let pod_env = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("NODE_NAME", "node-a"),
        ];
        let c = resolve(&CliOverrides::default(), "", &pod_env).expect("ok");
        let k = kube_on(&c);
        assert_eq!(k.node_name, "node-a");
        assert_eq!(k.node_name_source, "NODE_NAME");
        assert_eq!(k.client, KubeClientSource::Infer);
        assert!(k.resolve_owners);
        assert_eq!(k.pod_labels, DEFAULT_POD_LABELS);
        // A kubeconfig in $HOME is found too.
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(home.path().join(".kube")).expect("mkdir");
        std::fs::write(home.path().join(".kube/config"), "apiVersion: v1\n").expect("write");
        let home_s = home.path().to_string_lossy().into_owned();
        let c = resolve(
            &CliOverrides::default(),
            "",
            &[("HOME", &home_s), ("NODE_NAME", "n1")],
        )
        .expect("ok");
        assert_eq!(kube_on(&c).node_name, "n1");
        // Explicit off wins over a pod environment.
        let c = resolve(
            &CliOverrides::default(),
            "kube:\n  enabled: off\n",
            &pod_env,
        )
        .expect("ok");
        assert!(matches!(c.kube, KubeSetting::Off { .. }));
    }

    #[test]
    fn kube_precedence_cli_then_file_then_env() {
        let yaml = "kube:\n  enabled: on\n  node_name: from-file\n  api_server: http://127.0.0.1:8001\n  pod_labels: [team, app.kubernetes.io/*]\n  resolve_owners: false\n";
        let env = [("NODE_NAME", "from-env")];
        let c = resolve(&CliOverrides::default(), yaml, &env).expect("ok");
        let k = kube_on(&c);
        assert_eq!(k.node_name, "from-file");
        assert_eq!(
            k.client,
            KubeClientSource::ApiServer("http://127.0.0.1:8001".into())
        );
        assert_eq!(k.pod_labels, vec!["team", "app.kubernetes.io/*"]);
        assert!(!k.resolve_owners);
        let cli = CliOverrides {
            kube_node_name: Some("from-cli".into()),
            kube_api_server: Some("https://api.example:6443".into()),
            ..CliOverrides::default()
        };
        let c = resolve(&cli, yaml, &env).expect("ok");
        let k = kube_on(&c);
        assert_eq!(k.node_name, "from-cli");
        assert_eq!(
            k.client,
            KubeClientSource::ApiServer("https://api.example:6443".into())
        );
        let cli = CliOverrides {
            kube: Some(KubeMode::Off),
            ..CliOverrides::default()
        };
        assert!(matches!(
            resolve(&cli, yaml, &env).expect("ok").kube,
            KubeSetting::Off { .. }
        ));
        // `pod_labels: []` copies none; YAML booleans work for `enabled`.
        let c = resolve(
            &CliOverrides::default(),
            "kube:\n  enabled: true\n  api_server: http://k:1\n  pod_labels: []\n",
            &env,
        )
        .expect("ok");
        assert!(kube_on(&c).pod_labels.is_empty());
    }

    #[test]
    fn kube_errors_name_the_field() {
        let err = |cli: &CliOverrides, yaml: &str, env: &[(&str, &str)]| {
            resolve(cli, yaml, env).expect_err("must fail").to_string()
        };
        let none = CliOverrides::default();
        let e = err(&none, "kube:\n  enabled: maybe\n", &[]);
        assert!(
            e.contains("kube.enabled") && e.contains("auto, on or off"),
            "{e}"
        );
        let e = err(&none, "kube:\n  enabeld: on\n", &[]);
        assert!(e.contains("unknown field `enabeld`"), "{e}");
        let e = err(&none, "kube:\n  enabled: on\n", &[]);
        assert!(e.starts_with("kube.enabled: is on, but"), "{e}");
        let e = err(&none, "kube:\n  api_server: \"localhost:6443\"\n", &[]);
        assert!(e.starts_with("kube.api_server: "), "{e}");
        let cli = CliOverrides {
            kube_api_server: Some("ftp://x".into()),
            ..CliOverrides::default()
        };
        assert!(err(&cli, "", &[]).starts_with("--kube-api-server: "));
        let e = err(&none, "kube:\n  kubeconfig: /nonexistent/kubeconfig\n", &[]);
        assert!(e.starts_with("kube.kubeconfig: cannot read"), "{e}");
        let e = err(
            &none,
            "kube:\n  api_server: http://a:1\n  kubeconfig: /etc/hostname\n",
            &[],
        );
        assert!(e.starts_with("kube.api_server: "), "{e}");
        let on = "kube:\n  api_server: http://a:1\n";
        let e = err(&none, &format!("{on}  node_name: \"\"\n"), &[]);
        assert!(e.starts_with("kube.node_name: "), "{e}");
        let e = err(&none, &format!("{on}  node_name: Node_A\n"), &[]);
        assert!(
            e.starts_with("kube.node_name: \"Node_A\" is not a valid node name"),
            "{e}"
        );
        let e = err(&none, on, &[("NODE_NAME", "bad name")]);
        assert!(e.starts_with("NODE_NAME: "), "{e}");
        let e = err(&none, &format!("{on}  pod_labels: [app, \"a*b\"]\n"), &[]);
        assert!(e.starts_with("kube.pod_labels[1]: "), "{e}");
        let e = err(&none, &format!("{on}  pod_labels: [\"\"]\n"), &[]);
        assert!(e.starts_with("kube.pod_labels[0]: "), "{e}");
    }

    #[test]
    fn lifecycle_process_event_limit_defaults_reads_and_names_bad_fields() {
        let none = CliOverrides::default();
        let got = |yaml: &str| {
            resolve(&none, yaml, &[])
                .expect("valid")
                .process_event_limit
        };
        assert_eq!(got(""), ProcessEventLimit::default());
        assert_eq!(
            got("lifecycle:\n  process_event_burst: 0\n  process_events_per_second: 0.5\n"),
            ProcessEventLimit {
                burst: 0,
                per_second: 0.5
            }
        );
        let err = |yaml: &str| {
            resolve(&none, yaml, &[])
                .expect_err("must fail")
                .to_string()
        };
        let e = err("lifecycle:\n  process_events_per_second: -1\n");
        assert!(
            e.starts_with("lifecycle.process_events_per_second: must be a number ≥ 0"),
            "{e}"
        );
        let e = err("lifecycle:\n  process_event_burst: -3\n");
        assert!(e.contains("process_event_burst"), "{e}");
        let e = err("lifecycle:\n  burst: 3\n");
        assert!(e.contains("unknown field `burst`"), "{e}");
    }

    #[test]
    fn an_endpoint_set_anywhere_turns_otlp_on_unless_outputs_were_chosen() {
        let none = CliOverrides::default();
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
        let c = resolve(&none, "", &env).expect("valid");
        assert_eq!(c.outputs, vec![OutputKind::Table, OutputKind::Otlp]);
        assert_eq!(
            c.notes,
            vec!["OTEL_EXPORTER_OTLP_ENDPOINT is set: OTLP output on"]
        );
        let c = resolve(&none, "otlp:\n  endpoint: http://c:4317\n", &[]).expect("valid");
        assert_eq!(c.outputs, vec![OutputKind::Table, OutputKind::Otlp]);
        let flag = CliOverrides {
            otlp_endpoint: Some("http://c:4317".into()),
            ..CliOverrides::default()
        };
        assert!(
            resolve(&flag, "", &[])
                .expect("valid")
                .outputs
                .contains(&OutputKind::Otlp)
        );
        // Nothing set: the table alone, no note.
        let c = resolve(&none, "", &[]).expect("valid");
        assert_eq!(c.outputs, vec![OutputKind::Table]);
        assert!(c.notes.is_empty());
        // Outputs chosen without otlp: kept, and said.
        let c = resolve(&none, "outputs: [json]\n", &env).expect("valid");
        assert_eq!(c.outputs, vec![OutputKind::Json]);
        assert!(c.notes[0].contains("leave OTLP out"), "{:?}", c.notes);
    }

    #[test]
    fn otel_signal_exporters_none_turn_a_signal_off() {
        let none = CliOverrides::default();
        let yaml = "outputs: [otlp]\n";
        let c = resolve(&none, yaml, &[("OTEL_LOGS_EXPORTER", "none")]).expect("valid");
        assert!(c.otlp.traces.enabled && !c.otlp.logs.enabled);
        assert_eq!(c.notes, vec!["OTEL_LOGS_EXPORTER: no log records are sent"]);
        let c = resolve(&none, yaml, &[("OTEL_TRACES_EXPORTER", "otlp, console")]).expect("valid");
        assert!(c.otlp.traces.enabled, "a list with otlp keeps it");
        let c = resolve(&none, yaml, &[("OTEL_TRACES_EXPORTER", "console")]).expect("valid");
        assert!(
            !c.otlp.traces.enabled,
            "iostall has no console span exporter"
        );
        let e = resolve(
            &none,
            yaml,
            &[
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_LOGS_EXPORTER", "none"),
            ],
        )
        .expect_err("both off with otlp chosen")
        .to_string();
        assert!(e.starts_with("OTEL_TRACES_EXPORTER: "), "{e}");
        // Without otlp among the outputs, both off is no contradiction.
        let c = resolve(
            &none,
            "",
            &[
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_LOGS_EXPORTER", "none"),
            ],
        );
        assert!(c.is_ok());
    }

    #[test]
    fn why_sources_are_on_by_default_and_turn_off_by_name() {
        let none = CliOverrides::default();
        let got = |yaml: &str| resolve(&none, yaml, &[]).expect("valid").why;
        assert_eq!(got(""), WhyConfig::default());
        assert!(got("").journal && got("").pressure);
        assert_eq!(
            got("why:\n  journal: false\n"),
            WhyConfig {
                journal: false,
                ..WhyConfig::default()
            }
        );
        let e = resolve(&none, "why:\n  jornal: false\n", &[])
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("jornal"), "{e}");
    }

    #[test]
    fn startup_defaults_reads_turns_off_and_names_bad_fields() {
        let none = CliOverrides::default();
        let got = |yaml: &str| resolve(&none, yaml, &[]).expect("valid").startup;
        assert_eq!(got(""), Some(StartupConfig::default()));
        assert_eq!(got("startup:\n  enabled: false\n"), None);
        let custom =
            got("startup:\n  settle_ms: 2000\n  timeout_s: 60\n  max_open: 8\n").expect("on");
        assert_eq!(custom.settle, Duration::from_millis(2000));
        assert_eq!(custom.timeout, Duration::from_secs(60));
        assert_eq!(custom.max_open, 8);
        let err = |yaml: &str| {
            resolve(&none, yaml, &[])
                .expect_err("must fail")
                .to_string()
        };
        for (yaml, field) in [
            ("startup:\n  settle_ms: 5\n", "startup.settle_ms: "),
            ("startup:\n  timeout_s: 0\n", "startup.timeout_s: "),
            ("startup:\n  max_open: 0\n", "startup.max_open: "),
        ] {
            let e = err(yaml);
            assert!(e.starts_with(field), "{e}");
        }
        let e = err("startup:\n  settle: 3\n");
        assert!(e.contains("unknown field `settle`"), "{e}");
        let e = err("startup:\n  settle_ms: soon\n");
        assert!(e.contains("settle_ms"), "{e}");
    }

    #[test]
    fn why_disk_is_on_by_default_turns_off_and_names_bad_fields() {
        let none = CliOverrides::default();
        let got = |yaml: &str| resolve(&none, yaml, &[]).expect("valid").why;
        assert_eq!(got(""), WhyConfig::default());
        assert_eq!(got("").disk, Some(WhyDiskConfig { window_s: 8 }));
        assert_eq!(got("why:\n  disk:\n    enabled: false\n").disk, None);
        assert_eq!(
            got("why:\n  disk:\n    window_s: 12\n").disk,
            Some(WhyDiskConfig { window_s: 12 })
        );
        let e = resolve(&none, "why:\n  disk:\n    window_s: 2\n", &[])
            .expect_err("too short")
            .to_string();
        assert!(e.starts_with("why.disk.window_s: "), "{e}");
        let e = resolve(&none, "why:\n  disk:\n    windows: 2\n", &[])
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("unknown field `windows`"), "{e}");
    }

    #[test]
    fn unannounced_hold_defaults_on_and_is_off_without_runtimes_or_at_zero() {
        let none = CliOverrides::default();
        let hold = |cli: &CliOverrides, yaml: &str| {
            resolve(cli, yaml, &[])
                .expect("valid")
                .sources
                .unannounced_hold
        };
        assert_eq!(
            hold(&none, ""),
            Some(Duration::from_millis(DEFAULT_UNANNOUNCED_HOLD_MS))
        );
        assert_eq!(
            hold(&none, "runtime:\n  unannounced_hold_ms: 2500\n"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(hold(&none, "runtime:\n  unannounced_hold_ms: 0\n"), None);
        let no_runtimes = CliOverrides {
            containerd_socket: Some("off".into()),
            docker_socket: Some("off".into()),
            ..CliOverrides::default()
        };
        assert_eq!(
            hold(&no_runtimes, ""),
            None,
            "nothing would ever announce a container"
        );
        let e = resolve(&none, "runtime:\n  unannounced_hold_ms: soon\n", &[])
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("unannounced_hold_ms"), "{e}");
    }

    #[test]
    fn certificate_must_be_pem() {
        let dir = std::env::temp_dir().join(format!("iostall-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a cert").expect("write");
        let e = resolve(
            &CliOverrides::default(),
            &format!("otlp:\n  certificate: {}\n", bad.display()),
            &[],
        )
        .expect_err("must fail")
        .to_string();
        assert!(e.starts_with("otlp.certificate: "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
