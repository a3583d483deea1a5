//! The `#[repr(C)]` types that cross between iostall's eBPF programs and its userspace.
//!
//! Layout is a contract: every record the kernel writes into the ring buffer starts with
//! an [`EventHeader`] at offset 0, whose `kind` says which record follows. Userspace
//! checks the record's length against the type before reading it (see `decode` in the
//! exporter). Field order keeps every field naturally aligned so that no padding differs
//! between the bpf target and the host.
#![cfg_attr(not(test), no_std)]

/// Longest file name copied from a dentry, including the trailing NUL.
pub const FILE_NAME_LEN: usize = 128;
/// Longest parent directory name copied from a dentry, including the trailing NUL:
/// room for a 64-hex container id (runtimes name directories after them, and path
/// attribution needs the whole id), rounded up to keep the record 8-byte aligned.
pub const PARENT_NAME_LEN: usize = 72;
/// How many parent directories the kernel side walks up from a file: enough to reach
/// the container id under the runtimes' default roots
/// (`/var/lib/containerd/io.containerd.grpc.v1.cri/containers/<id>/…` is 6 deep).
pub const MAX_PARENTS: usize = 6;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// `s_magic` of an ext4 (and ext2/ext3, which ext4 mounts) super block.
pub const EXT4_SUPER_MAGIC: u64 = 0xEF53;
/// `s_magic` of an overlayfs super block (a container's root filesystem): its regular
/// files are followed to the real file below (see [`io_flags::VIA_OVERLAYFS`]).
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794C_7630;
/// `s_magic` of an xfs super block (`XFS_SUPER_MAGIC`, "XFSB").
pub const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
/// `s_magic` of a btrfs super block (`BTRFS_SUPER_MAGIC`).
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;

/// The filesystems iostall traces: the values of [`IoEvent::fs`], and bit `1 << kind` of
/// [`LoadConfig::fs_mask`] (the `--fs` setting).
pub mod fs_kind {
    /// A filesystem iostall does not trace (its bit is never set in a mask).
    pub const OTHER: u32 = 0;
    /// ext4 (and ext2/ext3 mounted by the ext4 driver).
    pub const EXT4: u32 = 1;
    /// xfs.
    pub const XFS: u32 = 2;
    /// btrfs.
    pub const BTRFS: u32 = 3;
    /// Every traced filesystem's bit.
    pub const ALL_MASK: u32 = (1 << EXT4) | (1 << XFS) | (1 << BTRFS);

    /// The kind of a super block's `s_magic`: the one place both sides map magics.
    /// A `match` on constants compiles to a few compares, whatever the mask holds.
    #[inline(always)]
    #[must_use]
    pub const fn of_magic(magic: u64) -> u32 {
        match magic {
            super::EXT4_SUPER_MAGIC => EXT4,
            super::XFS_SUPER_MAGIC => XFS,
            super::BTRFS_SUPER_MAGIC => BTRFS,
            _ => OTHER,
        }
    }

    /// Whether `magic` is a filesystem in `mask` (bits `1 << kind`).
    #[inline(always)]
    #[must_use]
    pub const fn wanted(magic: u64, mask: u32) -> bool {
        mask & (1 << of_magic(magic)) != 0
    }
}
/// Longest cgroup path (relative to its hierarchy's root) copied from `cgroup_mkdir`,
/// including the trailing NUL. Kubelet paths with a systemd driver are ~190 bytes.
pub const CGROUP_PATH_LEN: usize = 256;
/// Longest executable file name copied from `sched_process_exec`, including the NUL.
pub const EXEC_FILENAME_LEN: usize = 256;

