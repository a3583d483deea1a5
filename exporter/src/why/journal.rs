//! Recent jbd2 commits per journal, so an fsync that waited for a commit full of other
//! writers' blocks says so.
//!
//! The commits come from the kernel's `jbd2` tracepoints (`exporter-ebpf/src/journal.rs`)
//! through the IO ring: the reader decodes them ([`crate::decode::Decoder::decode_commit`])
//! and hands them to a [`JournalFeed`] before it forwards the records behind them, so
//! when the sink thread explains an fsync, every commit that ended before it is known.
//!
//! Which commit an fsync waited for: `ext4_sync_file` writes the file's data, then (for a
//! journalled filesystem) calls `jbd2_complete_transaction` with the id of the last
//! transaction that changed the inode, which starts that transaction's commit if no one
//! has, and sleeps in `jbd2_log_wait_commit` until the journal's committed sequence
//! reaches it. A journal commits its transactions one at a time, in id order, and the
//! kernel fires `jbd2_run_stats` (our "end") before it advances that sequence and wakes
//! the waiters. So the commit the fsync waited for ended inside the fsync's interval, and
//! no later commit of the same journal could end before the fsync was woken: it is the
//! commit on the fsync's device that ended last at or before the fsync's end. Earlier
//! commits ending inside the interval were waited for too (a transaction cannot commit
//! before the one committing ahead of it): their time counts in `wait_ms`, their blocks
//! and handles in the totals. That is the common case of "your fsync waited for everyone
//! else's writes": a big writer's transaction is committing, the small fsync's inode is
//! in the next one, which cannot start before the big one is on disk.
//!
//! The bounds of this reading: an fsync that had nothing to commit (an `fdatasync` of
//! overwrites only, or an fsync of a clean file) waits for no commit, yet one may end
//! during it (the 5 s timer's); and one that ends with a cache flush of its own (an
//! external journal) may see the next commit end during that flush. Both are rare for
//! a slow fsync; the first shows as `commit_began_before` and a small `wait_share`.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::{Stall, WhyValue};

/// Commits kept per journal: a few seconds of a commit-per-fsync storm, minutes otherwise.
pub const COMMITS_PER_JOURNAL: usize = 1024;
/// Tolerance for the wall-clock conversion of the two records (re-sampled each second).
const CLOCK_SLACK_NS: u64 = 100_000;

/// One jbd2 commit, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalCommit {
    /// The filesystem's device, major.
    pub dev_major: u32,
    /// The filesystem's device, minor.
    pub dev_minor: u32,
    /// The transaction id.
    pub tid: u32,
    /// Unix ns when the journal thread began committing.
    pub start_unix_ns: u64,
    /// Unix ns when its blocks were on disk.
    pub end_unix_ns: u64,
    /// Handles (filesystem operations) it gathered, from every writer.
    pub handles: u32,
    /// Metadata blocks it carried.
    pub blocks: u32,
    /// Blocks written to the journal for it.
    pub blocks_logged: u32,
}

/// Share of an fsync spent in journal commits from which the journal counts as its cause
/// (the WHY column, the startup's dominant cause).
pub const MIN_CAUSE_SHARE: f64 = 0.25;

/// The journal commit an fsync waited for, and the ones it queued behind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalContext {
    /// How long the fsync's own commit took (the last one ending before it returned),
    /// milliseconds.
    pub commit_ms: f64,
    /// Its transaction id.
    pub tid: u32,
    /// Metadata blocks it carried.
    pub blocks: u64,
    /// Handles (filesystem operations, every writer's) in it.
    pub handles: u64,
    /// Whether it was already running when the fsync began: someone else started it,
    /// and the fsync joined the wait.
    pub commit_began_before: bool,
    /// Commits of the journal that ended during the fsync: its own, and those running
    /// ahead of it (a transaction cannot commit before the one committing ahead of it).
    pub commits: u32,
    /// Milliseconds of the fsync during which those commits ran.
    pub wait_ms: f64,
    /// `wait_ms` as a share of the fsync's latency (0 to 1).
    pub wait_share: f64,
    /// Metadata blocks of all those commits: what the fsync waited to see written.
    pub blocks_total: u64,
    /// Handles of all those commits: how many operations, of every writer, it waited for.
    pub handles_total: u64,
}

