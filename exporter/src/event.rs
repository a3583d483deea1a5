//! Decoded, userspace-side events: what every later stage (enrich, correlate, sinks) sees.
use serde::Serialize;

/// The four operations of `ext4slower`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoOp {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An open.
    Open,
    /// An fsync or fdatasync.
    Fsync,
}

impl IoOp {
    /// From the kernel's `exporter_common::op` code.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        use exporter_common::op;
        match code {
            op::READ => Some(Self::Read),
            op::WRITE => Some(Self::Write),
            op::OPEN => Some(Self::Open),
            op::FSYNC => Some(Self::Fsync),
            _ => None,
        }
    }

    /// The one-letter code of `ext4slower`'s `T` column.
    #[must_use]
    pub fn letter(self) -> char {
        match self {
            Self::Read => 'R',
            Self::Write => 'W',
            Self::Open => 'O',
            Self::Fsync => 'S',
        }
    }

    /// Lower-case name (`fsync`), used in span names (`xfs fsync`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Open => "open",
            Self::Fsync => "fsync",
        }
    }
}

/// A filesystem iostall traces (the `--fs` setting, and every record's
/// `system.filesystem.type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext4 (and ext2/ext3 mounted by the ext4 driver).
    Ext4,
    /// xfs.
    Xfs,
    /// btrfs.
    Btrfs,
}

impl FsKind {
    /// Every traced filesystem, the default of `--fs`.
    pub const ALL: [Self; 3] = [Self::Ext4, Self::Xfs, Self::Btrfs];

    /// From the kernel's `exporter_common::fs_kind` code.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        use exporter_common::fs_kind;
        match code {
            fs_kind::EXT4 => Some(Self::Ext4),
            fs_kind::XFS => Some(Self::Xfs),
            fs_kind::BTRFS => Some(Self::Btrfs),
            _ => None,
        }
    }

    /// The kernel's `exporter_common::fs_kind` code.
    #[must_use]
    pub fn code(self) -> u32 {
        use exporter_common::fs_kind;
        match self {
            Self::Ext4 => fs_kind::EXT4,
            Self::Xfs => fs_kind::XFS,
            Self::Btrfs => fs_kind::BTRFS,
        }
    }

    /// The name `/proc/self/mountinfo` gives its mounts (`ext4`, `xfs`, `btrfs`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
        }
    }

    /// The kind of a mount's filesystem type, if iostall can trace it (ext2 and ext3
    /// mounts are served by the ext4 driver, whose super block magic they share).
    #[must_use]
    pub fn from_mount_type(fstype: &str) -> Option<Self> {
        match fstype {
            "ext4" | "ext3" | "ext2" => Some(Self::Ext4),
            "xfs" => Some(Self::Xfs),
            "btrfs" => Some(Self::Btrfs),
            _ => None,
        }
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`FsKind`]s: the filesystems of `--fs`. The default is every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsSet(u32);

impl Default for FsSet {
    fn default() -> Self {
        Self::from_kinds(FsKind::ALL)
    }
}

impl FsSet {
    /// The set of `kinds`.
    #[must_use]
    pub fn from_kinds(kinds: impl IntoIterator<Item = FsKind>) -> Self {
        Self(kinds.into_iter().fold(0, |m, k| m | (1 << k.code())))
    }

    /// Whether `kind` is in the set.
    #[must_use]
    pub fn contains(self, kind: FsKind) -> bool {
        self.0 & (1 << kind.code()) != 0
    }

    /// The kernel's mask (`LoadConfig::fs_mask`): bit `1 << code` per filesystem.
    #[must_use]
    pub fn mask(self) -> u32 {
        self.0
    }

    /// The members, in [`FsKind::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = FsKind> {
        FsKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl std::fmt::Display for FsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, kind) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(kind.as_str())?;
        }
        Ok(())
    }
}

/// How the eBPF programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// fentry/fexit on the filesystems' file operations.
    Fentry,
    /// kprobe/kretprobe on the filesystems' file operations.
    Kprobe,
    /// Syscall tracepoints filtered by filesystem, plus `ext4_sync_file_enter/exit`.
    Tracepoint,
}

impl AttachMode {
    /// Every mode, cheapest first: the order `auto` tries them in.
    pub const ALL: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    /// Lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation on a traced filesystem that took at least the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoRecord {
    /// The operation.
    pub op: IoOp,
    /// Unix nanoseconds at which it started.
    pub start_unix_ns: u64,
    /// Unix nanoseconds at which it ended.
    pub end_unix_ns: u64,
    /// Its duration, from the kernel's clock.
    pub latency_ns: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The thread's `comm`.
    pub comm: String,
    /// cgroup v2 id of the thread.
    pub cgroup_id: u64,
    /// Mount namespace inode number (0 if unknown).
    pub mntns: u32,
    /// Bytes transferred (reads and writes; the size asked for if it failed).
    pub bytes: u64,
    /// File offset of a read or write; `None` for open and fsync, or when unknown.
    pub offset: Option<i64>,
    /// Return value (bytes, fd, 0, or a negative errno).
    pub ret: i64,
    /// Inode number.
    pub inode: u64,
    /// Device major number of the filesystem.
    pub dev_major: u32,
    /// Device minor number of the filesystem.
    pub dev_minor: u32,
    /// The file's name (no directory).
    pub file_name: String,
    /// Parent directory names, nearest first (at most `exporter_common::MAX_PARENTS`).
    pub parents: Vec<String>,
    /// Whether `parents` reaches the filesystem's root.
    pub path_complete: bool,
    /// Where the filesystem is mounted (in iostall's mount namespace), when known.
    pub mount_point: Option<String>,
    /// The full path when `path_complete` and the mount point are known, else `None`.
    pub file_path: Option<String>,
    /// A `fdatasync` (for fsync).
    pub datasync: bool,
    /// An fsync of a directory (not of a file).
    pub directory: bool,
    /// Reached through overlayfs (a file of a container's root filesystem): the inode,
    /// device and path are those of the real file below it.
    pub via_overlayfs: bool,
    /// The attach mode that measured it.
    pub attach_mode: AttachMode,
    /// The filesystem the file is on.
    pub fs: FsKind,
    /// Why it was slow, as far as iostall can tell (set by [`crate::why`]).
    #[serde(skip_serializing_if = "crate::why::StallContext::is_empty")]
    pub why: crate::why::StallContext,
}

impl IoRecord {
    /// What the why stage needs to know of this operation.
    #[must_use]
    pub fn stall(&self) -> crate::why::Stall {
        crate::why::Stall {
            dev: (self.dev_major, self.dev_minor),
            cgroup_id: self.cgroup_id,
            fsync: self.op == IoOp::Fsync,
            start_unix_ns: self.start_unix_ns,
            end_unix_ns: self.end_unix_ns,
        }
    }

    /// The best path to show: the full path, else `…/parent/name` with what is known.
    #[must_use]
    pub fn display_path(&self) -> String {
        if let Some(path) = &self.file_path {
            return path.clone();
        }
        let mut out = String::new();
        if !self.path_complete {
            out.push('…');
        }
        for parent in self.parents.iter().rev() {
            out.push('/');
            out.push_str(parent);
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&self.file_name);
        out
    }

    /// The errno when the operation failed.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        (self.ret < 0).then(|| (-self.ret) as i32)
    }
}
