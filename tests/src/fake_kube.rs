//! A fake Kubernetes API server: just enough of list/watch for iostall's pod watcher.
//!
//! No real API server can run on the test machines (no etcd, no kube-apiserver
//! binaries, no registry to pull them from), so the kube-side tests talk to this
//! in-process HTTP server on `127.0.0.1`. It serves recorded, kubelet-realistic objects:
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node>`: a `PodList` with
//!   `metadata.resourceVersion`; any other field selector is refused with `400` (and
//!   counted), so a client that forgets the node filter fails loudly.
//! - the same with `watch=true&resourceVersion=<rv>`: a chunked stream of
//!   `{"type":"ADDED|MODIFIED|DELETED","object":{…}}` lines, replaying changes newer
//!   than `<rv>` and then following live ones.
//! - `GET /apis/apps/v1/namespaces/{ns}/replicasets/{name}` and
//!   `GET /apis/batch/v1/namespaces/{ns}/jobs/{name}`: one object or a `404` Status.
//!
//! Every request's path and query is recorded ([`FakeKube::requests`]).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

#[derive(Default)]
struct Inner {
    node: String,
    rv: u64,
    /// Pods by uid.
    pods: BTreeMap<String, Value>,
    /// `(namespace, name)` → object.
    replicasets: BTreeMap<(String, String), Value>,
    jobs: BTreeMap<(String, String), Value>,
    /// `(resourceVersion, watch line)` of every pod change.
    history: Vec<(u64, Bytes)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    requests: Vec<String>,
    rejected_selectors: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock poisons it; the data is still consistent enough
    // for a test fixture.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube")
            .field("addr", &self.addr)
            .finish()
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn record(state: &Shared, uri: &Uri) {
    lock(state).requests.push(uri.to_string());
}

async fn pods(State(state): State<Shared>, uri: Uri) -> Response {
    record(&state, &uri);
    let q = query(&uri);
    let mut inner = lock(&state);
    let want = format!("spec.nodeName={}", inner.node);
    let selector = q.get("fieldSelector").cloned().unwrap_or_default();
    if selector != want {
        inner.rejected_selectors.push(selector.clone());
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("fake API server: expected fieldSelector {want:?}, got {selector:?}"),
        );
    }
    let node = inner.node.clone();
    let on_node = |pod: &Value| pod["spec"]["nodeName"].as_str() == Some(node.as_str());
    if q.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        for (rv, line) in &inner.history {
            if *rv > from {
                let _ = tx.send(line.clone());
            }
        }
        inner.watchers.push(tx);
        drop(inner);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let items: Vec<Value> = inner
        .pods
        .values()
        .filter(|p| on_node(p))
        .cloned()
        .collect();
    let body = json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": { "resourceVersion": inner.rv.to_string() },
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn get_replicaset(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    record(&state, &uri);
    let found = lock(&state).replicasets.get(&(ns, name.clone())).cloned();
    match found {
        Some(rs) => ([(header::CONTENT_TYPE, "application/json")], rs.to_string()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("replicasets.apps \"{name}\" not found"),
        ),
    }
}

async fn get_job(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    record(&state, &uri);
    let found = lock(&state).jobs.get(&(ns, name.clone())).cloned();
    match found {
        Some(job) => (
            [(header::CONTENT_TYPE, "application/json")],
            job.to_string(),
        )
            .into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("jobs.batch \"{name}\" not found"),
        ),
    }
}

async fn fallback(State(state): State<Shared>, uri: Uri) -> Response {
    record(&state, &uri);
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("fake API server does not serve {uri}"),
    )
}

impl FakeKube {
    /// Serves the pods of `node` on a free port of 127.0.0.1.
    pub async fn start(node: &str) -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse().context("address")?, node).await
    }

    /// Serves on `addr` (to come up on a port a client already tries).
    pub async fn start_on(addr: SocketAddr, node: &str) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind the fake API server to {addr}"))?;
        let addr = listener.local_addr().context("local address")?;
        let state: Shared = Arc::new(Mutex::new(Inner {
            node: node.to_owned(),
            rv: 1000,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route(
                "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
                get(get_replicaset),
            )
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(get_job))
            .fallback(fallback)
            .with_state(state.clone());
        let (shutdown, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn change(&self, kind: &str, mut pod: Value) {
        let mut inner = lock(&self.state);
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind == "DELETED" {
            inner.pods.remove(&uid);
        } else {
            inner.pods.insert(uid, pod.clone());
        }
        let node = inner.node.clone();
        if pod["spec"]["nodeName"].as_str() != Some(node.as_str()) {
            return; // another node's pod: watchers of this node never see it
        }
        let mut line = json!({ "type": kind, "object": pod }).to_string();
        line.push('\n');
        let line = Bytes::from(line);
        inner.history.push((rv, line.clone()));
        inner.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    /// Adds a pod (a watch `ADDED` event).
    pub fn add_pod(&self, pod: Value) {
        self.change("ADDED", pod);
    }

    /// Replaces a pod (a watch `MODIFIED` event).
    pub fn modify_pod(&self, pod: Value) {
        self.change("MODIFIED", pod);
    }

    /// Deletes the pod with this uid (a watch `DELETED` event); false if unknown.
    pub fn delete_pod(&self, uid: &str) -> bool {
        let pod = lock(&self.state).pods.get(uid).cloned();
        match pod {
            Some(pod) => {
                self.change("DELETED", pod);
                true
            }
            None => false,
        }
    }

    /// Adds a ReplicaSet (served by `GET …/replicasets/{name}`).
    pub fn add_replicaset(&self, rs: Value) {
        let key = (
            rs["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            rs["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        lock(&self.state).replicasets.insert(key, rs);
    }

    /// Adds a Job (served by `GET …/jobs/{name}`).
    pub fn add_job(&self, job: Value) {
        let key = (
            job["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            job["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        lock(&self.state).jobs.insert(key, job);
    }

    /// Every request's path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// Field selectors refused (anything but `spec.nodeName=<node>`).
    pub fn rejected_selectors(&self) -> Vec<String> {
        lock(&self.state).rejected_selectors.clone()
    }

    /// Open watch streams.
    pub fn watchers(&self) -> usize {
        let mut inner = lock(&self.state);
        inner.watchers.retain(|w| !w.is_closed());
        inner.watchers.len()
    }

    /// Ends the watch streams and stops serving.
    pub async fn stop(mut self) {
        self.shutdown_now();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn shutdown_now(&mut self) {
        lock(&self.state).watchers.clear();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shutdown_now();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A pod as the kubelet runs it for Deployment `deployment` (through ReplicaSet
/// `<deployment>-<hash>`), on `node`, with IP `ip`.
pub fn deployment_pod(
    namespace: &str,
    deployment: &str,
    hash: &str,
    suffix: &str,
    uid: &str,
    node: &str,
    ip: &str,
) -> Value {
    let rs = format!("{deployment}-{hash}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{rs}-{suffix}"),
            "generateName": format!("{rs}-"),
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": "2026-11-26T09:00:00Z",
            "labels": {
                "app": deployment,
                "app.kubernetes.io/name": deployment,
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": hash,
                "team": "storage",
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-11-26T08:59:00Z",
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": format!("rs-{uid}"),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-11-26T09:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": { "f:metadata": { "f:labels": { ".": {}, "f:app": {} } } },
            }],
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app",
                "image": "registry.example/shop/web:1.4.2",
                "imagePullPolicy": "IfNotPresent",
                "resources": { "limits": { "memory": "128Mi" } },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "qosClass": "Burstable",
            "startTime": "2026-11-26T09:00:01Z",
            "conditions": [{ "type": "Ready", "status": "True",
                             "lastTransitionTime": "2026-11-26T09:00:05Z" }],
            "containerStatuses": [{
                "name": "app",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "image": "registry.example/shop/web:1.4.2",
                "imageID": "registry.example/shop/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "containerID": format!("containerd://{}", "ab".repeat(32)),
                "state": { "running": { "startedAt": "2026-11-26T09:00:04Z" } },
            }],
        },
    })
}

/// The ReplicaSet `<deployment>-<hash>` a Deployment controller creates.
pub fn replicaset(namespace: &str, deployment: &str, hash: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{deployment}-{hash}"),
            "namespace": namespace,
            "uid": format!("rs-uid-{deployment}-{hash}"),
            "resourceVersion": "900",
            "labels": { "app": deployment, "pod-template-hash": hash },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment,
                "uid": format!("deploy-uid-{deployment}"),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": deployment, "pod-template-hash": hash } },
        },
        "status": { "replicas": 2, "readyReplicas": 2 },
    })
}

/// A pod owned directly by `kind`/`name` (StatefulSet, DaemonSet, Job…), minimal.
pub fn owned_pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    kind: &str,
    owner: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "labels": { "app": owner },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": kind, "name": owner,
                "uid": format!("{kind}-{owner}"), "controller": true,
            }],
        },
        "spec": { "nodeName": node, "containers": [{ "name": "main", "image": "busybox" }] },
        "status": { "phase": "Running", "podIP": "10.244.1.9" },
    })
}