impl JournalContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        let int = |v: u64| WhyValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
        f(
            "iostall.journal.commit_ms",
            WhyValue::Double(self.commit_ms),
        );
        f("iostall.journal.tid", int(u64::from(self.tid)));
        f("iostall.journal.blocks", int(self.blocks));
        f("iostall.journal.handles", int(self.handles));
        f(
            "iostall.journal.commit_began_before",
            WhyValue::Bool(self.commit_began_before),
        );
        f("iostall.journal.commits", int(u64::from(self.commits)));
        f("iostall.journal.wait_ms", WhyValue::Double(self.wait_ms));
        f(
            "iostall.journal.wait_share",
            WhyValue::Double(self.wait_share),
        );
        f("iostall.journal.blocks_total", int(self.blocks_total));
        f("iostall.journal.handles_total", int(self.handles_total));
    }

    /// The table's part: how long the fsync waited on the journal.
    #[must_use]
    /// A commit that took a small share of the fsync (the 5 s timer's, ending during an
    /// fsync that had nothing to commit) is no cause.
    pub fn short(&self) -> Option<String> {
        (self.wait_share >= MIN_CAUSE_SHARE).then(|| format!("jbd2 {:.0}ms", self.wait_ms))
    }
}

type CommitLog = HashMap<(u32, u32), VecDeque<JournalCommit>>;

/// The reader's handle: where decoded commits go. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct JournalFeed(Arc<Mutex<CommitLog>>);

impl JournalFeed {
    /// Keeps `commit` (the oldest of its journal goes past [`COMMITS_PER_JOURNAL`]).
    pub fn push(&self, commit: JournalCommit) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let commits = log.entry((commit.dev_major, commit.dev_minor)).or_default();
        if commits.len() >= COMMITS_PER_JOURNAL {
            commits.pop_front();
        }
        commits.push_back(commit);
    }
}

/// Recent commits, per journal device.
#[derive(Debug, Default)]
pub struct JournalView {
    feed: JournalFeed,
}

impl JournalView {
    /// An empty view; give [`Self::feed`] to the ring reader.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle the ring reader pushes commits into.
    #[must_use]
    pub fn feed(&self) -> JournalFeed {
        self.feed.clone()
    }

    /// The commit `record` (an fsync) waited for, if any.
    pub fn context(&mut self, stall: &Stall) -> Option<JournalContext> {
        if !stall.fsync {
            return None;
        }
        let log = self.feed.0.lock().unwrap_or_else(|e| e.into_inner());
        let commits = log.get(&stall.dev)?;
        waited_for(commits, stall.start_unix_ns, stall.end_unix_ns)
    }
}

