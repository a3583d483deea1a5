//! End to end, as root: pod startups as traces, with real parts only — the real
//! kernel's eBPF, a real containerd driven through CRI as the kubelet would (no
//! Kubernetes API: none can run here), ext4 loop filesystems (one throttled to the
//! seed's 10 write IOPS), and an OTLP/gRPC receiver on the official service
//! definitions.
//!
//! - The seed's storm: containerd's root on the throttled disk, 5 pods created at once.
//!   Each pod gets one trace whose phases hold the IO stalls, containerd's shared
//!   `meta.db` fsyncs copied into the traces of the pods they overlapped. The same on a
//!   disk capped at the device, with ext4 and with xfs.
//! - Failures: a container exiting 1 at start, one OOM-killed at start, and a sandbox
//!   stopped and re-created give ERROR roots with the reason, the re-created one a
//!   second trace linked to the first.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, ensure};
use iostall_tests::{
    capped_disk::CappedExt4,
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    fake_kube::FakeKube,
    iostall_proc::Iostall,
    otlp_receiver::{Collected, OtlpReceiver, int_attr, str_attr},
    slowfs::{FsType, SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use opentelemetry_proto::tonic::{resource::v1::Resource, trace::v1::Span};

const PHASES: [&str; 4] = [
    "pod sandbox",
    "container create",
    "container start",
    "container run",
];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A private containerd with the test images, and an OTLP receiver (as root).
fn containerd_and_receiver() -> Result<(Containerd, OtlpReceiver)> {
    require_root();
    ensure_kernel_mounts()?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    Ok((ctd, OtlpReceiver::grpc()?))
}

/// iostall on `ctd`, OTLP to `receiver`, startups settling after 2 s.
fn start_iostall(ctd: &Containerd, receiver: &OtlpReceiver, threshold_ms: &str) -> Result<Iostall> {
    start_iostall_with(ctd, receiver, threshold_ms, "startup:\n  settle_ms: 2000\n")
}

/// iostall on `ctd`, OTLP to `receiver`, with `yaml` in its config file.
fn start_iostall_with(
    ctd: &Containerd,
    receiver: &OtlpReceiver,
    threshold_ms: &str,
    yaml: &str,
) -> Result<Iostall> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("iostall.yaml");
    std::fs::write(&config, format!("{yaml}otlp:\n  batch_timeout_ms: 200\n"))?;
    let socket = ctd.socket().to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--config",
        &config.to_string_lossy(),
        "--attach",
        "tracepoint",
        "-t",
        threshold_ms,
        "-o",
        "otlp,json",
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--containerd-socket",
        &socket,
        "--docker-socket",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    // The config file is read at start; the directory may go.
    drop(dir);
    iostall.wait_for_source(&socket)?;
    Ok(iostall)
}

/// One pod startup trace as received.
#[derive(Debug)]
struct StartupTrace {
    root: (Resource, Span),
    /// Phase spans (children of the root), by start time.
    phases: Vec<Span>,
    /// IO spans (`ext4 …`, `xfs …`: those with `system.filesystem.type`) of the trace,
    /// with their Resources.
    io: Vec<(Resource, Span)>,
}

fn res_attr(res: &Resource, key: &str) -> Option<String> {
    str_attr(&res.attributes, key)
}

/// The roots named `pod startup`, each with the rest of its trace.
fn startup_traces(all: &Collected) -> Vec<StartupTrace> {
    let mut out = Vec::new();
    for (res, root) in all.spans.iter().filter(|(_, s)| s.name == "pod startup") {
        let in_trace = |s: &Span| s.trace_id == root.trace_id;
        let mut phases: Vec<Span> = all
            .spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| in_trace(s) && s.parent_span_id == root.span_id)
            .cloned()
            .collect();
        phases.sort_by_key(|s| s.start_time_unix_nano);
        let io = all
            .spans
            .iter()
            .filter(|(_, s)| {
                in_trace(s) && str_attr(&s.attributes, "system.filesystem.type").is_some()
            })
            .cloned()
            .collect();
        out.push(StartupTrace {
            root: (res.clone(), root.clone()),
            phases,
            io,
        });
    }
    out
}

