//! End to end, as root: a container created through CRI on a real containerd, exactly as
//! the kubelet would, writes and fsyncs on a slow ext4 loop filesystem bind-mounted into
//! it; iostall (real eBPF, tracepoint mode) attributes every slow operation to the right
//! container and pod — in its JSON output, and in OTLP on the Resource of the spans and
//! logs the test's OTLP receiver gets — and the container's lifecycle (create, start,
//! exit with its code) arrives in order in the same output. Nothing is mocked.
use std::time::Duration;

use anyhow::Result;
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid, throttle_container_writes},
    iostall_proc::Iostall,
    otlp_receiver::{OtlpReceiver, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use serde_json::Value as Json;

/// A slow ext4 filesystem with a `volume` directory to bind-mount into containers, and a
/// private containerd with the test images imported.
struct Stack {
    fs: SlowExt4,
    volume: std::path::PathBuf,
    ctd: Containerd,
}

impl Stack {
    fn start() -> Result<Self> {
        require_root();
        ensure_kernel_mounts()?;
        let fs = SlowExt4::create(SlowExt4Options::default())?;
        let volume = fs.mount_point().join("volume");
        std::fs::create_dir(&volume)?;
        let ctd = Containerd::start()?;
        ctd.import_test_images()?;
        Ok(Self { fs, volume, ctd })
    }

    /// Starts iostall on `dd`'s IO with this containerd as its only runtime source.
    fn iostall(&self, extra: &[&str]) -> Result<Iostall> {
        let socket = self.ctd.socket().to_string_lossy().into_owned();
        let mut args = vec![
            "--attach",
            "tracepoint",
            "-c",
            "dd",
            "--containerd-socket",
            &socket,
            "--docker-socket",
            "off",
            "--metrics-listen",
            "off",
        ];
        args.extend_from_slice(extra);
        let mut iostall = Iostall::start(&args)?;
        // Every event of the containers made next is expected: wait for the source.
        iostall.wait_for_source(&socket)?;
        Ok(iostall)
    }
}

#[test]
fn container_io_is_attributed_to_its_pod_in_json_and_otlp() -> Result<()> {
    let stack = Stack::start()?;
    let (fs, volume, ctd) = (&stack.fs, &stack.volume, &stack.ctd);
    let mut rx = OtlpReceiver::grpc()?;
    let endpoint = rx.endpoint();
    let iostall = stack.iostall(&["-t", "20", "-o", "json,otlp", "--otlp-endpoint", &endpoint])?;

    // The receiver runs its own runtime; the CRI calls get theirs.
    let rt = tokio::runtime::Runtime::new()?;
    let (uid, id) = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let uid = new_pod_uid()?;
        let sandbox = cri.run_pod_sandbox("web-0", "shop", &uid, 0).await?;
        // The sleep leaves time to throttle the container's own blkio cgroup (the limit only
        // works on the writer's leaf cgroup), then dd writes with O_DSYNC: each write waits
        // for the disk, and runs an ext4 fsync inside itself.
        let spec = ContainerSpec::busybox(
            "writer",
            &[
                "sh",
                "-c",
                "sleep 2; dd if=/dev/zero of=/data/out bs=4096 count=3 oflag=direct && \
             dd if=/dev/zero of=/data/out bs=4096 count=2 seek=3 conv=notrunc,fsync",
            ],
        )
        .bind(volume, "/data");
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        throttle_container_writes(&uid, &id, fs.device(), 10)?;
        let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        assert_eq!(status.exit_code, 0, "{status:?}");
        anyhow::Ok((uid, id))
    })?;

    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let lines = finished.json()?;
    // The runtime's lifecycle is its own stream in the same output, in order.
    let lifecycle: Vec<&Json> = lines
        .iter()
        .filter(|l| l["type"] == "runtime" && l["container_id"] == id.as_str())
        .collect();
    let kinds: Vec<&str> = lifecycle
        .iter()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    let created = kinds.iter().position(|k| *k == "container_created");
    let started = kinds.iter().position(|k| *k == "container_started");
    let exited = kinds.iter().position(|k| *k == "container_exited");
    assert!(
        created.is_some() && created < started && started < exited,
        "lifecycle out of order or missing: {kinds:?}"
    );
    let exit = lifecycle[exited.unwrap_or_default()];
    assert_eq!(exit["exit_code"], 0, "{exit}");
    assert_eq!(exit["event.name"], "container.exited", "{exit}");
    assert_eq!(exit["runtime"], "containerd", "{exit}");
    let events: Vec<Json> = lines
        .into_iter()
        .filter(|e| e["file_name"] == "out")
        .collect();
    assert!(
        events.iter().any(|e| e["op"] == "write") && events.iter().any(|e| e["op"] == "fsync"),
        "no slow write and fsync of the container's file: {events:#?}\n{}",
        finished.stderr
    );
    for e in &events {
        assert!(e["latency_ns"].as_u64().unwrap_or(0) >= 20_000_000, "{e}");
        assert_eq!(e["container.id"], id.as_str(), "{e}");
        assert_eq!(e["k8s.pod.uid"], uid.as_str(), "{e}");
        assert_eq!(e["k8s.pod.name"], "web-0", "{e}");
        assert_eq!(e["k8s.namespace.name"], "shop", "{e}");
        assert_eq!(e["k8s.container.name"], "writer", "{e}");
        assert_eq!(e["iostall.attribution"], "cgroup", "{e}");
    }

    // OTLP: the same operations, under the pod's own Resource.
    let want = events.len();
    let got = rx.collect_until(Duration::from_secs(20), |c| {
        c.spans
            .iter()
            .filter(|(_, s)| str_attr(&s.attributes, "file.name").as_deref() == Some("out"))
            .count()
            >= want
            && c.logs
                .iter()
                .filter(|(_, l)| str_attr(&l.attributes, "file.name").as_deref() == Some("out"))
                .count()
                >= want
    });
    let spans: Vec<_> = got
        .spans
        .iter()
        .filter(|(_, s)| str_attr(&s.attributes, "file.name").as_deref() == Some("out"))
        .collect();
    assert_eq!(spans.len(), want, "one span per slow operation");
    let logs: Vec<_> = got
        .logs
        .iter()
        .filter(|(_, l)| str_attr(&l.attributes, "file.name").as_deref() == Some("out"))
        .collect();
    assert_eq!(logs.len(), want, "one log record per slow operation");
    let resources = spans
        .iter()
        .map(|(r, _)| &r.attributes)
        .chain(logs.iter().map(|(r, _)| &r.attributes));
    for resource in resources {
        assert_eq!(
            str_attr(resource, "k8s.pod.uid").as_deref(),
            Some(uid.as_str())
        );
        assert_eq!(str_attr(resource, "k8s.pod.name").as_deref(), Some("web-0"));
        assert_eq!(
            str_attr(resource, "k8s.namespace.name").as_deref(),
            Some("shop")
        );
        assert_eq!(
            str_attr(resource, "container.id").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            str_attr(resource, "k8s.container.name").as_deref(),
            Some("writer")
        );
        assert_eq!(
            str_attr(resource, "service.name").as_deref(),
            Some("iostall")
        );
    }
    for (_, span) in &spans {
        assert_eq!(
            str_attr(&span.attributes, "iostall.attribution").as_deref(),
            Some("cgroup")
        );
        assert!(
            str_attr(&span.attributes, "k8s.pod.uid").is_none(),
            "identity is on the Resource"
        );
    }
    Ok(())
}

