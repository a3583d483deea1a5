//! cgroup path → container: which container (and pod) a cgroup path names.
//!
//! Covers the shapes the kubelet, containerd, CRI-O and docker create, for both cgroup
//! drivers and both cgroup versions (a v1 path and a v2 path of the same container look
//! the same; only the mount point differs):
//!
//! | driver | shape |
//! | --- | --- |
//! | cgroupfs | `/kubepods/besteffort/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (guaranteed), `…/crio-<id>` |
//! | systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`) |
//! | runtimes alone | `/system.slice/docker-<id>.scope`, `/docker/<id>`, `/default/<id>`, `/k8s.io/<id>` (containerd's namespace as cgroupfs parent) |
//!
//! The systemd driver writes the pod uid with `_` for `-`; it is given back with dashes.
//! `crio-conmon-<id>.scope` is CRI-O's monitor process, not the container: no match.

use std::fmt;

use serde::Serialize;

/// The container runtime a cgroup path's naming points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope`, or `/<namespace>/<id>`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
    CriO,
    /// docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// A bare id under a kubelet pod cgroup: any runtime with the cgroupfs driver.
    Unknown,
}

impl Runtime {
    /// Lower-case name (`containerd`, `crio`, `docker`, `unknown`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "crio",
            Self::Docker => "docker",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kubelet's QoS class of a pod, as its cgroup path tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    /// Directly under `kubepods` (no QoS level in the path).
    Guaranteed,
    /// Under `burstable`.
    Burstable,
    /// Under `besteffort`.
    BestEffort,
}

impl QosClass {
    /// The Kubernetes spelling (`Guaranteed`, `Burstable`, `BestEffort`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// A container named by a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    /// Which runtime's naming the path uses.
    pub runtime: Runtime,
    /// The container id: 64 lower-case hex digits.
    pub id: String,
    /// The pod uid (with dashes) when the path is under a kubelet pod cgroup.
    pub pod_uid: Option<String>,
    /// The pod's QoS class when the path is under a kubelet pod cgroup.
    pub qos: Option<QosClass>,
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// The hierarchy id (`0` for the cgroup v2 unified hierarchy).
    pub hierarchy: u32,
    /// The controllers (`blkio`, `cpu,cpuacct`, `name=systemd`; empty for v2).
    pub controllers: &'a str,
    /// The cgroup path relative to the hierarchy's root.
    pub path: &'a str,
}

impl CgroupLine<'_> {
    /// Whether this is the cgroup v2 (unified) line, `0::/…`.
    #[must_use]
    pub fn is_unified(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }
}

/// Splits the text of `/proc/<pid>/cgroup` into its lines; malformed lines are skipped.
pub fn parse_proc_cgroup_lines(text: &str) -> impl Iterator<Item = CgroupLine<'_>> {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let hierarchy = parts.next()?.trim().parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        path.starts_with('/').then_some(CgroupLine {
            hierarchy,
            controllers,
            path,
        })
    })
}

/// The container that the whole text of `/proc/<pid>/cgroup` names, if any.
///
/// On hybrid hosts every v1 hierarchy and the unified one each have a line; a process is
/// often in a container's cgroup in some of them only (runtimes may skip the unified or
/// `name=systemd` one). Any line naming a container counts; one that also names the pod
/// is preferred.
#[must_use]
pub fn parse_proc_cgroup(text: &str) -> Option<ContainerRef> {
    let mut best: Option<ContainerRef> = None;
    for line in parse_proc_cgroup_lines(text) {
        if let Some(found) = parse_cgroup_path(line.path) {
            if found.pod_uid.is_some() {
                return Some(found);
            }
            best.get_or_insert(found);
        }
    }
    best
}

/// Whether `s` is a container id: 64 lower-case hex digits.
#[must_use]
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Pod-level facts gathered while walking a path.
#[derive(Default)]
struct PodScope {
    under_kubepods: bool,
    qos: Option<QosClass>,
    pod_uid: Option<String>,
}