fn error_message(span: &Span) -> Option<String> {
    span.status
        .as_ref()
        .filter(|s| s.code == 2)
        .map(|s| s.message.clone())
}

fn dur(s: &Span) -> i64 {
    (s.end_time_unix_nano - s.start_time_unix_nano) as i64
}

/// Checks what holds for every startup trace: phases in order under the root, every IO
/// span under a phase, the summaries equal to the sums over the IO children.
fn check_trace_shape(t: &StartupTrace) -> Result<()> {
    let (_, root) = &t.root;
    ensure!(!t.phases.is_empty(), "a root without phases: {root:?}");
    for pair in t.phases.windows(2) {
        ensure!(
            pair[0].end_time_unix_nano <= pair[1].start_time_unix_nano,
            "phases overlap: {} then {}",
            pair[0].name,
            pair[1].name
        );
    }
    for p in &t.phases {
        ensure!(
            PHASES.contains(&p.name.as_str()),
            "unknown phase {}",
            p.name
        );
        ensure!(
            p.start_time_unix_nano >= root.start_time_unix_nano
                && p.end_time_unix_nano <= root.end_time_unix_nano,
            "phase {} outside its root",
            p.name
        );
    }
    let phase_ids: BTreeSet<&Vec<u8>> = t.phases.iter().map(|p| &p.span_id).collect();
    for (_, io) in &t.io {
        ensure!(
            phase_ids.contains(&io.parent_span_id),
            "an IO span not under a phase of its trace: {} {:?}",
            io.name,
            str_attr(&io.attributes, "file.path")
        );
    }
    // Summaries: each phase's, and the root's, equal the sums over the IO children.
    let mut root_own = 0;
    let mut root_shared = 0;
    for p in &t.phases {
        let children = t.io.iter().filter(|(_, s)| s.parent_span_id == p.span_id);
        let (mut own, mut shared, mut ops) = (0i64, 0i64, 0i64);
        for (_, s) in children {
            ops += 1;
            if str_attr(&s.attributes, "iostall.attribution").as_deref() == Some("time_overlap") {
                shared += dur(s);
            } else {
                own += dur(s);
            }
        }
        ensure!(
            int_attr(&p.attributes, "iostall.stall.own_ns") == Some(own)
                && int_attr(&p.attributes, "iostall.stall.shared_ns") == Some(shared)
                && int_attr(&p.attributes, "iostall.stall.ops") == Some(ops),
            "phase {} says own {:?} shared {:?} ops {:?}; its children sum to {own}, {shared}, {ops}",
            p.name,
            int_attr(&p.attributes, "iostall.stall.own_ns"),
            int_attr(&p.attributes, "iostall.stall.shared_ns"),
            int_attr(&p.attributes, "iostall.stall.ops"),
        );
        root_own += own;
        root_shared += shared;
    }
    ensure!(
        int_attr(&root.attributes, "iostall.stall.own_ns") == Some(root_own)
            && int_attr(&root.attributes, "iostall.stall.shared_ns") == Some(root_shared),
        "root summary {:?}/{:?} against {root_own}/{root_shared}",
        int_attr(&root.attributes, "iostall.stall.own_ns"),
        int_attr(&root.attributes, "iostall.stall.shared_ns"),
    );
    Ok(())
}

/// The seed's storm: 5 pods at once on a containerd whose root is on a 10-IOPS ext4.
#[test]
fn the_storm_gives_one_trace_per_pod_with_the_stalls_inside() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let slow = SlowExt4::create(SlowExt4Options {
        size_mib: 512,
        write_iops: Some(10),
        read_iops: None,
    })?;
    let ctd = Containerd::start_in(slow.mount_point())?;
    ctd.import_test_images()?;
    slow.add_pid(ctd.pid().context("containerd is not running")?)?;
    the_storm(&ctd, "ext4")
}

/// The same storm on an xfs node (EKS on Amazon Linux 2, RHEL, OpenShift keep
/// `/var/lib/containerd` on xfs): containerd's root on a real xfs whose device is capped
/// at 10 IOPS, as a small cloud volume is. The traces are the same as on ext4 (next
/// test, same disk): one per pod, its phases, the stalls under them, containerd's
/// `meta.db` fsyncs shared into the pods' traces, now as `xfs …` spans with
/// `system.filesystem.type=xfs`.
#[test]
fn the_storm_on_a_capped_xfs_gives_the_same_traces() -> Result<()> {
    the_storm_on_a_capped(FsType::Xfs)
}

