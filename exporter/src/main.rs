//! The `iostall` command line.
use std::{io, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use iostall::{
    pipeline::{self, RunOptions},
    preflight,
    sink::{Sink, console::ConsoleSink, json::JsonSink},
    tracer::{AttachRequest, TracerOptions},
};
use tracing_subscriber::EnvFilter;

/// Slow ext4 operations, live, with the process (and soon pod) that did them.
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
    /// Report what this kernel supports (BTF, tracefs, ring buffer, each attach mode) and why not.
    Probe {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Report operations at least this slow, in milliseconds (0 = every operation).
    #[arg(long, short = 't', default_value_t = 10.0, value_name = "MS")]
    threshold_ms: f64,
    /// Only this process id.
    #[arg(long, short = 'p')]
    pid: Option<u32>,
    /// Only threads whose comm is exactly this.
    #[arg(long, short = 'c')]
    comm: Option<String>,
    /// Stop after this many seconds.
    #[arg(long, short = 'd', value_name = "SECONDS")]
    duration: Option<f64>,
    /// How to attach: auto tries fentry, then kprobe, then tracepoint.
    #[arg(long, value_enum, default_value_t = AttachRequest::Auto)]
    attach: AttachRequest,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// The ext4slower table.
    Table,
    /// One JSON object per event.
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("IOSTALL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    match cli.command {
        Some(Command::Probe { json }) => probe(json),
        None => run(cli.run),
    }
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

fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.threshold_ms.is_finite() || args.threshold_ms < 0.0 {
        bail!(
            "--threshold-ms must be a number ≥ 0, got {}",
            args.threshold_ms
        );
    }
    let duration = match args.duration {
        Some(d) if !d.is_finite() || d <= 0.0 => bail!("--duration must be > 0 seconds, got {d}"),
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    preflight::check()?;
    let options = RunOptions {
        tracer: TracerOptions {
            threshold_ns: (args.threshold_ms * 1e6) as u64,
            filter_pid: args.pid,
        },
        attach: args.attach,
        comm: args.comm,
    };
    let sink: Box<dyn Sink> = match args.output {
        Output::Table => Box::new(ConsoleSink::new(io::BufWriter::new(io::stdout()))),
        Output::Json => Box::new(JsonSink::new(io::BufWriter::new(io::stdout()))),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(pipeline::run(options, vec![sink], shutdown(duration)))?;
    tracing::info!(
        records = summary.records,
        ringbuf_drops = summary.kernel.ringbuf_drops,
        inflight_full = summary.kernel.inflight_full,
        sink_queue_drops = summary.sink_queue_drops,
        decode_errors = summary.decode_errors,
        "stopped"
    );
    Ok(())
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