impl PodScope {
    /// Reads one path component that may be a kubelet cgroup (either driver).
    fn observe(&mut self, component: &str) -> bool {
        match component {
            "kubepods" | "kubepods.slice" => {
                self.under_kubepods = true;
                return true;
            }
            "besteffort" | "kubepods-besteffort.slice" if self.under_kubepods => {
                self.qos = Some(QosClass::BestEffort);
                return true;
            }
            "burstable" | "kubepods-burstable.slice" if self.under_kubepods => {
                self.qos = Some(QosClass::Burstable);
                return true;
            }
            _ => {}
        }
        if !self.under_kubepods {
            return false;
        }
        // cgroupfs: `pod<uid>`.
        if let Some(uid) = component.strip_prefix("pod")
            && is_pod_uid(uid)
        {
            self.set_pod(uid.to_owned());
            return true;
        }
        // systemd: `kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
        if let Some(rest) = component
            .strip_prefix("kubepods-")
            .and_then(|r| r.strip_suffix(".slice"))
        {
            let rest = rest
                .strip_prefix("besteffort-")
                .or_else(|| rest.strip_prefix("burstable-"))
                .unwrap_or(rest);
            if let Some(uid) = rest.strip_prefix("pod") {
                let uid = uid.replace('_', "-");
                if is_pod_uid(&uid) {
                    self.set_pod(uid);
                    return true;
                }
            }
        }
        false
    }

    fn set_pod(&mut self, uid: String) {
        self.pod_uid = Some(uid);
        self.qos.get_or_insert(QosClass::Guaranteed);
    }
}

/// Whether `s` looks like a pod uid: hex digits and dashes, 32 hex digits in all
/// (static pods use a 32-hex hash without dashes).
fn is_pod_uid(s: &str) -> bool {
    let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
    hex == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The container a single path component names, and the runtime it points to.
///
/// `parent` is the previous component (decides the runtime of a bare id).
fn container_component(component: &str, parent: Option<&str>) -> Option<(Runtime, String)> {
    let scoped = |prefix: &str| {
        component
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
    };
    if component.starts_with("crio-conmon-") {
        return None;
    }
    if let Some(id) = scoped("cri-containerd-") {
        return Some((Runtime::Containerd, id.to_owned()));
    }
    if let Some(id) = scoped("crio-") {
        return Some((Runtime::CriO, id.to_owned()));
    }
    if let Some(id) = scoped("docker-") {
        return Some((Runtime::Docker, id.to_owned()));
    }
    // CRI-O with the cgroupfs driver.
    if let Some(id) = component
        .strip_prefix("crio-")
        .filter(|id| is_container_id(id))
    {
        return Some((Runtime::CriO, id.to_owned()));
    }
    // The systemd driver's `slice:prefix:name` form, seen nested on some hosts.
    let mut colon = component.splitn(3, ':');
    if let (Some(_slice), Some(prefix), Some(id)) = (colon.next(), colon.next(), colon.next())
        && is_container_id(id)
    {
        let runtime = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => Runtime::Unknown,
        };
        return Some((runtime, id.to_owned()));
    }
    if is_container_id(component) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            // Under a kubelet pod cgroup (cgroupfs driver): any runtime.
            Some(p) if p.starts_with("pod") => Runtime::Unknown,
            // containerd's default cgroupfs parent is its namespace: `/default/<id>`,
            // `/k8s.io/<id>`, `/moby/<id>`…
            Some(_) => Runtime::Containerd,
            // A bare id at the root names nothing we know.
            None => return None,
        };
        return Some((runtime, component.to_owned()));
    }
    None
}