/// The storm on a capped ext4: what the xfs one is compared with.
#[test]
fn the_storm_on_a_capped_ext4() -> Result<()> {
    the_storm_on_a_capped(FsType::Ext4)
}

/// The storm with containerd's root on a `fs_type` disk capped at 10 IOPS.
fn the_storm_on_a_capped(fs_type: FsType) -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    // Uncapped while containerd starts and imports the images.
    let disk = CappedExt4::create_fs(512, 0, fs_type)?;
    let ctd = Containerd::start_in(disk.mount_point())?;
    ctd.import_test_images()?;
    disk.set_iops(10);
    the_storm(&ctd, fs_type.name())
}

/// Creates 5 pods at once through `ctd`'s CRI with iostall attached, and checks their
/// startup traces; `fs` is the filesystem of containerd's root.
fn the_storm(ctd: &Containerd, fs: &str) -> Result<()> {
    let mut receiver = OtlpReceiver::grpc()?;
    let iostall = start_iostall(ctd, &receiver, "5")?;
    let rt = tokio::runtime::Runtime::new()?;
    const PODS: usize = 5;
    // uid → (name, wall time StartContainer was called, when each CRI call returned).
    let pods: BTreeMap<String, (String, u64, [u64; 3])> = rt.block_on(async {
        let cri = ctd.cri().await?;
        let mut tasks = Vec::new();
        for i in 0..PODS {
            let mut cri = cri.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("web-{i}");
                let uid = new_pod_uid()?;
                let sandbox = cri.run_pod_sandbox(&name, "storm", &uid, 0).await?;
                let sandbox_done = now_ns();
                let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
                let id = cri.create_container(&sandbox, &spec).await?;
                let started_at = now_ns();
                cri.start_container(&id).await?;
                let cri_done = [sandbox_done, started_at, now_ns()];
                anyhow::Ok((uid, (name, started_at, cri_done)))
            }));
        }
        let mut pods = BTreeMap::new();
        for t in tasks {
            let (uid, v) = t.await??;
            pods.insert(uid, v);
        }
        anyhow::Ok(pods)
    })?;
    receiver.collect_until(Duration::from_secs(60), |c| {
        c.spans
            .iter()
            .filter(|(_, s)| s.name == "pod startup")
            .count()
            >= PODS
    });
    // Stopping flushes the OTLP queue: everything sent is in the receiver after it.
    let finished = iostall.stop()?;
    let all = receiver.collected();
    rt.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
    });
    let traces = startup_traces(&all);
    let summaries: Vec<String> = finished
        .json()?
        .into_iter()
        .filter(|l| l["type"] == "startup")
        .map(|l| l.to_string())
        .collect();
    for s in &summaries {
        eprintln!("{s}");
    }
    ensure!(
        traces.len() == PODS,
        "{} startup traces for {PODS} pods\n{}",
        traces.len(),
        finished.stderr
    );
    let mut shared_copies = 0;
    let mut own_total = 0;
    for t in &traces {
        let (res, root) = &t.root;
        let uid = res_attr(res, "k8s.pod.uid").context("root Resource without k8s.pod.uid")?;
        let (name, started_at, cri_done) = pods.get(&uid).context("a root of an unknown pod")?;
        assert_eq!(res_attr(res, "k8s.pod.name").as_ref(), Some(name));
        assert_eq!(
            res_attr(res, "k8s.namespace.name").as_deref(),
            Some("storm")
        );
        assert_eq!(res_attr(res, "service.name").as_deref(), Some("iostall"));
        assert!(
            root.start_time_unix_nano < *started_at,
            "{name}: the root began before the pod was running"
        );
        assert_eq!(error_message(root), None, "{name} did not fail");
        check_trace_shape(t).with_context(|| format!("pod {name}"))?;
        let names: Vec<&str> = t.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["pod sandbox", "container create", "container start"],
            "{name}'s phases, in order"
        );
        for (io_res, io) in &t.io {
            match str_attr(&io.attributes, "iostall.attribution").as_deref() {
                Some("time_overlap") => {
                    shared_copies += 1;
                    assert_eq!(res_attr(io_res, "k8s.pod.uid").as_ref(), Some(&uid));
                    assert!(
                        int_attr(&io.attributes, "iostall.overlap.pods").is_some_and(|n| n >= 1)
                    );
                    let parent = t
                        .phases
                        .iter()
                        .find(|p| p.span_id == io.parent_span_id)
                        .context("parent")?;
                    assert!(
                        io.start_time_unix_nano < parent.end_time_unix_nano
                            && io.end_time_unix_nano > parent.start_time_unix_nano,
                        "a shared copy under a phase it did not overlap"
                    );
                }
                // The pod's own IO: never another pod's.
                other => {
                    own_total += 1;
                    assert_eq!(
                        res_attr(io_res, "k8s.pod.uid").as_ref(),
                        Some(&uid),
                        "{other:?} IO of another pod in {name}'s trace"
                    );
                }
            }
        }
        let since_root = |t: u64| (t as f64 - root.start_time_unix_nano as f64) / 1e9;
        let summary = format!(
            "{name}: {:.1}s ({}) own {:.2}s shared {:.2}s in {} ops; CRI returned at +{:.1}s \
             (RunPodSandbox), +{:.1}s (CreateContainer), +{:.1}s (StartContainer)",
            dur(root) as f64 / 1e9,
            t.phases
                .iter()
                .map(|p| format!("{} {:.1}s", p.name, dur(p) as f64 / 1e9))
                .collect::<Vec<_>>()
                .join(", "),
            int_attr(&root.attributes, "iostall.stall.own_ns").unwrap_or(0) as f64 / 1e9,
            int_attr(&root.attributes, "iostall.stall.shared_ns").unwrap_or(0) as f64 / 1e9,
            t.io.len(),
            since_root(cri_done[0]),
            since_root(cri_done[1]),
            since_root(cri_done[2]),
        );
        eprintln!("{summary}");
        // The runtime's events during the startup are log records in its trace.
        let started = all
            .logs_named("iostall.container.started")
            .into_iter()
            .filter(|(r, _)| res_attr(r, "k8s.pod.uid").as_ref() == Some(&uid))
            .map(|(_, l)| l)
            .collect::<Vec<_>>();
        assert_eq!(started.len(), 1, "{name}: one container.started log");
        assert_eq!(started[0].trace_id, root.trace_id, "in the startup's trace");
        assert!(
            t.phases
                .iter()
                .any(|p| p.name == "container start" && p.span_id == started[0].span_id),
            "{name}: container.started belongs to the container start phase"
        );
        // The slow IO's log records carry the IO span's ids.
        for (_, io) in t.io.iter().filter(|(_, s)| {
            str_attr(&s.attributes, "iostall.attribution").as_deref() != Some("time_overlap")
        }) {
            assert!(
                all.logs
                    .iter()
                    .any(|(_, l)| l.span_id == io.span_id && l.trace_id == io.trace_id),
                "{name}: an IO span without its log record"
            );
        }
    }
    // containerd's meta.db fsyncs are the stall: shared, and in the pods' traces.
    let meta_db = traces
        .iter()
        .flat_map(|t| &t.io)
        .filter(|(_, s)| {
            str_attr(&s.attributes, "iostall.attribution").as_deref() == Some("time_overlap")
                && str_attr(&s.attributes, "file.path").is_some_and(|p| p.ends_with("meta.db"))
        })
        .count();
    assert!(meta_db > 0, "no meta.db fsync in any startup trace");
    // On containerd's filesystem, and said so by the span's name and attribute.
    let on_root = |(_, s): &&(Resource, Span)| {
        str_attr(&s.attributes, "file.path").is_some_and(|p| p.ends_with("meta.db"))
    };
    for (_, io) in traces.iter().flat_map(|t| &t.io).filter(on_root) {
        assert!(io.name.starts_with(&format!("{fs} ")), "{}", io.name);
        assert_eq!(
            str_attr(&io.attributes, "system.filesystem.type").as_deref(),
            Some(fs),
            "{}",
            io.name
        );
    }
    eprintln!(
        "on {fs}: {shared_copies} shared copies ({meta_db} of meta.db), {own_total} own IO spans"
    );
    assert_eq!(summaries.len(), PODS, "one startup summary line per pod");
    Ok(())
}