/// Kind of a ring-buffer record, the first field of [`EventHeader`].
pub mod event_kind {
    /// An [`IoEvent`](super::IoEvent).
    pub const IO: u32 = 1;
    /// A [`CgroupEvent`](super::CgroupEvent): a cgroup was made in the unified hierarchy.
    pub const CGROUP_MKDIR: u32 = 2;
    /// A [`CgroupEvent`](super::CgroupEvent): a cgroup was removed from it.
    pub const CGROUP_RMDIR: u32 = 3;
    /// An [`ExecEvent`](super::ExecEvent).
    pub const EXEC: u32 = 4;
    /// An [`ExitEvent`](super::ExitEvent).
    pub const EXIT: u32 = 5;
    /// An [`OomEvent`](super::OomEvent).
    pub const OOM: u32 = 6;
    /// A [`JournalCommitEvent`](super::JournalCommitEvent): a jbd2 commit ended. It
    /// travels in the IO ring, so it arrives before the fsyncs that waited for it.
    pub const JOURNAL_COMMIT: u32 = 7;
}

/// Why a process's exec or exit was reported: bits of [`ExecEvent::why`] and
/// [`ExitEvent::why`], and the values of the `DAEMON_COMMS` map.
pub mod watch {
    /// The process runs in a watched (container) cgroup.
    pub const CGROUP: u32 = 1 << 0;
    /// The process is a container runtime daemon: every exec and exit is reported.
    pub const DAEMON: u32 = 1 << 1;
    /// The process is a runtime shim or monitor: only abnormal exits are reported
    /// (shims exit normally whenever their container goes).
    pub const DAEMON_ABNORMAL_EXIT: u32 = 1 << 2;
}

/// The operation a slow-IO event measured (the `T` column of `ext4slower`).
pub mod op {
    /// `read`, `pread64`, `readv`, `preadv`, `preadv2`, or `ext4_file_read_iter`.
    pub const READ: u32 = 0;
    /// `write`, `pwrite64`, `writev`, `pwritev`, `pwritev2`, or `ext4_file_write_iter`.
    pub const WRITE: u32 = 1;
    /// `open`, `openat`, `openat2`, or `ext4_file_open` (`xfs_…`, `btrfs_…`).
    pub const OPEN: u32 = 2;
    /// `ext4_sync_file`: `fsync`, `fdatasync`, `msync`, `O_SYNC` writes, io_uring fsync;
    /// on xfs and btrfs in tracepoint mode, `fsync` and `fdatasync` only.
    pub const FSYNC: u32 = 3;
}

/// Bits of [`IoEvent::flags`].
pub mod io_flags {
    /// The dentry walk reached the filesystem's root: `parents` is the whole directory
    /// chain, so userspace can join it to the mount point into a full path.
    pub const PATH_COMPLETE: u32 = 1 << 0;
    /// The offset was not known (e.g. the file was not readable at exit).
    pub const OFFSET_UNKNOWN: u32 = 1 << 1;
    /// A `datasync` fsync (`fdatasync`).
    pub const DATASYNC: u32 = 1 << 2;
    /// The fsync was of a directory (runtimes fsync one to make a rename in it durable).
    pub const DIRECTORY: u32 = 1 << 3;
    /// The file was reached through overlayfs (a container's root filesystem): the
    /// inode, device and path are those of the real (upper or lower) file below it.
    pub const VIA_OVERLAYFS: u32 = 1 << 4;
}

/// What a syscall number is to the generic syscall tracepoints' programs: the values of
/// the `SYSCALL_KINDS` array (indexed by this architecture's syscall number, filled by
/// userspace from `libc::SYS_*`); each says the operation and where its arguments are.
pub mod syscall_kind {
    /// Not measured (the fast way out for every other syscall).
    pub const NONE: u32 = 0;
    /// `read(fd, buf, count)`.
    pub const READ: u32 = 1;
    /// `write(fd, buf, count)`.
    pub const WRITE: u32 = 2;
    /// `pread64(fd, buf, count, pos)`.
    pub const PREAD: u32 = 3;
    /// `pwrite64(fd, buf, count, pos)`.
    pub const PWRITE: u32 = 4;
    /// `readv(fd, vec, vlen)`: the size is known from the result only.
    pub const READV: u32 = 5;
    /// `writev(fd, vec, vlen)`.
    pub const WRITEV: u32 = 6;
    /// `preadv(fd, vec, vlen, pos_l, …)`, `preadv2`.
    pub const PREADV: u32 = 7;
    /// `pwritev(fd, vec, vlen, pos_l, …)`, `pwritev2`.
    pub const PWRITEV: u32 = 8;
    /// `open`, `creat`, `openat`, `openat2`: the file is the fd returned.
    pub const OPEN: u32 = 9;
    /// Length of the `SYSCALL_KINDS` array (above every syscall number of x86-64 and arm64).
    pub const TABLE_LEN: u32 = 1024;
}

