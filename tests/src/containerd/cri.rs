//! A CRI `runtime.v1` client over the harness's unix socket, creating pods and
//! containers as the kubelet does: pods get the cgroup parent
//! `/kubepods/besteffort/pod<uid>` and the kubelet's labels, so their containers'
//! cgroups are `/kubepods/besteffort/pod<uid>/<id>`, as on a kubelet node with the
//! cgroupfs driver.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as cri, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{CRI_TIMEOUT, pod_cgroup_parent};
use crate::image::BUSYBOX_IMAGE;

/// A running pod sandbox, with the config containers in it need.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The sandbox id.
    pub id: String,
    /// The pod name.
    pub name: String,
    /// The pod namespace.
    pub namespace: String,
    /// The pod uid.
    pub uid: String,
    /// The config it was created with.
    pub config: PodSandboxConfig,
}

/// A host path bind-mounted into a container.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// The path on the host.
    pub host_path: PathBuf,
    /// The path in the container.
    pub container_path: String,
    /// Read-only.
    pub readonly: bool,
}

/// What to run in a container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The container's name in its pod.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The command (replaces the image's entrypoint).
    pub command: Vec<String>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// The restart count.
    pub attempt: u32,
}

impl ContainerSpec {
    /// A container `name` running `command` in [`BUSYBOX_IMAGE`].
    #[must_use]
    pub fn busybox(name: &str, command: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            image: BUSYBOX_IMAGE.to_owned(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            mounts: Vec::new(),
            memory_limit: None,
            attempt: 0,
        }
    }

    /// Adds a read-write bind mount.
    #[must_use]
    pub fn bind(mut self, host_path: impl Into<PathBuf>, container_path: &str) -> Self {
        self.mounts.push(BindMount {
            host_path: host_path.into(),
            container_path: container_path.to_owned(),
            readonly: false,
        });
        self
    }

    /// Sets a memory limit.
    #[must_use]
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }
}

/// The namespaces of a host-network pod, as the kubelet asks for them.
fn host_network_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..NamespaceOption::default()
    }
}

/// A CRI `runtime.v1` client over a unix socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pub(super) pod_uids: Arc<Mutex<Vec<String>>>,
    pub(super) pod_log_root: PathBuf,
}

/// Turns a CRI error status into an error naming the call.
fn call<T>(what: &str, r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!("CRI {what} failed: {:?}: {}", s.code(), s.message()))
}

