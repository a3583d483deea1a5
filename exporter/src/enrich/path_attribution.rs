//! File path → container or pod, for IO that a runtime or the kubelet does on a
//! container's behalf (its config, logs, rootfs bundle, volumes).
//!
//! | path | names |
//! | --- | --- |
//! | `/var/lib/docker/containers/<id>/…` | docker container |
//! | `/run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/…` | containerd task (container or sandbox) |
//! | `/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/<id>/…` (and under `/run/containerd`) | CRI sandbox |
//! | `/var/lib/containerd/io.containerd.grpc.v1.cri/containers/<id>/…` (and under `/run/containerd`) | CRI container |
//! | `/run/containerd/runc/<ns>/<id>/…` | runc's state of a container |
//! | `/var/log/pods/<ns>_<pod>_<uid>/<container>/…` | pod (and container name) |
//! | `/var/lib/kubelet/pods/<uid>/…` | pod |
//! | `/var/log/containers/<pod>_<ns>_<container>-<id>.log` | container of a pod |
//!
//! The roots are configurable ([`PathRules`]): runtimes and the kubelet can be told to
//! use others, and tests run containerd under a temporary directory. containerd's
//! plugin directories (`io.containerd.runtime.v2.task`, `io.containerd.grpc.v1.cri`)
//! are recognised under any root as well: their names are containerd's own, and k3s,
//! RKE2 and microk8s keep containerd elsewhere (`/var/lib/rancher/k3s/agent/containerd`…).

use std::{
    borrow::Cow,
    path::{Component, Path, PathBuf},
};

use serde::Serialize;

use super::cgroup_path::is_container_id;

/// Which kind of path named the container or pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// `<docker root>/containers/<id>/…`.
    DockerContainer,
    /// `<containerd state>/io.containerd.runtime.v2.task/<ns>/<id>/…`.
    ContainerdTask,
    /// `<containerd root or state>/io.containerd.grpc.v1.cri/sandboxes/<id>/…`.
    CriSandbox,
    /// `<containerd root or state>/io.containerd.grpc.v1.cri/containers/<id>/…`.
    CriContainer,
    /// `<containerd state>/runc/<ns>/<id>/…` (runc's own state of the container).
    RuncState,
    /// `<pod logs>/<ns>_<pod>_<uid>/…`.
    PodLogs,
    /// `<kubelet root>/pods/<uid>/…`.
    KubeletPod,
    /// `<container logs>/<pod>_<ns>_<container>-<id>.log`.
    ContainerLog,
}

impl PathKind {
    /// Kebab-case name (`docker-container`, `pod-logs`…).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DockerContainer => "docker-container",
            Self::ContainerdTask => "containerd-task",
            Self::CriSandbox => "cri-sandbox",
            Self::CriContainer => "cri-container",
            Self::RuncState => "runc-state",
            Self::PodLogs => "pod-logs",
            Self::KubeletPod => "kubelet-pod",
            Self::ContainerLog => "container-log",
        }
    }
}

/// What a path told about the container or pod it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Which rule matched (`None` only in [`Attribution::default`]).
    pub kind: Option<PathKind>,
    /// The container id (for a sandbox path: the sandbox's id).
    pub container_id: Option<String>,
    /// The containerd namespace (`k8s.io`, `moby`…), from task paths.
    pub containerd_namespace: Option<String>,
    /// The container's name in its pod.
    pub container_name: Option<String>,
    /// The pod uid.
    pub pod_uid: Option<String>,
    /// The pod name.
    pub pod_name: Option<String>,
    /// The pod namespace.
    pub pod_namespace: Option<String>,
}

