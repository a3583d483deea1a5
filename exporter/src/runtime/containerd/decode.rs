//! Decoding: containerd's event envelopes into [`ContainerdEvent`]s and
//! [`RuntimeEvent`]s, and containers (labels, OCI spec annotations) into metadata.
//! Pure functions: no calls to containerd here.

use std::collections::BTreeMap;

use containerd_client::{
    events::{
        ContainerCreate, ContainerDelete, ContainerUpdate, TaskCreate, TaskDelete, TaskExit,
        TaskOom, TaskStart,
    },
    services::v1::{Container, ImageCreate, ImageDelete, ImageUpdate},
    types::Envelope,
};
use prost::Message;

use super::ContainerdError;
use crate::{
    enrich::{
        cgroup_path::Runtime,
        metadata::{ContainerKind, ContainerMeta},
    },
    runtime::{EventSource, RuntimeEvent, RuntimeEventKind},
};

/// A containerd event, decoded from its envelope's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerdEvent {
    /// `/tasks/create`: a task (the container's init process) was created.
    TaskCreate {
        /// The container.
        container_id: String,
        /// Its init process.
        pid: u32,
    },
    /// `/tasks/start`.
    TaskStart {
        /// The container.
        container_id: String,
        /// Its init process.
        pid: u32,
    },
    /// `/tasks/exit`: a process of the task exited (the init process when
    /// `exec_id == container_id`).
    TaskExit {
        /// The container.
        container_id: String,
        /// The process (the container id for the init process, else an exec id).
        exec_id: String,
        /// Its pid.
        pid: u32,
        /// Its exit status (128 + signal when killed by one).
        exit_status: u32,
    },
    /// `/tasks/oom`: the container hit its memory limit.
    TaskOom {
        /// The container.
        container_id: String,
    },
    /// `/tasks/delete`: the task was deleted (after its exit).
    TaskDelete {
        /// The container.
        container_id: String,
        /// The init process.
        pid: u32,
        /// Its exit status.
        exit_status: u32,
    },
    /// `/containers/create`.
    ContainerCreate {
        /// The container.
        id: String,
        /// Its image.
        image: String,
    },
    /// `/containers/update`.
    ContainerUpdate {
        /// The container.
        id: String,
        /// Its image.
        image: String,
    },
    /// `/containers/delete`.
    ContainerDelete {
        /// The container.
        id: String,
    },
    /// `/images/create` (a pull or an import: containerd does not say which).
    ImageCreate {
        /// The image name.
        name: String,
    },
    /// `/images/update`.
    ImageUpdate {
        /// The image name.
        name: String,
    },
    /// `/images/delete`.
    ImageDelete {
        /// The image name.
        name: String,
    },
    /// Any other topic (snapshots, content, namespaces, exec, sandbox API…).
    Other,
}

impl ContainerdEvent {
    /// The container the event is about, if any.
    #[must_use]
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Self::TaskCreate { container_id, .. }
            | Self::TaskStart { container_id, .. }
            | Self::TaskExit { container_id, .. }
            | Self::TaskOom { container_id }
            | Self::TaskDelete { container_id, .. } => Some(container_id),
            Self::ContainerCreate { id, .. }
            | Self::ContainerUpdate { id, .. }
            | Self::ContainerDelete { id } => Some(id),
            _ => None,
        }
        .map(String::as_str)
        .filter(|id| !id.is_empty())
    }
}

/// An envelope from containerd's events service, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdMessage {
    /// When containerd published it, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The containerd namespace (`k8s.io`, `moby`, `default`…).
    pub namespace: String,
    /// The topic (`/tasks/exit`…).
    pub topic: String,
    /// The payload.
    pub event: ContainerdEvent,
}

