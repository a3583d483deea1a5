//! End to end, as root: a container created through CRI on a real containerd (with the
//! kubelet's labels) does slow IO on a throttled ext4 loop filesystem and exits with
//! code 3; the real `iostall` binary (real eBPF, tracepoint mode, `-o otlp`) sends its
//! lifecycle to the test's real OTLP receiver as log records — created, started, exited
//! in order, each with its event name under the pod's own Resource, the exit one WARN
//! with its exit code — and the exit log record carries the trace id of the container's
//! slow IO spans of the same 10 s window. Nothing is mocked.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid, throttle_container_writes},
    iostall_proc::Iostall,
    otlp_receiver::{Collected, OtlpReceiver, int_attr, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

/// Width of iostall's trace windows (`iostall::correlate::TRACE_WINDOW_NS`).
const WINDOW_NS: u64 = iostall::correlate::TRACE_WINDOW_NS;

/// Sleeps until the start of a trace window (plus a little), unless the current one
/// has just begun: the container's IO and its exit then fall in one window, which the
/// trace-id comparison needs (a window edge between them would split the trace, as
/// designed).
fn wait_for_window_start() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let into = now % WINDOW_NS;
    let lead = 200_000_000;
    if into > 1_000_000_000 {
        std::thread::sleep(Duration::from_nanos(WINDOW_NS - into + lead));
    }
}

#[test]
fn container_lifecycle_is_logged_under_its_pod_in_the_trace_of_its_io() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let volume = fs.mount_point().join("volume");
    std::fs::create_dir(&volume)?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    let mut rx = OtlpReceiver::grpc()?;
    let endpoint = rx.endpoint();
    let socket = ctd.socket().to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-c",
        "dd",
        "-t",
        "20",
        "-o",
        "otlp",
        "--otlp-endpoint",
        &endpoint,
        "--containerd-socket",
        &socket,
        "--docker-socket",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    // Every event of the containers made next is expected: wait for the source.
    iostall.wait_for_source(&socket)?;

    let rt = tokio::runtime::Runtime::new()?;
    let (uid, id) = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let uid = new_pod_uid()?;
        let sandbox = cri
            .run_pod_sandbox("exiter-0", "lifecycle", &uid, 0)
            .await?;
        // The sleep leaves time to throttle the container's own blkio cgroup; then dd
        // writes with O_DSYNC and fsyncs (each waits on the throttled disk) and the
        // container fails with code 3.
        let spec = ContainerSpec::busybox(
            "failer",
            &[
                "sh",
                "-c",
                "sleep 2; dd if=/dev/zero of=/data/out bs=4096 count=3 oflag=direct && \
                 dd if=/dev/zero of=/data/out bs=4096 count=2 seek=3 conv=notrunc,fsync; \
                 exit 3",
            ],
        )
        .bind(&volume, "/data");
        let id = cri.create_container(&sandbox, &spec).await?;
        wait_for_window_start();
        cri.start_container(&id).await?;
        throttle_container_writes(&uid, &id, fs.device(), 10)?;
        let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        ensure!(status.exit_code == 3, "{status:?}");
        anyhow::Ok((uid, id))
    })?;

    // Stopping flushes the OTLP queue; the receiver then has everything.
    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let got = rx.collect_until(Duration::from_secs(20), |c| {
        !c.logs_named("iostall.container.exited").is_empty()
    });
    let lifecycle = container_logs(&got, &id);
    let names: Vec<&str> = lifecycle
        .iter()
        .map(|(_, l)| l.event_name.as_str())
        .collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    let (created, started, exited) = (
        at("iostall.container.created"),
        at("iostall.container.started"),
        at("iostall.container.exited"),
    );
    assert!(
        created.is_some() && created < started && started < exited,
        "created → started → exited expected, got {names:?}\n{}",
        finished.stderr
    );
    for i in [created, started, exited].into_iter().flatten() {
        let (resource, log) = lifecycle[i];
        let r = &resource.attributes;
        assert_eq!(str_attr(r, "k8s.pod.uid").as_deref(), Some(uid.as_str()));
        assert_eq!(str_attr(r, "k8s.pod.name").as_deref(), Some("exiter-0"));
        assert_eq!(
            str_attr(r, "k8s.namespace.name").as_deref(),
            Some("lifecycle")
        );
        assert_eq!(str_attr(r, "container.id").as_deref(), Some(id.as_str()));
        assert_eq!(str_attr(r, "k8s.container.name").as_deref(), Some("failer"));
        assert_eq!(str_attr(r, "service.name").as_deref(), Some("iostall"));
        assert!(
            log.trace_id.len() == 16 && log.trace_id.iter().any(|b| *b != 0),
            "{log:?}"
        );
        assert!(
            log.span_id.len() == 8 && log.span_id.iter().any(|b| *b != 0),
            "{log:?}"
        );
        assert!(log.time_unix_nano > 0, "{log:?}");
        assert!(
            str_attr(&log.attributes, "event.name").is_none(),
            "the event name is the LogRecord field, not the deprecated attribute"
        );
    }
    let times: Vec<u64> = [created, started, exited]
        .into_iter()
        .flatten()
        .map(|i| lifecycle[i].1.time_unix_nano)
        .collect();
    assert!(times.is_sorted(), "runtime times out of order: {times:?}");
    let (_, exit) = lifecycle[exited.unwrap_or_default()];
    assert_eq!(
        exit.severity_number,
        SeverityNumber::Warn as i32,
        "{exit:?}"
    );
    assert_eq!(exit.severity_text, "WARN");
    assert_eq!(int_attr(&exit.attributes, "process.exit.code"), Some(3));
    assert_eq!(
        str_attr(&exit.attributes, "iostall.runtime.source").as_deref(),
        Some("containerd")
    );
    let (_, start) = lifecycle[started.unwrap_or_default()];
    assert_eq!(start.severity_number, SeverityNumber::Info as i32);

    // The container's slow IO of the exit's window shares the exit's trace.
    let window = exit.time_unix_nano / WINDOW_NS;
    let io: Vec<_> = got
        .spans
        .iter()
        .filter(|(r, s)| {
            str_attr(&r.attributes, "container.id").as_deref() == Some(id.as_str())
                && str_attr(&s.attributes, "file.name").as_deref() == Some("out")
        })
        .collect();
    let same_window: Vec<_> = io
        .iter()
        .filter(|(_, s)| s.start_time_unix_nano / WINDOW_NS == window)
        .collect();
    assert!(
        !same_window.is_empty(),
        "no slow IO span of the container in the exit's window ({} spans in all)",
        io.len()
    );
    for (_, span) in same_window {
        assert_eq!(span.trace_id, exit.trace_id, "{span:?}");
        assert_ne!(span.span_id, exit.span_id);
    }
    Ok(())
}

/// The container's runtime-event log records (not its IO logs), in arrival order.
fn container_logs<'a>(
    got: &'a Collected,
    id: &str,
) -> Vec<&'a (
    opentelemetry_proto::tonic::resource::v1::Resource,
    opentelemetry_proto::tonic::logs::v1::LogRecord,
)> {
    got.logs
        .iter()
        .filter(|(_, l)| {
            l.event_name.starts_with("iostall.container.")
                && str_attr(&l.attributes, "container.id").as_deref() == Some(id)
        })
        .collect()
}