/// The directories whose layout names containers and pods. Defaults are the
/// runtimes' and the kubelet's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRules {
    /// docker's data root (default `/var/lib/docker`).
    pub docker_root: PathBuf,
    /// containerd's root (default `/var/lib/containerd`).
    pub containerd_root: PathBuf,
    /// containerd's state directory (default `/run/containerd`; `/var/run/containerd`
    /// is accepted too).
    pub containerd_state: PathBuf,
    /// The kubelet's root (default `/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
    /// The pod log directory (default `/var/log/pods`).
    pub pod_logs: PathBuf,
    /// The container log symlink directory (default `/var/log/containers`).
    pub container_logs: PathBuf,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            docker_root: "/var/lib/docker".into(),
            containerd_root: "/var/lib/containerd".into(),
            containerd_state: "/run/containerd".into(),
            kubelet_root: "/var/lib/kubelet".into(),
            pod_logs: "/var/log/pods".into(),
            container_logs: "/var/log/containers".into(),
        }
    }
}

/// A configured root with its layout, borrowed.
fn borrowed(root: &Path, layout: Layout) -> (Cow<'_, Path>, Layout) {
    (Cow::Borrowed(root), layout)
}

/// The normal components of `path` after `prefix`, or `None` when it is not under it.
fn rest_after<'a>(path: &'a Path, prefix: &Path) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(prefix).ok()?;
    rest.components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect()
}

const CRI_PLUGIN_DIR: &str = "io.containerd.grpc.v1.cri";
const TASK_DIR: &str = "io.containerd.runtime.v2.task";

/// The layouts under each root, applied to the path components after it.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Docker,
    ContainerdState,
    ContainerdRoot,
    PodLogs,
    Kubelet,
    ContainerLogs,
}

impl Layout {
    /// What `rest` (the components after the root) names under this layout.
    fn attribute(self, rest: &[&str]) -> Option<Attribution> {
        match self {
            Self::Docker => match rest {
                ["containers", id, ..] if is_container_id(id) => Some(Attribution {
                    kind: Some(PathKind::DockerContainer),
                    container_id: Some((*id).to_owned()),
                    ..Attribution::default()
                }),
                _ => None,
            },
            Self::ContainerdState => {
                if let ["runc", ns, id, ..] = rest {
                    return is_container_id(id).then(|| Attribution {
                        kind: Some(PathKind::RuncState),
                        container_id: Some((*id).to_owned()),
                        containerd_namespace: Some((*ns).to_owned()),
                        ..Attribution::default()
                    });
                }
                task_dir(rest).or_else(|| cri_dir(rest))
            }
            Self::ContainerdRoot => cri_dir(rest),
            Self::PodLogs => {
                let [dir, more @ ..] = rest else {
                    return None;
                };
                let (namespace, name, uid) = split_pod_log_dir(dir)?;
                // `<container>/<n>.log`: the container's name (not the pod-level dir).
                let container_name = match more {
                    [container, _file, ..] => Some((*container).to_owned()),
                    _ => None,
                };
                Some(Attribution {
                    kind: Some(PathKind::PodLogs),
                    container_name,
                    pod_uid: Some(uid.to_owned()),
                    pod_name: Some(name.to_owned()),
                    pod_namespace: Some(namespace.to_owned()),
                    ..Attribution::default()
                })
            }
            Self::Kubelet => match rest {
                ["pods", uid, ..] if !uid.is_empty() => Some(Attribution {
                    kind: Some(PathKind::KubeletPod),
                    pod_uid: Some((*uid).to_owned()),
                    ..Attribution::default()
                }),
                _ => None,
            },
            Self::ContainerLogs => match rest {
                [file] => container_log_name(file),
                _ => None,
            },
        }
    }
}

