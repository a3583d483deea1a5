//! End to end, as root: the real `iostall` binary (tracepoint mode, `-o json,otlp` to a
//! real OTLP receiver) with its Kubernetes API enrichment on, and a process in a
//! container-shaped cgroup (`kubepods/besteffort/pod<uid>/<id>` on the unified
//! hierarchy, plus the slow ext4 fixture's throttled blkio cgroup) doing slow fsyncs.
//! No container runtime is watched (`--containerd-socket off --docker-socket off`): the
//! pod's uid comes from the cgroup path alone, and its name, namespace, owners and
//! labels only from the API.
//!
//! No real Kubernetes API server can run on the test machines (no kube-apiserver/etcd
//! binaries and no registry to get them from), so the API is
//! [`iostall_tests::fake_kube::FakeKube`]: an in-process HTTP server speaking the pods
//! list/watch API (it refuses any field selector but `spec.nodeName=<node>`) and serving
//! a kubelet-realistic pod owned by a ReplicaSet, itself owned by a Deployment. Every
//! other component is real.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use iostall::enrich::pid_map::find_unified_root;
use iostall_tests::{
    fake_kube::{FakeKube, deployment_pod, replicaset},
    iostall_proc::{Iostall, iostall_binary},
    otlp_receiver::{Collected, OtlpReceiver, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use opentelemetry_proto::tonic::{common::v1::KeyValue, resource::v1::Resource};
use serde_json::Value as Json;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");
/// iostall's threshold, ms.
const THRESHOLD_MS: u64 = 20;
const NAMESPACE: &str = "shop";
const DEPLOYMENT: &str = "web";
const HASH: &str = "5d4f8c7b9";

fn new_uid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading a random uuid")?
        .trim()
        .to_owned())
}

/// A pod's cgroup and one container's leaf under it, on the unified hierarchy, named
/// as the kubelet's cgroupfs driver names them; removed on drop.
struct PodCgroup {
    pod: PathBuf,
    leaf: PathBuf,
    container_id: String,
}

impl PodCgroup {
    fn create(uid: &str) -> Result<Self> {
        let root = find_unified_root().context("a cgroup v2 hierarchy")?;
        let container_id = uid.replace('-', "").repeat(2);
        let pod = root.join(format!("kubepods/besteffort/pod{uid}"));
        let leaf = pod.join(&container_id);
        fs::create_dir_all(&leaf).with_context(|| format!("mkdir {}", leaf.display()))?;
        Ok(Self {
            pod,
            leaf,
            container_id,
        })
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // The workload has exited: the leaf is empty.
        let _ = fs::remove_dir(&self.leaf);
        let _ = fs::remove_dir(&self.pod);
    }
}

/// Runs `iostall-workload write-fsync` in the pod's cgroup (unified) and the fixture's
/// throttled blkio cgroup; returns the fsyncs it measured as clearly slow.
fn slow_fsyncs_in_pod(
    fs: &SlowExt4,
    pod: &PodCgroup,
    comm: &str,
    prefix: &str,
    count: u32,
) -> Result<Vec<Json>> {
    // The shell joins the pod's cgroup, then becomes the workload, which joins blkio.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        pod.leaf.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(WORKLOAD)
        .arg("--prime-throttle")
        .arg("--cgroup")
        .arg(fs.cgroup_dir())
        .args(["--comm", comm, "write-fsync", "--dir"])
        .arg(fs.mount_point())
        .args(["--count", &count.to_string(), "--size", "4096"])
        .args(["--name-prefix", prefix])
        .stdin(Stdio::null())
        .output()
        .context("running iostall-workload")?;
    if !out.status.success() {
        bail!(
            "workload failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["op"] == "fsync")
        .filter(|v| {
            v["duration_ns"]
                .as_u64()
                .is_some_and(|d| d >= (THRESHOLD_MS + 10) * 1_000_000)
        })
        .collect())
}

/// A config file turning the Kubernetes API on, pointed at `api_server`.
fn kube_config(node: &str, api_server: &str) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::NamedTempFile::new()?;
    let text = format!(
        "kube:\n  enabled: on\n  node_name: {node}\n  api_server: {api_server}\n  \
         pod_labels: [app.kubernetes.io/name, app]\n"
    );
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(f)
}