/// Bits of [`LoadConfig::syscall_probe`]: how the generic syscall programs keep an
/// operation in flight (kept selectable so the bench can compare the ways).
pub mod syscall_probe {
    /// Keep in-flight operations in the `INFLIGHT_IO` hash map (else in `INFLIGHT_SLOTS`,
    /// an array indexed by thread id).
    pub const HASH: u32 = 1 << 0;
    /// Look the fd's file up at enter and keep only files of `--fs`'s filesystems in flight.
    pub const ENTER_FILTER: u32 = 1 << 1;
}

/// Indexes into the per-CPU `STATS` array of counters.
pub mod stat {
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Operations not timed because the in-flight map was full.
    pub const INFLIGHT_FULL: u32 = 1;
    /// Events written into the ring buffer.
    pub const EVENTS: u32 = 2;
    /// Operations over the threshold that were not on a filesystem of `--fs` (filtered
    /// out at exit; in tracepoint mode, every other filesystem, pipes and sockets too).
    pub const OTHER_FS: u32 = 3;
    /// Operations over the threshold whose file could not be resolved.
    pub const FILE_UNRESOLVED: u32 = 4;
    /// Lifecycle events lost because their ring buffer was full.
    pub const LIFECYCLE_DROPS: u32 = 5;
    /// Lifecycle events written into their ring buffer.
    pub const LIFECYCLE_EVENTS: u32 = 6;
    /// Operations over the threshold on traced files that are not regular files (FIFOs,
    /// sockets, devices; directories except for fsync): their waits are not the disk's.
    pub const NOT_REGULAR: u32 = 7;
    /// Operations over the threshold of threads whose comm is not the `--comm` filter's.
    pub const OTHER_COMM: u32 = 8;
    /// jbd2 commit records written into the ring buffer (apart from [`EVENTS`], which
    /// counts the slow operations: one printed record each).
    pub const JOURNAL_COMMITS: u32 = 9;
    /// jbd2 commit records lost because the ring buffer was full (no slow operation
    /// lost: an fsync then goes without its journal context).
    pub const JOURNAL_DROPS: u32 = 10;
    /// Operations whose thread's in-flight slot held another thread's operation (thread
    /// ids equal modulo the slot array's length, `pid_max` above 65536): timed through
    /// the in-flight hash map instead.
    pub const INFLIGHT_SHARED_SLOT: u32 = 11;
    /// Number of counters.
    pub const COUNT: u32 = 12;
}

/// Index of the threshold (nanoseconds, `u64`) in the `CONFIG` array map.
pub const CONFIG_THRESHOLD_NS: u32 = 0;
/// Index in the `CONFIG` array map of the exit's jiffies pre-check (`u64`): an
/// operation that ended fewer than this many jiffies after it started is under the
/// threshold for sure, and its end is not read from the precise clock (0: always read).
/// Userspace derives it from the threshold and the tick ([`fast_jiffies`]).
pub const CONFIG_FAST_JIFFIES: u32 = 1;
/// Number of slots in the `CONFIG` array map.
pub const CONFIG_LEN: u32 = 2;

/// How late the kernel's jiffies may be against the precise clock, as far as the exit's
/// pre-check relies on (`CONFIG_FAST_JIFFIES`): one tick normally (the timekeeping CPU
/// ticks late by less than one, and a CPU coming out of idle brings jiffies up to date
/// first), with room for a vCPU the host held back a little longer.
pub const JIFFIES_LAG_NS: u64 = 5_000_000;

