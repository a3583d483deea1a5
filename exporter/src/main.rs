//! The `iostall` command line.
use std::{io, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use iostall::{
    config::{
        CliOverrides, Config, FileConfig, KubeClientSource, KubeMode, KubeSetting,
        NODE_NAME_FROM_HOST, OutputKind, Protocol,
    },
    correlate::Correlator,
    enrich::Enricher,
    event::FsKind,
    metrics::{Metrics, MetricsServer},
    otlp::resource::{Resources, host_name},
    pipeline::{self, RunOptions},
    preflight,
    runtime::{kube, start::RuntimeSources},
    sink::{Sink, console::ConsoleSink, json::JsonSink, otlp::OtlpSink},
    tracer::{AttachRequest, TracerOptions},
};
use tracing_subscriber::EnvFilter;

/// Slow ext4, xfs and btrfs operations, live, with the process, container and pod that did them.
#[derive(Debug, Parser)]
#[command(name = "iostall", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report what this kernel supports (BTF, tracefs, ring buffer, each attach mode) and why
    /// not, and where iostall would be blind (runtime directories not on ext4).
    Probe {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Settings of a run. Every flag overrides the config file, which overrides the
/// `OTEL_*` environment, which overrides the defaults (see `iostall::config`).
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// YAML config file: every setting below and more (otlp, resource, runtime, kube,
    /// lifecycle and startup sections; see the README's configuration reference).
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Report operations at least this slow, in milliseconds (0 = every operation) [default: 10].
    #[arg(long, short = 't', value_name = "MS")]
    threshold_ms: Option<f64>,
    /// Only this process id.
    #[arg(long, short = 'p')]
    pid: Option<u32>,
    /// Only threads whose comm is exactly this.
    #[arg(long, short = 'c')]
    comm: Option<String>,
    /// Stop after this many seconds.
    #[arg(long, short = 'd', value_name = "SECONDS")]
    duration: Option<f64>,
    /// How to attach: auto tries fentry, then kprobe, then tracepoint [default: auto].
    #[arg(long, value_enum)]
    attach: Option<AttachRequest>,
    /// Filesystems traced, repeatable or comma-separated: ext4, xfs, btrfs; the others
    /// are left out in the kernel [default: ext4,xfs,btrfs].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FS")]
    fs: Vec<FsKind>,
    /// Outputs, repeatable or comma-separated: table (alias console), json, otlp [default: table].
    #[arg(long, short = 'o', value_enum, value_delimiter = ',')]
    output: Vec<OutputKind>,
    /// OTLP endpoint for both signals (like OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP protocol (like OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, value_enum)]
    otlp_protocol: Option<Protocol>,
    /// Extra OTLP request header, key=value (repeatable; replaces other header sources).
    #[arg(long, value_name = "KEY=VALUE")]
    otlp_header: Vec<String>,
    /// Where /metrics and /healthz listen (host:port), or "off" [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// containerd's socket, for container and pod names (or "off").
    #[arg(long, value_name = "PATH")]
    containerd_socket: Option<String>,
    /// dockerd's socket, for container names (or "off").
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<String>,
    /// Kubernetes API enrichment (owners, pod labels): auto is on in a pod or with a
    /// kubeconfig [default: auto].
    #[arg(long, value_enum)]
    kube: Option<KubeMode>,
    /// Kubernetes API server URL, without credentials (e.g. `kubectl proxy`).
    #[arg(long, value_name = "URL")]
    kube_api_server: Option<String>,
    /// This node's name, whose pods are watched [default: $NODE_NAME, else the host name].
    #[arg(long, value_name = "NAME")]
    kube_node_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        // A closed stderr (`iostall 2>&1 | head`) loses log lines; reporting that with
        // `eprintln!` would panic on the same closed stderr.
        .log_internal_errors(false)
        .init();
    match cli.command {
        Some(Command::Probe { json }) => probe(json),
        None => run(cli.run),
    }
}

/// `IOSTALL_LOG` (default `info`). The kube crates log every failed request and retry
/// (an ERROR per connection attempt while the API server is down, a WARN per 403); the
/// pod index already reports each outage once with its cause, so they stay quiet unless
/// `IOSTALL_LOG` names them.
fn log_filter() -> EnvFilter {
    const KUBE_QUIET: [&str; 3] = [
        "kube_client::client::builder=off",
        // A WARN ("eof in poll") each time a watch stream is cut: the outage's own line.
        "kube_client::client=error",
        "kube_runtime::watcher=off",
    ];
    let spec = std::env::var("IOSTALL_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&spec)
        .ok()
        .filter(|_| !spec.trim().is_empty())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if !spec.contains("kube") {
        for directive in KUBE_QUIET {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    filter
}

fn probe(json: bool) -> anyhow::Result<()> {
    let report = preflight::probe();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("kernel release: {}", report.kernel_release);
    for cap in &report.capabilities {
        let mark = if cap.ok { "yes" } else { "no " };
        println!("{:<24} {mark}  {}", cap.name, cap.detail);
    }
    match report.auto_mode {
        Some(mode) => println!("--attach auto would use: {mode}"),
        None => println!("--attach auto would fail: no attach mode works on this kernel"),
    }
    Ok(())
}

/// Resolves and validates the whole configuration: nothing is attached before this.
fn load_config(args: RunArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| anyhow!("config error: {e}"))?,
        None => FileConfig::default(),
    };
    let cli = CliOverrides {
        threshold_ms: args.threshold_ms,
        pid: args.pid,
        comm: args.comm,
        attach: args.attach,
        fs: args.fs,
        duration_s: args.duration,
        outputs: args.output,
        otlp_endpoint: args.otlp_endpoint,
        otlp_protocol: args.otlp_protocol,
        otlp_headers: args.otlp_header,
        metrics_listen: args.metrics_listen,
        containerd_socket: args.containerd_socket,
        docker_socket: args.docker_socket,
        kube: args.kube,
        kube_api_server: args.kube_api_server,
        kube_node_name: args.kube_node_name,
    };
    Config::resolve(&cli, &file, &|k| std::env::var(k).ok())
        .map_err(|e| anyhow!("config error: {e}"))
}

/// The `why` sources the configuration turns on. One that cannot start is said once
/// and left off: the records still go out, without that part.
fn explainer(config: &Config, metrics: &Metrics) -> iostall::why::Explainer {
    let mut explainer = iostall::why::Explainer {
        journal: config.why.journal.then(iostall::why::JournalView::new),
        pressure: config
            .why
            .pressure
            .then(iostall::why::PressureReader::discover),
        ..Default::default()
    };
    if let Some(disk) = &config.why.disk {
        let detector = iostall::why::disk::DetectorConfig {
            window: usize::try_from(disk.window_s).unwrap_or(8),
            ..Default::default()
        };
        match iostall::why::DiskView::start(detector) {
            Ok(view) => {
                metrics.set_disks(view.state());
                explainer.disk = Some(view);
            }
            Err(e) => tracing::warn!("no disk context (why.disk): {e}"),
        }
    }
    explainer
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    for note in &config.notes {
        tracing::info!("{note}");
    }
    preflight::check()?;
    let metrics = Metrics::new();
    // Silence must not pass for health: say where iostall cannot see.
    let filesystems = iostall::coverage::check_node(config.filesystems);
    for root in filesystems.iter().filter(|r| !r.seen()) {
        tracing::warn!("{}", root.message());
    }
    metrics.set_filesystems(filesystems);
    let enricher = Enricher::for_host();
    let (runtime_events_tx, runtime_events_rx) =
        tokio::sync::mpsc::channel(iostall::runtime::start::EVENT_QUEUE);
    let metadata = enricher.metadata.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Where the cloud says it inside the guest: AWS EBS volumes' own throttling counters.
    let ebs = iostall::ebs_nvme::EbsSampler::new(iostall::ebs_nvme::find_volumes(
        std::path::Path::new("/sys/block"),
    ));
    let ebs_view = ebs.as_ref().map(|s| iostall::why::EbsView::new(s.recent()));
    if let Some(ebs) = ebs
        && let Err(e) = ebs.spawn(metrics.clone())
    {
        tracing::warn!(error = %e, "EBS volume statistics off: cannot start their thread");
    }
    let options = RunOptions {
        tracer: TracerOptions {
            threshold_ns: (config.threshold_ms * 1e6) as u64,
            filter_pid: config.pid,
            filter_comm: config.comm.clone(),
            filesystems: config.filesystems,
            syscall_probes: None,
        },
        attach: config.attach,
        enricher: Some(enricher),
        runtime_events: Some(runtime_events_rx),
        correlator: Correlator::new(&host_name()),
        metrics: metrics.clone(),
        process_event_limit: config.process_event_limit,
        unannounced_hold: config.sources.unannounced_hold,
        startup: config.startup.clone(),
        explainer: iostall::why::Explainer {
            ebs: ebs_view,
            ..explainer(&config, &metrics)
        },
    };
    let metrics_server = match config.metrics_listen.map(MetricsServer::bind) {
        Some(Ok(server)) => Some(server),
        Some(Err(e)) if config.metrics_listen_explicit => bail!("config error: {e}"),
        Some(Err(e)) => {
            tracing::warn!("{e}; running without /metrics (set --metrics-listen to choose a port)");
            None
        }
        None => None,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for output in &config.outputs {
        sinks.push(match output {
            OutputKind::Table => Box::new(ConsoleSink::new(io::BufWriter::new(io::stdout()))),
            OutputKind::Json => Box::new(JsonSink::new(io::BufWriter::new(io::stdout()))),
            OutputKind::Otlp => {
                // The node name the pods were asked for, unless it is only a guess.
                let resources = match &config.kube {
                    KubeSetting::On(k) if k.node_name_source != NODE_NAME_FROM_HOST => {
                        Resources::new(&config.resource, Some(k.node_name.clone()))
                    }
                    _ => Resources::from_env(&config.resource),
                };
                tracing::info!(
                    traces = %config.otlp.traces.endpoint,
                    logs = %config.otlp.logs.endpoint,
                    protocol = ?config.otlp.traces.protocol,
                    "exporting OTLP"
                );
                Box::new(
                    OtlpSink::start(&config.otlp, resources, metrics.clone())
                        .map_err(|e| anyhow!("config error: {e}"))?,
                )
            }
        });
    }
    if let Some(server) = metrics_server {
        let addr = server.local_addr().ok();
        let metrics = metrics.clone();
        runtime.spawn(async move {
            if let Err(e) = server.serve(metrics).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
        if let Some(addr) = addr {
            tracing::info!("metrics on http://{addr}/metrics");
        }
    }
    // Runtime sources only feed the metadata cache: an absent or restarting runtime
    // slows nothing (they retry in the background).
    let sources = runtime.block_on(async {
        RuntimeSources::start(&config.sources, metadata.clone(), Some(runtime_events_tx))
    });
    // Never waits for the API server: the index fills in the background, and its pod
    // events (a pod added to this node is the first sign of its startup) join the
    // runtime events.
    let kube_task = runtime.block_on(start_kube(&config.kube, &metadata, sources.sender()))?;
    // The sources count what their queues drop; /metrics shows it every second.
    let queue_drops = {
        let sender = sources.sender();
        let metrics = metrics.clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.set_runtime_queue_dropped(sender.dropped());
            }
        })
    };
    let summary = runtime.block_on(pipeline::run(options, sinks, shutdown(config.duration)))?;
    queue_drops.abort();
    metrics.set_runtime_queue_dropped(sources.dropped());
    if sources.dropped() > 0 {
        tracing::warn!(
            dropped = sources.dropped(),
            "runtime events dropped (updater behind)"
        );
    }
    drop(sources);
    if let Some(task) = kube_task {
        task.abort();
    }
    tracing::info!(
        records = summary.records,
        ringbuf_drops = summary.kernel.ringbuf_drops,
        inflight_full = summary.kernel.inflight_full,
        kernel_events = summary.kernel.events,
        kernel_filtered_other_comm = summary.kernel.other_comm,
        kernel_filtered_other_fs = summary.kernel.other_fs,
        sink_queue_drops = summary.sink_queue_drops,
        decode_errors = summary.decode_errors,
        otlp_exported_spans = metrics.exported_spans(),
        otlp_dropped_queue_full = metrics.dropped(iostall::metrics::DropReason::OtlpQueueFull),
        otlp_dropped_export_failed =
            metrics.dropped(iostall::metrics::DropReason::OtlpExportFailed),
        "stopped"
    );
    Ok(())
}

/// Starts the Kubernetes pod index when enabled and makes the metadata cache consult
/// it. Only a bad kubeconfig fails here (before anything is attached); an unreachable
/// API server is one warning and a background retry.
async fn start_kube(
    setting: &KubeSetting,
    metadata: &iostall::enrich::metadata::SharedMetadata,
    events: iostall::runtime::EventSender,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let k = match setting {
        KubeSetting::Off { reason } => {
            tracing::info!("Kubernetes API enrichment off: {reason}");
            return Ok(None);
        }
        KubeSetting::On(k) => k,
    };
    let (client, via) = match &k.client {
        KubeClientSource::Infer => (
            kube::ClientSource::Infer,
            "in-cluster/kubeconfig".to_owned(),
        ),
        KubeClientSource::ApiServer(url) => (
            kube::ClientSource::from_url(url)
                .map_err(|e| anyhow!("config error: kube.api_server: {e}"))?,
            url.clone(),
        ),
        KubeClientSource::Kubeconfig(path) => (
            kube::ClientSource::from_kubeconfig(path)
                .await
                .map_err(|e| anyhow!("config error: kube.kubeconfig: {e}"))?,
            path.display().to_string(),
        ),
    };
    let config = kube::KubeConfig::new(k.node_name.clone())
        .with_copy_labels(k.pod_labels.iter().cloned())
        .with_resolve_owners(k.resolve_owners);
    let (index, task) = kube::KubePodIndex::spawn(config, client, Some(events));
    metadata
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_pod_lookup(std::sync::Arc::new(index));
    tracing::info!(
        node = %k.node_name,
        node_from = %k.node_name_source,
        api = %via,
        labels = ?k.pod_labels,
        "Kubernetes API enrichment on: watching this node's pods"
    );
    Ok(Some(task))
}

/// Completes on Ctrl-C, SIGTERM, or after `duration`.
async fn shutdown(duration: Option<Duration>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = timer => {}
    }
}