/// `(seconds, nanos)` since the Unix epoch as nanoseconds (0 when before it).
#[must_use]
pub fn timestamp_ns(seconds: i64, nanos: i32) -> u64 {
    let (Ok(secs), Ok(nanos)) = (u64::try_from(seconds), u64::try_from(nanos)) else {
        return 0;
    };
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Decodes an envelope. Unknown topics decode to [`ContainerdEvent::Other`].
pub fn decode_envelope(envelope: &Envelope) -> Result<ContainerdMessage, ContainerdError> {
    let payload: &[u8] = envelope
        .event
        .as_ref()
        .map_or(&[], |any| any.value.as_slice());
    let topic = envelope.topic.as_str();
    let err = |source| ContainerdError::Decode {
        topic: topic.to_owned(),
        source,
    };
    let event = match topic {
        "/tasks/create" => {
            let e = TaskCreate::decode(payload).map_err(err)?;
            ContainerdEvent::TaskCreate {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/start" => {
            let e = TaskStart::decode(payload).map_err(err)?;
            ContainerdEvent::TaskStart {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/exit" => {
            let e = TaskExit::decode(payload).map_err(err)?;
            ContainerdEvent::TaskExit {
                container_id: e.container_id,
                exec_id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/tasks/oom" => {
            let e = TaskOom::decode(payload).map_err(err)?;
            ContainerdEvent::TaskOom {
                container_id: e.container_id,
            }
        }
        "/tasks/delete" => {
            let e = TaskDelete::decode(payload).map_err(err)?;
            ContainerdEvent::TaskDelete {
                container_id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/containers/create" => {
            let e = ContainerCreate::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerCreate {
                id: e.id,
                image: e.image,
            }
        }
        "/containers/update" => {
            let e = ContainerUpdate::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerUpdate {
                id: e.id,
                image: e.image,
            }
        }
        "/containers/delete" => {
            let e = ContainerDelete::decode(payload).map_err(err)?;
            ContainerdEvent::ContainerDelete { id: e.id }
        }
        "/images/create" => ContainerdEvent::ImageCreate {
            name: ImageCreate::decode(payload).map_err(err)?.name,
        },
        "/images/update" => ContainerdEvent::ImageUpdate {
            name: ImageUpdate::decode(payload).map_err(err)?.name,
        },
        "/images/delete" => ContainerdEvent::ImageDelete {
            name: ImageDelete::decode(payload).map_err(err)?.name,
        },
        _ => ContainerdEvent::Other,
    };
    Ok(ContainerdMessage {
        time_unix_ns: envelope
            .timestamp
            .as_ref()
            .map_or(0, |t| timestamp_ns(t.seconds, t.nanos)),
        namespace: envelope.namespace.clone(),
        topic: envelope.topic.clone(),
        event,
    })
}

/// The [`RuntimeEvent`] for a decoded message, given what is known about its container
/// (sandbox or not, labels). `None` for what the stream does not report: exec
/// processes' exits, `/tasks/create` and `/tasks/delete` (the container's create, exit
/// and delete carry them), image updates and deletes, container updates, other topics.
#[must_use]
pub fn runtime_event(
    msg: &ContainerdMessage,
    meta: Option<&ContainerMeta>,
) -> Option<RuntimeEvent> {
    use RuntimeEventKind as K;
    let sandbox = meta.is_some_and(|m| m.kind == Some(ContainerKind::Sandbox));
    let pick = |sandbox_kind, container_kind| {
        if sandbox {
            sandbox_kind
        } else {
            container_kind
        }
    };
    let mut attributes = BTreeMap::new();
    let mut image = None;
    let kind = match &msg.event {
        ContainerdEvent::ContainerCreate { image: i, .. } => {
            image = Some(i.clone()).filter(|i| !i.is_empty());
            pick(K::SandboxCreated, K::ContainerCreated)
        }
        ContainerdEvent::TaskStart { pid, .. } => {
            attributes.insert("pid".to_owned(), pid.to_string());
            pick(K::SandboxStarted, K::ContainerStarted)
        }
        ContainerdEvent::TaskExit {
            container_id,
            exec_id,
            pid,
            exit_status,
        } => {
            if !exec_id.is_empty() && exec_id != container_id {
                return None;
            }
            attributes.insert("pid".to_owned(), pid.to_string());
            attributes.insert("exit_code".to_owned(), exit_status.to_string());
            let exit_code = i32::try_from(*exit_status).unwrap_or(i32::MAX);
            pick(K::SandboxStopped, K::ContainerExited { exit_code })
        }
        ContainerdEvent::TaskOom { .. } => K::ContainerOom,
        ContainerdEvent::ContainerDelete { .. } => pick(K::SandboxDeleted, K::ContainerDeleted),
        ContainerdEvent::ImageCreate { name } => {
            let mut ev =
                RuntimeEvent::new(msg.time_unix_ns, EventSource::Containerd, K::ImagePulled);
            ev.namespace = Some(msg.namespace.clone());
            ev.image = Some(name.clone());
            ev.attributes.insert("topic".to_owned(), msg.topic.clone());
            return Some(ev);
        }
        _ => return None,
    };
    let id = msg.event.container_id()?;
    let mut ev = RuntimeEvent::new(msg.time_unix_ns, EventSource::Containerd, kind);
    ev.container_id = Some(id.to_owned());
    ev.namespace = Some(msg.namespace.clone());
    attributes.insert("topic".to_owned(), msg.topic.clone());
    ev.attributes = attributes;
    if let Some(meta) = meta {
        ev.labels = meta.labels.clone();
        ev.sandbox_id.clone_from(&meta.sandbox_id);
        ev.image = meta.image.clone();
    }
    if image.is_some() {
        ev.image = image;
    }
    Some(ev)
}

/// The annotations of an OCI runtime spec, as containerd stores it in a container
/// (`google.protobuf.Any` whose value is the spec's JSON).
#[must_use]
pub fn spec_annotations(spec_json: &[u8]) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    serde_json::from_slice::<Spec>(spec_json)
        .map(|s| s.annotations)
        .unwrap_or_default()
}

/// A containerd container's metadata: its labels and its spec's annotations (labels
/// win), its image. `None` without an id.
#[must_use]
pub fn container_meta(c: &Container) -> Option<ContainerMeta> {
    let mut labels = c
        .spec
        .as_ref()
        .map(|s| spec_annotations(&s.value))
        .unwrap_or_default();
    labels.extend(c.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut meta = ContainerMeta::from_labels(&c.id, labels)
        .ok()?
        .with_runtime(Runtime::Containerd);
    if meta.image.is_none() && !c.image.is_empty() {
        meta.image = Some(c.image.clone());
    }
    Some(meta)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use containerd_client::to_any;

    use super::*;
    use crate::enrich::metadata::{CRI_CONTAINER_TYPE, LABEL_POD_NAME};

    fn envelope<T: Message + prost::Name>(topic: &str, payload: &T) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(to_any(payload)),
        }
    }

    #[test]
    fn decodes_task_events() {
        let msg = decode_envelope(&envelope(
            "/tasks/exit",
            &TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 42,
                exit_status: 7,
                exited_at: None,
            },
        ))
        .expect("decodes");
        assert_eq!(
            msg.event,
            ContainerdEvent::TaskExit {
                container_id: "c1".into(),
                exec_id: "c1".into(),
                pid: 42,
                exit_status: 7
            }
        );
        let ev = runtime_event(&msg, None).expect("mapped");
        assert_eq!(ev.kind, RuntimeEventKind::ContainerExited { exit_code: 7 });
        assert_eq!(ev.container_id.as_deref(), Some("c1"));
        assert_eq!(ev.namespace.as_deref(), Some("k8s.io"));
        assert_eq!(
            ev.attributes.get("topic").map(String::as_str),
            Some("/tasks/exit")
        );

        let exec_exit = decode_envelope(&envelope(
            "/tasks/exit",
            &TaskExit {
                container_id: "c1".into(),
                id: "exec-1".into(),
                ..TaskExit::default()
            },
        ))
        .expect("decodes");
        assert!(
            runtime_event(&exec_exit, None).is_none(),
            "exec exits are not container exits"
        );

        let oom = decode_envelope(&envelope(
            "/tasks/oom",
            &TaskOom {
                container_id: "c1".into(),
            },
        ))
        .expect("decodes");
        assert_eq!(
            runtime_event(&oom, None).map(|e| e.kind),
            Some(RuntimeEventKind::ContainerOom)
        );
    }

    #[test]
    fn sandbox_events_and_labels_from_metadata() {
        let meta = ContainerMeta::from_labels(
            "sb",
            [(CRI_CONTAINER_TYPE, "sandbox"), (LABEL_POD_NAME, "web-0")],
        )
        .expect("meta");
        let msg = decode_envelope(&envelope(
            "/tasks/start",
            &TaskStart {
                container_id: "sb".into(),
                pid: 9,
            },
        ))
        .expect("decodes");
        let ev = runtime_event(&msg, Some(&meta)).expect("mapped");
        assert_eq!(ev.kind, RuntimeEventKind::SandboxStarted);
        assert_eq!(ev.sandbox_id.as_deref(), Some("sb"));
        assert_eq!(
            ev.labels.get(LABEL_POD_NAME).map(String::as_str),
            Some("web-0")
        );
        assert_eq!(ev.attributes.get("pid").map(String::as_str), Some("9"));
    }

    #[test]
    fn unknown_topics_and_bad_payloads() {
        let mut env = envelope("/snapshot/prepare", &TaskOom::default());
        env.timestamp = None;
        let msg = decode_envelope(&env).expect("decodes");
        assert_eq!(msg.event, ContainerdEvent::Other);
        assert!(runtime_event(&msg, None).is_none());
        let mut bad = envelope("/tasks/start", &TaskOom::default());
        if let Some(any) = bad.event.as_mut() {
            any.value = vec![0xff, 0xff, 0xff];
        }
        assert!(matches!(
            decode_envelope(&bad),
            Err(ContainerdError::Decode { .. })
        ));
    }

    #[test]
    fn spec_annotations_and_container_meta() {
        let spec = br#"{"ociVersion":"1.0.2","annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.sandbox-id":"sb1",
            "io.kubernetes.cri.sandbox-name":"from-annotation",
            "io.kubernetes.cri.container-name":"app"}}"#;
        let mut spec_any = to_any(&TaskOom::default());
        spec_any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec".into();
        spec_any.value = spec.to_vec();
        let c = Container {
            id: "c1".into(),
            labels: HashMap::from([(LABEL_POD_NAME.to_owned(), "web-0".to_owned())]),
            image: "docker.io/library/busybox:1".into(),
            spec: Some(spec_any),
            ..Container::default()
        };
        let meta = container_meta(&c).expect("meta");
        assert_eq!(meta.pod_name.as_deref(), Some("web-0"), "labels win");
        assert_eq!(meta.container_name.as_deref(), Some("app"));
        assert_eq!(meta.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(meta.kind, Some(ContainerKind::Container));
        assert_eq!(meta.image.as_deref(), Some("docker.io/library/busybox:1"));
        assert!(spec_annotations(b"not json").is_empty());
    }
}
