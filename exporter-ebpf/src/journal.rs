//! jbd2 commits, so that an fsync that waited for one can say how long it took and what
//! it carried. Two plain tracepoints: `jbd2_start_commit` keeps the start time,
//! `jbd2_run_stats` (the commit's work done, before the kernel marks it committed and
//! wakes its waiters) emits one record into the IO ring, `EVENTS`. Sharing that ring
//! keeps the order: a commit's record is reserved before any fsync that waited for it
//! can reserve its own, so userspace always has the commit when the fsync arrives.
//!
//! Cost: commits are rare (one per journal every 5 s, plus one per fsync at most), and
//! each runs one map update and one lookup. Commits shorter than half the slow-IO
//! threshold are dropped in the kernel: they cannot explain an operation over it.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns, macros::map, macros::tracepoint, maps::HashMap,
    programs::TracePointContext,
};
use exporter_common::{JournalCommitEvent, JournalFields, event_kind, stat};

use crate::{
    lifecycle::{field, header},
    maps::{EVENTS, count, threshold_ns},
};

/// Offsets into the jbd2 records; userspace overwrites it before load.
#[unsafe(no_mangle)]
pub static JOURNAL_FIELDS: JournalFields = JournalFields::ALL_UNKNOWN;

/// A commit in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CommitStart {
    /// `CLOCK_MONOTONIC` ns of `jbd2_start_commit`.
    pub start_ns: u64,
    /// Its `sync_commit`.
    pub sync_commit: u32,
    /// Reserved.
    pub pad: u32,
}

/// Commits in progress, by `dev << 32 | tid`: one per journal at a time, so a few
/// hundred hold every mounted ext4 filesystem.
#[map]
pub static COMMIT_STARTS: HashMap<u64, CommitStart> = HashMap::with_max_entries(1024, 0);

/// Reads a field of `JOURNAL_FIELDS` so the compiler cannot fold the build-time default.
macro_rules! journal_field {
    ($field:ident) => {{
        // SAFETY: a read of a plain integer in a read-only global.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&JOURNAL_FIELDS.$field) };
        value
    }};
}

#[inline(always)]
fn key(dev: u32, tid: u32) -> u64 {
    ((dev as u64) << 32) | tid as u64
}

/// `jbd2:jbd2_start_commit`: the journal thread starts committing a transaction.
#[tracepoint]
pub fn jbd2_start_commit(ctx: TracePointContext) -> u32 {
    let (Some(dev), Some(tid)) = (
        field::<u32>(&ctx, journal_field!(start_dev)),
        field::<u32>(&ctx, journal_field!(start_tid)),
    ) else {
        return 0;
    };
    let start = CommitStart {
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        sync_commit: field::<u8>(&ctx, journal_field!(start_sync)).unwrap_or(0) as u32,
        pad: 0,
    };
    // Full only if commits start and never finish; then that commit goes unreported.
    let _ = COMMIT_STARTS.insert(key(dev, tid), start, 0);
    0
}

/// `jbd2:jbd2_run_stats`: the commit's blocks are on disk; emit it if long enough.
#[tracepoint]
pub fn jbd2_run_stats(ctx: TracePointContext) -> u32 {
    let (Some(dev), Some(tid)) = (
        field::<u32>(&ctx, journal_field!(stats_dev)),
        field::<u32>(&ctx, journal_field!(stats_tid)),
    ) else {
        return 0;
    };
    let key = key(dev, tid);
    // SAFETY: the value is copied at once.
    let Some(start) = (unsafe { COMMIT_STARTS.get(key) }).copied() else {
        // Started before the programs were attached.
        return 0;
    };
    let _ = COMMIT_STARTS.remove(key);
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    if end_ns.wrapping_sub(start.start_ns).saturating_mul(2) < threshold_ns() {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<JournalCommitEvent>(0) else {
        count(stat::JOURNAL_DROPS);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    let n = |offset: u32| field::<u32>(&ctx, offset).unwrap_or(0);
    // SAFETY: `ev` points at a reserved, exclusively owned record of the event's size.
    unsafe {
        (*ev).header = header(event_kind::JOURNAL_COMMIT);
        (*ev).header.start_ns = start.start_ns;
        (*ev).end_ns = end_ns;
        (*ev).dev = dev;
        (*ev).tid = tid;
        (*ev).handles = n(journal_field!(stats_handle_count));
        (*ev).blocks = n(journal_field!(stats_blocks));
        (*ev).blocks_logged = n(journal_field!(stats_blocks_logged));
        (*ev).sync_commit = start.sync_commit;
    }
    entry.submit(0);
    count(stat::JOURNAL_COMMITS);
    0
}