/// `CONFIG_FAST_JIFFIES` for a threshold and a tick (`clock_getres` of
/// `CLOCK_MONOTONIC_COARSE`): the count `k` of jiffies under which an operation is surely
/// faster than the threshold. An operation `e` jiffies long (end's jiffies less start's)
/// took less than `(e + 1)` ticks plus how late jiffies was at its end (at most
/// [`JIFFIES_LAG_NS`]), so `e < k` is safe while `k · tick + lag < threshold`. 0 (no
/// pre-check) when even `e = 0` is not safe, e.g. a threshold of 1 ms on a 4 ms tick.
#[must_use]
pub fn fast_jiffies(threshold_ns: u64, tick_ns: u64) -> u64 {
    let lag = JIFFIES_LAG_NS.max(tick_ns);
    if tick_ns == 0 || threshold_ns <= lag {
        return 0;
    }
    // The largest k with k · tick + lag < threshold.
    (threshold_ns - lag - 1) / tick_ns
}

/// Field offsets into kernel structures, resolved by userspace from the running kernel's
/// BTF and handed to the eBPF programs as a read-only global before they load, so that
/// no offset is frozen at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `file.f_pos`.
    pub file_pos: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `super_block.s_magic`.
    pub sb_magic: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `task_struct.nsproxy`.
    pub task_nsproxy: u32,
    /// `nsproxy.mnt_ns`.
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns.inum`.
    pub mnt_ns_inum: u32,
    /// `kiocb.ki_filp`.
    pub kiocb_filp: u32,
    /// `kiocb.ki_pos`.
    pub kiocb_pos: u32,
    /// `task_struct.exit_code` (the `wait` status a process leaves: `code << 8` or the
    /// signal that killed it).
    pub task_exit_code: u32,
    /// `inode.i_mode` (a `u16`: file type and permissions).
    pub inode_mode: u32,
    /// `file.private_data`: for an overlayfs regular file, its `struct ovl_file` (or,
    /// where [`Self::ovl_file_realfile`] is unknown, the real `struct file` itself).
    /// Unknown when overlayfs's layout could not be told: overlay files are then not
    /// followed.
    pub file_private_data: u32,
    /// `ovl_file.realfile` (kernels from 6.13, where `private_data` is a `struct
    /// ovl_file`); unknown on older kernels, whose `private_data` is the real file.
    pub ovl_file_realfile: u32,
    /// `ovl_file.upperfile`: the upper file opened after a copy-up that came after the
    /// open, used in place of `realfile` when set.
    pub ovl_file_upperfile: u32,
    /// `dentry.d_sb`: tells whether a backing file's dentry is the real one (from 6.8)
    /// or overlayfs's own (before, a "fake path").
    pub dentry_sb: u32,
}

impl KernelOffsets {
    /// Marks an offset the running kernel's BTF did not have; the programs skip that read.
    pub const UNKNOWN: u32 = u32::MAX;

    /// Every offset unknown: the value the eBPF object is built with.
    pub const ALL_UNKNOWN: Self = Self {
        task_files: Self::UNKNOWN,
        files_fdt: Self::UNKNOWN,
        fdt_fd: Self::UNKNOWN,
        fdt_max_fds: Self::UNKNOWN,
        file_inode: Self::UNKNOWN,
        file_dentry: Self::UNKNOWN,
        file_pos: Self::UNKNOWN,
        inode_sb: Self::UNKNOWN,
        inode_ino: Self::UNKNOWN,
        sb_magic: Self::UNKNOWN,
        sb_dev: Self::UNKNOWN,
        dentry_name: Self::UNKNOWN,
        dentry_parent: Self::UNKNOWN,
        task_nsproxy: Self::UNKNOWN,
        nsproxy_mnt_ns: Self::UNKNOWN,
        mnt_ns_inum: Self::UNKNOWN,
        kiocb_filp: Self::UNKNOWN,
        kiocb_pos: Self::UNKNOWN,
        task_exit_code: Self::UNKNOWN,
        inode_mode: Self::UNKNOWN,
        file_private_data: Self::UNKNOWN,
        ovl_file_realfile: Self::UNKNOWN,
        ovl_file_upperfile: Self::UNKNOWN,
        dentry_sb: Self::UNKNOWN,
    };
}