impl PathRules {
    /// Each root with its layout, in the order they are tried (borrowed: this runs for
    /// every record no cgroup or pid attributed).
    fn roots(&self) -> impl Iterator<Item = (Cow<'_, Path>, Layout)> {
        // `/var/run` is a symlink to `/run`; paths may be spelled either way.
        let var_run_state = self.containerd_state.strip_prefix("/run").ok().map(|rest| {
            (
                Cow::Owned(Path::new("/var/run").join(rest)),
                Layout::ContainerdState,
            )
        });
        [
            borrowed(&self.docker_root, Layout::Docker),
            borrowed(&self.containerd_state, Layout::ContainerdState),
        ]
        .into_iter()
        .chain(var_run_state)
        .chain([
            borrowed(&self.containerd_root, Layout::ContainerdRoot),
            borrowed(&self.pod_logs, Layout::PodLogs),
            borrowed(&self.kubelet_root, Layout::Kubelet),
            borrowed(&self.container_logs, Layout::ContainerLogs),
        ])
    }

    /// The container or pod `path` names, if any rule matches.
    #[must_use]
    pub fn attribute(&self, path: &str) -> Option<Attribution> {
        let path = Path::new(path);
        if !path.is_absolute() {
            return None;
        }
        for (root, layout) in self.roots() {
            if let Some(rest) = rest_after(path, &root) {
                return layout.attribute(&rest);
            }
        }
        containerd_dirs_anywhere(path)
    }

    /// The same for a path known only by its last directories (`parents`, nearest
    /// first) and file name — the kernel sends a bounded number of parents, and
    /// `/var/lib/containerd/io.containerd.grpc.v1.cri/containers/<id>/status` is deeper
    /// than that. Each root is then recognised by its last component (`docker`,
    /// `containerd`, `kubelet`, `pods`, `containers`), and what follows it must have
    /// that root's layout: the layouts are specific enough (64-hex ids,
    /// `<ns>_<pod>_<uid>`) that a directory of the same name elsewhere does not match.
    #[must_use]
    pub fn attribute_partial(&self, parents: &[String], file_name: &str) -> Option<Attribution> {
        let components: Vec<&str> = parents
            .iter()
            .rev()
            .map(String::as_str)
            .chain(std::iter::once(file_name))
            .collect();
        if components
            .iter()
            .any(|c| c.is_empty() || *c == ".." || *c == ".")
        {
            return None;
        }
        for (root, layout) in self.roots() {
            let Some(anchor) = root.file_name().and_then(|a| a.to_str()) else {
                continue;
            };
            for (at, _) in components.iter().enumerate().filter(|(_, c)| **c == anchor) {
                if let Some(found) = layout.attribute(&components[at + 1..]) {
                    return Some(found);
                }
            }
        }
        let at = components
            .iter()
            .position(|c| *c == TASK_DIR || *c == CRI_PLUGIN_DIR)?;
        task_dir(&components[at..]).or_else(|| cri_dir(&components[at..]))
    }
}

/// `io.containerd.runtime.v2.task/<ns>/<id>/…` under a containerd dir.
fn task_dir(rest: &[&str]) -> Option<Attribution> {
    let [TASK_DIR, ns, id, ..] = rest else {
        return None;
    };
    is_container_id(id).then(|| Attribution {
        kind: Some(PathKind::ContainerdTask),
        container_id: Some((*id).to_owned()),
        containerd_namespace: Some((*ns).to_owned()),
        ..Attribution::default()
    })
}

/// containerd's plugin directories wherever containerd's root or state is.
fn containerd_dirs_anywhere(path: &Path) -> Option<Attribution> {
    let components: Vec<&str> = path
        .components()
        .skip(1)
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let at = components
        .iter()
        .position(|c| *c == TASK_DIR || *c == CRI_PLUGIN_DIR)?;
    task_dir(&components[at..]).or_else(|| cri_dir(&components[at..]))
}

/// `io.containerd.grpc.v1.cri/{sandboxes,containers}/<id>/…` under a containerd dir.
fn cri_dir(rest: &[&str]) -> Option<Attribution> {
    let (kind, id) = match rest {
        [CRI_PLUGIN_DIR, "sandboxes", id, ..] => (PathKind::CriSandbox, *id),
        [CRI_PLUGIN_DIR, "containers", id, ..] => (PathKind::CriContainer, *id),
        _ => return None,
    };
    is_container_id(id).then(|| Attribution {
        kind: Some(kind),
        container_id: Some(id.to_owned()),
        ..Attribution::default()
    })
}

