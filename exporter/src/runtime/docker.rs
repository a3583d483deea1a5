//! Docker source: dockerd's `/events` stream over its unix socket.
//!
//! Each session opens `GET /events` first, then lists the containers
//! (`GET /containers/json?all=1`, which carries their labels) so containers that
//! already exist are known ([`RuntimeEventKind::ContainerListed`]), then follows the
//! stream. When dockerd goes away the session ends and [`Reconnect`] retries with
//! backoff. Each subscription asks for the events `since` the last one delivered (or
//! the source's start), so what a restarted dockerd did before the source reconnected
//! is replayed from dockerd's in-memory event log; replayed duplicates are skipped.
//!
//! The HTTP client is hyper 1 over a tokio `UnixStream`, one connection per request.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::{net::UnixStream, task::JoinHandle};

use super::{
    Connection, ConnectionSettings, EventSender, EventSource, Reconnect, RuntimeEvent,
    RuntimeEventKind, SendOutcome,
};
use crate::enrich::metadata::{DOCKER_SANDBOX_ID, DOCKER_TYPE};

/// dockerd's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// `filters={"type":["container","image"]}`, URL-encoded.
const EVENT_FILTER: &str = "%7B%22type%22%3A%5B%22container%22%2C%22image%22%5D%7D";

/// Longest event line accepted; a longer one means a broken stream.
const MAX_LINE: usize = 1 << 20;

/// Event attributes that are not container labels.
const NON_LABEL_ATTRIBUTES: &[&str] = &["image", "name", "exitCode", "signal", "execID"];

/// Errors of the Docker source and client.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Connecting to the socket failed.
    #[error("failed to connect to dockerd at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("failed to {op} (dockerd): {source}")]
    Http {
        /// The request, e.g. `GET /events`.
        op: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// Building the request failed (a bad path).
    #[error("failed to build request {op}: {source}")]
    Request {
        /// The request.
        op: String,
        /// The cause.
        #[source]
        source: http::Error,
    },
    /// dockerd answered with an error status.
    #[error("failed to {op}: dockerd answered {status}: {body}")]
    Status {
        /// The request.
        op: String,
        /// The status.
        status: StatusCode,
        /// The body (dockerd's `{"message": …}`).
        body: String,
    },
    /// A response was not the JSON expected.
    #[error("failed to decode the answer to {op}: {source}")]
    Decode {
        /// The request.
        op: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The event stream ended (dockerd stopped or closed it).
    #[error("docker event stream ended")]
    StreamEnded,
    /// An event line exceeded the size limit.
    #[error("docker event line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// A minimal Docker Engine API client over the unix socket.
#[derive(Debug, Clone)]
pub struct DockerClient {
    socket: PathBuf,
}

impl DockerClient {
    /// A client of the dockerd listening on `socket`.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the response with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<http::Response<Incoming>, DockerError> {
        let op = format!("{method} {path_and_query}");
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| DockerError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| DockerError::Http {
                op: op.clone(),
                source,
            })?;
        tokio::spawn(async move {
            // Ends when the response body is done or dropped; errors surface there.
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, "docker");
        let body = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(http::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|source| DockerError::Request {
                op: op.clone(),
                source,
            })?;
        sender
            .send_request(request)
            .await
            .map_err(|source| DockerError::Http { op, source })
    }

    /// Sends one request and collects the body; fails on a non-2xx status.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<Bytes, DockerError> {
        let op = format!("{method} {path_and_query}");
        let response = self.send(method, path_and_query, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| DockerError::Http {
                op: op.clone(),
                source,
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(DockerError::Status {
                op,
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        Ok(bytes)
    }

    /// `call` with a JSON body and a JSON answer.
    pub async fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, DockerError> {
        let op = format!("{method} {path_and_query}");
        let body = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
        let bytes = self.call(method, path_and_query, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| DockerError::Decode { op, source })
    }

    /// All containers, running or not (`GET /containers/json?all=1`).
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        self.call_json(Method::GET, "/containers/json?all=1", None)
            .await
    }

    /// One container's details (`GET /containers/{id}/json`).
    pub async fn inspect(&self, id: &str) -> Result<ContainerInspect, DockerError> {
        self.call_json(Method::GET, &format!("/containers/{id}/json"), None)
            .await
    }
}

/// The parts of `GET /containers/{id}/json` the source uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    /// The container id.
    pub id: String,
    /// Its state.
    #[serde(default)]
    pub state: InspectState,
    /// Its configuration (labels).
    #[serde(default)]
    pub config: InspectConfig,
}

/// `State` of a container inspection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectState {
    /// Whether it runs.
    #[serde(default)]
    pub running: bool,
    /// Host pid of its init process (0 when not running).
    #[serde(default)]
    pub pid: i64,
}

/// `Config` of a container inspection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The image as given at create.
    #[serde(default)]
    pub image: String,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// The container id.
    pub id: String,
    /// The image as given at create.
    #[serde(default)]
    pub image: String,
    /// Names (`/name`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `created`, `running`, `exited`…
    #[serde(default)]
    pub state: String,
    /// Creation time, seconds since the epoch.
    #[serde(default)]
    pub created: i64,
}

