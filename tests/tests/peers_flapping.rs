//! Flapping peers, end to end, as root: the real `iostall` binary (tracepoint mode,
//! `-t 0 -o json`) follows one peer that goes down and comes back every few seconds —
//! a real containerd (its events API and CRI), a real dockerd, and the fake Kubernetes
//! API server — and after every return:
//!
//! - a container (or pod) made right after the peer came back is attributed in full:
//!   its IO records carry the container id and the pod name, namespace and container
//!   name that peer supplies;
//! - each outage is one warning and one recovery line per source in iostall's own log,
//!   never one per retry (retries are DEBUG);
//! - nothing leaks: iostall's file descriptors (`/proc/<pid>/fd`) and threads
//!   (`/proc/<pid>/task`) end where they were before the first outage (a leaked task
//!   holds its connection, so it shows as an fd). Fewer is allowed, not more: a
//!   connection cut by the last outage that its client re-dials only when it next
//!   needs it is one socket less (the CRI poller's, until its next 10 s poll; the kube
//!   client's pooled connection for owner lookups, idle since the owners are cached);
//!   the test prints which kinds of fd differ.
//!
//! "Down" is [`FlapProxy`]: the test's own proxy in front of the peer's socket, which
//! closes its listener (a unix socket's file stays, stale, so connecting is refused as
//! after a crash) and cuts every open connection, then listens again on the same path or
//! port. To iostall that is exactly a daemon that died and restarted (streams end,
//! connects are refused, then accepted); it is used rather than killing the daemons
//! because it is deterministic and cheap — the outage lasts [`DOWN_FOR`] to the
//! millisecond, and the daemon keeps its containers (dockerd kills its containers when
//! it dies, and takes seconds to come back), so the test can make a container at every
//! return. Killing the real daemons is covered by `docker_events` (dockerd SIGKILLed and
//! restarted) and `attribution_containerd` (containerd SIGKILLed and restarted).
//!
//! No real Kubernetes API server can run on the test machines (no kube-apiserver/etcd),
//! so the API is [`FakeKube`] (the same mock `kube_enrichment` uses), behind the proxy.
//!
//! The issue asks for a minute of flapping per peer; CI runs [`FLAP_FOR`] (25 s) per
//! peer, a constant, to keep the three tests near two minutes together.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use iostall::enrich::pid_map::find_unified_root;
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    dockerd::Dockerd,
    fake_kube::{FakeKube, deployment_pod, replicaset},
    flap_proxy::FlapProxy,
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
};
use serde_json::Value as Json;

/// How long each peer flaps (the figure is a minute; see the module doc).
const FLAP_FOR: Duration = Duration::from_secs(25);
/// How long each outage lasts.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// The least time the peer stays up between outages.
const UP_AT_LEAST: Duration = Duration::from_secs(2);
/// How long iostall may take, after the peer's return, to know a new container or pod.
const KNOWN_WITHIN: Duration = Duration::from_secs(30);
/// How long fds and threads may take to come back after the last return (tokio's idle
/// blocking threads retire after 10 s).
const SETTLE_WITHIN: Duration = Duration::from_secs(20);
const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");

/// iostall's open file descriptors and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    fds: usize,
    threads: usize,
}

fn counts(pid: u32) -> Result<Counts> {
    let n = |dir: &str| -> Result<usize> {
        Ok(fs::read_dir(format!("/proc/{pid}/{dir}"))
            .with_context(|| format!("/proc/{pid}/{dir}"))?
            .count())
    };
    Ok(Counts {
        fds: n("fd")?,
        threads: n("task")?,
    })
}

/// What each of iostall's fds points at (for a failure message).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits (after a warm-up) until the counts hold still for a second; the baseline,
/// and what the fds point at then.
fn baseline(pid: u32) -> Result<(Counts, Vec<String>)> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = counts(pid)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = counts(pid)?;
        if now == last || Instant::now() > deadline {
            return Ok((now, fd_targets(pid)));
        }
        last = now;
    }
}