/// A container exiting 1 at start, one OOM-killed at start, and a sandbox stopped and
/// re-created: ERROR roots with the reason; the re-created sandbox a second trace
/// linked to the first.
#[test]
fn failed_startups_are_error_roots_and_a_recreated_sandbox_is_linked() -> Result<()> {
    let (ctd, mut receiver) = containerd_and_receiver()?;
    let iostall = start_iostall(&ctd, &receiver, "10")?;
    let rt = tokio::runtime::Runtime::new()?;
    let (exits, ooms, again) = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        // Exits 1 right after it started.
        let exits = new_pod_uid()?;
        let sb = cri.run_pod_sandbox("exits", "fail", &exits, 0).await?;
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "exit 1"]);
        let id = cri.create_container(&sb, &spec).await?;
        cri.start_container(&id).await?;
        cri.wait_exited(&id, Duration::from_secs(60)).await?;
        // OOM-killed right after it started.
        let ooms = new_pod_uid()?;
        let sb = cri.run_pod_sandbox("ooms", "fail", &ooms, 0).await?;
        let spec = ContainerSpec::busybox("hog", &["sh", "-c", "x=a; while true; do x=$x$x; done"])
            .memory_limit(16 * 1024 * 1024);
        let id = cri.create_container(&sb, &spec).await?;
        cri.start_container(&id).await?;
        cri.wait_exited(&id, Duration::from_secs(60)).await?;
        // The sandbox is stopped before its container came (the kubelet's "sandbox
        // changed, it will be killed and re-created"), then made again.
        let again = new_pod_uid()?;
        let first = cri.run_pod_sandbox("again", "fail", &again, 0).await?;
        cri.stop_pod_sandbox(&first.id).await?;
        let second = cri.run_pod_sandbox("again", "fail", &again, 1).await?;
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
        let id = cri.create_container(&second, &spec).await?;
        cri.start_container(&id).await?;
        anyhow::Ok((exits, ooms, again))
    })?;
    let roots_of = |c: &Collected, uid: &str| {
        c.spans
            .iter()
            .filter(|(r, s)| {
                s.name == "pod startup" && res_attr(r, "k8s.pod.uid").as_deref() == Some(uid)
            })
            .count()
    };
    receiver.collect_until(Duration::from_secs(30), |c| {
        roots_of(c, &exits) >= 1 && roots_of(c, &ooms) >= 1 && roots_of(c, &again) >= 2
    });
    let finished = iostall.stop()?;
    let all = receiver.collected();
    rt.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
    });
    let traces = startup_traces(&all);
    let of = |uid: &str| -> Vec<&StartupTrace> {
        traces
            .iter()
            .filter(|t| res_attr(&t.root.0, "k8s.pod.uid").as_deref() == Some(uid))
            .collect()
    };
    let reason = |t: &StartupTrace| str_attr(&t.root.1.attributes, "iostall.startup.end_reason");
    for t in &traces {
        check_trace_shape(t)?;
    }
    let exit = of(&exits);
    ensure!(
        exit.len() == 1,
        "exits: {} roots\n{}",
        exit.len(),
        finished.stderr
    );
    assert_eq!(reason(exit[0]).as_deref(), Some("container_failed"));
    assert_eq!(
        error_message(&exit[0].root.1).as_deref(),
        Some("container app exited with code 1")
    );
    let oom = of(&ooms);
    ensure!(
        oom.len() == 1,
        "ooms: {} roots\n{}",
        oom.len(),
        finished.stderr
    );
    assert_eq!(reason(oom[0]).as_deref(), Some("oom_killed"));
    assert_eq!(
        error_message(&oom[0].root.1).as_deref(),
        Some("container hog was OOM-killed")
    );
    let mut attempts = of(&again);
    ensure!(
        attempts.len() == 2,
        "again: {} roots\n{}",
        attempts.len(),
        finished.stderr
    );
    attempts.sort_by_key(|t| t.root.1.start_time_unix_nano);
    let (first, second) = (&attempts[0].root.1, &attempts[1].root.1);
    assert_eq!(reason(attempts[0]).as_deref(), Some("sandbox_stopped"));
    assert!(error_message(first).is_some(), "the stopped attempt failed");
    assert_eq!(error_message(second), None, "the second attempt started");
    assert_ne!(first.trace_id, second.trace_id);
    assert_eq!(second.links.len(), 1, "linked to the first attempt");
    assert_eq!(second.links[0].trace_id, first.trace_id);
    assert_eq!(second.links[0].span_id, first.span_id);
    assert_eq!(
        int_attr(&second.attributes, "iostall.startup.attempt"),
        Some(1)
    );
    Ok(())
}

