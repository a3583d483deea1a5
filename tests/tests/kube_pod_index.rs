//! Kubernetes API enrichment ([`iostall::runtime::kube::KubePodIndex`]) against a fake
//! API server.
//!
//! No real Kubernetes API server can run on the test machines (no kube-apiserver/etcd
//! binaries and no container registry to get them from), so these tests use
//! [`iostall_tests::fake_kube::FakeKube`]: an in-process HTTP server speaking enough
//! of the list/watch API, serving recorded kubelet-style pod objects. The client is
//! built from a plain `kube::Config` pointing at it (no kubeconfig). No root needed.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use iostall::runtime::{
    EventSender, EventSource, RuntimeEvent, RuntimeEventKind,
    kube::{ClientSource, KubeConfig, KubePodIndex},
};
use iostall_tests::{
    fake_kube::{FakeKube, deployment_pod, owned_pod, replicaset},
    log_capture::{capture_logs, log_lines},
};
use serde_json::json;
use tokio::sync::mpsc;

const NODE: &str = "node-a";

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(
    rx: &mut mpsc::Receiver<RuntimeEvent>,
    kind: RuntimeEventKind,
) -> Result<RuntimeEvent> {
    let deadline = Duration::from_secs(10);
    let found = tokio::time::timeout(deadline, async {
        while let Some(ev) = rx.recv().await {
            if ev.kind == kind {
                return Some(ev);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(ev)) => Ok(ev),
        _ => bail!("no {kind:?} event within {deadline:?}"),
    }
}

fn config() -> KubeConfig {
    KubeConfig::new(NODE).with_copy_labels(["app", "app.kubernetes.io/*"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_initial_list_resolves_deployment_owner_and_filters_labels() -> Result<()> {
    let fake = FakeKube::start(NODE).await?;
    fake.add_replicaset(replicaset("shop", "web", "5d4f8c7b9"));
    let uid = "3f9c2b1e-6a7d-4c1b-9e0f-1a2b3c4d5e6f";
    fake.add_pod(deployment_pod(
        "shop",
        "web",
        "5d4f8c7b9",
        "x7k2p",
        uid,
        NODE,
        "10.244.1.17",
    ));
    fake.add_pod(deployment_pod(
        "shop",
        "web",
        "5d4f8c7b9",
        "q9m4z",
        "uid-2",
        NODE,
        "10.244.1.18",
    ));
    // Another node's pod: the field selector keeps it out.
    fake.add_pod(deployment_pod(
        "shop",
        "web",
        "5d4f8c7b9",
        "zz",
        "uid-other",
        "node-b",
        "10.244.2.3",
    ));

    let started = Instant::now();
    let (index, task) = KubePodIndex::spawn(config(), ClientSource::from_url(&fake.url())?, None);
    let info = wait_for(
        "the pod with its Deployment owner",
        Duration::from_secs(10),
        || {
            index
                .get(uid)
                .filter(|p| p.owner_kind.as_deref() == Some("Deployment"))
        },
    )
    .await?;
    eprintln!("initial list + owner resolved in {:?}", started.elapsed());
    assert_eq!(info.name, "web-5d4f8c7b9-x7k2p");
    assert_eq!(info.namespace, "shop");
    assert_eq!(info.uid, uid);
    assert_eq!(info.node.as_deref(), Some(NODE));
    assert_eq!(info.owner_name.as_deref(), Some("web"));
    // Both levels, for k8s.replicaset.name and k8s.deployment.name.
    assert_eq!(
        info.owners,
        vec![
            ("ReplicaSet".to_owned(), "web-5d4f8c7b9".to_owned()),
            ("Deployment".to_owned(), "web".to_owned()),
        ]
    );
    assert_eq!(info.pod_ip.as_deref(), Some("10.244.1.17"));
    let keys: Vec<&str> = info.labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["app", "app.kubernetes.io/name", "app.kubernetes.io/part-of"],
        "only allow-listed labels are kept"
    );
    wait_for("the second pod", Duration::from_secs(5), || {
        index
            .get("uid-2")
            .filter(|p| p.owner_kind.as_deref() == Some("Deployment"))
    })
    .await?;
    assert!(
        index.get("uid-other").is_none(),
        "another node's pod leaked in"
    );
    assert_eq!(index.len(), 2);

    let requests = fake.requests();
    assert!(fake.rejected_selectors().is_empty(), "{requests:?}");
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{requests:?}"
    );
    let rs_gets = requests
        .iter()
        .filter(|r| r.contains("/replicasets/"))
        .count();
    assert_eq!(rs_gets, 1, "the ReplicaSet lookup is cached: {requests:?}");
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_added_modified_deleted() -> Result<()> {
    let fake = FakeKube::start(NODE).await?;
    let (tx, mut rx) = EventSender::channel(256);
    let (index, task) = KubePodIndex::spawn(
        config(),
        ClientSource::from_url(&fake.url())?,
        Some(tx.clone()),
    );
    wait_for("the watch to open", Duration::from_secs(10), || {
        (fake.watchers() > 0).then_some(())
    })
    .await?;
    assert!(index.is_empty());

    // Deployment pod through a watch ADDED event.
    fake.add_replicaset(replicaset("shop", "api", "7c9d"));
    let t0 = Instant::now();
    fake.add_pod(deployment_pod(
        "shop",
        "api",
        "7c9d",
        "abcde",
        "uid-api",
        NODE,
        "10.244.1.30",
    ));
    let added = next_event(&mut rx, RuntimeEventKind::PodAdded).await?;
    eprintln!("watch ADDED → PodAdded event in {:?}", t0.elapsed());
    assert_eq!(added.runtime, EventSource::Kube);
    assert_eq!(added.namespace.as_deref(), Some("shop"));
    assert_eq!(
        added.attributes.get("uid").map(String::as_str),
        Some("uid-api")
    );
    wait_for(
        "the watched pod's Deployment",
        Duration::from_secs(5),
        || {
            index
                .get("uid-api")
                .filter(|p| p.owner_kind.as_deref() == Some("Deployment"))
        },
    )
    .await?;

    // MODIFIED: a label change shows.
    let mut changed = deployment_pod(
        "shop",
        "api",
        "7c9d",
        "abcde",
        "uid-api",
        NODE,
        "10.244.1.30",
    );
    changed["metadata"]["labels"]["app"] = json!("api-v2");
    fake.modify_pod(changed);
    next_event(&mut rx, RuntimeEventKind::PodUpdated).await?;
    wait_for("the modified label", Duration::from_secs(5), || {
        index
            .get("uid-api")
            .filter(|p| p.labels.get("app").map(String::as_str) == Some("api-v2"))
    })
    .await?;

    // StatefulSet: direct owner. Job → CronJob through the Job's owner.
    fake.add_pod(owned_pod("db", "pg-0", "uid-pg", NODE, "StatefulSet", "pg"));
    fake.add_job(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "backup-29000000", "namespace": "db", "uid": "job-uid",
            "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "CronJob",
                "name": "backup", "uid": "cj-uid", "controller": true }] },
    }));
    fake.add_pod(owned_pod(
        "db",
        "backup-29000000-xyz",
        "uid-job",
        NODE,
        "Job",
        "backup-29000000",
    ));
    let pg = wait_for("the StatefulSet pod", Duration::from_secs(5), || {
        index.get("uid-pg")
    })
    .await?;
    assert_eq!(
        (pg.owner_kind.as_deref(), pg.owner_name.as_deref()),
        (Some("StatefulSet"), Some("pg"))
    );
    wait_for("the Job pod's CronJob", Duration::from_secs(5), || {
        index.get("uid-job").filter(|p| {
            p.owner_kind.as_deref() == Some("CronJob") && p.owner_name.as_deref() == Some("backup")
        })
    })
    .await?;

    // DELETED removes it.
    assert!(fake.delete_pod("uid-api"));
    let deleted = next_event(&mut rx, RuntimeEventKind::PodDeleted).await?;
    assert_eq!(
        deleted.attributes.get("uid").map(String::as_str),
        Some("uid-api")
    );
    wait_for("the deleted pod to go", Duration::from_secs(5), || {
        index.get("uid-api").is_none().then_some(())
    })
    .await?;
    assert_eq!(index.len(), 2);
    assert_eq!(tx.dropped(), 0);
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_server_down_at_start_then_up() -> Result<()> {
    // A port nobody listens on yet.
    capture_logs(tracing::Level::INFO);
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (index, task) = KubePodIndex::spawn(
        config(),
        ClientSource::from_url(&format!("http://{addr}"))?,
        None,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(index.is_empty());
    assert!(index.get("uid-late").is_none());
    assert!(
        !task.is_finished(),
        "the watcher task must keep retrying, not end"
    );

    let fake = FakeKube::start_on(addr, NODE).await?;
    fake.add_replicaset(replicaset("shop", "late", "1a2b"));
    fake.add_pod(deployment_pod(
        "shop",
        "late",
        "1a2b",
        "p",
        "uid-late",
        NODE,
        "10.244.1.40",
    ));
    let up = Instant::now();
    let info = wait_for(
        "the pod after the API server came up",
        Duration::from_secs(45),
        || {
            index
                .get("uid-late")
                .filter(|p| p.owner_kind.as_deref() == Some("Deployment"))
        },
    )
    .await?;
    eprintln!("populated {:?} after the API server came up", up.elapsed());
    // One warning for the whole outage (several attempts), one line when it ends.
    let source = format!("Kubernetes API at http://{addr}/");
    let warned = log_lines(&["unavailable, retrying"]);
    let warned: Vec<_> = warned.iter().filter(|l| l.contains(&source)).collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    let recovered = log_lines(&["available again"]);
    assert_eq!(
        recovered.iter().filter(|l| l.contains(&source)).count(),
        1,
        "{recovered:#?}"
    );
    assert_eq!(info.owner_name.as_deref(), Some("late"));
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_fake_server_refuses_other_field_selectors() -> Result<()> {
    let fake = FakeKube::start(NODE).await?;
    fake.add_pod(deployment_pod(
        "shop",
        "web",
        "5d4f",
        "a",
        "uid-a",
        NODE,
        "10.244.1.2",
    ));
    // An index for another node asks with another selector: refused, stays empty.
    let (index, task) = KubePodIndex::spawn(
        KubeConfig::new("node-b"),
        ClientSource::from_url(&fake.url())?,
        None,
    );
    wait_for("a refused selector", Duration::from_secs(10), || {
        fake.rejected_selectors().first().cloned()
    })
    .await
    .map(|s| assert_eq!(s, "spec.nodeName=node-b"))?;
    assert!(index.is_empty());
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_without_any_config_stays_empty_and_keeps_trying() -> Result<()> {
    // No kubeconfig and no in-cluster environment on the test machines: inference
    // fails; the index stays empty and its task keeps retrying in the background.
    // (With a kubeconfig it would reach a cluster, where this node has no pods: the
    // assertions hold as well.)
    let (index, task) = KubePodIndex::spawn(
        KubeConfig::new("iostall-test-no-such-node"),
        ClientSource::Infer,
        None,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(index.is_empty());
    assert!(index.get("any").is_none());
    assert!(!task.is_finished(), "the task must keep retrying, not end");
    task.abort();
    Ok(())
}
