//! kprobe mode: kprobe/kretprobe on the file operations of ext4, xfs and btrfs (as bcc's
//! `ext4slower` and libbpf-tools' `fsslower`): a kprobe program attaches to any number of
//! functions, so one program per operation serves every filesystem of `--fs`.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use exporter_common::op;

use crate::{
    emit::emit,
    inflight::{finish, start, target_flags},
    kernel::read_at,
    maps::{INFLIGHT_IO, INFLIGHT_SYNC, load_config},
};

#[inline(always)]
fn start_iter(op: u32, ctx: &ProbeContext) {
    let iocb: u64 = ctx.arg(0).unwrap_or(0);
    let file: u64 = read_at(iocb, load_config!(offsets.kiocb_filp)).unwrap_or(0);
    let pos: i64 = read_at(iocb, load_config!(offsets.kiocb_pos)).unwrap_or(-1);
    start(&INFLIGHT_IO, op, file, pos, 0, target_flags::IS_FILE);
}

#[kprobe]
pub fn kprobe_read(ctx: ProbeContext) -> u32 {
    start_iter(op::READ, &ctx);
    0
}

#[kprobe]
pub fn kprobe_write(ctx: ProbeContext) -> u32 {
    start_iter(op::WRITE, &ctx);
    0
}

#[kprobe]
pub fn kprobe_open(ctx: ProbeContext) -> u32 {
    let file: u64 = ctx.arg(1).unwrap_or(0);
    start(&INFLIGHT_IO, op::OPEN, file, -1, 0, target_flags::IS_FILE);
    0
}

#[kprobe]
pub fn kprobe_sync(ctx: ProbeContext) -> u32 {
    let file: u64 = ctx.arg(0).unwrap_or(0);
    let datasync: u64 = ctx.arg(3).unwrap_or(0);
    let mut flags = target_flags::IS_FILE;
    if datasync as u32 != 0 {
        flags |= target_flags::DATASYNC;
    }
    start(&INFLIGHT_SYNC, op::FSYNC, file, -1, 0, flags);
    0
}

/// Return of every filesystem's `*_file_read_iter`, `*_file_write_iter` and `*_file_open`.
#[kretprobe]
pub fn kretprobe_io(ctx: RetProbeContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_IO) {
        let ret: u64 = ctx.ret();
        let ret = if done.started.op == op::OPEN {
            ret as u32 as i32 as i64
        } else {
            ret as i64
        };
        emit(&done, ret);
    }
    0
}

#[kretprobe]
pub fn kretprobe_sync(ctx: RetProbeContext) -> u32 {
    if let Some(done) = finish(&INFLIGHT_SYNC) {
        let ret: u64 = ctx.ret();
        emit(&done, ret as u32 as i32 as i64);
    }
    0
}
