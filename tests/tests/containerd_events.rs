//! The containerd source and the CRI poller against a real, private containerd (Debian
//! 1.6) started by [`iostall_tests::containerd::Containerd`]: a container's lifecycle
//! in order with its pod metadata, OOM, reconnect after containerd is killed and
//! restarted, and the listing of pods that existed before the sources started.
//! Needs root (containerd, runc, cgroups) and fails loudly without it.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use iostall::{
    enrich::metadata::{ContainerKind, ContainerMeta},
    runtime::{
        ConnectionSettings, EventSender, EventSource, RuntimeEvent, RuntimeEventKind,
        containerd::{
            ContainerdConfig, ContainerdSource, ContainerdStats, SharedMetadata, shared_metadata,
        },
        cri::{CriConfig, CriPoller},
    },
};
use iostall_tests::{
    containerd::{CRI_NAMESPACE, ContainerSpec, Containerd, CriClient, new_pod_uid},
    log_capture::{capture_logs, log_lines},
    slowfs::require_root,
};
use tokio::task::JoinHandle;

/// How long an expected event may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sources keep a deleted container's metadata here (the default, 60 s,
/// is too long to wait for in a test).
const DELETED_GRACE: Duration = Duration::from_secs(2);

/// Every event the source sent, with when the test received it.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<(Instant, RuntimeEvent)>>>);

impl Collected {
    fn snapshot(&self) -> Vec<(Instant, RuntimeEvent)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first event matching `pred`, waiting up to [`EVENT_TIMEOUT`].
    async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&RuntimeEvent) -> bool,
    ) -> (Instant, RuntimeEvent) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(found) = self.snapshot().into_iter().find(|(_, e)| pred(e)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {EVENT_TIMEOUT:?}; events so far:\n{:#?}",
                self.snapshot().iter().map(|(_, e)| e).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The events of container `id`, in arrival order.
    fn of(&self, id: &str) -> Vec<RuntimeEvent> {
        self.snapshot()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.container_id.as_deref() == Some(id))
            .collect()
    }
}