/// One message of the `/events` stream (API ≥ 1.22 fields only).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerEventMessage {
    /// `container`, `image`, `network`…
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `create`, `start`, `die`, `oom`, `destroy`, `pull`… (exec actions carry a
    /// `: command` suffix).
    #[serde(rename = "Action", default)]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor", default)]
    pub actor: DockerActor,
    /// Seconds since the epoch.
    #[serde(default)]
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano", default)]
    pub time_nano: i64,
}

/// The object an event is about.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerActor {
    /// Container id or image reference.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Labels merged with `image`, `name`, `exitCode`…
    #[serde(rename = "Attributes", default)]
    pub attributes: BTreeMap<String, String>,
}

fn is_sandbox(labels: &BTreeMap<String, String>) -> bool {
    labels.get(DOCKER_TYPE).map(String::as_str) == Some("podsandbox")
}

/// Maps one docker event to a [`RuntimeEvent`]; `None` for actions not tracked
/// (attach, exec, network, tag…).
#[must_use]
pub fn map_event(msg: &DockerEventMessage) -> Option<RuntimeEvent> {
    let time_unix_ns = if msg.time_nano > 0 {
        u64::try_from(msg.time_nano).ok()?
    } else {
        u64::try_from(msg.time).ok()?.saturating_mul(1_000_000_000)
    };
    let mut labels = BTreeMap::new();
    let mut attributes = BTreeMap::new();
    for (k, v) in &msg.actor.attributes {
        if NON_LABEL_ATTRIBUTES.contains(&k.as_str()) {
            attributes.insert(k.clone(), v.clone());
        } else {
            labels.insert(k.clone(), v.clone());
        }
    }
    let kind = match msg.kind.as_str() {
        "container" => {
            let sandbox = is_sandbox(&labels);
            match (msg.action.as_str(), sandbox) {
                ("create", false) => RuntimeEventKind::ContainerCreated,
                ("create", true) => RuntimeEventKind::SandboxCreated,
                ("start", false) => RuntimeEventKind::ContainerStarted,
                ("start", true) => RuntimeEventKind::SandboxStarted,
                ("die", true) => RuntimeEventKind::SandboxStopped,
                ("die", false) => RuntimeEventKind::ContainerExited {
                    // A missing or odd exit code is reported as -1, not dropped.
                    exit_code: attributes
                        .get("exitCode")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(-1),
                },
                ("oom", _) => RuntimeEventKind::ContainerOom,
                ("destroy", false) => RuntimeEventKind::ContainerDeleted,
                ("destroy", true) => RuntimeEventKind::SandboxDeleted,
                _ => return None,
            }
        }
        "image" => match msg.action.as_str() {
            "pull" => RuntimeEventKind::ImagePulled,
            "load" | "import" => RuntimeEventKind::ImageLoaded,
            _ => return None,
        },
        _ => return None,
    };
    let mut ev = RuntimeEvent::new(time_unix_ns, EventSource::Docker, kind);
    if msg.kind == "image" {
        ev.image = Some(msg.actor.id.clone());
    } else {
        ev.container_id = Some(msg.actor.id.clone());
        ev.image = attributes.get("image").cloned();
        ev.sandbox_id = if is_sandbox(&labels) {
            Some(msg.actor.id.clone())
        } else {
            labels.get(DOCKER_SANDBOX_ID).cloned()
        };
    }
    ev.labels = labels;
    ev.attributes = attributes;
    Some(ev)
}