fn start_iostall(config: &Path, comm: &str, otlp_endpoint: &str) -> Result<Iostall> {
    let config = config.to_string_lossy().into_owned();
    let threshold = THRESHOLD_MS.to_string();
    Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        &threshold,
        "-c",
        comm,
        "-o",
        "json,otlp",
        "--otlp-endpoint",
        otlp_endpoint,
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
        "--metrics-listen",
        "off",
        "--config",
        &config,
    ])
}

/// Serves `uid` as pod `web-<hash>-<suffix>` of Deployment `web` (through its
/// ReplicaSet) on `node`.
fn serve_pod(fake: &FakeKube, uid: &str, node: &str) -> String {
    fake.add_replicaset(replicaset(NAMESPACE, DEPLOYMENT, HASH));
    let pod = deployment_pod(
        NAMESPACE,
        DEPLOYMENT,
        HASH,
        "x7k2p",
        uid,
        node,
        "10.244.1.17",
    );
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    fake.add_pod(pod);
    name
}

/// Waits until iostall watches the fake API and has asked for the pod's ReplicaSet.
fn wait_for_watch(fake: &FakeKube, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let asked_rs = fake
            .requests()
            .iter()
            .any(|r| r.contains(&format!("/replicasets/{DEPLOYMENT}-{HASH}")));
        if fake.watchers() >= 1 && asked_rs {
            // The ReplicaSet's answer lands in the owner cache right after (margin for
            // a loaded machine).
            std::thread::sleep(Duration::from_secs(1));
            eprintln!("iostall watching the API after {:?}", start.elapsed());
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "iostall did not watch the fake API within {timeout:?}; requests: {:?}",
                fake.requests()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `n` fsync spans of file `<prefix>data`; returns (Resource, span
/// attributes) of each.
fn fsync_spans(rx: &mut OtlpReceiver, prefix: &str, n: usize) -> Vec<(Resource, Vec<KeyValue>)> {
    let file = format!("{prefix}data");
    let ours = |c: &Collected| -> Vec<(Resource, Vec<KeyValue>)> {
        c.spans
            .iter()
            .filter(|(_, s)| {
                s.name == "ext4 fsync"
                    && str_attr(&s.attributes, "file.name").as_deref() == Some(file.as_str())
            })
            .map(|(r, s)| (r.clone(), s.attributes.clone()))
            .collect()
    };
    let got = rx.collect_until(Duration::from_secs(20), |c| ours(c).len() >= n);
    ours(&got)
}

fn json_fsyncs<'a>(json: &'a [Json], prefix: &str) -> Vec<&'a Json> {
    let file = format!("{prefix}data");
    json.iter()
        .filter(|v| v["op"] == "fsync" && v["file_name"] == file.as_str())
        .collect()
}

/// The pod's identity as the API gives it, on a JSON record or a Resource.
fn assert_named_by_kube(
    get: &dyn Fn(&str) -> Option<String>,
    uid: &str,
    pod_name: &str,
    what: &str,
) {
    let want = [
        ("k8s.pod.uid", uid.to_owned()),
        ("k8s.pod.name", pod_name.to_owned()),
        ("k8s.namespace.name", NAMESPACE.to_owned()),
        ("k8s.deployment.name", DEPLOYMENT.to_owned()),
        ("k8s.replicaset.name", format!("{DEPLOYMENT}-{HASH}")),
        (
            "k8s.pod.label.app.kubernetes.io/name",
            DEPLOYMENT.to_owned(),
        ),
        ("k8s.pod.label.app", DEPLOYMENT.to_owned()),
    ];
    for (key, value) in want {
        assert_eq!(get(key).as_deref(), Some(value.as_str()), "{key} of {what}");
    }
    // Labels outside the allow-list stay out.
    for key in [
        "k8s.pod.label.team",
        "k8s.pod.label.pod-template-hash",
        "k8s.pod.label.app.kubernetes.io/part-of",
    ] {
        assert_eq!(get(key), None, "{key} is not allow-listed, on {what}");
    }
}

fn json_get(v: &Json) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| v.get(k).and_then(Json::as_str).map(str::to_owned)
}

