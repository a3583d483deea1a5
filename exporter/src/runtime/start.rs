//! Starts the configured runtime sources and keeps the metadata cache current from
//! their events, so the enrich stage can name the containers and pods it attributes.

use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    ConnectionSettings, EventSender, RuntimeEvent, RuntimeEventKind, containerd, cri, docker,
    forget_after,
};
use crate::{
    config::SourcesConfig,
    enrich::metadata::{SharedMetadata, merge_metadata},
};

/// Runtime events buffered between the sources and the metadata updater.
pub const EVENT_QUEUE: usize = 4096;
pub use super::DELETED_GRACE;

/// The running sources.
pub struct RuntimeSources {
    sender: EventSender,
    tasks: Vec<JoinHandle<()>>,
}

impl RuntimeSources {
    /// Starts every configured source (on the current tokio runtime) and the task that
    /// applies their events to `metadata`, then passes them on to `forward` (the sinks)
    /// without waiting: when that queue is full the event is dropped and counted with
    /// the sources' own drops ([`Self::dropped`]).
    #[must_use]
    pub fn start(
        config: &SourcesConfig,
        metadata: SharedMetadata,
        forward: Option<mpsc::Sender<RuntimeEvent>>,
    ) -> Self {
        let (sender, mut rx) = EventSender::channel(EVENT_QUEUE);
        let mut tasks = Vec::new();
        if let Some(socket) = &config.containerd_socket {
            // containerd serves its own API and CRI on one socket: events and labels from
            // the first, the kubelet's pod view (names, attempts) from the second.
            // One outage of the socket is one warning: the events source reports it.
            let outage = super::SocketOutage::default();
            let events = containerd::ContainerdSource::new(
                containerd::ContainerdConfig::default().with_socket(socket.clone()),
                sender.clone(),
                metadata.clone(),
            )
            .reporting(outage.clone());
            tasks.push(events.spawn());
            let pods = cri::CriPoller::new(
                cri::CriConfig::default().with_socket(socket.clone()),
                metadata.clone(),
            )
            .covered_by(outage);
            tasks.push(pods.spawn());
        }
        if let Some(socket) = &config.docker_socket {
            let source = docker::DockerSource::new(
                docker::DockerConfig::default().with_socket(socket.clone()),
                sender.clone(),
            );
            tasks.push(source.spawn());
        }
        let counter = sender.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                apply(&metadata, &event);
                if let Some(forward) = &forward
                    && let Err(mpsc::error::TrySendError::Full(_)) = forward.try_send(event)
                {
                    counter.count_dropped();
                }
            }
        }));
        Self { sender, tasks }
    }

    /// A sender into the same stream, for sources started elsewhere (the Kubernetes
    /// pod index).
    #[must_use]
    pub fn sender(&self) -> EventSender {
        self.sender.clone()
    }

    /// Events the sources produced and the updater could not take (queue full).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.sender.dropped()
    }
}

impl Drop for RuntimeSources {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Updates `metadata` from one event: labels of created or listed containers are merged
/// in; a deleted container's entry goes after [`DELETED_GRACE`]. (The containerd source
/// also writes the cache itself, from `Containers.Get`: events carry no labels there.)
pub fn apply(metadata: &SharedMetadata, event: &RuntimeEvent) {
    tracing::debug!(
        runtime = %event.runtime,
        event = event.kind.name(),
        container = event.container_id.as_deref().unwrap_or("-"),
        "runtime event"
    );
    if event.kind == RuntimeEventKind::ContainerDeleted {
        if let Some(id) = event.container_id.clone() {
            forget_after(metadata, id, DELETED_GRACE);
        }
        return;
    }
    if let Some(meta) = event.container_meta() {
        merge_metadata(metadata, meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::metadata::{
            LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
        },
        runtime::EventSource,
    };

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn events_the_sinks_queue_has_no_room_for_are_counted() {
        let (forward, _rx) = mpsc::channel(1);
        let sources = RuntimeSources::start(
            &SourcesConfig {
                containerd_socket: None,
                docker_socket: None,
                unannounced_hold: None,
            },
            SharedMetadata::default(),
            Some(forward),
        );
        let sender = sources.sender();
        for t in 0..3 {
            let event =
                RuntimeEvent::new(t, EventSource::Docker, RuntimeEventKind::ContainerStarted);
            assert_eq!(sender.send(event), super::super::SendOutcome::Sent);
        }
        for _ in 0..200 {
            if sources.dropped() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // One fits the queue to the sinks (nobody reads it); the other two are counted.
        assert_eq!(sources.dropped(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn created_containers_are_named_and_deleted_ones_kept_for_a_grace() {
        let metadata = SharedMetadata::default();
        let mut created =
            RuntimeEvent::new(1, EventSource::Docker, RuntimeEventKind::ContainerCreated);
        created.container_id = Some(ID.into());
        for (k, v) in [
            (LABEL_POD_NAME, "web-0"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_UID, "uid-1"),
            (LABEL_CONTAINER_NAME, "app"),
        ] {
            created.labels.insert(k.into(), v.into());
        }
        apply(&metadata, &created);
        let name = |m: &SharedMetadata| {
            m.read()
                .ok()
                .and_then(|c| c.container(ID).and_then(|meta| meta.pod_name.clone()))
        };
        assert_eq!(name(&metadata).as_deref(), Some("web-0"));

        let mut deleted =
            RuntimeEvent::new(2, EventSource::Docker, RuntimeEventKind::ContainerDeleted);
        deleted.container_id = Some(ID.into());
        apply(&metadata, &deleted);
        tokio::time::sleep(DELETED_GRACE / 2).await;
        assert_eq!(
            name(&metadata).as_deref(),
            Some("web-0"),
            "kept during the grace"
        );
        tokio::time::sleep(DELETED_GRACE).await;
        assert_eq!(name(&metadata), None, "removed after it");
    }
}
