//! The [`Enricher`] against a real containerd pod: by cgroup id, by pid, by path, with
//! names from the labels and annotations containerd really sets.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt};

use iostall::{
    enrich::{
        AttributionMethod, Enricher,
        cgroup_path::{Runtime, parse_proc_cgroup_lines},
        metadata::{ContainerKind, ContainerMeta, MetadataCache},
        path_attribution::{PathKind, PathRules},
        pid_map::{CgroupIdMap, PidMap, find_unified_root},
    },
    event::{AttachMode, FsKind, IoOp, IoRecord},
};
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    image::BUSYBOX_IMAGE,
    slowfs::require_root,
};

fn record(pid: u32, cgroup_id: u64, path: Option<String>) -> IoRecord {
    IoRecord {
        op: IoOp::Fsync,
        start_unix_ns: 0,
        end_unix_ns: 1,
        latency_ns: 1,
        pid,
        tid: pid,
        comm: "test".into(),
        cgroup_id,
        mntns: 0,
        bytes: 0,
        offset: None,
        ret: 0,
        inode: 0,
        dev_major: 0,
        dev_minor: 0,
        file_name: String::new(),
        parents: Vec::new(),
        path_complete: path.is_some(),
        mount_point: None,
        file_path: path,
        datasync: false,
        directory: false,
        via_overlayfs: false,
        attach_mode: AttachMode::Tracepoint,
        fs: FsKind::Ext4,
        why: Default::default(),
    }
}

/// The unified-hierarchy cgroup id of a process (inode of its cgroup directory).
fn cgroup_id_of(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    let path = parse_proc_cgroup_lines(&text)
        .find(|l| l.is_unified())
        .expect("a 0:: line")
        .path
        .to_owned();
    let root = find_unified_root().expect("unified root");
    fs::metadata(root.join(path.trim_start_matches('/')))
        .expect("stat cgroup dir")
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enricher_attributes_a_real_pod() {
    require_root();
    let ctd = Containerd::start().expect("containerd starts");
    ctd.import_test_images().expect("images import");
    let mut cri = ctd.cri().await.expect("CRI answers");
    let uid = new_pod_uid().expect("uid");
    let sandbox = cri
        .run_pod_sandbox("web-0", "shop", &uid, 0)
        .await
        .expect("RunPodSandbox");
    let id = cri
        .create_container(&sandbox, &ContainerSpec::busybox("nginx", &["sleep", "60"]))
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    let pid = cri.container_pid(&id).await.expect("pid");

    // The CRI annotations containerd 1.6 puts in the OCI spec are the ones metadata reads.
    let (_, info) = cri
        .container_status_verbose(&id, true)
        .await
        .expect("verbose status");
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("info")).expect("json");
    let annotations: HashMap<String, String> =
        serde_json::from_value(info["runtimeSpec"]["annotations"].clone()).expect("annotations");
    let from_spec = ContainerMeta::from_labels(&id, annotations.clone()).expect("meta");
    assert_eq!(
        from_spec.kind,
        Some(ContainerKind::Container),
        "{annotations:?}"
    );
    assert_eq!(from_spec.container_name.as_deref(), Some("nginx"));
    assert_eq!(from_spec.pod_name.as_deref(), Some("web-0"));
    assert_eq!(from_spec.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(from_spec.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(from_spec.sandbox_id.as_deref(), Some(sandbox.id.as_str()));

    // Metadata as a runtime source would fill it: CRI labels and annotations.
    let mut metadata = MetadataCache::new();
    for c in cri.list_containers(None).await.expect("list") {
        let image = c.image.map(|i| i.image).unwrap_or_default();
        let meta = ContainerMeta::from_labels(&c.id, c.labels.into_iter().chain(c.annotations))
            .expect("meta")
            .with_image(image)
            .with_sandbox_id(c.pod_sandbox_id)
            .with_runtime(Runtime::Containerd);
        metadata.insert(meta);
    }
    assert_eq!(
        metadata.pod(&uid).and_then(|p| p.name.as_deref()),
        Some("web-0")
    );
    let mut enricher = Enricher {
        pids: PidMap::default(),
        cgroup_ids: Some(CgroupIdMap::discover().expect("unified hierarchy")),
        paths: PathRules {
            containerd_root: ctd.root(),
            containerd_state: ctd.state(),
            pod_logs: ctd.pod_log_root(),
            ..PathRules::default()
        },
        metadata: std::sync::Arc::new(std::sync::RwLock::new(metadata)),
    };

    // By the cgroup id the kernel would report.
    let got = enricher.enrich(&record(pid, cgroup_id_of(pid), None));
    assert_eq!(got.method, AttributionMethod::Cgroup);
    assert_eq!(got.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(got.container_name.as_deref(), Some("nginx"));
    assert_eq!(got.pod_name.as_deref(), Some("web-0"));
    assert_eq!(got.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(got.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(got.runtime, Some(Runtime::Containerd));
    assert_eq!(got.image.as_deref(), Some(BUSYBOX_IMAGE));
    assert_eq!(got.sandbox_id.as_deref(), Some(sandbox.id.as_str()));

    // By pid alone (cgroup id unknown).
    let got = enricher.enrich(&record(pid, 0, None));
    assert_eq!(got.method, AttributionMethod::Cgroup);
    assert_eq!(got.container_id.as_deref(), Some(id.as_str()));

    // containerd (a host process) writing the container's bundle: by path.
    let bundle_file = ctd.state().join(format!(
        "io.containerd.runtime.v2.task/k8s.io/{id}/config.json"
    ));
    assert!(bundle_file.exists(), "{} missing", bundle_file.display());
    let host_pid = std::process::id();
    let got = enricher.enrich(&record(
        host_pid,
        cgroup_id_of(host_pid),
        Some(bundle_file.to_string_lossy().into_owned()),
    ));
    assert_eq!(
        got.method,
        AttributionMethod::Path(PathKind::ContainerdTask)
    );
    assert_eq!(got.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(got.pod_name.as_deref(), Some("web-0"));

    // The container's log file, written by the shim: by path, to the pod.
    let log = ctd
        .pod_log_root()
        .join(format!("shop_web-0_{uid}/nginx/0.log"));
    assert!(log.exists(), "{} missing", log.display());
    let got = enricher.enrich(&record(
        host_pid,
        0,
        Some(log.to_string_lossy().into_owned()),
    ));
    assert_eq!(got.method, AttributionMethod::Path(PathKind::PodLogs));
    assert_eq!(got.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(got.container_name.as_deref(), Some("nginx"));

    // containerd's shared meta.db: nothing names a container (time overlap, later).
    let meta_db = ctd.root().join("io.containerd.metadata.v1.bolt/meta.db");
    let got = enricher.enrich(&record(
        host_pid,
        0,
        Some(meta_db.to_string_lossy().into_owned()),
    ));
    assert_eq!(got.method, AttributionMethod::None);

    cri.stop_container(&id, 0).await.expect("stop");
    cri.remove_all_pods().await.expect("pods removed");
}
