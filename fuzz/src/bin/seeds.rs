//! Writes the seed corpus (`fuzz/corpus/<target>/seed-*`): one well-formed input of each
//! shape a target reads, so libFuzzer starts from valid records instead of finding the
//! formats' headers by chance. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin fuzz-seeds`.
use std::{collections::HashMap, fs, path::Path};

use containerd_client::{
    events::{ContainerCreate, TaskExit, TaskOom, TaskStart},
    services::v1::Container,
    to_any,
    types::Envelope,
};
use exporter_common::{
    CgroupEvent, EventHeader, ExecEvent, ExitEvent, IoEvent, OomEvent, event_kind, fs_kind, op,
};
use k8s_cri::v1::{
    ContainerMetadata, ListContainersResponse, ListPodSandboxResponse, PodSandbox,
    PodSandboxMetadata,
};
use prost::Message;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
}

/// The bytes of a `#[repr(C)]` kernel record.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain-old-data record shared with the kernel side; every byte of
    // it is initialised (it was made from zeroed memory).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// A zeroed record (the kernel side's records are plain integers and byte arrays).
fn zeroed<T>() -> T {
    // SAFETY: the record types are integers and byte arrays: all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn put(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn header(kind: u32) -> EventHeader {
    let mut h: EventHeader = zeroed();
    h.kind = kind;
    h.pid = 812;
    h.tid = 812;
    h.start_ns = 1_000_000_000;
    h.cgroup_id = 4242;
    h
}

fn ring() {
    for (op, name) in [
        (op::READ, "read"),
        (op::WRITE, "write"),
        (op::OPEN, "open"),
        (op::FSYNC, "fsync"),
    ] {
        let mut ev: IoEvent = zeroed();
        ev.header = header(event_kind::IO);
        ev.latency_ns = 125_000_000;
        ev.op = op;
        ev.fs = if op == op::FSYNC {
            fs_kind::XFS
        } else {
            fs_kind::EXT4
        };
        ev.bytes = 4096;
        ev.inode = 12;
        ev.dev = (7 << 20) | 3;
        put(&mut ev.file_name, "meta.db");
        ev.parent_count = 3;
        put(&mut ev.parents[0], "io.containerd.metadata.v1.bolt");
        put(&mut ev.parents[1], "containerd");
        put(&mut ev.parents[2], "lib");
        write("ring_io", name, &bytes_of(&ev));
    }
    let mut cg: CgroupEvent = zeroed();
    cg.header = header(event_kind::CGROUP_MKDIR);
    cg.id = 777;
    cg.level = 3;
    put(
        &mut cg.path,
        "kubepods.slice/kubepods-besteffort.slice/cri-containerd-abc.scope",
    );
    write("ring_lifecycle", "cgroup", &bytes_of(&cg));
    let mut exec: ExecEvent = zeroed();
    exec.header = header(event_kind::EXEC);
    write("ring_lifecycle", "exec", &bytes_of(&exec));
    let mut exit: ExitEvent = zeroed();
    exit.header = header(event_kind::EXIT);
    write("ring_lifecycle", "exit", &bytes_of(&exit));
    let mut oom: OomEvent = zeroed();
    oom.header = header(event_kind::OOM);
    write("ring_lifecycle", "oom", &bytes_of(&oom));
}