/// Byte offsets of the fields the lifecycle programs read from tracepoint records,
/// taken from tracefs `format` files at load time: tracepoint records change between
/// kernels (`mark_victim` gained its `comm` and rss fields in 6.8, `sched_process_exit`
/// its `group_dead` in 6.16). [`KernelOffsets::UNKNOWN`] marks a field this kernel lacks.
/// A `__data_loc` field's offset is that of its 32-bit locator (`len << 16 | offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointFields {
    /// `cgroup:cgroup_mkdir`/`cgroup_rmdir` `int root` (hierarchy id; 0 is cgroup2).
    pub cgroup_root: u32,
    /// `… int level`.
    pub cgroup_level: u32,
    /// `… u64 id`.
    pub cgroup_id: u32,
    /// `… __data_loc char[] path`.
    pub cgroup_path: u32,
    /// `sched:sched_process_exec` `__data_loc char[] filename`.
    pub exec_filename: u32,
    /// `sched:sched_process_exit` `bool group_dead`.
    pub exit_group_dead: u32,
    /// `oom:mark_victim` `int pid`.
    pub oom_pid: u32,
    /// `… __data_loc char[] comm`.
    pub oom_comm: u32,
    /// `… unsigned long total_vm` (kB).
    pub oom_total_vm: u32,
    /// `… unsigned long anon_rss` (kB).
    pub oom_anon_rss: u32,
    /// `… unsigned long file_rss` (kB).
    pub oom_file_rss: u32,
    /// `… unsigned long shmem_rss` (kB).
    pub oom_shmem_rss: u32,
    /// `… short oom_score_adj`.
    pub oom_score_adj: u32,
}

impl TracepointFields {
    /// Every field unknown: the value the eBPF object is built with.
    pub const ALL_UNKNOWN: Self = Self {
        cgroup_root: KernelOffsets::UNKNOWN,
        cgroup_level: KernelOffsets::UNKNOWN,
        cgroup_id: KernelOffsets::UNKNOWN,
        cgroup_path: KernelOffsets::UNKNOWN,
        exec_filename: KernelOffsets::UNKNOWN,
        exit_group_dead: KernelOffsets::UNKNOWN,
        oom_pid: KernelOffsets::UNKNOWN,
        oom_comm: KernelOffsets::UNKNOWN,
        oom_total_vm: KernelOffsets::UNKNOWN,
        oom_anon_rss: KernelOffsets::UNKNOWN,
        oom_file_rss: KernelOffsets::UNKNOWN,
        oom_shmem_rss: KernelOffsets::UNKNOWN,
        oom_score_adj: KernelOffsets::UNKNOWN,
    };
}

/// Byte offsets of the fields the journal programs read from the `jbd2` tracepoints'
/// records, from tracefs at load time ([`KernelOffsets::UNKNOWN`] when absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFields {
    /// `jbd2:jbd2_start_commit` `dev_t dev` (the filesystem's device, `j_fs_dev`).
    pub start_dev: u32,
    /// `… char sync_commit`.
    pub start_sync: u32,
    /// `… tid_t transaction`.
    pub start_tid: u32,
    /// `jbd2:jbd2_run_stats` `dev_t dev`.
    pub stats_dev: u32,
    /// `… tid_t tid`.
    pub stats_tid: u32,
    /// `… __u32 handle_count`.
    pub stats_handle_count: u32,
    /// `… __u32 blocks`.
    pub stats_blocks: u32,
    /// `… __u32 blocks_logged`.
    pub stats_blocks_logged: u32,
}

impl JournalFields {
    /// Every field unknown: the value the eBPF object is built with.
    pub const ALL_UNKNOWN: Self = Self {
        start_dev: KernelOffsets::UNKNOWN,
        start_sync: KernelOffsets::UNKNOWN,
        start_tid: KernelOffsets::UNKNOWN,
        stats_dev: KernelOffsets::UNKNOWN,
        stats_tid: KernelOffsets::UNKNOWN,
        stats_handle_count: KernelOffsets::UNKNOWN,
        stats_blocks: KernelOffsets::UNKNOWN,
        stats_blocks_logged: KernelOffsets::UNKNOWN,
    };
}

