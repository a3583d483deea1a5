//! The container image, end to end, as root. `deploy/image/build.sh` builds it (a static
//! musl `iostall` in a `FROM scratch` image) with a private, real dockerd; nothing is
//! pulled. The image then goes into a private, real containerd and runs there as the
//! kubelet would run the DaemonSet that `kubectl kustomize deploy/overlays/containerd`
//! renders: its CRI requests are derived from the manifest
//! ([`iostall_tests::deploy::PodRun`]), not copied — not privileged, only the
//! capabilities it adds (after dropping all), its host mounts (read-only where it says),
//! the host pid namespace, no new privileges, a read-only root, the runtime's default
//! seccomp profile, the kubelet's masked paths, its memory limit and CPU shares.
//!
//! Why CRI and not `docker run`: Debian's dockerd 20.10 refuses `--cap-add BPF` and
//! `PERFMON` ("unknown capability"), so it cannot run the manifest's set at all; CRI is
//! also exactly how a kubelet starts the pod.
//!
//! Not from the manifest, and said here: the pod uses the host's network (no CNI runs
//! here) to reach the test's OTLP receiver and fake API server on loopback; the node's
//! side of the containerd socket is the test's own containerd; the ConfigMap's endpoint
//! and the Secret's headers get the test's values (the endpoint a name, resolved by the
//! static binary through `/etc/hosts`); metrics listen on a free loopback port.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use iostall_tests::{
    containerd::{
        CRI_NAMESPACE, ContainerSpec, Containerd, CriClient, Sandbox, new_pod_uid,
        throttle_container_writes,
    },
    deploy::{self, NodeSide, PodRun, quantity},
    dockerd::Dockerd,
    fake_kube::FakeKube,
    image::import_into_containerd,
    otlp_receiver::{OtlpReceiver, scrape, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use k8s_cri::v1::ContainerState;

/// The image tag the test builds.
const IMAGE: &str = "iostall.test/iostall:image-test";
/// Debian's docker CLI (package docker.io).
const DOCKER_CLI: &str = "/usr/bin/docker";
/// The node name the downward API would give.
const NODE: &str = "node-image-test";
/// A Service-like host name for the OTLP receiver, resolved inside the container.
const COLLECTOR_HOST: &str = "otel-collector.iostall-test.svc";
/// The host-file entry the pod gets for it (the kubelet's `hostAliases` mechanism).
const HOSTS_FILE: &str = "127.0.0.1 localhost\n127.0.0.1 otel-collector.iostall-test.svc\n";

fn docker(dockerd: &Dockerd, args: &[&str]) -> Result<Output> {
    Command::new(DOCKER_CLI)
        .arg("-H")
        .arg(format!("unix://{}", dockerd.socket().display()))
        .args(args)
        .output()
        .with_context(|| format!("failed to run {DOCKER_CLI} (package docker.io)"))
}

fn docker_ok(dockerd: &Dockerd, args: &[&str]) -> Result<String> {
    let out = docker(dockerd, args)?;
    ensure!(
        out.status.success(),
        "docker {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds the image with `deploy/image/build.sh` on a private dockerd, reports its size,
/// and imports it into `ctd`'s CRI namespace (`docker save` → `ctr images import`).
fn build_and_import(rt: &tokio::runtime::Runtime, ctd: &Containerd) -> Result<u64> {
    let dockerd = rt.block_on(Dockerd::start())?;
    let script = deploy::deploy_dir().join("image/build.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(IMAGE)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dockerd.socket().display()),
        )
        .env("DOCKER", DOCKER_CLI)
        .output()
        .context("failed to run deploy/image/build.sh")?;
    ensure!(
        out.status.success(),
        "build.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let size: u64 = docker_ok(&dockerd, &["image", "inspect", "-f", "{{.Size}}", IMAGE])?
        .parse()
        .context("image size")?;
    println!(
        "image {IMAGE}: {size} bytes ({:.1} MiB), built in {:.0?}",
        size as f64 / 1048576.0,
        started.elapsed()
    );
    let archive = ctd.dir().join("iostall-image.tar");
    let archive_arg = archive.to_string_lossy().into_owned();
    docker_ok(&dockerd, &["save", "-o", &archive_arg, IMAGE])?;
    import_into_containerd(&ctd.socket(), CRI_NAMESPACE, &archive)?;
    Ok(size)
}

/// The iostall pod's sandbox, run as the manifest's pod asks.
async fn iostall_sandbox(cri: &mut CriClient, run: &PodRun, name: &str) -> Result<Sandbox> {
    let uid = new_pod_uid()?;
    cri.run_pod_sandbox_with(name, "iostall", &uid, 0, |c| run.apply_to_sandbox(c))
        .await
}

/// Creates and starts the iostall container in `sandbox`; returns its id.
async fn start_iostall(
    cri: &mut CriClient,
    sandbox: &Sandbox,
    run: &PodRun,
    name: &str,
    extra_args: &[&str],
    hosts: &std::path::Path,
) -> Result<String> {
    let spec = ContainerSpec {
        name: name.to_owned(),
        image: IMAGE.to_owned(),
        command: Vec::new(),
        mounts: Vec::new(),
        memory_limit: None,
        attempt: 0,
    };
    let hosts = hosts.to_string_lossy().into_owned();
    let id = cri
        .create_container_with(sandbox, &spec, |c| {
            run.apply_to_container(c, extra_args);
            // The kubelet's managed /etc/hosts (hostAliases), read-only.
            c.mounts.push(k8s_cri::v1::Mount {
                container_path: "/etc/hosts".into(),
                host_path: hosts,
                readonly: true,
                ..Default::default()
            });
        })
        .await?;
    cri.start_container(&id).await?;
    Ok(id)
}

/// The CRI log file of container `name` in `sandbox` (`<log dir>/<name>/0.log`).
fn log_file(sandbox: &Sandbox, name: &str) -> PathBuf {
    PathBuf::from(&sandbox.config.log_directory).join(format!("{name}/0.log"))
}

fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log contains every needle; fails with the log if the container exits.
fn wait_logged(
    rt: &tokio::runtime::Runtime,
    cri: &mut CriClient,
    id: &str,
    log: &std::path::Path,
    needles: &[&str],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_log(log);
        if needles.iter().all(|n| text.contains(n)) {
            return Ok(());
        }
        let status = rt.block_on(cri.container_status(id))?;
        if status.state != ContainerState::ContainerRunning as i32 {
            bail!(
                "iostall's container stopped (exit {}) before logging {needles:?}:\n{text}",
                status.exit_code
            );
        }
        if Instant::now() > deadline {
            bail!("no {needles:?} within {timeout:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `(VmRSS, VmHWM)` in KiB, and user+system CPU ticks, of `pid`.
fn usage(pid: u32) -> Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after "(comm) ".
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?, ticks(11)? + ticks(12)?))
}

/// Clock ticks per second for /proc/<pid>/stat.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[test]
fn image_with_the_daemonsets_security_context_reports_a_pods_slow_fsync() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let docs = deploy::render("containerd")?;
    let ds = deploy::one(&docs, "DaemonSet")?;
    let resources = ds["spec"]["template"]["spec"]["containers"][0]["resources"].clone();

    let rt = tokio::runtime::Runtime::new()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let volume = fs.mount_point().join("volume");
    std::fs::create_dir(&volume)?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    let size = build_and_import(&rt, &ctd)?;
    ensure!(
        size < 64 << 20,
        "the image is {size} bytes: more than 64 MiB"
    );

    let mut rx = OtlpReceiver::grpc()?;
    let kube = rt.block_on(FakeKube::start(NODE))?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let scratch = tempfile::tempdir()?;
    let hosts = scratch.path().join("hosts");
    std::fs::write(&hosts, HOSTS_FILE)?;
    let node = NodeSide {
        host_paths: BTreeMap::from([("containerd-sock".to_owned(), ctd.socket())]),
        scratch: scratch.path().to_owned(),
        node_name: NODE.to_owned(),
        env_overrides: BTreeMap::from([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                format!("http://{COLLECTOR_HOST}:{}", rx.addr().port()),
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
                "x-iostall-test=from-the-secret".to_owned(),
            ),
        ]),
        without_cap: None,
    };
    let run = PodRun::from_manifest(&docs, &node)?;
    assert_eq!(run.caps_added, deploy::PROVEN_CAPS);
    let kube_url = kube.url();
    let listen = metrics.to_string();
    let extra = ["--kube-api-server", &kube_url, "--metrics-listen", &listen];

    let mut cri = rt.block_on(ctd.cri())?;
    let started = Instant::now();
    let (iostall_pod, id) = rt.block_on(async {
        let sandbox = iostall_sandbox(&mut cri, &run, "iostall-node").await?;
        let id = start_iostall(&mut cri, &sandbox, &run, "iostall", &extra, &hosts).await?;
        anyhow::Ok((sandbox, id))
    })?;
    let log = log_file(&iostall_pod, "iostall");
    wait_logged(
        &rt,
        &mut cri,
        &id,
        &log,
        &[
            "attached in tracepoint mode",
            "/run/containerd/containerd.sock connected",
        ],
        Duration::from_secs(90),
    )?;
    let attach_took = started.elapsed();
    let pid = rt.block_on(cri.container_pid(&id))?;
    let (_, _, ticks_attached) = usage(pid)?;

    // A pod whose container writes and fsyncs on the 10-IOPS disk (the workload of
    // attribution_containerd.rs).
    let (uid, writer) = rt.block_on(async {
        let uid = new_pod_uid()?;
        let sandbox = cri.run_pod_sandbox("web-0", "shop", &uid, 0).await?;
        let spec = ContainerSpec::busybox(
            "writer",
            &[
                "sh",
                "-c",
                // Direct writes first, so that the throttle is in its steady state
                // (the first IO after idle passes at once), then writes and an fsync.
                "sleep 2; dd if=/dev/zero of=/data/out bs=4096 count=3 oflag=direct && \
                 dd if=/dev/zero of=/data/out bs=4096 count=2 seek=3 conv=notrunc,fsync",
            ],
        )
        .bind(&volume, "/data");
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        throttle_container_writes(&uid, &id, fs.device(), 10)?;
        let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        ensure!(status.exit_code == 0, "{status:?}");
        anyhow::Ok((uid, id))
    })?;

    let is_fsync = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        s.name == "ext4 fsync" && str_attr(&s.attributes, "file.name").as_deref() == Some("out")
    };
    let got = rx.collect_until(Duration::from_secs(30), |c| {
        c.spans.iter().any(|(_, s)| is_fsync(s))
    });
    let Some((resource, span)) = got.spans.iter().find(|(_, s)| is_fsync(s)) else {
        let seen: Vec<String> = got
            .spans
            .iter()
            .map(|(r, s)| {
                format!(
                    "{} {:?} pod {:?}",
                    s.name,
                    str_attr(&s.attributes, "file.path"),
                    str_attr(&r.attributes, "k8s.pod.name")
                )
            })
            .collect();
        bail!(
            "no `ext4 fsync` span of the pod's file reached the receiver; spans: {seen:#?}\n\
             iostall's log:\n{}",
            read_log(&log)
        );
    };
    let latency = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano);
    println!(
        "slow fsync reported: {:.1} ms, file.path {:?}",
        latency as f64 / 1e6,
        str_attr(&span.attributes, "file.path")
    );
    assert!(latency >= 10_000_000, "{latency} ns: below the threshold");
    // The node's full path: the mount point comes from the node's /proc/1/mountinfo,
    // which only the host pid namespace shows (without hostPID it is None).
    assert_eq!(
        str_attr(&span.attributes, "file.path"),
        Some(volume.join("out").to_string_lossy().into_owned()),
        "file.path"
    );
    let r = &resource.attributes;
    assert_eq!(str_attr(r, "k8s.pod.uid").as_deref(), Some(uid.as_str()));
    assert_eq!(str_attr(r, "k8s.pod.name").as_deref(), Some("web-0"));
    assert_eq!(str_attr(r, "k8s.namespace.name").as_deref(), Some("shop"));
    assert_eq!(
        str_attr(r, "container.id").as_deref(),
        Some(writer.as_str())
    );
    assert_eq!(str_attr(r, "k8s.container.name").as_deref(), Some("writer"));
    // NODE_NAME through the downward API mapping.
    assert_eq!(str_attr(r, "k8s.node.name").as_deref(), Some(NODE));
    assert_eq!(
        str_attr(&span.attributes, "iostall.attribution").as_deref(),
        Some("cgroup")
    );
    // The Secret's headers reached the collector with every request.
    assert!(
        got.requests.iter().all(|m| m
            .headers
            .iter()
            .any(|(k, v)| k == "x-iostall-test" && v == "from-the-secret")),
        "a request without the Secret's header: {:?}",
        got.requests
    );
    // The pod watch of this node went to the API server.
    let requests = kube.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/pods") && r.contains(NODE)),
        "no pod list/watch for {NODE}: {requests:?}"
    );
    // The probes' endpoint answers.
    scrape(metrics, "/healthz").context("GET /healthz")?;
    let exposition = scrape(metrics, "/metrics")?;
    assert!(exposition.contains("iostall_records_total"), "{exposition}");

    // Usage: to attach, over the workload, then idle.
    let (rss, hwm, ticks_end) = usage(pid)?;
    let busy = started.elapsed().saturating_sub(attach_took);
    std::thread::sleep(Duration::from_secs(5));
    let (_, _, ticks_idle) = usage(pid)?;
    let hz = ticks_per_second();
    let attach_cpu = ticks_attached as f64 / hz;
    let busy_millicores = (ticks_end - ticks_attached) as f64 / hz / busy.as_secs_f64() * 1000.0;
    let idle_millicores = (ticks_idle - ticks_end) as f64 / hz / 5.0 * 1000.0;
    println!(
        "container usage: VmRSS {rss} KiB, VmHWM {hwm} KiB; CPU {attach_cpu:.2} s to attach \
         ({attach_took:.1?}), {busy_millicores:.0}m over the workload ({busy:.1?}), \
         {idle_millicores:.0}m idle"
    );
    let request = quantity(deploy::str_of(&resources["requests"]["memory"], "memory")?)?;
    let limit = quantity(deploy::str_of(&resources["limits"]["memory"], "memory")?)?;
    assert!(
        rss * 1024 < request,
        "resident {rss} KiB is above the manifest's memory request {request}"
    );
    assert!(
        hwm * 1024 * 2 < limit,
        "peak RSS {hwm} KiB leaves less than half of the memory limit {limit}"
    );
    let cpu_request = quantity(deploy::str_of(&resources["requests"]["cpu"], "cpu")?)?;
    assert!(
        idle_millicores < cpu_request as f64,
        "idle CPU {idle_millicores:.0}m above the request {cpu_request}m"
    );

    // Stopped as the kubelet stops a pod (SIGTERM): a clean exit, no error logged.
    let status = rt.block_on(async {
        cri.stop_container(&id, 20).await?;
        cri.container_status(&id).await
    })?;
    let text = read_log(&log);
    assert_eq!(status.exit_code, 0, "exit code on SIGTERM; log:\n{text}");
    assert!(!text.contains("ERROR"), "errors in iostall's log:\n{text}");
    rt.block_on(cri.remove_all_pods())?;
    Ok(())
}