/// A running containerd source with its collector.
struct Source {
    events: Collected,
    metadata: SharedMetadata,
    stats: Arc<ContainerdStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Source {
    /// Starts the source on `ctd` and waits until it has subscribed and listed.
    async fn start(ctd: &Containerd) -> Source {
        let (sender, mut rx) = EventSender::channel(4096);
        let metadata = shared_metadata();
        let source = ContainerdSource::new(
            ContainerdConfig::default()
                .with_socket(ctd.socket())
                .with_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .with_deleted_grace(DELETED_GRACE),
            sender,
            Arc::clone(&metadata),
        );
        let stats = source.stats();
        let events = Collected::default();
        let sink = events.clone();
        let collector = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                sink.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((Instant::now(), ev));
            }
        });
        let this = Source {
            events,
            metadata,
            stats,
            tasks: vec![source.spawn(), collector],
        };
        this.wait_sessions(1).await;
        this
    }

    async fn wait_sessions(&self, n: u64) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.stats.sessions() < n {
            assert!(
                Instant::now() < deadline,
                "the containerd source did not reach {n} sessions (has {})",
                self.stats.sessions()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn cached(&self, id: &str) -> Option<ContainerMeta> {
        self.metadata
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .container(id)
            .cloned()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// containerd with the test images, and a CRI client.
async fn containerd() -> (Containerd, CriClient) {
    let ctd = Containerd::start().expect("containerd starts");
    ctd.import_test_images().expect("images import");
    let cri = ctd.cri().await.expect("CRI answers");
    (ctd, cri)
}

fn is(id: &str, kind: RuntimeEventKind) -> impl Fn(&RuntimeEvent) -> bool {
    move |e| e.container_id.as_deref() == Some(id) && e.kind == kind
}

fn latency(call_returned: Instant, received: Instant) -> String {
    received.checked_duration_since(call_returned).map_or_else(
        || {
            format!(
                "-{:?} (before the call returned)",
                call_returned.duration_since(received)
            )
        },
        |d| format!("{d:?}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_in_order_with_pod_metadata() {
    require_root();
    let (ctd, mut cri) = containerd().await;
    let source = Source::start(&ctd).await;

    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("lifecycle", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let sandbox_returned = Instant::now();
    let spec = ContainerSpec::busybox("exiter", &["sh", "-c", "exit 7"]);
    let id = cri
        .create_container(&sandbox, &spec)
        .await
        .expect("CreateContainer");
    let create_returned = Instant::now();
    cri.start_container(&id).await.expect("StartContainer");
    let start_returned = Instant::now();
    let status = cri
        .wait_exited(&id, EVENT_TIMEOUT)
        .await
        .expect("container exits");
    assert_eq!(status.exit_code, 7);

    let (created_at, _) = source
        .events
        .wait_for(
            "ContainerCreated",
            is(&id, RuntimeEventKind::ContainerCreated),
        )
        .await;
    let (started_at, _) = source
        .events
        .wait_for(
            "ContainerStarted",
            is(&id, RuntimeEventKind::ContainerStarted),
        )
        .await;
    let (exited_at, exited) = source
        .events
        .wait_for(
            "ContainerExited",
            is(&id, RuntimeEventKind::ContainerExited { exit_code: 7 }),
        )
        .await;
    assert_eq!(
        exited.attributes.get("exit_code").map(String::as_str),
        Some("7")
    );

    // The cache knows the container, from Containers.Get (labels + spec annotations).
    let meta = source.cached(&id).expect("container in the metadata cache");
    assert_eq!(meta.pod_name.as_deref(), Some("lifecycle"));
    assert_eq!(meta.pod_namespace.as_deref(), Some("iostall-test"));
    assert_eq!(meta.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(meta.container_name.as_deref(), Some("exiter"));
    assert_eq!(meta.sandbox_id.as_deref(), Some(sandbox.id.as_str()));
    assert_eq!(meta.kind, Some(ContainerKind::Container));
    let sandbox_meta = source.cached(&sandbox.id).expect("sandbox in the cache");
    assert_eq!(sandbox_meta.kind, Some(ContainerKind::Sandbox));
    assert_eq!(sandbox_meta.pod_uid.as_deref(), Some(uid.as_str()));

    // The sandbox's own events are sandbox kinds.
    let (sandbox_started_at, _) = source
        .events
        .wait_for(
            "SandboxStarted",
            is(&sandbox.id, RuntimeEventKind::SandboxStarted),
        )
        .await;

    cri.remove_container(&id).await.expect("RemoveContainer");
    let remove_returned = Instant::now();
    let (deleted_at, _) = source
        .events
        .wait_for(
            "ContainerDeleted",
            is(&id, RuntimeEventKind::ContainerDeleted),
        )
        .await;
    // Its last IO may still be in the pipeline: the names stay for a grace, then go.
    assert!(
        source.cached(&id).is_some(),
        "deleted container forgotten before its grace"
    );
    while source.cached(&id).is_some() {
        assert!(
            deleted_at.elapsed() < DELETED_GRACE + EVENT_TIMEOUT,
            "deleted container still cached long after its grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let kinds: Vec<RuntimeEventKind> = source.events.of(&id).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            RuntimeEventKind::ContainerCreated,
            RuntimeEventKind::ContainerStarted,
            RuntimeEventKind::ContainerExited { exit_code: 7 },
            RuntimeEventKind::ContainerDeleted,
        ],
        "events of {id}: {:#?}",
        source.events.of(&id)
    );
    for e in source.events.of(&id) {
        assert_eq!(e.runtime, EventSource::Containerd);
        assert_eq!(e.namespace.as_deref(), Some(CRI_NAMESPACE), "{e:?}");
        assert_eq!(e.sandbox_id.as_deref(), Some(sandbox.id.as_str()), "{e:?}");
        assert_eq!(
            e.labels.get("io.kubernetes.pod.uid").map(String::as_str),
            Some(uid.as_str()),
            "{e:?}"
        );
        assert!(e.time_unix_ns > 0, "{e:?}");
    }
    assert_eq!(source.stats.decode_errors(), 0);
    eprintln!(
        "event latency after the CRI call returned: sandbox started {}, created {}, \
         started {}, exited (after wait_exited) {}, deleted {}",
        latency(sandbox_returned, sandbox_started_at),
        latency(create_returned, created_at),
        latency(start_returned, started_at),
        latency(start_returned, exited_at),
        latency(remove_returned, deleted_at),
    );
    cri.remove_all_pods().await.expect("pods removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_gives_an_oom_event_and_exit_137() {
    require_root();
    let (ctd, mut cri) = containerd().await;
    let source = Source::start(&ctd).await;
    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("oom", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let spec = ContainerSpec::busybox("hog", &["sh", "-c", "x=a; while true; do x=$x$x; done"])
        .memory_limit(16 * 1024 * 1024);
    let id = cri
        .create_container(&sandbox, &spec)
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    let status = cri
        .wait_exited(&id, EVENT_TIMEOUT)
        .await
        .expect("the hog is killed");
    assert_eq!(status.exit_code, 137, "status: {status:?}");
    source
        .events
        .wait_for("ContainerOom", is(&id, RuntimeEventKind::ContainerOom))
        .await;
    source
        .events
        .wait_for(
            "ContainerExited 137",
            is(&id, RuntimeEventKind::ContainerExited { exit_code: 137 }),
        )
        .await;
    let kinds: Vec<RuntimeEventKind> = source.events.of(&id).iter().map(|e| e.kind).collect();
    let oom = kinds
        .iter()
        .position(|k| *k == RuntimeEventKind::ContainerOom);
    let exit = kinds
        .iter()
        .position(|k| matches!(k, RuntimeEventKind::ContainerExited { .. }));
    assert!(oom < exit, "OOM before the exit: {kinds:?}");
    let oom_event = source
        .events
        .of(&id)
        .into_iter()
        .find(|e| e.kind == RuntimeEventKind::ContainerOom)
        .expect("oom event");
    assert_eq!(
        oom_event
            .labels
            .get("io.kubernetes.container.name")
            .map(String::as_str),
        Some("hog")
    );
    eprintln!("events of the hog: {kinds:?}");
    cri.remove_all_pods().await.expect("pods removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_containerd_is_killed() {
    require_root();
    capture_logs(tracing::Level::DEBUG);
    let (mut ctd, cri) = containerd().await;
    let source = Source::start(&ctd).await;
    let socket = ctd.socket().display().to_string();

    let restart = tokio::task::block_in_place(|| ctd.kill_and_restart()).expect("restart");
    let restarted = Instant::now();
    source.wait_sessions(2).await;
    eprintln!(
        "containerd restarted in {restart:?}; source resubscribed {:?} after",
        restarted.elapsed()
    );
    let mut cri2 = ctd.cri().await.expect("CRI answers after the restart");

    let uid = new_pod_uid().expect("uid");
    let sandbox = cri2
        .run_pod_sandbox("after-restart", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let spec = ContainerSpec::busybox("late", &["sh", "-c", "sleep 30"]);
    let id = cri2
        .create_container(&sandbox, &spec)
        .await
        .expect("CreateContainer");
    cri2.start_container(&id).await.expect("StartContainer");
    source
        .events
        .wait_for(
            "ContainerCreated",
            is(&id, RuntimeEventKind::ContainerCreated),
        )
        .await;
    let (_, started) = source
        .events
        .wait_for(
            "ContainerStarted",
            is(&id, RuntimeEventKind::ContainerStarted),
        )
        .await;
    assert!(started.attributes.contains_key("pid"), "{started:?}");
    let meta = source.cached(&id).expect("cached after the restart");
    assert_eq!(meta.pod_name.as_deref(), Some("after-restart"));
    assert_eq!(meta.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(meta.container_name.as_deref(), Some("late"));

    let warnings = log_lines(&["WARN", &socket, "unavailable"]);
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:#?}");
    let back = log_lines(&["INFO", &socket, "available again"]);
    assert_eq!(back.len(), 1, "{back:#?}");
    eprintln!("outage logs: {warnings:?} {back:?}");
    drop(cri);
    cri2.remove_all_pods().await.expect("pods removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_list_a_pod_started_before_them() {
    require_root();
    capture_logs(tracing::Level::DEBUG);
    let (ctd, mut cri) = containerd().await;
    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("early", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let spec = ContainerSpec::busybox("sleeper", &["sh", "-c", "sleep 60"]);
    let id = cri
        .create_container(&sandbox, &spec)
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    let pid = cri.container_pid(&id).await.expect("pid");

    // The CRI poller: one listing right away, then on demand.
    let metadata = shared_metadata();
    let mut poller = CriPoller::new(
        CriConfig::default()
            .with_socket(ctd.socket())
            .with_interval(Duration::from_secs(3600))
            .with_deleted_grace(DELETED_GRACE),
        Arc::clone(&metadata),
    );
    let summary = poller.poll_now().await.expect("CRI poll");
    assert_eq!(
        (summary.sandboxes, summary.containers),
        (1, 1),
        "{summary:?}"
    );
    let cached = |id: &str| {
        metadata
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .container(id)
            .cloned()
    };
    let c = cached(&id).expect("container from CRI");
    assert_eq!(c.pod_name.as_deref(), Some("early"));
    assert_eq!(c.pod_namespace.as_deref(), Some("iostall-test"));
    assert_eq!(c.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(c.container_name.as_deref(), Some("sleeper"));
    assert_eq!(c.attempt, Some(0));
    assert_eq!(c.sandbox_id.as_deref(), Some(sandbox.id.as_str()));
    let s = cached(&sandbox.id).expect("sandbox from CRI");
    assert_eq!(s.kind, Some(ContainerKind::Sandbox));
    assert_eq!(s.pod_name.as_deref(), Some("early"));
    assert_eq!(s.pod_uid.as_deref(), Some(uid.as_str()));

    // Running: GetContainerEvents is UNIMPLEMENTED in containerd 1.6 (debug log), and
    // a refresh request picks up a new container at once despite the 1 h interval.
    let refresh = poller.refresher();
    let stats = poller.stats();
    let task = poller.spawn();
    let spec2 = ContainerSpec::busybox("second", &["sh", "-c", "sleep 60"]);
    let id2 = cri
        .create_container(&sandbox, &spec2)
        .await
        .expect("CreateContainer");
    let asked = Instant::now();
    refresh.request();
    while cached(&id2).is_none() {
        assert!(
            asked.elapsed() < EVENT_TIMEOUT,
            "refresh did not list the new container"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "on-demand CRI poll listed the new container in {:?}",
        asked.elapsed()
    );
    assert_eq!(
        cached(&id2).and_then(|m| m.container_name),
        Some("second".to_owned())
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while log_lines(&["GetContainerEvents"]).is_empty() {
        assert!(Instant::now() < deadline, "no GetContainerEvents log line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!stats.has_event_stream());
    eprintln!("{:?}", log_lines(&["GetContainerEvents"]));
    // A container the runtime no longer lists leaves the cache a grace after the poll
    // that missed it (its last IO may still be in the pipeline).
    cri.remove_container(&id2).await.expect("RemoveContainer");
    let polls = stats.polls();
    let asked = Instant::now();
    refresh.request();
    while stats.polls() == polls {
        assert!(asked.elapsed() < EVENT_TIMEOUT, "no poll after the request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cached(&id2).is_some(),
        "removed container forgotten before its grace"
    );
    while cached(&id2).is_some() {
        assert!(
            asked.elapsed() < EVENT_TIMEOUT,
            "removed container still cached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cached(&id).is_some(), "the other container stays");
    assert_eq!(stats.failures(), 0);
    task.abort();

    // The containerd source lists it at start too, as running, with its pid.
    let source = Source::start(&ctd).await;
    let (_, listed) = source
        .events
        .wait_for(
            "ContainerListed",
            is(&id, RuntimeEventKind::ContainerListed { running: true }),
        )
        .await;
    assert_eq!(listed.namespace.as_deref(), Some(CRI_NAMESPACE));
    assert_eq!(
        listed.attributes.get("pid").map(String::as_str),
        Some(pid.to_string().as_str())
    );
    assert_eq!(
        source.cached(&id).and_then(|m| m.pod_name),
        Some("early".to_owned())
    );
    cri.remove_all_pods().await.expect("pods removed");
}