/// iostall killed (SIGKILL, as an OOM kill or a node agent crash would) in the middle
/// of a startup, and started again: the spans the first run exported (the sandbox
/// phase) and those the second exports (the root, the later phases) are one trace, the
/// phases under the same root span id.
#[test]
fn a_restarted_iostall_continues_the_same_trace() -> Result<()> {
    let (ctd, mut receiver) = containerd_and_receiver()?;
    let first = start_iostall(&ctd, &receiver, "10")?;
    let rt = tokio::runtime::Runtime::new()?;
    let uid = new_pod_uid()?;
    let mut cri = rt.block_on(ctd.cri())?;
    let sandbox = rt.block_on(cri.run_pod_sandbox("resumed", "restart", &uid, 0))?;
    let of_pod =
        |(r, _): &&(Resource, Span)| res_attr(r, "k8s.pod.uid").as_deref() == Some(uid.as_str());
    let before = receiver.collect_until(Duration::from_secs(20), |c| {
        c.spans
            .iter()
            .filter(of_pod)
            .any(|(_, s)| s.name == "pod sandbox")
    });
    let sandbox_phase = before
        .spans
        .iter()
        .filter(of_pod)
        .find(|(_, s)| s.name == "pod sandbox")
        .map(|(_, s)| s.clone())
        .context("the first run exported no sandbox phase")?;
    // The crash: SIGKILL, nothing flushed.
    drop(first);
    let second = start_iostall(&ctd, &receiver, "10")?;
    rt.block_on(async {
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await
    })?;
    receiver.collect_until(Duration::from_secs(30), |c| {
        c.spans
            .iter()
            .filter(of_pod)
            .any(|(_, s)| s.name == "pod startup")
    });
    let finished = second.stop()?;
    let all = receiver.collected();
    rt.block_on(async {
        let _ = cri.remove_all_pods().await;
    });
    let roots: Vec<&Span> = all
        .spans
        .iter()
        .filter(of_pod)
        .filter(|(_, s)| s.name == "pod startup")
        .map(|(_, s)| s)
        .collect();
    ensure!(
        roots.len() == 1,
        "{} roots\n{}",
        roots.len(),
        finished.stderr
    );
    let root = roots[0];
    assert_eq!(
        root.trace_id, sandbox_phase.trace_id,
        "one trace across the restart"
    );
    assert_eq!(
        sandbox_phase.parent_span_id, root.span_id,
        "the first run's phase is under the second run's root"
    );
    assert_eq!(
        root.attributes
            .iter()
            .find(|kv| kv.key == "iostall.startup.resumed")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref()),
        Some(&opentelemetry_proto::tonic::common::v1::any_value::Value::BoolValue(true))
    );
    assert!(
        root.start_time_unix_nano <= sandbox_phase.end_time_unix_nano,
        "the root begins when the sandbox was made"
    );
    let later: Vec<&str> = all
        .spans
        .iter()
        .filter(|(_, s)| s.trace_id == root.trace_id && s.parent_span_id == root.span_id)
        .map(|(_, s)| s.name.as_str())
        .collect();
    for phase in ["pod sandbox", "container create", "container start"] {
        assert!(later.contains(&phase), "{phase} under the root: {later:?}");
    }
    assert_eq!(error_message(root), None);
    Ok(())
}