/// The kinds of fd (`socket`, `pipe`, `anon_inode:bpf-map`…) that `now` has fewer
/// (`-`) or more (`+`) of than `before`.
fn fd_diff(before: &[String], now: &[String]) -> Vec<String> {
    let kind = |t: &String| t.split(":[").next().unwrap_or(t).to_owned();
    let mut n: BTreeMap<String, i64> = BTreeMap::new();
    for t in before {
        *n.entry(kind(t)).or_default() -= 1;
    }
    for t in now {
        *n.entry(kind(t)).or_default() += 1;
    }
    n.into_iter()
        .filter(|(_, d)| *d != 0)
        .map(|(k, d)| format!("{d:+} {k}"))
        .collect()
}

/// Whether `line` is a runtime (lifecycle) line of container `value`, or one whose
/// attribute `key` is `value` (a pod's `uid`).
fn is_runtime_line_of(line: &str, key: &str, value: &str) -> bool {
    serde_json::from_str::<Json>(line).is_ok_and(|v| {
        v["type"] == "runtime"
            && (v["container_id"] == value || v["attributes"][key].as_str() == Some(value))
    })
}

/// One flapping run: outages of [`DOWN_FOR`] until [`FLAP_FOR`] is used up. After each
/// return, `after_return(outage, returned_at)` makes and checks what it needs; the peer
/// then stays up at least [`UP_AT_LEAST`]. Returns the number of outages.
fn flap(
    proxy: &mut FlapProxy,
    mut after_return: impl FnMut(usize, Instant) -> Result<()>,
) -> Result<usize> {
    let started = Instant::now();
    let mut outages = 0;
    while started.elapsed() < FLAP_FOR {
        proxy.down();
        outages += 1;
        std::thread::sleep(DOWN_FOR);
        proxy.up()?;
        let returned = Instant::now();
        after_return(outages, returned)?;
        if let Some(left) = UP_AT_LEAST.checked_sub(returned.elapsed()) {
            std::thread::sleep(left);
        }
    }
    Ok(outages)
}

