//! The start half of every measurement: remember when and on what an operation began,
//! by thread id; the end half looks it up, computes the latency and compares it with the
//! threshold before doing any other work.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    maps::HashMap,
};
use exporter_common::stat;

use crate::maps::{count, tgid_wanted, threshold_ns};

/// What the start of an operation records.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// `CLOCK_MONOTONIC` at start.
    pub start_ns: u64,
    /// An fd (syscall tracepoints) or a `struct file *` (ext4 function probes), see `flags`.
    pub target: u64,
    /// Offset of a positional read/write, or -1 when the file position is used.
    pub pos: i64,
    /// Bytes asked for, 0 when unknown (vectored IO).
    pub count: u64,
    /// One of `exporter_common::op`.
    pub op: u32,
    /// Bits of [`target_flags`].
    pub flags: u32,
}

/// Bits of [`InFlight::flags`].
pub mod target_flags {
    /// `target` is a `struct file *`, not an fd.
    pub const IS_FILE: u32 = 1 << 0;
    /// The fsync is a `datasync` one.
    pub const DATASYNC: u32 = 1 << 1;
}

/// A finished operation that crossed the threshold.
pub struct Finished {
    pub started: InFlight,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
}

/// Records the start of an operation of the current thread.
#[inline(always)]
pub fn start(
    map: &HashMap<u32, InFlight>,
    op: u32,
    target: u64,
    pos: i64,
    count_: u64,
    flags: u32,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !tgid_wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let value = InFlight {
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        target,
        pos,
        count: count_,
        op,
        flags,
    };
    if map.insert(pid_tgid as u32, value, 0).is_err() {
        count(stat::INFLIGHT_FULL);
    }
}

/// Ends the current thread's operation; `Some` only if it took at least the threshold.
#[inline(always)]
pub fn finish(map: &HashMap<u32, InFlight>) -> Option<Finished> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !tgid_wanted(pid) {
        return None;
    }
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let started = unsafe { *map.get(tid)? };
    let _ = map.remove(tid);
    finished_if_slow(started, pid, tid)
}

/// Ends `started` now; `Some` only if it took at least the threshold.
#[inline(always)]
pub fn finished_if_slow(started: InFlight, pid: u32, tid: u32) -> Option<Finished> {
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    if end_ns.wrapping_sub(started.start_ns) < threshold_ns() {
        return None;
    }
    Some(Finished {
        started,
        end_ns,
        pid,
        tid,
    })
}