/// `<ns>_<pod>_<uid>`: namespaces and pod names cannot hold `_`, so split on it.
fn split_pod_log_dir(dir: &str) -> Option<(&str, &str, &str)> {
    let mut parts = dir.splitn(3, '_');
    let ns = parts.next().filter(|s| !s.is_empty())?;
    let pod = parts.next().filter(|s| !s.is_empty())?;
    let uid = parts.next().filter(|s| !s.is_empty() && !s.contains('_'))?;
    Some((ns, pod, uid))
}

/// `<pod>_<ns>_<container>-<id>.log`.
fn container_log_name(file: &str) -> Option<Attribution> {
    let stem = file.strip_suffix(".log")?;
    let mut parts = stem.splitn(3, '_');
    let pod = parts.next().filter(|s| !s.is_empty())?;
    let ns = parts.next().filter(|s| !s.is_empty())?;
    let container_and_id = parts.next()?;
    let (container, id) = container_and_id.rsplit_once('-')?;
    if container.is_empty() || !is_container_id(id) {
        return None;
    }
    Some(Attribution {
        kind: Some(PathKind::ContainerLog),
        container_id: Some(id.to_owned()),
        container_name: Some(container.to_owned()),
        pod_name: Some(pod.to_owned()),
        pod_namespace: Some(ns.to_owned()),
        ..Attribution::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn attr(kind: PathKind) -> Attribution {
        Attribution {
            kind: Some(kind),
            ..Attribution::default()
        }
    }

    #[test]
    fn default_rules() {
        let rules = PathRules::default();
        let with_id = |kind| Attribution {
            container_id: Some(ID.to_owned()),
            ..attr(kind)
        };
        let cases: Vec<(String, Option<Attribution>)> = vec![
            (
                format!("/var/lib/docker/containers/{ID}/.tmp-hostconfig.json378595825"),
                Some(with_id(PathKind::DockerContainer)),
            ),
            (
                format!("/var/lib/docker/containers/{ID}/{ID}-json.log"),
                Some(with_id(PathKind::DockerContainer)),
            ),
            (
                "/var/lib/docker/image/overlay2/repositories.json".into(),
                None,
            ),
            ("/var/lib/docker/containers/not-an-id/x".into(), None),
            (
                format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
                Some(Attribution {
                    containerd_namespace: Some("k8s.io".into()),
                    ..with_id(PathKind::ContainerdTask)
                }),
            ),
            (
                format!("/var/run/containerd/io.containerd.runtime.v2.task/moby/{ID}/rootfs/etc/x"),
                Some(Attribution {
                    containerd_namespace: Some("moby".into()),
                    ..with_id(PathKind::ContainerdTask)
                }),
            ),
            (
                format!("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/hostname"),
                Some(with_id(PathKind::CriSandbox)),
            ),
            (
                format!("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/resolv.conf"),
                Some(with_id(PathKind::CriSandbox)),
            ),
            (
                format!("/var/lib/containerd/io.containerd.grpc.v1.cri/containers/{ID}/status"),
                Some(with_id(PathKind::CriContainer)),
            ),
            (
                "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".into(),
                None,
            ),
            (
                format!("/var/log/pods/kube-system_coredns-5d78c9869d-x2l8q_{UID}/coredns/0.log"),
                Some(Attribution {
                    container_name: Some("coredns".into()),
                    pod_uid: Some(UID.into()),
                    pod_name: Some("coredns-5d78c9869d-x2l8q".into()),
                    pod_namespace: Some("kube-system".into()),
                    ..attr(PathKind::PodLogs)
                }),
            ),
            (
                format!("/var/log/pods/default_web_{UID}"),
                Some(Attribution {
                    pod_uid: Some(UID.into()),
                    pod_name: Some("web".into()),
                    pod_namespace: Some("default".into()),
                    ..attr(PathKind::PodLogs)
                }),
            ),
            ("/var/log/pods/not-a-pod-dir/c/0.log".into(), None),
            (
                format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/data/f"),
                Some(Attribution {
                    pod_uid: Some(UID.into()),
                    ..attr(PathKind::KubeletPod)
                }),
            ),
            ("/var/lib/kubelet/config.yaml".into(), None),
            (
                format!("/var/log/containers/web-7d4b9c_default_nginx-proxy-{ID}.log"),
                Some(Attribution {
                    container_id: Some(ID.into()),
                    container_name: Some("nginx-proxy".into()),
                    pod_name: Some("web-7d4b9c".into()),
                    pod_namespace: Some("default".into()),
                    ..attr(PathKind::ContainerLog)
                }),
            ),
            ("/var/log/containers/garbage.log".into(), None),
            ("/etc/passwd".into(), None),
            ("relative/var/lib/docker/containers/x".into(), None),
            ("".into(), None),
            // `..` must not sneak a path into a rule.
            (
                format!("/var/lib/kubelet/../docker/containers/{ID}/x"),
                None,
            ),
        ];
        for (path, want) in cases {
            assert_eq!(rules.attribute(&path), want, "path {path:?}");
        }
    }

    #[test]
    fn custom_roots() {
        let rules = PathRules {
            containerd_root: "/tmp/ctd/root".into(),
            containerd_state: "/tmp/ctd/state".into(),
            pod_logs: "/tmp/ctd/pods".into(),
            ..PathRules::default()
        };
        let got = rules
            .attribute(&format!(
                "/tmp/ctd/state/io.containerd.runtime.v2.task/k8s.io/{ID}/log.json"
            ))
            .expect("a task");
        assert_eq!(got.container_id.as_deref(), Some(ID));
        let got = rules
            .attribute(&format!("/tmp/ctd/pods/ns_p_{UID}/c/0.log"))
            .expect("pod logs");
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        // Outside the configured roots, containerd's own directory names still count;
        // runc's (a plain `runc/`) and docker's do not.
        let got = rules
            .attribute(&format!(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/x"
            ))
            .expect("a task under another state dir");
        assert_eq!(got.kind, Some(PathKind::ContainerdTask));
        assert_eq!(
            rules.attribute(&format!("/run/containerd/runc/k8s.io/{ID}/x")),
            None
        );
        assert_eq!(
            rules.attribute(&format!("/tmp/ctd/state/runc/k8s.io/{ID}/exec.fifo")),
            Some(Attribution {
                kind: Some(PathKind::RuncState),
                container_id: Some(ID.into()),
                containerd_namespace: Some("k8s.io".into()),
                ..Attribution::default()
            })
        );
    }

    /// Paths as the kernel sends them: the file name and its nearest parents (four at
    /// most), not reaching the filesystem's root.
    #[test]
    fn partial_paths_of_real_depth() {
        let rules = PathRules::default();
        let partial = |path: &str| -> (Vec<String>, String) {
            let mut parts: Vec<String> = path.split('/').map(str::to_owned).collect();
            let name = parts.pop().unwrap_or_default();
            parts.reverse();
            parts.truncate(exporter_common::MAX_PARENTS);
            (parts, name)
        };
        let cases = [
            (
                format!(
                    "var/lib/containerd/io.containerd.grpc.v1.cri/containers/{ID}/.tmp-status1"
                ),
                Some(PathKind::CriContainer),
            ),
            (
                format!("state/io.containerd.runtime.v2.task/k8s.io/{ID}/.address"),
                Some(PathKind::ContainerdTask),
            ),
            (
                format!("var/lib/docker/containers/{ID}/.tmp-hostconfig.json378595825"),
                Some(PathKind::DockerContainer),
            ),
            (
                format!("var/log/pods/ns_web-0_{UID}/app/0.log"),
                Some(PathKind::PodLogs),
            ),
            (
                format!("var/lib/kubelet/pods/{UID}/etc-hosts"),
                Some(PathKind::KubeletPod),
            ),
            (
                format!("var/log/containers/web-0_ns_app-{ID}.log"),
                Some(PathKind::ContainerLog),
            ),
            (
                format!("run/containerd/runc/k8s.io/{ID}/exec.fifo"),
                Some(PathKind::RuncState),
            ),
            // Same directory names, other layouts: nothing.
            ("home/me/docker/containers/notes.txt".to_owned(), None),
            ("srv/pods/readme/x".to_owned(), None),
            (
                "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".to_owned(),
                None,
            ),
            // Too deep: the id is beyond the parents the kernel sends.
            (
                format!("var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/data/x/f"),
                None,
            ),
        ];
        for (path, want) in cases {
            let (parents, name) = partial(&path);
            let got = rules.attribute_partial(&parents, &name);
            assert_eq!(got.as_ref().and_then(|a| a.kind), want, "path {path:?}");
        }
        let (parents, name) = partial(&format!("var/log/pods/ns_web-0_{UID}/app/0.log"));
        let got = rules.attribute_partial(&parents, &name).expect("pod logs");
        assert_eq!(
            (
                got.pod_namespace.as_deref(),
                got.pod_name.as_deref(),
                got.pod_uid.as_deref()
            ),
            (Some("ns"), Some("web-0"), Some(UID))
        );
        assert_eq!(got.container_name.as_deref(), Some("app"));
    }

    /// A container's own file reached through overlayfs is reported at its real path, in
    /// a snapshot directory: it names no container (the writer's cgroup does), and must
    /// not be taken for one, whole or as the kernel's partial walk.
    #[test]
    fn overlay_snapshot_paths_name_no_container() {
        let rules = PathRules::default();
        let snapshot = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs";
        for file in ["etc/app.conf", "tmp/out", "var/lib/app/data/db"] {
            let path = format!("{snapshot}/{file}");
            assert_eq!(rules.attribute(&path), None, "{path}");
            // Nearest parent first, as many as the kernel walks.
            let mut parents: Vec<String> = path[1..].split('/').map(str::to_owned).collect();
            let name = parents.pop().unwrap_or_default();
            parents.reverse();
            parents.truncate(exporter_common::MAX_PARENTS);
            assert_eq!(rules.attribute_partial(&parents, &name), None, "{path}");
        }
    }

    #[test]
    fn containerd_dirs_under_other_roots() {
        let rules = PathRules::default();
        let cases = [
            (
                format!(
                    "/var/lib/rancher/k3s/agent/containerd/io.containerd.grpc.v1.cri/containers/{ID}/.tmp-status1108617431"
                ),
                Some(PathKind::CriContainer),
            ),
            (
                format!("/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/.address"),
                Some(PathKind::ContainerdTask),
            ),
            (
                format!(
                    "/var/snap/microk8s/common/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/hostname"
                ),
                Some(PathKind::CriSandbox),
            ),
            (
                "/var/lib/rancher/k3s/agent/containerd/io.containerd.metadata.v1.bolt/meta.db"
                    .to_owned(),
                None,
            ),
            (
                "/x/io.containerd.grpc.v1.cri/containers/not-an-id/status".to_owned(),
                None,
            ),
            (
                format!("/x/../io.containerd.grpc.v1.cri/containers/{ID}/status"),
                None,
            ),
        ];
        for (path, want) in cases {
            let got = rules.attribute(&path);
            assert_eq!(got.as_ref().and_then(|a| a.kind), want, "path {path:?}");
            if want.is_some() {
                assert_eq!(
                    got.and_then(|a| a.container_id).as_deref(),
                    Some(ID),
                    "{path}"
                );
            }
        }
    }
}
