//! The containerd harness against the real containerd: a host-network pod runs a
//! busybox container; its process's cgroup names its container id and pod uid; teardown
//! leaves no process and no mount behind. Needs root, containerd, runc and
//! busybox-static; fails (never skips) without them.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use iostall::enrich::cgroup_path::{QosClass, parse_proc_cgroup};
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid, pod_cgroup_parent},
    image::{BUSYBOX_IMAGE, PAUSE_IMAGE},
    slowfs::require_root,
};
use k8s_cri::v1::PodSandboxState;

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_pod_and_cleans_up() {
    require_root();
    let started = Instant::now();
    let ctd = Containerd::start().expect("containerd starts");
    let containerd_pid = ctd.pid().expect("containerd runs");
    eprintln!(
        "containerd start: {:?} (snapshotter {})",
        ctd.start_duration(),
        ctd.snapshotter()
    );
    assert!(
        ctd.plugin_ok("io.containerd.grpc.v1", "cri")
            .expect("ctr plugins ls"),
        "the CRI plugin did not load:\n{}",
        ctd.log_tail(4000)
    );
    assert!(
        ctd.plugin_ok("io.containerd.snapshotter.v1", ctd.snapshotter())
            .expect("ctr plugins ls")
    );
    let t = Instant::now();
    ctd.import_test_images().expect("images import");
    eprintln!("image build+import: {:?}", t.elapsed());
    let mut cri = ctd.cri().await.expect("CRI answers");
    let version = cri.version().await.expect("version");
    assert_eq!(version.runtime_name, "containerd");
    assert!(cri.has_image(BUSYBOX_IMAGE).await.expect("image status"));
    assert!(cri.has_image(PAUSE_IMAGE).await.expect("image status"));

    let uid = new_pod_uid().expect("uid");
    let t = Instant::now();
    let sandbox = cri
        .run_pod_sandbox("harness", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let sandbox_time = t.elapsed();
    let t = Instant::now();
    let spec = ContainerSpec::busybox("hello", &["sh", "-c", "echo hi > /dev/null; sleep 1"]);
    let id = cri
        .create_container(&sandbox, &spec)
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    let container_time = t.elapsed();
    eprintln!(
        "RunPodSandbox: {sandbox_time:?}, CreateContainer+StartContainer: {container_time:?}"
    );

    // The container's process is in the container's cgroup, under the pod's.
    let pid = cri.container_pid(&id).await.expect("container pid");
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its /proc cgroup");
    let found = parse_proc_cgroup(&cgroup)
        .unwrap_or_else(|| panic!("no container in /proc/{pid}/cgroup:\n{cgroup}"));
    assert_eq!(found.id, id, "cgroup file:\n{cgroup}");
    assert_eq!(found.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(found.qos, Some(QosClass::BestEffort));
    let expected_path = format!("{}/{id}", pod_cgroup_parent(&uid));
    assert!(
        cgroup
            .lines()
            .any(|l| l.ends_with(&format!(":{expected_path}"))),
        "no line with {expected_path}:\n{cgroup}"
    );
    eprintln!("container pid {pid} cgroup:\n{cgroup}");

    // Listed, with the kubelet's labels.
    let pods = cri.list_pod_sandboxes().await.expect("list pods");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32);
    let containers = cri.list_containers(Some(&sandbox.id)).await.expect("list");
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0]
            .labels
            .get("io.kubernetes.pod.uid")
            .map(String::as_str),
        Some(uid.as_str())
    );

    // It exits 0.
    let status = cri
        .wait_exited(&id, Duration::from_secs(30))
        .await
        .expect("exits");
    assert_eq!(status.exit_code, 0, "status: {status:?}");
    let log = ctd
        .pod_log_root()
        .join(format!("iostall-test_harness_{uid}/hello/0.log"));
    assert!(log.exists(), "container log {} missing", log.display());

    cri.remove_container(&id).await.expect("RemoveContainer");
    cri.remove_all_pods().await.expect("pods removed");
    assert!(cri.list_pod_sandboxes().await.expect("list").is_empty());

    let dir: PathBuf = ctd.dir().to_path_buf();
    let shims = ctd.shim_pids();
    drop(cri);
    drop(ctd);
    assert!(
        !process_alive(containerd_pid),
        "containerd {containerd_pid} still runs"
    );
    for shim in shims {
        assert!(!process_alive(shim), "shim {shim} still runs");
    }
    assert!(!process_alive(pid), "container process {pid} still runs");
    let leftover: Vec<_> = iostall_tests::slowfs::mounts()
        .expect("mounts")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&dir))
        .collect();
    assert!(leftover.is_empty(), "mounts left: {leftover:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    for h in ["blkio", "memory", "unified", "systemd"] {
        let pod = PathBuf::from("/sys/fs/cgroup")
            .join(h)
            .join(pod_cgroup_parent(&uid).trim_start_matches('/'));
        assert!(!pod.exists(), "{} left behind", pod.display());
    }
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Teardown without the CRI cleanup (a test that panicked midway): Drop alone must
/// still stop the running pod, its shim, and unmount everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_alone_tears_down_a_running_pod() {
    require_root();
    let ctd = Containerd::start().expect("containerd starts");
    ctd.import_test_images().expect("images import");
    let mut cri = ctd.cri().await.expect("CRI answers");
    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("dropped", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let id = cri
        .create_container(
            &sandbox,
            &ContainerSpec::busybox("sleeper", &["sleep", "600"]),
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    let pid = cri.container_pid(&id).await.expect("pid");
    let shims = ctd.shim_pids();
    assert!(!shims.is_empty(), "no shim found for our socket");
    let dir = ctd.dir().to_path_buf();
    assert!(
        !ctd.mounts_under_dir().expect("mounts").is_empty(),
        "a running pod has mounts under the dir"
    );
    drop(cri);
    drop(ctd);
    // The container process may take a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pid), "container process {pid} still runs");
    for shim in shims {
        assert!(!process_alive(shim), "shim {shim} still runs");
    }
    let leftover: Vec<_> = iostall_tests::slowfs::mounts()
        .expect("mounts")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&dir))
        .collect();
    assert!(leftover.is_empty(), "mounts left: {leftover:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// containerd killed with SIGKILL and started again on the same directories keeps its
/// pods and images, and CRI answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_survives_kill_and_restart() {
    require_root();
    let mut ctd = Containerd::start().expect("containerd starts");
    ctd.import_test_images().expect("images import");
    let mut cri = ctd.cri().await.expect("CRI answers");
    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("restarted", "iostall-test", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let old_pid = ctd.pid().expect("pid");
    let took = ctd.kill_and_restart().expect("restart");
    eprintln!("containerd restart: {took:?}");
    assert_ne!(ctd.pid(), Some(old_pid));
    let mut cri = ctd.cri().await.expect("CRI answers after restart");
    let pods = cri.list_pod_sandboxes().await.expect("list");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, sandbox.id);
    assert!(cri.has_image(BUSYBOX_IMAGE).await.expect("image status"));
    // And still runs containers.
    let id = cri
        .create_container(&sandbox, &ContainerSpec::busybox("after", &["true"]))
        .await
        .expect("CreateContainer after restart");
    cri.start_container(&id).await.expect("StartContainer");
    let status = cri
        .wait_exited(&id, Duration::from_secs(30))
        .await
        .expect("exits");
    assert_eq!(status.exit_code, 0);
    cri.remove_all_pods().await.expect("pods removed");
}
