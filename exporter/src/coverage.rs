//! Where iostall looks and cannot see, said at start so that silence is never mistaken
//! for health: the container runtimes' and the kubelet's directories that are not on a
//! filesystem iostall traces (ext4, xfs, btrfs, less those `--fs` leaves out), and the
//! IO paths that tracepoint mode never times.
//!
//! The node's mount table is `/proc/1/mountinfo` (init's mount namespace), as in
//! [`crate::mounts`]: in a DaemonSet pod with `hostPID` iostall's own table is the
//! container's. A root counts as present when the path exists (on the node, or through
//! `/proc/1/root`), or when the node's mount table names it: a live containerd has its
//! snapshots' overlay mounts (`upperdir=/var/lib/containerd/…`), a live kubelet its
//! volume mounts under `/var/lib/kubelet/pods`. That works in a pod that has neither the
//! directories mounted nor the right to look into `/proc/1/root`.
use std::{fs, path::Path};

use serde::Serialize;

use crate::event::{FsKind, FsSet};

/// The directories iostall knows, with who writes there.
pub const KNOWN_ROOTS: &[(&str, &str)] = &[
    ("/var/lib/containerd", "containerd"),
    ("/var/lib/rancher/k3s/agent/containerd", "k3s's containerd"),
    (
        "/var/lib/rancher/rke2/agent/containerd",
        "RKE2's containerd",
    ),
    ("/var/lib/docker", "docker"),
    ("/var/lib/containers", "CRI-O"),
    ("/var/lib/kubelet", "the kubelet"),
    ("/var/log/pods", "pod logs"),
];

/// The IO paths that tracepoint mode never times: they do not go through the
/// read/write/open syscalls it traces (fsync is seen: ext4's through `ext4_sync_file`,
/// xfs's and btrfs's through the `fsync`/`fdatasync` syscalls).
pub const TRACEPOINT_BLIND_SPOTS: &str = "io_uring reads and writes, AIO (io_submit), \
     mmap page faults, sendfile, splice and copy_file_range";

/// The filesystem under one known root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFilesystem {
    /// The root, e.g. `/var/lib/containerd`.
    pub root: String,
    /// Who writes there, e.g. `containerd`.
    pub owner: String,
    /// The filesystem type of the mount that holds it (`ext4`, `xfs`, `overlay`, …).
    pub fstype: String,
    /// That mount's point.
    pub mount_point: String,
    /// That mount's source (the device).
    pub source: String,
    /// The filesystems traced (`--fs`).
    #[serde(skip)]
    pub traced: FsSet,
}

impl RootFilesystem {
    /// The traced filesystem this root is on, `None` if iostall cannot trace its type.
    #[must_use]
    pub fn kind(&self) -> Option<FsKind> {
        FsKind::from_mount_type(&self.fstype)
    }

    /// Whether iostall sees the IO under this root.
    #[must_use]
    pub fn seen(&self) -> bool {
        self.kind().is_some_and(|k| self.traced.contains(k))
    }

    /// One line for the log and `iostall probe`: what holds the root, or why its IO is
    /// not seen (a filesystem iostall cannot trace, or one `--fs` leaves out).
    #[must_use]
    pub fn message(&self) -> String {
        match self.kind() {
            _ if self.seen() => format!(
                "{} ({}) is on {} ({} on {})",
                self.root, self.owner, self.fstype, self.source, self.mount_point
            ),
            Some(_) => format!(
                "{} is on {}, which --fs leaves out (it traces {}), so {} IO there is not seen",
                self.root, self.fstype, self.traced, self.owner
            ),
            None => format!(
                "{} is on {}: iostall traces ext4, xfs and btrfs only, so {} IO there is not seen",
                self.root, self.fstype, self.owner
            ),
        }
    }
}

/// One line of mountinfo, the fields used here.
struct MountLine<'a> {
    mount_point: String,
    fstype: &'a str,
    source: &'a str,
    super_options: &'a str,
}

fn parse_line(line: &str) -> Option<MountLine<'_>> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    Some(MountLine {
        mount_point: crate::mounts::unescape(mount_point),
        fstype: right.next()?,
        source: right.next().unwrap_or(""),
        super_options: right.next().unwrap_or(""),
    })
}