/// After the last return: every source logged its recovery, then fds and threads come
/// back to `base` or below (never above: a leak). Returns the counts at the end, how
/// long they took, and the fd kinds that differ from the baseline's.
fn settle(
    iostall: &mut Iostall,
    sources: &[String],
    outages: usize,
    (base, base_fds): &(Counts, Vec<String>),
) -> Result<(Counts, Duration, Vec<String>)> {
    let base = *base;
    for s in sources {
        let deadline = Instant::now() + KNOWN_WITHIN;
        while recoveries(&iostall.stderr_text(), s) < outages {
            ensure!(
                Instant::now() < deadline,
                "{s}: {} recoveries logged for {outages} outages:\n{}",
                recoveries(&iostall.stderr_text(), s),
                iostall.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let pid = iostall.pid();
    let start = Instant::now();
    loop {
        let now = counts(pid)?;
        if now.fds <= base.fds && now.threads <= base.threads {
            return Ok((now, start.elapsed(), fd_diff(base_fds, &fd_targets(pid))));
        }
        if start.elapsed() > SETTLE_WITHIN {
            bail!(
                "iostall's fds/threads did not come back: before {base:?}, now {now:?} \
                 after {SETTLE_WITHIN:?}; fds changed: {:?}",
                fd_diff(base_fds, &fd_targets(pid))
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn recoveries(log: &str, source: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" INFO ") && l.contains(&format!("{source} available again")))
        .count()
}

/// One warning and one recovery per outage for each source, and no other warning or
/// error at all. Returns the reconnect times iostall logged ("available again after
/// …", from the cut to the new connection).
fn assert_one_line_per_outage(log: &str, sources: &[String], outages: usize) -> Vec<String> {
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    for s in sources {
        let warned = problems
            .iter()
            .filter(|l| l.contains(&format!("{s} unavailable")))
            .count();
        assert_eq!(
            warned, outages,
            "{s}: one warning per outage ({outages}), got {warned}:\n{log}"
        );
        assert_eq!(
            recoveries(log, s),
            outages,
            "{s}: one recovery line per outage:\n{log}"
        );
    }
    assert_eq!(
        problems.len(),
        outages * sources.len(),
        "nothing else warns: {problems:#?}"
    );
    log.lines()
        .filter(|l| l.contains("available again after"))
        .filter_map(|l| l.split("available again after ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The IO records of file `name` (its `file_name`), at least one.
fn records_of<'a>(lines: &'a [Json], name: &str, log: &str) -> Vec<&'a Json> {
    let got: Vec<&Json> = lines
        .iter()
        .filter(|l| l["file_name"] == name && l["op"].is_string())
        .collect();
    assert!(!got.is_empty(), "no IO records of {name}:\n{log}");
    got
}

/// Every stdout line as JSON: those read while waiting, then the rest.
fn all_json(seen: Vec<String>, rest: Vec<String>) -> Result<Vec<Json>> {
    seen.iter()
        .chain(rest.iter())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

fn report(
    peer: &str,
    outages: usize,
    known: &[Duration],
    base: &(Counts, Vec<String>),
    end: &(Counts, Duration, Vec<String>),
) {
    eprintln!(
        "{peer}: {outages} outages of {DOWN_FOR:?} in {FLAP_FOR:?}; new container known \
         {known:?} after each return; fds/threads before {:?}, after {:?} \
         (settled in {:?}; fd kinds changed: {:?})",
        base.0, end.0, end.1, end.2
    );
}

/// containerd (events API and CRI, one socket) flaps; a pod made through CRI right
/// after each return is named in full on its container's IO.
#[test]
fn containerd_flapping() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    let volume = tempfile::tempdir()?;
    let sock = ctd.dir().join("flap.sock");
    let mut proxy = FlapProxy::unix(&sock, ctd.socket())?;
    let socket = sock.to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-c",
        "dd",
        "-o",
        "json",
        "--containerd-socket",
        &socket,
        "--docker-socket",
        "off",
        "--kube",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    iostall.wait_for_source(&socket)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut cri = rt.block_on(ctd.cri())?;
    let mut seen = Vec::new();
    let mut made: Vec<(String, String)> = Vec::new(); // (container id, file)
    let mut known = Vec::new();
    let mut run_pod = |n: usize, returned: Instant, iostall: &mut Iostall| -> Result<()> {
        let file = format!("flap-ctd-{n}");
        let uid = new_pod_uid()?;
        let id = rt.block_on(async {
            let sandbox = cri
                .run_pod_sandbox(&format!("flap-{n}"), "flapping", &uid, 0)
                .await?;
            let script =
                format!("sleep 1; dd if=/dev/zero of=/data/{file} bs=4096 count=2 conv=fsync");
            let spec =
                ContainerSpec::busybox("app", &["sh", "-c", &script]).bind(volume.path(), "/data");
            let id = cri.create_container(&sandbox, &spec).await?;
            cri.start_container(&id).await?;
            anyhow::Ok(id)
        })?;
        iostall
            .wait_for_line(KNOWN_WITHIN, |l| is_runtime_line_of(l, "", &id), &mut seen)
            .with_context(|| format!("iostall never learned of {id}"))?;
        known.push(returned.elapsed());
        let status = rt.block_on(cri.wait_exited(&id, Duration::from_secs(60)))?;
        ensure!(status.exit_code == 0, "{status:?}");
        made.push((id, file));
        Ok(())
    };
    // A warm-up pod before the baseline: whatever iostall opens once, it has opened.
    run_pod(0, Instant::now(), &mut iostall)?;
    let base = baseline(iostall.pid())?;
    let outages = flap(&mut proxy, |n, returned| run_pod(n, returned, &mut iostall))?;
    // The events source speaks for the socket; the CRI poller, on the same socket,
    // notices only the outages its polls fall into, and stays quiet about them.
    let sources = [format!("containerd events at {socket}")];
    let end = settle(&mut iostall, &sources, outages, &base)?;
    known.remove(0);
    report("containerd", outages, &known, &base, &end);
    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let reconnects = assert_one_line_per_outage(&finished.stderr, &sources, outages);
    eprintln!("containerd: outages logged as lasting {reconnects:?}");
    let lines = all_json(seen, finished.stdout)?;
    for (n, (id, file)) in made.iter().enumerate() {
        for r in records_of(&lines, file, &finished.stderr) {
            assert_eq!(r["container.id"], id.as_str(), "{r}");
            assert_eq!(r["k8s.pod.name"], format!("flap-{n}").as_str(), "{r}");
            assert_eq!(r["k8s.namespace.name"], "flapping", "{r}");
            assert_eq!(r["k8s.container.name"], "app", "{r}");
        }
    }
    rt.block_on(cri.remove_all_pods())?;
    Ok(())
}

fn kube_labels(pod: &str) -> BTreeMap<String, String> {
    [
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", "flapping"),
        (
            "io.kubernetes.pod.uid",
            "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        ),
        ("io.kubernetes.container.name", "app"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// dockerd flaps; a container with the kubelet's labels, made right after each return,
/// is named in full on its IO.
#[test]
fn docker_flapping() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dockerd = rt.block_on(Dockerd::start())?;
    rt.block_on(dockerd.load_busybox())?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("flap.sock");
    let mut proxy = FlapProxy::unix(&sock, dockerd.socket())?;
    let socket = sock.to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-c",
        "dd",
        "-o",
        "json",
        "--containerd-socket",
        "off",
        "--docker-socket",
        &socket,
        "--kube",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    iostall.wait_for_source(&socket)?;
    let mut seen = Vec::new();
    let mut made: Vec<(String, String)> = Vec::new();
    let mut known = Vec::new();
    let mut run_container = |n: usize, returned: Instant, iostall: &mut Iostall| -> Result<()> {
        let file = format!("flap-dkr-{n}");
        let script = format!("sleep 1; dd if=/dev/zero of=/{file} bs=4096 count=2 conv=fsync");
        let id = rt.block_on(async {
            let id = dockerd
                .create(
                    &format!("iostall-flap-{n}"),
                    &["sh", "-c", &script],
                    &kube_labels(&format!("flap-{n}")),
                    None,
                )
                .await?;
            dockerd.start_container(&id).await?;
            anyhow::Ok(id)
        })?;
        iostall
            .wait_for_line(KNOWN_WITHIN, |l| is_runtime_line_of(l, "", &id), &mut seen)
            .with_context(|| format!("iostall never learned of {id}"))?;
        known.push(returned.elapsed());
        ensure!(rt.block_on(dockerd.wait_container(&id))? == 0);
        made.push((id, file));
        Ok(())
    };
    run_container(0, Instant::now(), &mut iostall)?;
    let base = baseline(iostall.pid())?;
    let outages = flap(&mut proxy, |n, returned| {
        run_container(n, returned, &mut iostall)
    })?;
    let sources = [format!("docker events at {socket}")];
    let end = settle(&mut iostall, &sources, outages, &base)?;
    known.remove(0);
    report("docker", outages, &known, &base, &end);
    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let reconnects = assert_one_line_per_outage(&finished.stderr, &sources, outages);
    eprintln!("docker: outages logged as lasting {reconnects:?}");
    let lines = all_json(seen, finished.stdout)?;
    for (n, (id, file)) in made.iter().enumerate() {
        for r in records_of(&lines, file, &finished.stderr) {
            assert_eq!(r["container.id"], id.as_str(), "{r}");
            assert_eq!(r["k8s.pod.name"], format!("flap-{n}").as_str(), "{r}");
            assert_eq!(r["k8s.namespace.name"], "flapping", "{r}");
            assert_eq!(r["k8s.container.name"], "app", "{r}");
        }
    }
    for (id, _) in &made {
        rt.block_on(dockerd.remove_container(id))?;
    }
    Ok(())
}

/// A pod's cgroup and one container's leaf under it, on the unified hierarchy, named
/// as the kubelet's cgroupfs driver names them; removed on drop.
struct PodCgroup {
    pod: PathBuf,
    leaf: PathBuf,
}

impl PodCgroup {
    fn create(uid: &str) -> Result<Self> {
        let root = find_unified_root().context("a cgroup v2 hierarchy")?;
        let pod = root.join(format!("kubepods/besteffort/pod{uid}"));
        let leaf = pod.join(uid.replace('-', "").repeat(2));
        fs::create_dir_all(&leaf).with_context(|| format!("mkdir {}", leaf.display()))?;
        Ok(Self { pod, leaf })
    }

    /// Runs `iostall-workload write-fsync` (as `comm`) in this cgroup.
    fn write_fsync(&self, dir: &Path, comm: &str, prefix: &str) -> Result<()> {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            self.leaf.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(WORKLOAD)
            .args(["--comm", comm, "write-fsync", "--dir"])
            .arg(dir)
            .args(["--count", "2", "--size", "4096", "--name-prefix", prefix])
            .stdin(Stdio::null())
            .output()
            .context("running iostall-workload")?;
        ensure!(
            out.status.success(),
            "workload failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.leaf);
        let _ = fs::remove_dir(&self.pod);
    }
}

/// The API server flaps; a pod added right after each return (known to iostall only by
/// the uid in its cgroup path) is named by the API on its IO.
#[test]
fn api_server_flapping() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let node = "node-flap";
    let comm = "iost-kube-flap";
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(FakeKube::start(node))?;
    fake.add_replicaset(replicaset("flapping", "web", "5d4f8c7b9"));
    let mut proxy = FlapProxy::tcp(fake.addr())?;
    let url = proxy.url().context("a TCP proxy")?;
    let dir = tempfile::tempdir()?;
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-c",
        comm,
        "-o",
        "json",
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
        "--kube",
        "on",
        "--kube-api-server",
        &url,
        "--kube-node-name",
        node,
        "--metrics-listen",
        "off",
    ])?;
    let mut seen = Vec::new();
    let mut made: Vec<(String, String, String)> = Vec::new(); // (uid, pod name, prefix)
    let mut known = Vec::new();
    let mut run_pod = |n: usize, returned: Instant, iostall: &mut Iostall| -> Result<()> {
        let uid = new_pod_uid()?;
        let cgroup = PodCgroup::create(&uid)?;
        let pod = deployment_pod(
            "flapping",
            "web",
            "5d4f8c7b9",
            &format!("f{n:04}"),
            &uid,
            node,
            "10.244.1.17",
        );
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        fake.add_pod(pod);
        // The pod's arrival is a lifecycle line: iostall has it (the watch is back).
        iostall
            .wait_for_line(
                KNOWN_WITHIN,
                |l| is_runtime_line_of(l, "uid", &uid),
                &mut seen,
            )
            .with_context(|| format!("iostall never learned of pod {uid}"))?;
        known.push(returned.elapsed());
        let prefix = format!("flap-kube-{n}-");
        cgroup.write_fsync(dir.path(), comm, &prefix)?;
        made.push((uid, name, prefix));
        Ok(())
    };
    run_pod(0, Instant::now(), &mut iostall)?;
    let base = baseline(iostall.pid())?;
    let outages = flap(&mut proxy, |n, returned| run_pod(n, returned, &mut iostall))?;
    let sources = [format!("Kubernetes API at {url}/")];
    let end = settle(&mut iostall, &sources, outages, &base)?;
    known.remove(0);
    report("API server", outages, &known, &base, &end);
    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let reconnects = assert_one_line_per_outage(&finished.stderr, &sources, outages);
    eprintln!("API server: outages logged as lasting {reconnects:?}");
    let lines = all_json(seen, finished.stdout)?;
    for (uid, name, prefix) in &made {
        for r in records_of(&lines, &format!("{prefix}data"), &finished.stderr) {
            assert_eq!(r["k8s.pod.uid"], uid.as_str(), "{r}");
            assert_eq!(r["k8s.pod.name"], name.as_str(), "{r}");
            assert_eq!(r["k8s.namespace.name"], "flapping", "{r}");
            assert_eq!(r["k8s.deployment.name"], "web", "{r}");
        }
    }
    Ok(())
}