/// Read-only settings fixed when the programs load (globals, so the verifier sees them
/// as constants and prunes the branches they disable).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// Only trace this process (tgid); 0 traces every process.
    pub filter_tgid: u32,
    /// iostall's own tgid, never traced (its own writes would feed back).
    pub self_tgid: u32,
    /// Only report threads with this comm (NUL-padded); all zero reports every comm.
    pub filter_comm: [u8; COMM_LEN],
    /// Bits of [`syscall_probe`].
    pub syscall_probe: u32,
    /// Filesystems traced (`--fs`): bit `1 << kind` for each [`fs_kind`].
    pub fs_mask: u32,
    /// `INFLIGHT_SLOTS` length less one (a power of two less one): a thread's slot is
    /// `tid & slots_mask`.
    pub slots_mask: u32,
    /// Offsets into kernel structures.
    pub offsets: KernelOffsets,
    /// Offsets into the lifecycle tracepoints' records.
    pub tracepoints: TracepointFields,
}

impl LoadConfig {
    /// No filter, no offsets: the value the eBPF object is built with.
    pub const DEFAULT: Self = Self {
        filter_tgid: 0,
        self_tgid: 0,
        filter_comm: [0; COMM_LEN],
        syscall_probe: 0,
        fs_mask: fs_kind::ALL_MASK,
        slots_mask: 0,
        offsets: KernelOffsets::ALL_UNKNOWN,
        tracepoints: TracepointFields::ALL_UNKNOWN,
    };
}

/// What every ring-buffer record starts with. Its layout is the decode contract.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// Mount namespace inode number of the task, 0 if unknown.
    pub mntns: u32,
    /// `CLOCK_MONOTONIC` nanoseconds when the operation started.
    pub start_ns: u64,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// One operation on a traced filesystem at or above the threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoEvent {
    /// Common header; `kind` is [`event_kind::IO`].
    pub header: EventHeader,
    /// Nanoseconds from start to completion.
    pub latency_ns: u64,
    /// Return value of the operation (bytes, fd, or a negative errno).
    pub ret: i64,
    /// Bytes transferred (the return value when it is not negative, else the size asked for).
    pub bytes: u64,
    /// File offset of a read or write (see [`io_flags::OFFSET_UNKNOWN`]).
    pub offset: i64,
    /// Inode number.
    pub inode: u64,
    /// Kernel `dev_t` of the super block (major << 20 | minor).
    pub dev: u32,
    /// One of [`op`].
    pub op: u32,
    /// Bits of [`io_flags`].
    pub flags: u32,
    /// How many entries of `parents` are filled.
    pub parent_count: u32,
    /// The filesystem, one of [`fs_kind`].
    pub fs: u32,
    /// Reserved, zero (keeps the names 8-byte aligned).
    pub reserved: u32,
    /// The file's dentry name, NUL-terminated.
    pub file_name: [u8; FILE_NAME_LEN],
    /// Parent directory names, nearest first, each NUL-terminated.
    pub parents: [[u8; PARENT_NAME_LEN]; MAX_PARENTS],
}

/// A cgroup made or removed in the unified (cgroup2) hierarchy; the other hierarchies'
/// cgroups are filtered out in the kernel (their ids are not the ones tasks report).
/// The header's pid, comm and cgroup are those of the task that did the `mkdir`/`rmdir`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    /// Common header; `kind` is [`event_kind::CGROUP_MKDIR`] or [`event_kind::CGROUP_RMDIR`],
    /// `start_ns` when it happened.
    pub header: EventHeader,
    /// The cgroup's id (its directory's inode number in the unified hierarchy).
    pub id: u64,
    /// Depth below the root (the root is 0).
    pub level: u32,
    /// Hierarchy id (0 for cgroup2).
    pub root: u32,
    /// Path from the hierarchy's root (`/kubepods/…`), NUL-terminated, cut at the buffer.
    pub path: [u8; CGROUP_PATH_LEN],
}

