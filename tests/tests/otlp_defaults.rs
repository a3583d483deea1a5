//! A new user's first OTLP run: `OTEL_EXPORTER_OTLP_ENDPOINT=… iostall`, no `-o`, as
//! every OpenTelemetry component is configured. The endpoint turns OTLP on (beside the
//! default table) and says so; an explicit `-o table` with an endpoint set sends nothing
//! and says that. The real binary, the real kernel, a real ext4 fixture, an OTLP receiver.
use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use iostall_tests::{
    iostall_proc::Iostall,
    otlp_receiver::{OtlpReceiver, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");

/// Five write+fsync of `comm` on the fixture.
fn write_fsyncs(fs: &SlowExt4, comm: &str) -> Result<()> {
    let status = Command::new(WORKLOAD)
        .args(["--comm", comm, "write-fsync", "--dir"])
        .arg(fs.mount_point())
        .args(["--count", "5", "--size", "4096"])
        .output()
        .context("workload")?;
    ensure!(status.status.success(), "workload failed");
    Ok(())
}

fn start(outputs: &[&str], comm: &str, endpoint: &str) -> Result<Iostall> {
    let mut args = vec![
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-c",
        comm,
        "--metrics-listen",
        "off",
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
    ];
    args.extend_from_slice(outputs);
    Iostall::start_with_env(&args, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)])
}

#[test]
fn an_endpoint_in_the_environment_turns_otlp_on() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let mut rx = OtlpReceiver::grpc()?;
    let comm = "otlp-default";
    let iostall = start(&[], comm, &rx.endpoint())?;
    write_fsyncs(&fs, comm)?;
    let got = rx.collect_until(Duration::from_secs(10), |c| c.spans.len() >= 5);
    let finished = iostall.stop()?;
    let ours = got
        .spans
        .iter()
        .filter(|(_, s)| str_attr(&s.attributes, "process.command").as_deref() == Some(comm))
        .count();
    assert!(
        ours >= 5,
        "spans of the workload: {ours}\n{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("OTEL_EXPORTER_OTLP_ENDPOINT is set: OTLP output on"),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stdout.iter().any(|l| l.contains(comm)),
        "the table is still printed"
    );

    // `-o table` chosen: nothing goes out, and one line says why.
    let mut rx = OtlpReceiver::grpc()?;
    let iostall = start(&["-o", "table"], comm, &rx.endpoint())?;
    write_fsyncs(&fs, comm)?;
    let got = rx.collect_until(Duration::from_secs(3), |_| false);
    let finished = iostall.stop()?;
    assert_eq!(
        got.spans.len() + got.logs.len(),
        0,
        "nothing sent with -o table"
    );
    let said: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("leave OTLP out"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {}", finished.stderr);
    Ok(())
}