/// `unix_ns` as RFC 3339 with nanoseconds, as the API server writes times.
fn rfc3339(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: zeroed tm is a valid out value; gmtime_r is thread safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialised values.
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        unix_ns % 1_000_000_000
    )
}

/// A pod bound to `node` at `bound_ns`, one container `app`; running from
/// `started_ns` when given.
fn api_pod(uid: &str, node: &str, bound_ns: u64, started_ns: Option<u64>) -> serde_json::Value {
    let mut status = serde_json::json!({
        "phase": "Pending",
        "qosClass": "BestEffort",
        "conditions": [{ "type": "PodScheduled", "status": "True",
                         "lastTransitionTime": rfc3339(bound_ns) }],
    });
    if let Some(started) = started_ns {
        status["phase"] = "Running".into();
        status["containerStatuses"] = serde_json::json!([{
            "name": "app", "ready": true, "restartCount": 0, "started": true,
            "image": "iostall-test/busybox:latest", "imageID": "",
            "state": { "running": { "startedAt": rfc3339(started) } },
        }]);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "api-web", "namespace": "api", "uid": uid,
                      "creationTimestamp": rfc3339(bound_ns) },
        "spec": { "nodeName": node,
                  "containers": [{ "name": "app", "image": "iostall-test/busybox:latest" }] },
        "status": status,
    })
}

