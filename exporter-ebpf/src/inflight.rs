//! The start half of every measurement: remember when and on what an operation began,
//! by thread id; the end half looks it up, computes the latency and compares it with the
//! threshold before doing any other work.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_jiffies64, bpf_ktime_get_ns},
    },
    maps::HashMap,
};
use exporter_common::stat;

// The value type lives beside the maps that hold it; named here too, where its users
// look for it.
pub use crate::maps::{InFlight, target_flags};
use crate::maps::{count, fast_jiffies, tgid_wanted, threshold_ns};

/// A finished operation that crossed the threshold.
pub struct Finished {
    pub started: InFlight,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
}

/// What an operation starting now records.
#[inline(always)]
pub fn in_flight(op: u32, target: u64, pos: i64, count_: u64, flags: u32) -> InFlight {
    InFlight {
        // SAFETY: helpers without preconditions; the verifier inlines `bpf_jiffies64`.
        start_ns: unsafe { bpf_ktime_get_ns() },
        target,
        pos,
        count: count_,
        op,
        flags,
        start_jiffies: unsafe { bpf_jiffies64() },
    }
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
    let value = in_flight(op, target, pos, count_, flags);
    if map.insert(pid_tgid as u32, value, 0).is_err() {
        count(stat::INFLIGHT_FULL);
    }
}

/// Ends the current thread's operation; `Some` only if it took at least the threshold.
#[inline(always)]
pub fn finish(map: &HashMap<u32, InFlight>) -> Option<Finished> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !tgid_wanted((pid_tgid >> 32) as u32) {
        return None;
    }
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let started = unsafe { *map.get(tid)? };
    let _ = map.remove(tid);
    finished_if_slow(started)
}

/// Ends `started` now; `Some` only if it took at least the threshold, in a process
/// iostall traces.
///
/// Nearly every operation is fast, and reading the precise clock is most of what timing
/// it costs (a helper call, and a serialized TSC read: ~40 ns on a VM). So the end is
/// first judged on `jiffies`, which the verifier inlines to one load: an operation that
/// ended fewer than `CONFIG_FAST_JIFFIES` ticks after it started is surely under the
/// threshold (`exporter_common::fast_jiffies` says why), and stops here.
#[inline(always)]
pub fn finished_if_slow(started: InFlight) -> Option<Finished> {
    let fast = fast_jiffies();
    // SAFETY: helper without preconditions, inlined by the verifier.
    if fast != 0 && unsafe { bpf_jiffies64() }.wrapping_sub(started.start_jiffies) < fast {
        return None;
    }
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    if end_ns.wrapping_sub(started.start_ns) < threshold_ns() {
        return None;
    }
    // Who, only now: the fast path of the generic syscall programs never asks.
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !tgid_wanted(pid) {
        return None;
    }
    Some(Finished {
        started,
        end_ns,
        pid,
        tid: pid_tgid as u32,
    })
}