/// Whether `path` is `dir` or lies under it.
fn under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The filesystem of each root in `roots` that is present, from a mountinfo text.
/// `exists` says whether a root exists on the node; the mount table is asked too.
/// `traced` is `--fs`.
pub fn check_roots(
    mountinfo: &str,
    roots: &[(&str, &str)],
    exists: impl Fn(&str) -> bool,
    traced: FsSet,
) -> Vec<RootFilesystem> {
    let mounts: Vec<MountLine<'_>> = mountinfo.lines().filter_map(parse_line).collect();
    let mut out = Vec::new();
    for &(root, owner) in roots {
        let named = mounts.iter().any(|m| {
            under(&m.mount_point, root)
                || m.super_options
                    .split(',')
                    .any(|o| o.split_once('=').is_some_and(|(_, v)| under(v, root)))
        });
        if !named && !exists(root) {
            continue;
        }
        // The last mount of the longest mount point holding the root: later mounts on
        // the same point hide earlier ones.
        let holder = mounts
            .iter()
            .filter(|m| under(root, &m.mount_point))
            .max_by_key(|m| m.mount_point.len());
        if let Some(m) = holder {
            out.push(RootFilesystem {
                root: root.to_owned(),
                owner: owner.to_owned(),
                fstype: m.fstype.to_owned(),
                mount_point: m.mount_point.clone(),
                source: m.source.to_owned(),
                traced,
            });
        }
    }
    out
}

/// [`check_roots`] on this node, for [`KNOWN_ROOTS`], tracing `traced`.
#[must_use]
pub fn check_node(traced: FsSet) -> Vec<RootFilesystem> {
    let Ok(text) = fs::read_to_string("/proc/1/mountinfo")
        .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
    else {
        return Vec::new();
    };
    check_roots(
        &text,
        KNOWN_ROOTS,
        |root| {
            Path::new(root).exists()
                || Path::new("/proc/1/root")
                    .join(root.trim_start_matches('/'))
                    .exists()
        },
        traced,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 253:1 / /var/lib/containerd rw,relatime shared:5 - zfs data/containerd rw
31 22 0:50 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/2/fs
40 22 0:60 / /var/lib/kubelet/pods/uid/volumes/kubernetes.io~projected/token rw - tmpfs tmpfs rw
41 22 0:61 / /var/lib/docker rw - ext4 /dev/sdb rw
42 41 0:62 / /var/lib/docker rw - btrfs /dev/sdc rw
";

    #[test]
    fn the_mount_holding_each_present_root() {
        let found = check_roots(NODE, KNOWN_ROOTS, |_| false, FsSet::default());
        let by_root = |r: &str| found.iter().find(|f| f.root == r).cloned();
        let containerd = by_root("/var/lib/containerd").expect("containerd");
        assert_eq!(containerd.fstype, "zfs");
        assert!(!containerd.seen());
        assert_eq!(
            containerd.message(),
            "/var/lib/containerd is on zfs: iostall traces ext4, xfs and btrfs only, so \
             containerd IO there is not seen"
        );
        // Named only by its volume mounts: the directory itself is on the root fs.
        let kubelet = by_root("/var/lib/kubelet").expect("kubelet");
        assert_eq!(
            (kubelet.fstype.as_str(), kubelet.mount_point.as_str()),
            ("ext4", "/")
        );
        assert!(kubelet.seen());
        // The later of two mounts on one point is the one in use.
        let docker = by_root("/var/lib/docker").expect("docker");
        assert_eq!(docker.fstype, "btrfs");
        assert!(docker.seen());
        // Absent and never named: not reported.
        assert!(by_root("/var/lib/containers").is_none());
        assert!(by_root("/var/log/pods").is_none());
    }

    #[test]
    fn a_root_that_exists_but_is_not_mounted_is_on_its_parent() {
        let found = check_roots(
            NODE,
            &[("/var/log/pods", "pod logs")],
            |_| true,
            FsSet::default(),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].fstype, "ext4");
        assert_eq!(found[0].mount_point, "/");
    }

    #[test]
    fn a_prefix_is_not_a_parent() {
        let text = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:5 / /var/lib/containerd-old rw - xfs /dev/sdb rw\n";
        let found = check_roots(
            text,
            &[("/var/lib/containerd", "containerd")],
            |_| true,
            FsSet::default(),
        );
        assert_eq!(found[0].fstype, "ext4");
    }

    #[test]
    fn a_filesystem_left_out_by_fs_is_named_as_such() {
        let text = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:5 / /var/lib/containerd rw - xfs /dev/sdb rw\n";
        let roots = [("/var/lib/containerd", "containerd")];
        let all = check_roots(text, &roots, |_| true, FsSet::default());
        assert!(all[0].seen());
        assert_eq!(
            all[0].message(),
            "/var/lib/containerd (containerd) is on xfs (/dev/sdb on /var/lib/containerd)"
        );
        let ext4_only = check_roots(text, &roots, |_| true, FsSet::from_kinds([FsKind::Ext4]));
        assert!(!ext4_only[0].seen());
        assert_eq!(
            ext4_only[0].message(),
            "/var/lib/containerd is on xfs, which --fs leaves out (it traces ext4), so \
             containerd IO there is not seen"
        );
    }
}