/// With the Kubernetes API (the fake server, with a kubelet-realistic pod): the root
/// begins at the pod's binding (its `PodScheduled` time, before any runtime work), and
/// the startup ends as soon as the spec's one container started — a 60 s settle time
/// shows that the container count, not the wait, ended it.
#[test]
fn with_the_api_the_root_begins_at_binding_and_ends_by_the_spec() -> Result<()> {
    let node = "startup-node";
    let (ctd, mut receiver) = containerd_and_receiver()?;
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(FakeKube::start(node))?;
    let uid = new_pod_uid()?;
    let bound = now_ns() - 3_000_000_000;
    fake.add_pod(api_pod(&uid, node, bound, None));
    let yaml = format!(
        "startup:\n  settle_ms: 60000\nkube:\n  enabled: on\n  node_name: {node}\n  \
         api_server: {}\n",
        fake.url()
    );
    let iostall = start_iostall_with(&ctd, &receiver, "10", &yaml)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.watchers() == 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "iostall never watched the API"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = std::time::Instant::now();
    let started = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let sandbox = cri.run_pod_sandbox("api-web", "api", &uid, 0).await?;
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        anyhow::Ok(now_ns())
    })?;
    fake.modify_pod(api_pod(&uid, node, bound, Some(started)));
    let of_pod = |(r, s): &&(Resource, Span)| {
        s.name == "pod startup" && res_attr(r, "k8s.pod.uid").as_deref() == Some(uid.as_str())
    };
    receiver.collect_until(Duration::from_secs(20), |c| {
        c.spans.iter().any(|x| of_pod(&x))
    });
    let waited = asked.elapsed();
    let finished = iostall.stop()?;
    let all = receiver.collected();
    rt.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
        fake.stop().await;
    });
    let root = all
        .spans
        .iter()
        .find(|x| of_pod(x))
        .map(|(_, s)| s.clone())
        .with_context(|| format!("no startup root\n{}", finished.stderr))?;
    assert_eq!(
        root.start_time_unix_nano, bound,
        "the root begins at the binding"
    );
    assert_eq!(
        str_attr(&root.attributes, "iostall.startup.end_reason").as_deref(),
        Some("all_containers_running")
    );
    assert_eq!(
        int_attr(&root.attributes, "iostall.startup.expected_containers"),
        Some(1)
    );
    assert!(
        root.end_time_unix_nano <= started,
        "ended at the container's start"
    );
    assert!(
        waited < Duration::from_secs(30),
        "not the 60 s settle: {waited:?}"
    );
    let traces = startup_traces(&all);
    let t = traces
        .iter()
        .find(|t| t.root.1.span_id == root.span_id)
        .context("trace")?;
    check_trace_shape(t)?;
    assert_eq!(t.phases[0].name, "pod sandbox");
    assert_eq!(
        t.phases[0].start_time_unix_nano, bound,
        "the sandbox phase from the binding"
    );
    Ok(())
}