/// A process in a watched cgroup (or a runtime daemon) called `execve`. The header's pid
/// and comm are the process's after the exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// Common header; `kind` is [`event_kind::EXEC`].
    pub header: EventHeader,
    /// Bits of [`watch`]: why it was reported.
    pub why: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// The file executed, as given to `execve` (NUL-terminated, cut at the buffer).
    pub filename: [u8; EXEC_FILENAME_LEN],
}

/// The last thread of a process in a watched cgroup (or of a runtime daemon) exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// Common header; `kind` is [`event_kind::EXIT`], `tid` the thread that ended the group.
    pub header: EventHeader,
    /// `task_struct.exit_code`: `(status & 0xff) << 8` after `exit(status)`, else the
    /// signal number (bit 7 set when it dumped core); `u32::MAX` when unknown.
    pub exit_code: u32,
    /// Bits of [`watch`]: why it was reported.
    pub why: u32,
}

/// The OOM killer chose a victim (`oom:mark_victim`). The header is the task that ran
/// the OOM killer (for a memory cgroup's limit, a task charging that cgroup).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    /// Common header; `kind` is [`event_kind::OOM`].
    pub header: EventHeader,
    /// The victim's pid.
    pub victim_pid: u32,
    /// The victim's `oom_score_adj` (`i16::MIN` when the kernel does not say).
    pub oom_score_adj: i32,
    /// The victim's virtual memory, kB (0 when the kernel does not say).
    pub total_vm_kb: u64,
    /// Its anonymous resident memory, kB.
    pub anon_rss_kb: u64,
    /// Its file-backed resident memory, kB.
    pub file_rss_kb: u64,
    /// Its shared-memory resident memory, kB.
    pub shmem_rss_kb: u64,
    /// The victim's comm (empty when the kernel does not say).
    pub victim_comm: [u8; COMM_LEN],
}