/// containerd killed mid-run (as when it crashes): iostall keeps tracing, its sources
/// reconnect (one warning, one recovery line), a container created after the restart is
/// still attributed by name, and an OOM-killed container shows in the output as
/// `container_oom` before its exit with code 137.
#[test]
fn after_a_containerd_restart_new_containers_are_named_and_ooms_reported() -> Result<()> {
    let mut stack = Stack::start()?;
    let iostall = stack.iostall(&["-t", "0", "-o", "json"])?;
    let volume = stack.volume.clone();
    let ctd = &mut stack.ctd;
    let rt = tokio::runtime::Runtime::new()?;
    let uid = new_pod_uid()?;
    let sandbox = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        cri.run_pod_sandbox("api-0", "prod", &uid, 0).await
    })?;
    ctd.kill_and_restart()?;
    let (id, oom_id) = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let spec = ContainerSpec::busybox(
            "after",
            &[
                "sh",
                "-c",
                "sleep 2; dd if=/dev/zero of=/data/after bs=4096 count=2 conv=fsync",
            ],
        )
        .bind(&volume, "/data");
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        assert_eq!(status.exit_code, 0, "{status:?}");
        let hog = ContainerSpec::busybox("hog", &["sh", "-c", "x=a; while true; do x=$x$x; done"])
            .memory_limit(16 * 1024 * 1024);
        let oom_id = cri.create_container(&sandbox, &hog).await?;
        cri.start_container(&oom_id).await?;
        let status = cri.wait_exited(&oom_id, Duration::from_secs(60)).await?;
        assert_eq!(status.exit_code, 137, "{status:?}");
        anyhow::Ok((id, oom_id))
    })?;

    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("available again"),
        "no reconnect logged:\n{}",
        finished.stderr
    );
    let lines = finished.json()?;
    let io: Vec<&Json> = lines.iter().filter(|l| l["file_name"] == "after").collect();
    assert!(
        !io.is_empty(),
        "no IO of the container created after the restart"
    );
    for e in &io {
        assert_eq!(e["container.id"], id.as_str(), "{e}");
        assert_eq!(e["k8s.pod.name"], "api-0", "{e}");
        assert_eq!(e["k8s.namespace.name"], "prod", "{e}");
        assert_eq!(e["k8s.container.name"], "after", "{e}");
    }
    let kinds: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "runtime" && l["container_id"] == oom_id.as_str())
        .filter_map(|l| l["kind"].as_str())
        .collect();
    // containerd's shim publishes its OOM and exit events from two watchers, in either
    // order; the kernel's OOM kill (`oom:mark_victim`) always comes before the exit.
    let kernel_oom = kinds.iter().position(|k| *k == "oom_kill");
    let exited = lines
        .iter()
        .filter(|l| l["type"] == "runtime" && l["container_id"] == oom_id.as_str())
        .position(|l| l["kind"] == "container_exited" && l["exit_code"] == 137);
    assert!(
        kinds.contains(&"container_oom"),
        "containerd's OOM event expected, got {kinds:?}"
    );
    assert!(
        kernel_oom.is_some() && exited.is_some() && kernel_oom < exited,
        "the kernel's OOM kill then exit 137 expected, got {kinds:?}"
    );
    Ok(())
}