impl CriClient {
    /// Connects to a CRI socket (lazily: the first call dials).
    pub async fn connect(socket: &Path) -> Result<CriClient> {
        let socket = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::1]:50051")
            .context("endpoint")?
            .timeout(CRI_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .context("failed to connect to the CRI socket")?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            pod_uids: Arc::default(),
            pod_log_root: std::env::temp_dir(),
        })
    }

    /// The runtime's name and versions.
    pub async fn version(&mut self) -> Result<cri::VersionResponse> {
        call(
            "Version",
            self.runtime
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await,
        )
    }

    /// Whether the runtime has this image.
    pub async fn has_image(&mut self, image: &str) -> Result<bool> {
        let resp = call(
            "ImageStatus",
            self.images
                .image_status(cri::ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                        ..ImageSpec::default()
                    }),
                    verbose: false,
                })
                .await,
        )?;
        Ok(resp.image.is_some())
    }

    /// Runs a host-network pod sandbox with the kubelet's labels, an empty hostname
    /// (runc refuses one without a private UTS namespace) and the cgroup parent
    /// [`pod_cgroup_parent`].
    pub async fn run_pod_sandbox(
        &mut self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
    ) -> Result<Sandbox> {
        self.run_pod_sandbox_with(name, namespace, uid, attempt, |_| {})
            .await
    }

    /// As [`CriClient::run_pod_sandbox`], with `adjust` applied to the config last (the
    /// image test sets a DaemonSet's pod-level settings there).
    pub async fn run_pod_sandbox_with(
        &mut self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
        adjust: impl FnOnce(&mut PodSandboxConfig),
    ) -> Result<Sandbox> {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", namespace),
            ("io.kubernetes.pod.uid", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let log_directory = self.pod_log_root.join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(&log_directory).context("failed to create the pod log dir")?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: namespace.to_owned(),
                attempt,
            }),
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: pod_cgroup_parent(uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network_namespaces()),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let mut config = config;
        adjust(&mut config);
        if let Ok(mut uids) = self.pod_uids.lock()
            && !uids.iter().any(|u| u == uid)
        {
            uids.push(uid.to_owned());
        }
        let resp = call(
            "RunPodSandbox",
            self.runtime
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await,
        )?;
        Ok(Sandbox {
            id: resp.pod_sandbox_id,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            config,
        })
    }

    /// Creates a container in `sandbox` (not started); returns its id.
    pub async fn create_container(
        &mut self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String> {
        self.create_container_with(sandbox, spec, |_| {}).await
    }

    /// As [`CriClient::create_container`], with `adjust` applied to the config last
    /// (the image test sets a DaemonSet's container settings there).
    pub async fn create_container_with(
        &mut self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
        adjust: impl FnOnce(&mut ContainerConfig),
    ) -> Result<String> {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name", sandbox.name.as_str()),
            ("io.kubernetes.pod.namespace", sandbox.namespace.as_str()),
            ("io.kubernetes.pod.uid", sandbox.uid.as_str()),
            ("io.kubernetes.container.name", spec.name.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let annotations = HashMap::from([(
            "io.kubernetes.container.restartCount".to_owned(),
            spec.attempt.to_string(),
        )]);
        let mounts = spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                ..cri::Mount::default()
            })
            .collect();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..ImageSpec::default()
            }),
            command: spec.command.clone(),
            mounts,
            labels,
            annotations,
            log_path: format!("{}/{}.log", spec.name, spec.attempt),
            linux: Some(LinuxContainerConfig {
                resources: spec.memory_limit.map(|bytes| LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..LinuxContainerResources::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network_namespaces()),
                    ..LinuxContainerSecurityContext::default()
                }),
            }),
            ..ContainerConfig::default()
        };
        let mut config = config;
        adjust(&mut config);
        let resp = call(
            "CreateContainer",
            self.runtime
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox.config.clone()),
                })
                .await,
        )?;
        Ok(resp.container_id)
    }

    /// Starts a created container.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        call(
            "StartContainer",
            self.runtime
                .start_container(StartContainerRequest {
                    container_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Stops a container (SIGTERM, SIGKILL after `timeout_s`).
    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        call(
            "StopContainer",
            self.runtime
                .stop_container(StopContainerRequest {
                    container_id: id.to_owned(),
                    timeout: timeout_s,
                })
                .await,
        )
        .map(drop)
    }

    /// Removes a container.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        call(
            "RemoveContainer",
            self.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Stops a pod sandbox and its containers.
    pub async fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        call(
            "StopPodSandbox",
            self.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Removes a stopped pod sandbox and its containers.
    pub async fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        call(
            "RemovePodSandbox",
            self.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                })
                .await,
        )
        .map(drop)
    }

    /// Containers, of one sandbox or all.
    pub async fn list_containers(&mut self, sandbox: Option<&str>) -> Result<Vec<cri::Container>> {
        let filter = sandbox.map(|id| ContainerFilter {
            pod_sandbox_id: id.to_owned(),
            ..ContainerFilter::default()
        });
        Ok(call(
            "ListContainers",
            self.runtime
                .list_containers(ListContainersRequest { filter })
                .await,
        )?
        .containers)
    }

    /// All pod sandboxes.
    pub async fn list_pod_sandboxes(&mut self) -> Result<Vec<cri::PodSandbox>> {
        Ok(call(
            "ListPodSandbox",
            self.runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await,
        )?
        .items)
    }

    /// A container's status, and containerd's verbose `info` (JSON) when `verbose`.
    pub async fn container_status_verbose(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<(ContainerStatus, HashMap<String, String>)> {
        let resp = call(
            "ContainerStatus",
            self.runtime
                .container_status(ContainerStatusRequest {
                    container_id: id.to_owned(),
                    verbose,
                })
                .await,
        )?;
        let status = resp
            .status
            .with_context(|| format!("ContainerStatus of {id} has no status"))?;
        Ok((status, resp.info))
    }

    /// A container's status (state, exit code, labels…).
    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        Ok(self.container_status_verbose(id, false).await?.0)
    }

    /// The host pid of a running container's init process (containerd's verbose info).
    pub async fn container_pid(&mut self, id: &str) -> Result<u32> {
        let (_, info) = self.container_status_verbose(id, true).await?;
        let json = info
            .get("info")
            .with_context(|| format!("no verbose info for container {id}"))?;
        let value: serde_json::Value =
            serde_json::from_str(json).context("verbose info is not JSON")?;
        value
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
            .with_context(|| format!("no pid in the verbose info of {id}: {json}"))
    }

    /// Polls until the container has exited; returns its final status.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    status.state
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops and removes every pod sandbox (and so every container).
    pub async fn remove_all_pods(&mut self) -> Result<()> {
        for pod in self.list_pod_sandboxes().await? {
            self.stop_pod_sandbox(&pod.id).await?;
            self.remove_pod_sandbox(&pod.id).await?;
        }
        Ok(())
    }
}