/// Least privilege, proven: the same container with any one of the manifest's added
/// capabilities taken away stops at once with an error naming that capability.
#[test]
fn the_image_without_any_one_of_the_manifests_capabilities_fails_naming_it() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let docs = deploy::render("containerd")?;
    let rt = tokio::runtime::Runtime::new()?;
    let ctd = Containerd::start()?;
    ctd.import_test_images()?;
    build_and_import(&rt, &ctd)?;
    let scratch = tempfile::tempdir()?;
    let hosts = scratch.path().join("hosts");
    std::fs::write(&hosts, HOSTS_FILE)?;
    let mut node = NodeSide {
        host_paths: BTreeMap::from([("containerd-sock".to_owned(), ctd.socket())]),
        scratch: scratch.path().to_owned(),
        node_name: NODE.to_owned(),
        ..NodeSide::default()
    };
    let all = PodRun::from_manifest(&docs, &node)?.caps_added;
    // The set the overlays are checked against (tests/tests/deploy_kustomize.rs).
    assert_eq!(all, deploy::PROVEN_CAPS, "the manifest's capabilities");
    let mut cri = rt.block_on(ctd.cri())?;
    let full = PodRun::from_manifest(&docs, &node)?;
    let sandbox = rt.block_on(iostall_sandbox(&mut cri, &full, "iostall-least-privilege"))?;
    for cap in &all {
        node.without_cap = Some(cap.clone());
        let run = PodRun::from_manifest(&docs, &node)?;
        assert_eq!(run.caps_added.len(), all.len() - 1);
        let name = format!("iostall-without-{}", cap.to_lowercase());
        // The API server is never reached: iostall must stop before. `--duration`
        // bounds a run that would not.
        let extra = [
            "--kube-api-server",
            "http://127.0.0.1:9",
            "--metrics-listen",
            "off",
            "--duration",
            "20",
        ];
        let status = rt.block_on(async {
            let id = start_iostall(&mut cri, &sandbox, &run, &name, &extra, &hosts).await?;
            cri.wait_exited(&id, Duration::from_secs(60)).await
        })?;
        let text = read_log(&log_file(&sandbox, &name));
        println!("without {cap}: exit {} — {}", status.exit_code, text.trim());
        assert_ne!(status.exit_code, 0, "iostall ran without {cap}:\n{text}");
        let want = format!("missing capability CAP_{cap}");
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
        assert!(!text.contains("attached in"), "{text}");
    }
    rt.block_on(cri.remove_all_pods())?;
    Ok(())
}
