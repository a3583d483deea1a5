//! fentry mode: fentry/fexit on ext4's file operations. Cheapest where the kernel
//! allows BPF trampolines; refused (EPERM) on some hardened kernels.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use exporter_common::op;

use crate::{
    emit::emit,
    inflight::{finish, start, target_flags},
    kernel::read_at,
    maps::{INFLIGHT_IO, INFLIGHT_SYNC, load_config},
};

/// Records the start of a `*_iter` call from its `struct kiocb *`.
#[inline(always)]
fn start_iter(op: u32, iocb: u64) {
    let file: u64 = read_at(iocb, load_config!(offsets.kiocb_filp)).unwrap_or(0);
    let pos: i64 = read_at(iocb, load_config!(offsets.kiocb_pos)).unwrap_or(-1);
    start(&INFLIGHT_IO, op, file, pos, 0, target_flags::IS_FILE);
}

#[fentry(function = "ext4_file_read_iter")]
pub fn fentry_read(ctx: FEntryContext) -> u32 {
    start_iter(op::READ, ctx.arg(0));
    0
}

#[fentry(function = "ext4_file_write_iter")]
pub fn fentry_write(ctx: FEntryContext) -> u32 {
    start_iter(op::WRITE, ctx.arg(0));
    0
}

/// `ext4_file_open(struct inode *inode, struct file *filp)`.
#[fentry(function = "ext4_file_open")]
pub fn fentry_open(ctx: FEntryContext) -> u32 {
    start(
        &INFLIGHT_IO,
        op::OPEN,
        ctx.arg(1),
        -1,
        0,
        target_flags::IS_FILE,
    );
    0
}

/// `ext4_sync_file(struct file *file, loff_t start, loff_t end, int datasync)`.
#[fentry(function = "ext4_sync_file")]
pub fn fentry_sync(ctx: FEntryContext) -> u32 {
    let datasync: u64 = ctx.arg(3);
    let mut flags = target_flags::IS_FILE;
    if datasync as u32 != 0 {
        flags |= target_flags::DATASYNC;
    }
    start(&INFLIGHT_SYNC, op::FSYNC, ctx.arg(0), -1, 0, flags);
    0
}

#[fexit(function = "ext4_file_read_iter")]
pub fn fexit_read(ctx: FExitContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_IO) {
        emit(&done, ctx.arg::<i64>(2));
    }
    0
}

#[fexit(function = "ext4_file_write_iter")]
pub fn fexit_write(ctx: FExitContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_IO) {
        emit(&done, ctx.arg::<i64>(2));
    }
    0
}

#[fexit(function = "ext4_file_open")]
pub fn fexit_open(ctx: FExitContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_IO) {
        emit(&done, ctx.arg::<u64>(2) as u32 as i32 as i64);
    }
    0
}

#[fexit(function = "ext4_sync_file")]
pub fn fexit_sync(ctx: FExitContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_SYNC) {
        emit(&done, ctx.arg::<u64>(4) as u32 as i32 as i64);
    }
    0
}