/// A listed container as a [`RuntimeEventKind::ContainerListed`] event.
#[must_use]
pub fn listed_event(c: &ContainerSummary, now_ns: u64) -> RuntimeEvent {
    let labels = c.labels.clone().unwrap_or_default();
    let mut ev = RuntimeEvent::new(
        now_ns,
        EventSource::Docker,
        RuntimeEventKind::ContainerListed {
            running: c.state == "running",
        },
    );
    ev.container_id = Some(c.id.clone());
    ev.image = (!c.image.is_empty()).then(|| c.image.clone());
    ev.sandbox_id = if is_sandbox(&labels) {
        Some(c.id.clone())
    } else {
        labels.get(DOCKER_SANDBOX_ID).cloned()
    };
    if let Some(name) = c.names.first() {
        ev.attributes
            .insert("name".into(), name.trim_start_matches('/').to_owned());
    }
    ev.attributes.insert("state".into(), c.state.clone());
    ev.labels = labels;
    ev
}

/// Settings of the Docker source.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The socket and reconnect delays. Default socket [`DEFAULT_SOCKET`].
    pub connection: Connection,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            connection: Connection::new(DEFAULT_SOCKET),
        }
    }
}

impl ConnectionSettings for DockerConfig {
    fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

/// The Docker event source.
#[derive(Debug)]
pub struct DockerSource {
    client: DockerClient,
    config: DockerConfig,
    sender: EventSender,
}

impl DockerSource {
    /// A source sending into `sender`.
    #[must_use]
    pub fn new(config: DockerConfig, sender: EventSender) -> Self {
        Self {
            client: DockerClient::new(config.connection.socket.clone()),
            config,
            sender,
        }
    }

    /// Runs [`DockerSource::run`] on a new task.
    #[must_use]
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Follows dockerd until the receiver is dropped, reconnecting with backoff.
    pub async fn run(self) {
        let mut reconnect = self.config.connection.reconnect("docker events");
        // Resume point: the source's start, so a dockerd that comes up later still
        // replays what it did before the first subscription.
        let mut cursor = Cursor::starting_at(super::now_unix_ns());
        loop {
            let result = self.session(&mut reconnect, &mut cursor).await;
            if self.sender.is_closed() {
                return;
            }
            let error = match result {
                Ok(()) => DockerError::StreamEnded,
                Err(e) => e,
            };
            reconnect.wait_after_failure(&error).await;
        }
    }

    /// One connection: subscribe, list, follow. `Ok` when the receiver is gone.
    async fn session(
        &self,
        reconnect: &mut Reconnect,
        cursor: &mut Cursor,
    ) -> Result<(), DockerError> {
        // After an outage, ask for what dockerd still holds since the last event seen:
        // after a restart, that is what happened between its start and this subscription.
        let path = match cursor.since_param() {
            Some(since) => format!("/events?filters={EVENT_FILTER}&since={since}"),
            None => format!("/events?filters={EVENT_FILTER}"),
        };
        let op = format!("GET {path}");
        // Subscribe before listing: nothing falls between the two.
        let response = self.client.send(Method::GET, &path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                .unwrap_or_default();
            return Err(DockerError::Status { op, status, body });
        }
        let containers = self.client.list_containers().await?;
        reconnect.connected();
        let now = super::now_unix_ns();
        for c in &containers {
            let mut ev = listed_event(c, now);
            // A running container's pid ties it to its cgroup (enrich's pid map).
            if c.state == "running"
                && let Ok(details) = self.client.inspect(&c.id).await
                && details.state.pid > 0
            {
                ev.attributes
                    .insert("pid".into(), details.state.pid.to_string());
            }
            if self.sender.send(ev) == SendOutcome::Closed {
                return Ok(());
            }
        }
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(source)) => return Err(DockerError::Http { op, source }),
                None => return Err(DockerError::StreamEnded),
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                if self.handle_line(&line, cursor) == SendOutcome::Closed {
                    return Ok(());
                }
            }
            if buf.len() > MAX_LINE {
                return Err(DockerError::LineTooLong);
            }
        }
    }

    fn handle_line(&self, line: &[u8], cursor: &mut Cursor) -> SendOutcome {
        let line = line.trim_ascii();
        if line.is_empty() {
            return SendOutcome::Sent;
        }
        match serde_json::from_slice::<DockerEventMessage>(line) {
            Ok(msg) => match map_event(&msg) {
                Some(ev) if cursor.is_new(&ev) => self.sender.send(ev),
                _ => SendOutcome::Sent,
            },
            Err(e) => {
                tracing::debug!("skipping undecodable docker event: {e}");
                SendOutcome::Sent
            }
        }
    }
}