/// The commit among `commits` (one journal's, in end order) that an fsync over
/// `[start, end]` waited for; see the module doc for why it is the last one ending there.
fn waited_for(commits: &VecDeque<JournalCommit>, start: u64, end: u64) -> Option<JournalContext> {
    let within = |c: &&JournalCommit| {
        c.end_unix_ns >= start && c.end_unix_ns <= end.saturating_add(CLOCK_SLACK_NS)
    };
    let mut ended: Vec<&JournalCommit> = commits
        .iter()
        .rev()
        .skip_while(|c| c.end_unix_ns > end.saturating_add(CLOCK_SLACK_NS))
        .take_while(|c| c.end_unix_ns >= start)
        .filter(within)
        .collect();
    let last = *ended.first()?;
    ended.reverse();
    // Commits of one journal do not overlap: their parts inside the fsync add up.
    let wait_ns: u64 = ended
        .iter()
        .map(|c| {
            c.end_unix_ns
                .min(end)
                .saturating_sub(c.start_unix_ns.max(start))
        })
        .sum();
    let latency = end.saturating_sub(start).max(1);
    Some(JournalContext {
        commit_ms: last.end_unix_ns.saturating_sub(last.start_unix_ns) as f64 / 1e6,
        tid: last.tid,
        blocks: u64::from(last.blocks),
        handles: u64::from(last.handles),
        commit_began_before: last.start_unix_ns < start,
        commits: u32::try_from(ended.len()).unwrap_or(u32::MAX),
        wait_ms: wait_ns as f64 / 1e6,
        wait_share: (wait_ns as f64 / latency as f64).min(1.0),
        blocks_total: ended.iter().map(|c| u64::from(c.blocks)).sum(),
        handles_total: ended.iter().map(|c| u64::from(c.handles)).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn commit(tid: u32, start_ms: u64, end_ms: u64) -> JournalCommit {
        JournalCommit {
            dev_major: 7,
            dev_minor: 3,
            tid,
            start_unix_ns: start_ms * MS,
            end_unix_ns: end_ms * MS,
            handles: 9,
            blocks: 6,
            blocks_logged: 8,
        }
    }

    /// An fsync (or not) on device (7, 3) from `start` to `end`.
    fn stall(fsync: bool, start: u64, end: u64) -> Stall {
        Stall {
            dev: (7, 3),
            cgroup_id: 1,
            fsync,
            start_unix_ns: start,
            end_unix_ns: end,
        }
    }

    fn log(commits: &[JournalCommit]) -> VecDeque<JournalCommit> {
        commits.iter().cloned().collect()
    }

    #[test]
    fn picks_the_last_commit_ending_inside_the_fsync() {
        // tid 2 was committing when the fsync began; its inode's tid 3 queued behind it.
        let commits = log(&[
            commit(1, 0, 100),
            commit(2, 900, 1500),
            commit(3, 1500, 1700),
            commit(4, 5000, 5100),
        ]);
        let ctx = waited_for(&commits, 1000 * MS, 1710 * MS).expect("a commit");
        assert_eq!(ctx.tid, 3);
        assert!((ctx.commit_ms - 200.0).abs() < 1e-9);
        assert_eq!(ctx.commits, 2);
        assert!((ctx.wait_ms - 700.0).abs() < 1e-9, "{}", ctx.wait_ms);
        assert!((ctx.wait_share - 700.0 / 710.0).abs() < 1e-9);
        assert!(!ctx.commit_began_before);
        assert_eq!((ctx.blocks, ctx.handles), (6, 9));
        assert_eq!((ctx.blocks_total, ctx.handles_total), (12, 18));
        assert_eq!(ctx.short(), Some("jbd2 700ms".to_owned()));
    }

    #[test]
    fn a_commit_that_was_running_before_the_fsync_says_so() {
        let commits = log(&[commit(5, 100, 900)]);
        let ctx = waited_for(&commits, 300 * MS, 905 * MS).expect("a commit");
        assert!(ctx.commit_began_before);
        assert!((ctx.wait_ms - 600.0).abs() < 1e-9);
    }

    #[test]
    fn commits_outside_the_fsync_are_not_its() {
        let commits = log(&[commit(1, 0, 100), commit(2, 2000, 2100)]);
        assert_eq!(waited_for(&commits, 200 * MS, 1900 * MS), None);
        assert_eq!(waited_for(&VecDeque::new(), 0, 1), None);
    }

    #[test]
    fn only_fsyncs_on_the_commits_device_are_explained() {
        let mut view = JournalView::new();
        view.feed().push(commit(1, 100, 200));
        let mut fsync = stall(true, 50 * MS, 250 * MS);
        assert!(view.context(&fsync).is_some());
        fsync.dev.1 = 4;
        assert_eq!(view.context(&fsync), None, "another device");
        let write = stall(false, 50 * MS, 250 * MS);
        assert_eq!(view.context(&write), None, "not an fsync");
    }

    #[test]
    fn the_oldest_commit_goes_first() {
        let feed = JournalFeed::default();
        for tid in 0..(COMMITS_PER_JOURNAL as u32 + 5) {
            feed.push(commit(tid, u64::from(tid), u64::from(tid) + 1));
        }
        let log = feed.0.lock().expect("lock");
        let commits = &log[&(7, 3)];
        assert_eq!(commits.len(), COMMITS_PER_JOURNAL);
        assert_eq!(commits.front().map(|c| c.tid), Some(5));
    }
}