/// The container (and pod) a cgroup path names, or `None` for host cgroups
/// (`/system.slice/containerd.service`, `/user.slice/…`, `/`).
///
/// The outermost container component wins: `/docker/<a>/docker/<b>` is container `a`
/// on this host; sub-cgroups a container makes below its own (`…/<id>/init`) still
/// name that container.
#[must_use]
pub fn parse_cgroup_path(path: &str) -> Option<ContainerRef> {
    let mut scope = PodScope::default();
    let mut parent: Option<&str> = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if scope.pod_uid.is_none() && scope.observe(component) {
            parent = Some(component);
            continue;
        }
        if let Some((runtime, id)) = container_component(component, parent) {
            let in_pod = scope.pod_uid.is_some();
            return Some(ContainerRef {
                runtime,
                id,
                pod_uid: scope.pod_uid,
                qos: if in_pod { scope.qos } else { None },
            });
        }
        parent = Some(component);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";
    const UID_: &str = "8f3a2b1c_4d5e_6f70_8192_a3b4c5d6e7f8";

    fn expect(runtime: Runtime, pod: bool, qos: Option<QosClass>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            id: ID.to_owned(),
            pod_uid: pod.then(|| UID.to_owned()),
            qos,
        })
    }

    #[test]
    fn cgroup_paths() {
        use QosClass::*;
        use Runtime::*;
        let cases: Vec<(String, Option<ContainerRef>)> = vec![
            // cgroupfs driver (kubelet + containerd/docker).
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                expect(Unknown, true, Some(BestEffort)),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                expect(Unknown, true, Some(Burstable)),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                expect(Unknown, true, Some(Guaranteed)),
            ),
            // cgroupfs driver with CRI-O.
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                expect(CriO, true, Some(Burstable)),
            ),
            // systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                expect(Containerd, true, Some(Burstable)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                expect(CriO, true, Some(BestEffort)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                expect(Containerd, true, Some(Guaranteed)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                expect(Docker, true, Some(BestEffort)),
            ),
            // A sub-cgroup inside the container still names it.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope/init"
                ),
                expect(Containerd, true, Some(Burstable)),
            ),
            // CRI-O's monitor: not the container.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
                ),
                None,
            ),
            // Runtimes without a kubelet.
            (
                format!("/system.slice/docker-{ID}.scope"),
                expect(Docker, false, None),
            ),
            (format!("/docker/{ID}"), expect(Docker, false, None)),
            (format!("/default/{ID}"), expect(Containerd, false, None)),
            (format!("/k8s.io/{ID}"), expect(Containerd, false, None)),
            // Nested docker: the outer container is the one on this host.
            (
                format!("/docker/{ID}/docker/{}", "f".repeat(64)),
                expect(Docker, false, None),
            ),
            // systemd's `slice:prefix:id` form.
            (
                format!(
                    "/system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{ID}"
                ),
                expect(Containerd, false, None),
            ),
            // Host cgroups and near misses.
            ("/system.slice/containerd.service".to_owned(), None),
            ("/user.slice/user-0.slice/session-3.scope".to_owned(), None),
            ("/".to_owned(), None),
            ("".to_owned(), None),
            (format!("/{ID}"), None),
            (format!("/kubepods/besteffort/pod{UID}"), None),
            (format!("/docker/{}", &ID[..63]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/system.slice/docker-{ID}.service"), None),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                None,
            ),
        ];
        assert!(cases.len() >= 15);
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "path {path:?}");
        }
    }

    #[test]
    fn systemd_pod_uid_gets_dashes() {
        let path = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
        let found = parse_cgroup_path(&path).expect("a container");
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn proc_cgroup_hybrid_prefers_a_line_with_the_pod() {
        let text = format!(
            "12:name=systemd:/system.slice/containerd.service\n\
             11:memory:/k8s.io/{ID}\n\
             7:blkio:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        let found = parse_proc_cgroup(&text).expect("a container");
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn proc_cgroup_without_container_is_none() {
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f11cd36b\n0::/\n";
        assert_eq!(parse_proc_cgroup(text), None);
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("garbage\n::\nx:y:z\n"), None);
    }

    #[test]
    fn proc_cgroup_v2_only() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            parse_proc_cgroup(&text),
            expect(Runtime::Docker, false, None)
        );
    }

    #[test]
    fn proc_cgroup_lines_split() {
        let text = "12:cpu,cpuacct:/a:b\n0::/x\nbad line\n";
        let lines: Vec<_> = parse_proc_cgroup_lines(text).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].controllers, "cpu,cpuacct");
        assert_eq!(lines[0].path, "/a:b");
        assert!(!lines[0].is_unified());
        assert!(lines[1].is_unified());
    }
}