/// Where the event stream stopped, to resume after an outage without gaps or repeats.
#[derive(Debug, Default)]
struct Cursor {
    /// Time of the last event delivered, or when the source started.
    last_ns: u64,
    /// `(container or image id, kind)` of the events delivered at `last_ns`.
    at_last: Vec<(Option<String>, Option<String>, RuntimeEventKind)>,
}

impl Cursor {
    fn starting_at(now_ns: u64) -> Self {
        Self {
            last_ns: now_ns,
            at_last: Vec::new(),
        }
    }

    fn since_param(&self) -> Option<String> {
        (self.last_ns > 0).then(|| {
            format!(
                "{}.{:09}",
                self.last_ns / 1_000_000_000,
                self.last_ns % 1_000_000_000
            )
        })
    }

    /// Whether `ev` was not delivered before (replays after `since` repeat the edge).
    fn is_new(&mut self, ev: &RuntimeEvent) -> bool {
        let key = (ev.container_id.clone(), ev.image.clone(), ev.kind);
        if ev.time_unix_ns < self.last_ns {
            return false;
        }
        if ev.time_unix_ns == self.last_ns {
            if self.at_last.contains(&key) {
                return false;
            }
        } else {
            self.last_ns = ev.time_unix_ns;
            self.at_last.clear();
        }
        self.at_last.push(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Option<RuntimeEvent> {
        map_event(&serde_json::from_str(line).expect("valid JSON"))
    }

    #[test]
    fn die_maps_exit_code_and_splits_labels() {
        let ev = parse(
            r#"{"status":"die","id":"abc","from":"bb:1","Type":"container","Action":"die",
            "Actor":{"ID":"abc","Attributes":{"exitCode":"3","image":"bb:1","name":"x",
            "io.kubernetes.pod.name":"web-1"}},"scope":"local","time":1795686963,
            "timeNano":1795686963273132430}"#,
        )
        .expect("tracked");
        assert_eq!(ev.kind, RuntimeEventKind::ContainerExited { exit_code: 3 });
        assert_eq!(ev.time_unix_ns, 1_795_686_963_273_132_430);
        assert_eq!(ev.container_id.as_deref(), Some("abc"));
        assert_eq!(ev.image.as_deref(), Some("bb:1"));
        assert_eq!(ev.labels.len(), 1);
        assert_eq!(ev.attributes.get("name").map(String::as_str), Some("x"));
    }

    #[test]
    fn cursor_skips_replayed_events() {
        let mut c = Cursor::default();
        assert!(c.since_param().is_none());
        let mut ev = RuntimeEvent::new(
            1_795_686_963_000_000_007,
            EventSource::Docker,
            RuntimeEventKind::ContainerStarted,
        );
        ev.container_id = Some("a".into());
        assert!(c.is_new(&ev));
        assert!(!c.is_new(&ev), "same event replayed");
        assert_eq!(c.since_param().as_deref(), Some("1795686963.000000007"));
        let mut other = ev.clone();
        other.container_id = Some("b".into());
        assert!(c.is_new(&other), "another container at the same instant");
        let mut older = ev.clone();
        older.time_unix_ns -= 1;
        assert!(!c.is_new(&older));
    }

    #[test]
    fn sandbox_and_untracked_actions() {
        let ev = parse(
            r#"{"Type":"container","Action":"start","Actor":{"ID":"s1","Attributes":
            {"io.kubernetes.docker.type":"podsandbox"}},"time":5}"#,
        )
        .expect("tracked");
        assert_eq!(ev.kind, RuntimeEventKind::SandboxStarted);
        assert_eq!(ev.sandbox_id.as_deref(), Some("s1"));
        assert_eq!(ev.time_unix_ns, 5_000_000_000);
        assert!(
            parse(r#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"a"}}"#).is_none()
        );
        assert!(parse(r#"{"Type":"network","Action":"connect","Actor":{"ID":"n"}}"#).is_none());
        let img = parse(r#"{"Type":"image","Action":"pull","Actor":{"ID":"busybox:1"},"time":1}"#)
            .expect("tracked");
        assert_eq!(img.kind, RuntimeEventKind::ImagePulled);
        assert_eq!(img.image.as_deref(), Some("busybox:1"));
    }
}