fn labels() -> HashMap<String, String> {
    [
        ("io.kubernetes.pod.name", "web-0"),
        ("io.kubernetes.pod.namespace", "shop"),
        (
            "io.kubernetes.pod.uid",
            "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8",
        ),
        ("io.kubernetes.container.name", "app"),
        ("io.cri-containerd.kind", "container"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn containerd() {
    let envelope = |topic: &str, event| Envelope {
        timestamp: None,
        namespace: "k8s.io".into(),
        topic: topic.into(),
        event: Some(event),
    };
    let start = TaskStart {
        container_id: "abc".into(),
        pid: 4121,
    };
    let exit = TaskExit {
        container_id: "abc".into(),
        id: "abc".into(),
        pid: 4121,
        exit_status: 137,
        ..TaskExit::default()
    };
    let create = ContainerCreate {
        id: "abc".into(),
        image: "registry.local/app:1".into(),
        ..ContainerCreate::default()
    };
    let oom = TaskOom {
        container_id: "abc".into(),
    };
    for (name, env) in [
        ("start", envelope("/tasks/start", to_any(&start))),
        ("exit", envelope("/tasks/exit", to_any(&exit))),
        ("create", envelope("/containers/create", to_any(&create))),
        ("oom", envelope("/tasks/oom", to_any(&oom))),
    ] {
        write("containerd_envelope", name, &env.encode_to_vec());
    }
    let spec = br#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"s1","io.kubernetes.cri.container-name":"app"}}"#;
    let mut spec_any = to_any(&oom);
    spec_any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec".into();
    spec_any.value = spec.to_vec();
    let c = Container {
        id: "abc".into(),
        labels: labels(),
        image: "registry.local/app:1".into(),
        spec: Some(spec_any),
        ..Container::default()
    };
    write("containerd_container", "container", &c.encode_to_vec());
    write("containerd_container", "spec", spec);
}

fn cri() {
    let sandboxes = ListPodSandboxResponse {
        items: vec![PodSandbox {
            id: "s1".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web-0".into(),
                uid: "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8".into(),
                namespace: "shop".into(),
                attempt: 1,
            }),
            labels: labels(),
            ..PodSandbox::default()
        }],
    };
    let containers = ListContainersResponse {
        containers: vec![k8s_cri::v1::Container {
            id: "abc".into(),
            pod_sandbox_id: "s1".into(),
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            labels: labels(),
            ..k8s_cri::v1::Container::default()
        }],
    };
    write(
        "cri_lists",
        "sandboxes",
        &[&[0u8][..], &sandboxes.encode_to_vec()].concat(),
    );
    write(
        "cri_lists",
        "containers",
        &[&[1u8][..], &containers.encode_to_vec()].concat(),
    );
}

fn docker() {
    write(
        "docker_json",
        "die",
        br#"{"status":"die","id":"abc","from":"bb:1","Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"3","image":"bb:1","name":"x","io.kubernetes.pod.name":"web-1"}},"scope":"local","time":1795686963,"timeNano":1795686963273132430}"#,
    );
    write(
        "docker_json",
        "start",
        br#"{"Type":"container","Action":"start","Actor":{"ID":"s1","Attributes":{"io.kubernetes.docker.type":"podsandbox"}},"timeNano":1795686963273132430}"#,
    );
    write(
        "docker_json",
        "list",
        br#"[{"Id":"abc","Names":["/k8s_app_web-0_shop_uid_0"],"Image":"bb:1","Labels":{"io.kubernetes.pod.name":"web-0"},"State":"running","Created":1795686963}]"#,
    );
}

fn kube() {
    write(
        "kube_watch_event",
        "added",
        br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-5d4f8c7b9-x2x4z","namespace":"shop","uid":"8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8","labels":{"app":"web","app.kubernetes.io/name":"web","pod-template-hash":"5d4f8c7b9"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d4f8c7b9","uid":"r1","controller":true}]},"spec":{"nodeName":"node-1","containers":[{"name":"app","image":"registry.local/app:1"}],"initContainers":[{"name":"init","image":"bb:1"}]},"status":{"phase":"Running","podIP":"10.0.0.7","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-12-01T09:15:47Z"}],"containerStatuses":[{"name":"app","ready":true,"restartCount":2,"image":"app","imageID":"","started":true,"state":{"running":{"startedAt":"2026-12-01T09:15:46Z"}},"lastState":{"terminated":{"exitCode":137,"reason":"OOMKilled","finishedAt":"2026-12-01T09:15:40Z"}}}]}}}"#,
    );
    write(
        "kube_watch_event",
        "deleted",
        br#"{"type":"DELETED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-0","namespace":"shop","uid":"u2"}}}"#,
    );
}

fn config() {
    let example = fs::read("otel-config/iostall.yaml").expect("otel-config/iostall.yaml");
    write("config_yaml", "example", &example);
    write(
        "config_yaml",
        "small",
        b"threshold_ms: 5\noutputs: [table, otlp]\notlp:\n  endpoint: http://collector:4317\n  headers:\n    x-api-key: abc\nkube:\n  pod_labels: [\"app*\"]\nstartup:\n  settle_ms: 2000\n",
    );
}

fn main() {
    ring();
    containerd();
    cri();
    docker();
    kube();
    config();
}
