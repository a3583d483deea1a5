//! The start half of every measurement: remember when and on what an operation began,
//! by thread id; the end half looks it up, computes the latency and compares it with the
//! threshold before doing any other work.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    maps::HashMap,
};
use exporter_common::stat;

// The value type lives beside the maps that hold it; named here too, where its users
// look for it.
pub use crate::maps::{InFlight, target_flags};
use crate::maps::{count, tgid_wanted, threshold_ns};

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
