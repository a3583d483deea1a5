//! Tracepoint mode: syscall tracepoints for read/write/open, raw tracepoints on
//! `ext4_sync_file_enter/exit` for ext4's fsync, and the `fsync`/`fdatasync` syscall
//! tracepoints for xfs's and btrfs's (see `sys_enter_fsync`).
//!
//! These per-syscall programs are the fallback of `syscalls` (which see) and share its
//! in-flight halves; which filesystem the fd is on is only asked at exit, and only for
//! operations that crossed the threshold.
//!
//! Syscall tracepoint records are `struct trace_entry` (8 bytes), `int __syscall_nr`,
//! then the arguments as 8-byte slots from offset 16 (enter) or `long ret` at offset 16
//! (exit). Userspace checks these offsets in tracefs before attaching; they are read
//! directly from the context because the verifier wants constant context offsets.
use aya_ebpf::{
    EbpfContext,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use exporter_common::{fs_kind, op};

use crate::{
    emit::emit,
    inflight::{finish, start, target_flags},
    kernel::magic_of_fd,
    maps::{INFLIGHT_SYNC, load_config},
    syscalls::{Owner, begin, end},
};

/// Starts timing an operation of the current thread (see `syscalls::begin`).
#[inline(always)]
fn begin_here(op: u32, fd: u64, pos: i64, count: u64) {
    begin(Owner::current_thread(), op, fd, pos, count);
}

/// Offset of the first syscall argument in a `sys_enter_*` record.
pub const SYSCALL_ARGS_OFFSET: usize = 16;
/// Offset of `ret` in a `sys_exit_*` record.
pub const SYSCALL_RET_OFFSET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall enter records hold six 8-byte argument slots after the header.
    unsafe { *(ctx.as_ptr().add(SYSCALL_ARGS_OFFSET + n * 8) as *const u64) }
}

/// read(fd, buf, count), write(fd, buf, count).
#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    begin_here(op::READ, arg(&ctx, 0), -1, arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    begin_here(op::WRITE, arg(&ctx, 0), -1, arg(&ctx, 2));
    0
}

/// pread64(fd, buf, count, pos), pwrite64(fd, buf, count, pos).
#[tracepoint]
pub fn sys_enter_pread(ctx: TracePointContext) -> u32 {
    begin_here(op::READ, arg(&ctx, 0), arg(&ctx, 3) as i64, arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_pwrite(ctx: TracePointContext) -> u32 {
    begin_here(op::WRITE, arg(&ctx, 0), arg(&ctx, 3) as i64, arg(&ctx, 2));
    0
}

/// readv(fd, vec, vlen), writev(fd, vec, vlen): the size is only known from the result.
#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    begin_here(op::READ, arg(&ctx, 0), -1, 0);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    begin_here(op::WRITE, arg(&ctx, 0), -1, 0);
    0
}

/// preadv(fd, vec, vlen, pos_l, pos_h) and preadv2 (same, plus flags); on 64-bit
/// `pos_l` holds the whole offset. An offset of -1 (preadv2) means "current position".
#[tracepoint]
pub fn sys_enter_preadv(ctx: TracePointContext) -> u32 {
    begin_here(op::READ, arg(&ctx, 0), arg(&ctx, 3) as i64, 0);
    0
}

#[tracepoint]
pub fn sys_enter_pwritev(ctx: TracePointContext) -> u32 {
    begin_here(op::WRITE, arg(&ctx, 0), arg(&ctx, 3) as i64, 0);
    0
}

/// open, openat, openat2: the file is known only from the fd returned at exit.
#[tracepoint]
pub fn sys_enter_open(_ctx: TracePointContext) -> u32 {
    begin_here(op::OPEN, 0, -1, 0);
    0
}

/// Exit of every syscall above.
#[tracepoint]
pub fn sys_exit_io(ctx: TracePointContext) -> u32 {
    if let Some(done) = end(Owner::current_thread()) {
        // SAFETY: syscall exit records hold `long ret` at this offset.
        let ret = unsafe { *(ctx.as_ptr().add(SYSCALL_RET_OFFSET) as *const i64) };
        emit(&done, ret);
    }
    0
}

/// `ext4_sync_file_enter(struct file *file, int datasync)`.
#[raw_tracepoint(tracepoint = "ext4_sync_file_enter")]
pub fn ext4_sync_file_enter(ctx: RawTracePointContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let datasync: u64 = ctx.arg(1);
    let mut flags = target_flags::IS_FILE;
    if datasync as u32 != 0 {
        flags |= target_flags::DATASYNC;
    }
    start(&INFLIGHT_SYNC, op::FSYNC, file, -1, 0, flags);
    0
}

/// `ext4_sync_file_exit(struct inode *inode, int ret)`.
#[raw_tracepoint(tracepoint = "ext4_sync_file_exit")]
pub fn ext4_sync_file_exit(ctx: RawTracePointContext) -> i32 {
    if let Some(done) = finish(&INFLIGHT_SYNC) {
        let ret: u64 = ctx.arg(1);
        emit(&done, ret as u32 as i32 as i64);
    }
    0
}

/// Filesystems whose fsync is timed on the `fsync`/`fdatasync` syscall tracepoints.
/// `xfs:xfs_file_fsync`, `xfs:xfs_dir_fsync` and `btrfs:btrfs_sync_file` fire when the
/// fsync starts and have no exit tracepoint to time it against, so they do not help;
/// ext4's fsync stays on `ext4_sync_file_enter/exit`, which also see `msync`, `O_SYNC`
/// writes and io_uring fsyncs (on xfs and btrfs those go untimed in this mode).
const SYSCALL_FSYNC_FS: u32 = (1 << fs_kind::XFS) | (1 << fs_kind::BTRFS);

/// Starts timing an fsync of `fd` if it is on a filesystem of `SYSCALL_FSYNC_FS` and
/// `--fs`. The file is looked up at enter (fsyncs are rare): an ext4 fsync must not be
/// timed twice.
#[inline(always)]
fn start_fsync(fd: u64, flags: u32) {
    let wanted = load_config!(fs_mask) & SYSCALL_FSYNC_FS;
    if wanted == 0 {
        return;
    }
    match magic_of_fd(fd) {
        Some(magic) if fs_kind::wanted(magic, wanted) => {
            start(&INFLIGHT_SYNC, op::FSYNC, fd, -1, 0, flags);
        }
        _ => {}
    }
}

/// fsync(fd).
#[tracepoint]
pub fn sys_enter_fsync(ctx: TracePointContext) -> u32 {
    start_fsync(arg(&ctx, 0), 0);
    0
}

/// fdatasync(fd).
#[tracepoint]
pub fn sys_enter_fdatasync(ctx: TracePointContext) -> u32 {
    start_fsync(arg(&ctx, 0), target_flags::DATASYNC);
    0
}

/// Exit of `fsync` and `fdatasync`.
#[tracepoint]
pub fn sys_exit_fsync(ctx: TracePointContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_SYNC) {
        // SAFETY: syscall exit records hold `long ret` at this offset.
        let ret = unsafe { *(ctx.as_ptr().add(SYSCALL_RET_OFFSET) as *const i64) };
        emit(&done, ret);
    }
    0
}
