//! fentry mode: fentry/fexit on the file operations of ext4, xfs and btrfs (the
//! functions libbpf-tools' `fsslower` uses). Cheapest where the kernel allows BPF
//! trampolines; refused (EPERM) on some hardened kernels.
//!
//! A tracing program is loaded against one function, so each filesystem has its own
//! eight programs, made by `fs_programs!` from the same bodies; userspace attaches those
//! of the filesystems of `--fs`.
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

/// `*_file_open(struct inode *inode, struct file *filp)`.
#[inline(always)]
fn start_open(file: u64) {
    start(&INFLIGHT_IO, op::OPEN, file, -1, 0, target_flags::IS_FILE);
}

/// `*_sync_file(struct file *file, loff_t start, loff_t end, int datasync)`, and
/// `xfs_file_fsync` with the same arguments.
#[inline(always)]
fn start_sync(file: u64, datasync: u64) {
    let mut flags = target_flags::IS_FILE;
    if datasync as u32 != 0 {
        flags |= target_flags::DATASYNC;
    }
    start(&INFLIGHT_SYNC, op::FSYNC, file, -1, 0, flags);
}

/// Return of a read or write iterator (`ssize_t`).
#[inline(always)]
fn end_iter(ret: i64) {
    if let Some(done) = finish(&INFLIGHT_IO) {
        emit(&done, ret);
    }
}

/// Return of an open (`int`).
#[inline(always)]
fn end_open(ret: u64) {
    if let Some(done) = finish(&INFLIGHT_IO) {
        emit(&done, ret as u32 as i32 as i64);
    }
}

/// Return of an fsync (`int`).
#[inline(always)]
fn end_sync(ret: u64) {
    if let Some(done) = finish(&INFLIGHT_SYNC) {
        emit(&done, ret as u32 as i32 as i64);
    }
}

/// The eight programs of one filesystem: names of the fentry then fexit programs for
/// read, write, open and fsync, then the four kernel functions.
macro_rules! fs_programs {
    (
        [$fr:ident, $fw:ident, $fo:ident, $fs:ident],
        [$xr:ident, $xw:ident, $xo:ident, $xs:ident],
        [$read:literal, $write:literal, $open:literal, $sync:literal]
    ) => {
        #[fentry(function = $read)]
        pub fn $fr(ctx: FEntryContext) -> u32 {
            start_iter(op::READ, ctx.arg(0));
            0
        }

        #[fentry(function = $write)]
        pub fn $fw(ctx: FEntryContext) -> u32 {
            start_iter(op::WRITE, ctx.arg(0));
            0
        }

        #[fentry(function = $open)]
        pub fn $fo(ctx: FEntryContext) -> u32 {
            start_open(ctx.arg(1));
            0
        }

        #[fentry(function = $sync)]
        pub fn $fs(ctx: FEntryContext) -> u32 {
            start_sync(ctx.arg(0), ctx.arg(3));
            0
        }

        #[fexit(function = $read)]
        pub fn $xr(ctx: FExitContext) -> u32 {
            end_iter(ctx.arg(2));
            0
        }

        #[fexit(function = $write)]
        pub fn $xw(ctx: FExitContext) -> u32 {
            end_iter(ctx.arg(2));
            0
        }

        #[fexit(function = $open)]
        pub fn $xo(ctx: FExitContext) -> u32 {
            end_open(ctx.arg(2));
            0
        }

        #[fexit(function = $sync)]
        pub fn $xs(ctx: FExitContext) -> u32 {
            end_sync(ctx.arg(4));
            0
        }
    };
}

fs_programs!(
    [fentry_read, fentry_write, fentry_open, fentry_sync],
    [fexit_read, fexit_write, fexit_open, fexit_sync],
    [
        "ext4_file_read_iter",
        "ext4_file_write_iter",
        "ext4_file_open",
        "ext4_sync_file"
    ]
);

fs_programs!(
    [
        fentry_xfs_read,
        fentry_xfs_write,
        fentry_xfs_open,
        fentry_xfs_sync
    ],
    [
        fexit_xfs_read,
        fexit_xfs_write,
        fexit_xfs_open,
        fexit_xfs_sync
    ],
    [
        "xfs_file_read_iter",
        "xfs_file_write_iter",
        "xfs_file_open",
        "xfs_file_fsync"
    ]
);

fs_programs!(
    [
        fentry_btrfs_read,
        fentry_btrfs_write,
        fentry_btrfs_open,
        fentry_btrfs_sync
    ],
    [
        fexit_btrfs_read,
        fexit_btrfs_write,
        fexit_btrfs_open,
        fexit_btrfs_sync
    ],
    [
        "btrfs_file_read_iter",
        "btrfs_file_write_iter",
        "btrfs_file_open",
        "btrfs_sync_file"
    ]
);
