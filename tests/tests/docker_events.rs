//! The Docker source against a real, private dockerd (Debian `docker.io` 20.10) started
//! by [`iostall_tests::dockerd::Dockerd`]: container lifecycle with kubelet labels,
//! listing at start, reconnect after dockerd is killed and restarted, and OOM.
//! Needs root (dockerd) and fails loudly without it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use iostall::runtime::{
    ConnectionSettings, EventSender, EventSource, RuntimeEvent, RuntimeEventKind,
    docker::{DockerConfig, DockerSource},
    now_unix_ns,
};
use iostall_tests::{
    dockerd::Dockerd,
    log_capture::{capture_logs, log_lines},
    slowfs::require_root,
};
use tokio::sync::mpsc;

fn kube_labels(pod: &str, container: &str) -> BTreeMap<String, String> {
    [
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", "shop"),
        (
            "io.kubernetes.pod.uid",
            "0b7c6a52-1d1e-4f7e-9a51-3f2d1c0e9b8a",
        ),
        ("io.kubernetes.container.name", container),
        ("team", "storage"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Collects events of container `id` until `last` arrives; also returns the largest
/// delivery latency seen (receive time − dockerd's event time).
/// Runs `true` in a new container labelled as pod `pod`'s `container`, removes it, and
/// returns the events the source delivered for it (creation to deletion),
/// without the `ContainerListed` a resubscription may add.
async fn run_true_to_deletion(
    dockerd: &Dockerd,
    rx: &mut mpsc::Receiver<RuntimeEvent>,
    name: &str,
    pod: &str,
    timeout: Duration,
) -> Result<Vec<RuntimeEvent>> {
    let id = dockerd
        .create(name, &["true"], &kube_labels(pod, "app"), None)
        .await?;
    dockerd.start_container(&id).await?;
    assert_eq!(dockerd.wait_container(&id).await?, 0);
    dockerd.remove_container(&id).await?;
    let (mut events, _) = events_until(
        rx,
        &id,
        |k| *k == RuntimeEventKind::ContainerDeleted,
        timeout,
    )
    .await?;
    events.retain(|e| !matches!(e.kind, RuntimeEventKind::ContainerListed { .. }));
    Ok(events)
}

async fn events_until(
    rx: &mut mpsc::Receiver<RuntimeEvent>,
    id: &str,
    last: fn(&RuntimeEventKind) -> bool,
    timeout: Duration,
) -> Result<(Vec<RuntimeEvent>, Duration)> {
    let mut got = Vec::new();
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("event channel closed; got {got:#?}"),
            Err(_) => bail!("timed out after {timeout:?}; events of {id}: {got:#?}"),
        };
        if ev.container_id.as_deref() != Some(id) {
            continue;
        }
        worst = worst.max(Duration::from_nanos(
            now_unix_ns().saturating_sub(ev.time_unix_ns),
        ));
        let done = last(&ev.kind);
        got.push(ev);
        if done {
            return Ok((got, worst));
        }
    }
}

fn kinds(events: &[RuntimeEvent]) -> Vec<RuntimeEventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_lifecycle_labels_listing_and_reconnect() -> Result<()> {
    require_root();
    capture_logs(tracing::Level::INFO);
    let mut dockerd = Dockerd::start().await?;
    eprintln!(
        "dockerd ({}) ready in {:?}",
        dockerd.storage_driver(),
        dockerd.last_startup()
    );
    dockerd.load_busybox().await?;

    // Exists before the source starts: known from the listing, one running (with its
    // pid from the inspection), one only created.
    let early = dockerd
        .create(
            "iostall-early",
            &["sleep", "120"],
            &kube_labels("early-0", "early"),
            None,
        )
        .await?;
    dockerd.start_container(&early).await?;
    let idle = dockerd
        .create("iostall-idle", &["true"], &BTreeMap::new(), None)
        .await?;

    let (tx, mut rx) = EventSender::channel(1024);
    let source = DockerSource::new(
        DockerConfig::default()
            .with_socket(dockerd.socket())
            .with_backoff(Duration::from_millis(800), Duration::from_secs(3)),
        tx.clone(),
    )
    .spawn();
    // The listing: one event per container, in dockerd's order.
    let mut listed = BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while listed.len() < 2 {
            match rx.recv().await {
                Some(ev) if matches!(ev.kind, RuntimeEventKind::ContainerListed { .. }) => {
                    if let Some(id) = ev.container_id.clone() {
                        listed.insert(id, ev);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
    })
    .await?;
    let (Some(listed), Some(idle_listed)) = (listed.get(&early), listed.get(&idle)) else {
        bail!("listing incomplete: {listed:#?}");
    };
    assert_eq!(
        listed.kind,
        RuntimeEventKind::ContainerListed { running: true }
    );
    assert_eq!(
        idle_listed.kind,
        RuntimeEventKind::ContainerListed { running: false }
    );
    let pid: u32 = listed
        .attributes
        .get("pid")
        .and_then(|p| p.parse().ok())
        .expect("a running container's pid");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        cgroup.contains(&early),
        "pid {pid} is not in the container: {cgroup}"
    );
    let meta = listed.container_meta().expect("a container event");
    assert_eq!(meta.pod_name.as_deref(), Some("early-0"));
    assert_eq!(meta.container_name.as_deref(), Some("early"));
    // Gone before dockerd is killed below (it does not live-restore).
    dockerd.remove_container(&early).await?;
    dockerd.remove_container(&idle).await?;

    // create → start → die(3) → destroy, in order, with id and labels. Each step waits
    // for its event, so the latency measured is the source's, not queueing in the test.
    let id = dockerd
        .create(
            "iostall-exit3",
            &["sh", "-c", "exit 3"],
            &kube_labels("web-0", "app"),
            None,
        )
        .await?;
    let step = Duration::from_secs(10);
    let (mut events, mut latency) = events_until(
        &mut rx,
        &id,
        |k| *k == RuntimeEventKind::ContainerCreated,
        step,
    )
    .await?;
    dockerd.start_container(&id).await?;
    let (more, l) = events_until(
        &mut rx,
        &id,
        |k| *k == RuntimeEventKind::ContainerStarted,
        step,
    )
    .await?;
    (events, latency) = ([events, more].concat(), latency.max(l));
    assert_eq!(dockerd.wait_container(&id).await?, 3);
    let (more, l) = events_until(
        &mut rx,
        &id,
        |k| matches!(k, RuntimeEventKind::ContainerExited { .. }),
        step,
    )
    .await?;
    (events, latency) = ([events, more].concat(), latency.max(l));
    dockerd.remove_container(&id).await?;
    let (more, l) = events_until(
        &mut rx,
        &id,
        |k| *k == RuntimeEventKind::ContainerDeleted,
        step,
    )
    .await?;
    (events, latency) = ([events, more].concat(), latency.max(l));
    eprintln!("lifecycle events delivered, worst latency {latency:?}");
    assert_eq!(
        kinds(&events),
        [
            RuntimeEventKind::ContainerCreated,
            RuntimeEventKind::ContainerStarted,
            RuntimeEventKind::ContainerExited { exit_code: 3 },
            RuntimeEventKind::ContainerDeleted,
        ]
    );
    for ev in &events {
        assert_eq!(ev.runtime, EventSource::Docker);
        assert_eq!(ev.labels, kube_labels("web-0", "app"), "{ev:#?}");
        assert_eq!(
            ev.image.as_deref(),
            Some(iostall_tests::image::BUSYBOX_IMAGE)
        );
        let meta = ev.container_meta().expect("a container event");
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"));
        assert_eq!(meta.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(
            meta.pod_uid.as_deref(),
            Some("0b7c6a52-1d1e-4f7e-9a51-3f2d1c0e9b8a")
        );
        assert_eq!(meta.container_name.as_deref(), Some("app"));
    }
    assert!(
        events
            .windows(2)
            .all(|w| w[0].time_unix_ns <= w[1].time_unix_ns)
    );

    // dockerd crashes and comes back: the source reconnects and follows again.
    dockerd.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !source.is_finished(),
        "the source must survive dockerd's death"
    );
    dockerd.restart().await?;
    eprintln!("dockerd restarted in {:?}", dockerd.last_startup());
    let restarted = Instant::now();
    // If the source resubscribed after `create`, the listing also names it; the
    // replay (`since`) still delivers every change.
    let events = run_true_to_deletion(
        &dockerd,
        &mut rx,
        "iostall-after",
        "web-1",
        Duration::from_secs(20),
    )
    .await?;
    eprintln!(
        "events after restart seen {:?} after dockerd answered again",
        restarted.elapsed()
    );
    assert_eq!(
        kinds(&events),
        [
            RuntimeEventKind::ContainerCreated,
            RuntimeEventKind::ContainerStarted,
            RuntimeEventKind::ContainerExited { exit_code: 0 },
            RuntimeEventKind::ContainerDeleted,
        ]
    );
    // The outage (several failed attempts) logged one warning, and its end one line.
    let what = format!("docker events at {}", dockerd.socket().display());
    let warned: Vec<_> = log_lines(&["unavailable, retrying"])
        .into_iter()
        .filter(|l| l.contains(&what))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        log_lines(&["available again"])
            .iter()
            .any(|l| l.contains(&what) && l.contains("failed attempts")),
        "no recovery line"
    );
    assert_eq!(tx.dropped(), 0);
    source.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_oom_and_image_load_events() -> Result<()> {
    require_root();
    let dockerd = Dockerd::start().await?;
    let (tx, mut rx) = EventSender::channel(1024);
    let source = DockerSource::new(
        DockerConfig::default().with_socket(dockerd.socket()),
        tx.clone(),
    )
    .spawn();
    // Let the source subscribe before the load, so the load event is seen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dockerd.load_busybox().await?;
    let loaded = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = rx.recv().await {
            if ev.kind == RuntimeEventKind::ImageLoaded {
                return Some(ev);
            }
        }
        None
    })
    .await;
    match loaded {
        Ok(Some(ev)) => assert!(ev.image.is_some(), "{ev:#?}"),
        other => bail!("no image load event: {other:?}"),
    }

    // dd's 64 MiB buffer is really written (read from /dev/zero) under a 16 MiB limit.
    let id = dockerd
        .create(
            "iostall-oom",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            &kube_labels("hog-0", "hog"),
            Some(16 * 1024 * 1024),
        )
        .await?;
    dockerd.start_container(&id).await?;
    let code = dockerd.wait_container(&id).await?;
    let (events, _) = events_until(
        &mut rx,
        &id,
        |k| matches!(k, RuntimeEventKind::ContainerExited { .. }),
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(code, 137, "killed by the OOM killer (SIGKILL)");
    let kinds = kinds(&events);
    assert!(kinds.contains(&RuntimeEventKind::ContainerOom), "{kinds:?}");
    assert_eq!(
        kinds.last(),
        Some(&RuntimeEventKind::ContainerExited { exit_code: 137 })
    );
    dockerd.remove_container(&id).await?;
    source.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_replays_events_missed_while_reconnecting() -> Result<()> {
    require_root();
    let mut dockerd = Dockerd::start().await?;
    dockerd.load_busybox().await?;
    let (tx, mut rx) = EventSender::channel(1024);
    // A long first retry delay: the whole lifecycle below happens while the source
    // waits, so it can only learn of it from dockerd's replay (`since`).
    let source = DockerSource::new(
        DockerConfig::default()
            .with_socket(dockerd.socket())
            .with_backoff(Duration::from_secs(6), Duration::from_secs(6)),
        tx.clone(),
    )
    .spawn();
    let warm = dockerd
        .create("iostall-warm", &["true"], &BTreeMap::new(), None)
        .await?;
    events_until(
        &mut rx,
        &warm,
        |k| *k == RuntimeEventKind::ContainerCreated,
        Duration::from_secs(10),
    )
    .await?;

    dockerd.kill();
    let down = Instant::now();
    dockerd.restart().await?;
    let id = dockerd
        .create(
            "iostall-missed",
            &["sh", "-c", "exit 7"],
            &kube_labels("job-0", "job"),
            None,
        )
        .await?;
    dockerd.start_container(&id).await?;
    assert_eq!(dockerd.wait_container(&id).await?, 7);
    dockerd.remove_container(&id).await?;
    let lifecycle_done = down.elapsed();
    let (events, _) = events_until(
        &mut rx,
        &id,
        |k| *k == RuntimeEventKind::ContainerDeleted,
        Duration::from_secs(20),
    )
    .await?;
    eprintln!(
        "lifecycle done {lifecycle_done:?} after the kill; replayed events arrived {:?} after it",
        down.elapsed()
    );
    assert_eq!(
        kinds(&events),
        [
            RuntimeEventKind::ContainerCreated,
            RuntimeEventKind::ContainerStarted,
            RuntimeEventKind::ContainerExited { exit_code: 7 },
            RuntimeEventKind::ContainerDeleted,
        ]
    );
    // The warm-up container's create (seen before the kill) is not delivered twice.
    let mut repeats = 0;
    while let Ok(ev) = rx.try_recv() {
        if ev.container_id.as_deref() == Some(warm.as_str())
            && ev.kind == RuntimeEventKind::ContainerCreated
        {
            repeats += 1;
        }
    }
    assert_eq!(repeats, 0);
    dockerd.remove_container(&warm).await?;
    source.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_absent_at_start_then_up() -> Result<()> {
    require_root();
    let mut dockerd = Dockerd::start().await?;
    dockerd.load_busybox().await?;
    dockerd.kill();
    // No dockerd behind the socket: the source waits, it does not end or panic.
    let (tx, mut rx) = EventSender::channel(1024);
    let source = DockerSource::new(
        DockerConfig::default()
            .with_socket(dockerd.socket())
            .with_backoff(Duration::from_millis(100), Duration::from_secs(1)),
        tx.clone(),
    )
    .spawn();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!source.is_finished());
    assert!(rx.try_recv().is_err(), "no events without dockerd");

    dockerd.restart().await?;
    let events = run_true_to_deletion(
        &dockerd,
        &mut rx,
        "iostall-late",
        "late-0",
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(
        kinds(&events),
        [
            RuntimeEventKind::ContainerCreated,
            RuntimeEventKind::ContainerStarted,
            RuntimeEventKind::ContainerExited { exit_code: 0 },
            RuntimeEventKind::ContainerDeleted,
        ]
    );
    source.abort();
    Ok(())
}