/// A jbd2 transaction finished committing (`jbd2_run_stats`, which the kernel fires
/// before it marks the transaction committed and wakes the fsyncs waiting on it).
/// The header is the journal thread's; `start_ns` is `jbd2_start_commit`'s time.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct JournalCommitEvent {
    /// Common header; `kind` is [`event_kind::JOURNAL_COMMIT`].
    pub header: EventHeader,
    /// `CLOCK_MONOTONIC` nanoseconds when the commit's work was done.
    pub end_ns: u64,
    /// Kernel `dev_t` of the filesystem the journal belongs to (major << 20 | minor).
    pub dev: u32,
    /// The transaction's id.
    pub tid: u32,
    /// Handles (filesystem operations) the transaction gathered.
    pub handles: u32,
    /// Metadata blocks it carried.
    pub blocks: u32,
    /// Blocks written to the journal (with descriptors and the commit block).
    pub blocks_logged: u32,
    /// Whether the commit was a synchronous one (someone asked and waits: an fsync).
    pub sync_commit: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data `#[repr(C)]` types made only of integers and byte arrays.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LoadConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IoEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TracepointFields {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OomEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::JournalFields {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::JournalCommitEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    /// The pre-check only ever skips operations that are surely under the threshold:
    /// `k` ticks plus the allowed lateness stay under it, and one more tick would not.
    #[test]
    fn fast_jiffies_is_safe_and_tight() {
        const MS: u64 = 1_000_000;
        // 10 ms on a 4 ms tick (HZ=250): only "no tick crossed" is surely fast.
        assert_eq!(fast_jiffies(10 * MS, 4 * MS), 1);
        // HZ=1000: up to 3 ticks crossed.
        assert_eq!(fast_jiffies(10 * MS, MS), 4);
        // A threshold within the lateness allowed: never skip.
        assert_eq!(fast_jiffies(MS, 4 * MS), 0);
        assert_eq!(fast_jiffies(JIFFIES_LAG_NS, MS), 0);
        // HZ=100: the lateness allowed is one whole tick.
        assert_eq!(fast_jiffies(10 * MS, 10 * MS), 0);
        assert_eq!(fast_jiffies(0, 4 * MS), 0);
        assert_eq!(fast_jiffies(10 * MS, 0), 0);
        for tick in [MS, 3_333_333, 4 * MS, 10 * MS] {
            for threshold in (0..200).map(|i| i * MS / 2 + 1) {
                let k = fast_jiffies(threshold, tick);
                let lag = JIFFIES_LAG_NS.max(tick);
                if k > 0 {
                    // e = k − 1 is the longest skipped: it lasted < k ticks + lag.
                    assert!(k * tick + lag < threshold, "unsafe: {threshold} {tick} {k}");
                }
                assert!(
                    (k + 1) * tick + lag >= threshold,
                    "not tight: {threshold} {tick} {k}"
                );
            }
        }
    }

    /// The header layout is the decode contract with the kernel side: pin it.
    #[test]
    fn header_layout_is_stable() {
        assert_eq!(offset_of!(EventHeader, kind), 0);
        assert_eq!(offset_of!(EventHeader, start_ns), 16);
        assert_eq!(offset_of!(EventHeader, cgroup_id), 24);
        assert_eq!(offset_of!(EventHeader, comm), 32);
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(offset_of!(IoEvent, header), 0);
        assert_eq!(size_of::<IoEvent>() % 8, 0);
        assert_eq!(
            size_of::<IoEvent>(),
            48 + 8 * 5 + 4 * 6 + FILE_NAME_LEN + PARENT_NAME_LEN * MAX_PARENTS
        );
    }

    /// The lifecycle records are a decode contract too: header first, no hidden padding.
    #[test]
    fn lifecycle_layouts_are_stable() {
        assert_eq!(offset_of!(CgroupEvent, header), 0);
        assert_eq!(offset_of!(CgroupEvent, id), 48);
        assert_eq!(offset_of!(CgroupEvent, level), 56);
        assert_eq!(offset_of!(CgroupEvent, root), 60);
        assert_eq!(offset_of!(CgroupEvent, path), 64);
        assert_eq!(size_of::<CgroupEvent>(), 64 + CGROUP_PATH_LEN);

        assert_eq!(offset_of!(ExecEvent, why), 48);
        assert_eq!(offset_of!(ExecEvent, filename), 56);
        assert_eq!(size_of::<ExecEvent>(), 56 + EXEC_FILENAME_LEN);

        assert_eq!(offset_of!(ExitEvent, exit_code), 48);
        assert_eq!(offset_of!(ExitEvent, why), 52);
        assert_eq!(size_of::<ExitEvent>(), 56);

        assert_eq!(offset_of!(OomEvent, victim_pid), 48);
        assert_eq!(offset_of!(OomEvent, oom_score_adj), 52);
        assert_eq!(offset_of!(OomEvent, total_vm_kb), 56);
        assert_eq!(offset_of!(OomEvent, shmem_rss_kb), 80);
        assert_eq!(offset_of!(OomEvent, victim_comm), 88);
        assert_eq!(size_of::<OomEvent>(), 104);

        for size in [
            size_of::<CgroupEvent>(),
            size_of::<ExecEvent>(),
            size_of::<ExitEvent>(),
            size_of::<OomEvent>(),
        ] {
            assert_eq!(size % 8, 0, "records keep 8-byte alignment");
        }
        assert_eq!(size_of::<TracepointFields>(), 13 * 4);
        assert_eq!(size_of::<JournalFields>(), 8 * 4);
        assert_eq!(offset_of!(JournalCommitEvent, end_ns), 48);
        assert_eq!(offset_of!(JournalCommitEvent, dev), 56);
        assert_eq!(offset_of!(JournalCommitEvent, sync_commit), 76);
        assert_eq!(size_of::<JournalCommitEvent>(), 80);
        assert_eq!(
            size_of::<LoadConfig>(),
            20 + COMM_LEN + size_of::<KernelOffsets>() + size_of::<TracepointFields>()
        );
    }
}