/// The pod is known only by the uid in its cgroup path; the API names it and adds its
/// Deployment, ReplicaSet and allow-listed labels, in JSON and on the OTLP Resource.
#[test]
fn api_names_a_pod_known_only_by_its_cgroup_and_adds_owners_and_labels() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let node = "node-kube-e2e";
    let comm = "iost-kube-on";
    let prefix = "kube-on-";
    let fs = SlowExt4::create(SlowExt4Options {
        write_iops: Some(10),
        ..SlowExt4Options::default()
    })?;
    let uid = new_uid()?;
    let pod = PodCgroup::create(&uid)?;
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(FakeKube::start(node))?;
    let pod_name = serve_pod(&fake, &uid, node);
    // Another pod of the node, to show the lookup is by uid.
    fake.add_pod(deployment_pod(
        NAMESPACE,
        "other",
        "77aa88bb9",
        "abcde",
        &new_uid()?,
        node,
        "10.244.1.18",
    ));
    let config = kube_config(node, &fake.url())?;
    let mut rx = OtlpReceiver::grpc()?;
    let iostall = start_iostall(config.path(), comm, &rx.endpoint())?;
    wait_for_watch(&fake, Duration::from_secs(30))?;

    let slow = slow_fsyncs_in_pod(&fs, &pod, comm, prefix, 4)?;
    assert!(slow.len() >= 2, "throttling works: {slow:?}");
    let spans = fsync_spans(&mut rx, prefix, slow.len());
    let finished = iostall.stop()?;
    assert!(finished.success, "iostall failed:\n{}", finished.stderr);
    assert!(
        fake.rejected_selectors().is_empty(),
        "only this node's pods are asked for: {:?}",
        fake.rejected_selectors()
    );

    let json = finished.json()?;
    // The pod's arrival on the node is a lifecycle line of its own.
    let added: Vec<&Json> = json
        .iter()
        .filter(|l| l["type"] == "runtime" && l["event.name"] == "pod.added")
        .filter(|l| l["attributes"]["uid"] == uid.as_str())
        .collect();
    assert_eq!(added.len(), 1, "one pod.added line for {uid}: {added:#?}");
    assert_eq!(added[0]["runtime"], "kube", "{}", added[0]);
    assert_eq!(
        added[0]["attributes"]["name"],
        pod_name.as_str(),
        "{}",
        added[0]
    );
    let records = json_fsyncs(&json, prefix);
    assert!(
        records.len() >= slow.len(),
        "{} JSON fsync records for {} slow fsyncs; stderr:\n{}",
        records.len(),
        slow.len(),
        finished.stderr
    );
    for r in &records {
        assert_eq!(r["iostall.attribution"], "cgroup", "{r}");
        assert_eq!(r["container.id"], pod.container_id.as_str(), "{r}");
        assert_named_by_kube(&json_get(r), &uid, &pod_name, &format!("JSON {r}"));
    }

    assert!(
        spans.len() >= slow.len(),
        "{} OTLP fsync spans for {} slow fsyncs",
        spans.len(),
        slow.len()
    );
    for (resource, attrs) in &spans {
        let get = |k: &str| str_attr(&resource.attributes, k);
        assert_named_by_kube(&get, &uid, &pod_name, "the span's Resource");
        assert_eq!(
            get("container.id").as_deref(),
            Some(pod.container_id.as_str())
        );
        assert_eq!(
            get("k8s.node.name").as_deref(),
            Some(node),
            "the node's name"
        );
        assert_eq!(get("service.name").as_deref(), Some("iostall"));
        // Identity is on the Resource, not repeated on each span.
        assert_eq!(str_attr(attrs, "k8s.deployment.name"), None);
    }
    Ok(())
}

/// With the API server down iostall attaches and reports the pod's IO at once (uid from
/// the cgroup path), warns once, retries in the background, and names the pod once the
/// server is up.
#[test]
fn api_server_down_slows_nothing_and_enriches_once_it_is_up() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let node = "node-kube-down";
    let comm = "iost-kube-down";
    let fs = SlowExt4::create(SlowExt4Options {
        write_iops: Some(10),
        ..SlowExt4Options::default()
    })?;
    let uid = new_uid()?;
    let pod = PodCgroup::create(&uid)?;
    // A port nothing listens on (yet).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = kube_config(node, &format!("http://{addr}"))?;
    let mut rx = OtlpReceiver::grpc()?;
    iostall_binary()?; // built before the clock starts
    let started = Instant::now();
    let iostall = start_iostall(config.path(), comm, &rx.endpoint())?;
    eprintln!(
        "attached {:?} after start, API server down",
        started.elapsed()
    );

    let slow_down = slow_fsyncs_in_pod(&fs, &pod, comm, "down-", 3)?;
    assert!(slow_down.len() >= 2, "throttling works: {slow_down:?}");
    let spans_down = fsync_spans(&mut rx, "down-", slow_down.len());
    assert!(
        spans_down.len() >= slow_down.len(),
        "IO is exported while the API is down: {} spans for {} slow fsyncs;\n{}",
        spans_down.len(),
        slow_down.len(),
        iostall.stderr_text()
    );
    for (resource, _) in &spans_down {
        let get = |k: &str| str_attr(&resource.attributes, k);
        assert_eq!(get("k8s.pod.uid").as_deref(), Some(uid.as_str()));
        assert_eq!(get("k8s.pod.name"), None, "no source names the pod yet");
        assert_eq!(get("k8s.deployment.name"), None);
    }

    // The API server comes up on the address iostall keeps trying.
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(FakeKube::start_on(addr, node))?;
    let pod_name = serve_pod(&fake, &uid, node);
    // kube's watcher backs off up to 30 s between attempts.
    wait_for_watch(&fake, Duration::from_secs(60))?;
    let slow_up = slow_fsyncs_in_pod(&fs, &pod, comm, "up-", 3)?;
    assert!(slow_up.len() >= 2, "throttling works: {slow_up:?}");
    let spans_up = fsync_spans(&mut rx, "up-", slow_up.len());
    let finished = iostall.stop()?;
    assert!(finished.success, "iostall failed:\n{}", finished.stderr);

    let json = finished.json()?;
    for r in json_fsyncs(&json, "down-") {
        assert_eq!(r["k8s.pod.uid"], uid.as_str(), "{r}");
        assert_eq!(r["k8s.pod.name"], Json::Null, "{r}");
    }
    let up = json_fsyncs(&json, "up-");
    assert!(
        up.len() >= slow_up.len(),
        "JSON records after the API came up"
    );
    for r in up {
        assert_named_by_kube(&json_get(r), &uid, &pod_name, &format!("JSON {r}"));
    }
    assert!(
        spans_up.len() >= slow_up.len(),
        "spans after the API came up"
    );
    for (resource, _) in &spans_up {
        let get = |k: &str| str_attr(&resource.attributes, k);
        assert_named_by_kube(&get, &uid, &pod_name, "the span's Resource");
    }

    // One line for the outage (iostall's own), none per retry (from the kube crates).
    let warnings: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| l.contains("Kubernetes") || l.contains("kube"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the outage, not one per retry:\n{}",
        finished.stderr
    );
    assert!(warnings[0].contains(" WARN ") && warnings[0].contains(&addr.to_string()));
    assert!(
        finished.stderr.contains("available again"),
        "the end of the outage is logged:\n{}",
        finished.stderr
    );
    Ok(())
}
