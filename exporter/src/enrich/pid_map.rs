//! pid → container, from `/proc/<pid>/cgroup`, and cgroup v2 id → cgroup path.
//!
//! Both are caches in front of the filesystem, bounded, and counted.
//!
//! - [`PidMap`]: a container process never leaves its container's cgroup, so a found
//!   container is kept until evicted (or [`PidMap::forget`] on exit). "No container" is
//!   kept for a short time only: `runc init` reads and writes before it moves itself into
//!   the container's cgroup.
//! - [`CgroupIdMap`]: the id `bpf_get_current_cgroup_id()` returns is the inode number of
//!   the cgroup's directory in the unified hierarchy (`/sys/fs/cgroup/unified` on hybrid
//!   hosts, `/sys/fs/cgroup` on pure v2 ones). An unknown id triggers a rescan of the
//!   tree, at most once per `rescan_interval`. The kernel's `cgroup_mkdir`/`rmdir`
//!   events keep it current without rescans through a [`CgroupFeed`] (new containers
//!   resolve at once; removed cgroups are forgotten after a grace, since their last IO
//!   may still be on its way).

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use thiserror::Error;

use super::cgroup_path::{ContainerRef, parse_cgroup_path, parse_proc_cgroup};

/// Default bound on cached pids.
pub const DEFAULT_PID_CAPACITY: usize = 16 * 1024;

/// How long "this pid is in no container" is believed, by default.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// Errors of the cgroup lookups.
#[derive(Debug, Error)]
pub enum PidMapError {
    /// No cgroup v2 hierarchy is mounted where one is looked for.
    #[error("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup")]
    NoUnifiedHierarchy,
    /// Reading the cgroup tree failed.
    #[error("failed to scan cgroup tree {path}: {source}")]
    Scan {
        /// The directory that could not be read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Counters of a [`PidMap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidMapStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that read `/proc/<pid>/cgroup`.
    pub reads: u64,
    /// Lookups of processes that were gone before they could be read (misses).
    pub misses: u64,
    /// Reads that failed for another reason.
    pub errors: u64,
    /// Entries dropped to stay within the capacity.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
struct PidEntry {
    container: Option<ContainerRef>,
    /// When a negative entry stops being believed.
    expires: Option<Instant>,
}

/// A bounded pid → [`ContainerRef`] cache over `/proc/<pid>/cgroup`.
///
/// Two generations approximate LRU: lookups fill the young map and promote from the old
/// one; when the young map reaches half the capacity, the old one is dropped and the
/// young one becomes old. At most `capacity` pids are held.
#[derive(Debug)]
pub struct PidMap {
    proc_root: PathBuf,
    capacity: usize,
    negative_ttl: Duration,
    young: HashMap<u32, PidEntry>,
    old: HashMap<u32, PidEntry>,
    stats: PidMapStats,
}

impl Default for PidMap {
    fn default() -> Self {
        Self::new("/proc", DEFAULT_PID_CAPACITY)
    }
}

impl PidMap {
    /// A map reading `<proc_root>/<pid>/cgroup`, holding at most `capacity` pids
    /// (at least 2).
    #[must_use]
    pub fn new(proc_root: impl Into<PathBuf>, capacity: usize) -> Self {
        Self {
            proc_root: proc_root.into(),
            capacity: capacity.max(2),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            young: HashMap::new(),
            old: HashMap::new(),
            stats: PidMapStats::default(),
        }
    }

    /// Sets how long a "no container" answer is kept (default 2 s).
    #[must_use]
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The container `pid` runs in, `None` for host processes and for processes that
    /// are gone (counted in [`PidMapStats::misses`]).
    pub fn resolve(&mut self, pid: u32) -> Option<ContainerRef> {
        let now = Instant::now();
        let cached = match self.young.get(&pid) {
            Some(entry) => Some(entry.clone()),
            None => self.old.remove(&pid),
        };
        if let Some(entry) = cached
            && entry.expires.is_none_or(|t| now < t)
        {
            self.stats.hits += 1;
            let container = entry.container.clone();
            self.insert(pid, entry);
            return container;
        }
        self.stats.reads += 1;
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let container = parse_proc_cgroup(&text);
                let expires = container.is_none().then(|| now + self.negative_ttl);
                self.insert(
                    pid,
                    PidEntry {
                        container: container.clone(),
                        expires,
                    },
                );
                container
            }
            Err(e) if is_gone(&e) => {
                self.stats.misses += 1;
                None
            }
            Err(_) => {
                self.stats.errors += 1;
                None
            }
        }
    }

    /// Drops what is known about `pid` (call on process exit: pids are reused).
    pub fn forget(&mut self, pid: u32) {
        self.young.remove(&pid);
        self.old.remove(&pid);
    }

    /// Pids currently cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> PidMapStats {
        self.stats
    }

    fn insert(&mut self, pid: u32, entry: PidEntry) {
        if !self.young.contains_key(&pid) && self.young.len() >= self.capacity / 2 {
            self.stats.evicted += self.old.len() as u64;
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(pid, entry);
    }
}

/// Whether a read error means the process is gone.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root of a cgroup2 mount.
#[must_use]
pub fn is_cgroup2_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into the zeroed struct we pass; the path is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    #[allow(clippy::unnecessary_cast)]
    let magic = buf.f_type as i64;
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

/// Where the unified hierarchy is mounted: `/sys/fs/cgroup/unified` (hybrid) or
/// `/sys/fs/cgroup` (pure v2).
pub fn find_unified_root() -> Result<PathBuf, PidMapError> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2_mount(p))
        .ok_or(PidMapError::NoUnifiedHierarchy)
}

/// Counters of a [`CgroupIdMap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupIdStats {
    /// Ids answered from the cache.
    pub hits: u64,
    /// Full walks of the tree.
    pub rescans: u64,
    /// Ids not found even after a rescan (or while rescans were rate-limited).
    pub misses: u64,
}

/// How long a removed cgroup's id still resolves, by default.
pub const DEFAULT_REMOVAL_GRACE: Duration = Duration::from_secs(60);

/// A change to the unified hierarchy, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupUpdate {
    /// A cgroup was made: its id and path (from the unified root, starting with `/`).
    Created {
        /// The cgroup id.
        id: u64,
        /// Its path.
        path: String,
    },
    /// A cgroup was removed.
    Removed {
        /// The cgroup id.
        id: u64,
    },
}

/// The sending side of a [`CgroupIdMap`]'s feed: never blocks, counts what it drops
/// (a dropped update only costs a rescan later).
#[derive(Debug, Clone)]
pub struct CgroupFeed {
    tx: SyncSender<CgroupUpdate>,
    dropped: Arc<AtomicU64>,
}

impl CgroupFeed {
    /// A feed of `capacity` updates (at least 1) and the receiver to give a
    /// [`CgroupIdMap`] with [`CgroupIdMap::set_feed`].
    #[must_use]
    pub fn channel(capacity: usize) -> (Self, Receiver<CgroupUpdate>) {
        let (tx, rx) = sync_channel(capacity.max(1));
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Hands `update` over without waiting; false when it was dropped (full or closed).
    pub fn send(&self, update: CgroupUpdate) -> bool {
        match self.tx.try_send(update) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Updates dropped so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// cgroup v2 id → cgroup path (relative to the unified root, starting with `/`).
#[derive(Debug)]
pub struct CgroupIdMap {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    rescan_interval: Duration,
    last_scan: Option<Instant>,
    stats: CgroupIdStats,
    feed: Option<Receiver<CgroupUpdate>>,
    removal_grace: Duration,
    /// Removed ids and when to forget them, oldest first.
    removed: VecDeque<(Instant, u64)>,
}

impl CgroupIdMap {
    /// A map over the unified hierarchy mounted at `root`; the tree is walked on the
    /// first lookup.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            by_id: HashMap::new(),
            rescan_interval: Duration::from_secs(1),
            last_scan: None,
            stats: CgroupIdStats::default(),
            feed: None,
            removal_grace: DEFAULT_REMOVAL_GRACE,
            removed: VecDeque::new(),
        }
    }

    /// Takes updates from the kernel's cgroup events (see [`CgroupFeed`]); they are
    /// applied at the next lookup.
    pub fn set_feed(&mut self, feed: Receiver<CgroupUpdate>) {
        self.feed = Some(feed);
    }

    /// Sets how long a removed cgroup's id still resolves (default 60 s).
    #[must_use]
    pub fn with_removal_grace(mut self, grace: Duration) -> Self {
        self.removal_grace = grace;
        self
    }

    /// Applies the updates waiting in the feed, and forgets removed ids past their grace.
    fn apply_updates(&mut self) {
        let now = Instant::now();
        if let Some(feed) = &self.feed {
            while let Ok(update) = feed.try_recv() {
                match update {
                    CgroupUpdate::Created { id, path } => {
                        self.by_id.insert(id, path);
                    }
                    CgroupUpdate::Removed { id } => {
                        self.removed.push_back((now + self.removal_grace, id));
                    }
                }
            }
        }
        while let Some(&(when, id)) = self.removed.front() {
            if when > now {
                break;
            }
            self.removed.pop_front();
            self.by_id.remove(&id);
        }
    }

    /// Applies waiting updates and forgets removed ids past their grace without a
    /// lookup: the sink thread calls it every second, so the feed drains (and the map
    /// shrinks) when no record comes.
    pub fn maintain(&mut self) {
        self.apply_updates();
    }

    /// Ids known now (removed ones still in their grace included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no id is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A map over this host's unified hierarchy ([`find_unified_root`]).
    pub fn discover() -> Result<Self, PidMapError> {
        find_unified_root().map(Self::new)
    }

    /// Sets the least time between two rescans caused by unknown ids (default 1 s).
    #[must_use]
    pub fn with_rescan_interval(mut self, interval: Duration) -> Self {
        self.rescan_interval = interval;
        self
    }

    /// The unified hierarchy's mount point.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of the cgroup with this id (`/kubepods/…`), rescanning the tree when the
    /// id is unknown and the last scan is old enough. Scan errors count as misses.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        self.apply_updates();
        if let Some(path) = self.by_id.get(&id) {
            self.stats.hits += 1;
            return Some(path.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.rescan_interval);
        if due
            && self.rescan().is_ok()
            && let Some(path) = self.by_id.get(&id)
        {
            return Some(path.clone());
        }
        self.stats.misses += 1;
        None
    }

    /// The container the cgroup with this id names.
    pub fn resolve_container(&mut self, id: u64) -> Option<ContainerRef> {
        self.resolve(id).and_then(|p| parse_cgroup_path(&p))
    }

    /// Walks the whole tree again, replacing the cache.
    pub fn rescan(&mut self) -> Result<usize, PidMapError> {
        self.last_scan = Some(Instant::now());
        self.stats.rescans += 1;
        let by_id = scan_tree(&self.root)?;
        let n = by_id.len();
        self.by_id = by_id;
        Ok(n)
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> CgroupIdStats {
        self.stats
    }
}

/// Every cgroup of the unified hierarchy mounted at `root`: id → path (`/` for the root).
pub fn scan_tree(root: &Path) -> Result<HashMap<u64, String>, PidMapError> {
    let mut by_id = HashMap::new();
    let root_meta = fs::metadata(root).map_err(|source| PidMapError::Scan {
        path: root.to_owned(),
        source,
    })?;
    by_id.insert(root_meta.ino(), "/".to_owned());
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A cgroup removed while walking: skip it, not the walk.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PidMapError::Scan { path: dir, source }),
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if !file_type.is_dir() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            by_id.insert(meta.ino(), child.clone());
            stack.push((entry.path(), child));
        }
    }
    Ok(by_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn fake_proc(pids: &[(u32, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (pid, text) in pids {
            let d = dir.path().join(pid.to_string());
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("cgroup"), text).expect("write");
        }
        dir
    }

    #[test]
    fn resolves_caches_and_counts_gone_processes() {
        let uid = "8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8";
        let container = format!("7:blkio:/kubepods/besteffort/pod{uid}/{ID}\n0::/\n");
        let proc_dir = fake_proc(&[(10, &container), (11, "0::/system.slice/x.service\n")]);
        let mut map = PidMap::new(proc_dir.path(), 16);
        let found = map.resolve(10).expect("container");
        assert_eq!(found.id, ID);
        assert_eq!(found.pod_uid.as_deref(), Some(uid));
        // Cached: still answered after the file is gone.
        fs::remove_dir_all(proc_dir.path().join("10")).expect("rm");
        assert_eq!(map.resolve(10).map(|c| c.id), Some(ID.to_owned()));
        assert_eq!(map.resolve(11), None);
        assert_eq!(map.resolve(99), None);
        let stats = map.stats();
        assert_eq!(stats.hits, 1);
        assert_eq!(stats.reads, 3);
        assert_eq!(stats.misses, 1);
        map.forget(10);
        assert_eq!(map.resolve(10), None);
        assert_eq!(map.stats().misses, 2);
    }

    #[test]
    fn negative_answers_expire() {
        let proc_dir = fake_proc(&[(5, "0::/user.slice\n")]);
        let mut map = PidMap::new(proc_dir.path(), 16).with_negative_ttl(Duration::ZERO);
        assert_eq!(map.resolve(5), None);
        // The process moved into a container's cgroup (as `runc init` does).
        fs::write(
            proc_dir.path().join("5/cgroup"),
            format!("0::/k8s.io/{ID}\n"),
        )
        .expect("w");
        assert_eq!(map.resolve(5).map(|c| c.id), Some(ID.to_owned()));
    }

    #[test]
    fn stays_within_capacity() {
        let pids: Vec<(u32, String)> = (1..=100)
            .map(|p| (p, format!("0::/docker/{ID}\n")))
            .collect();
        let refs: Vec<(u32, &str)> = pids.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let proc_dir = fake_proc(&refs);
        let mut map = PidMap::new(proc_dir.path(), 10);
        for pid in 1..=100 {
            assert!(map.resolve(pid).is_some());
            assert!(map.len() <= 10, "len {}", map.len());
        }
        assert!(map.stats().evicted > 0);
        // The most recent pid is still cached.
        let reads = map.stats().reads;
        assert!(map.resolve(100).is_some());
        assert_eq!(map.stats().reads, reads);
    }

    #[test]
    fn cgroup_ids_from_a_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        let leaf = root.path().join(format!("kubepods/besteffort/pod1/{ID}"));
        fs::create_dir_all(&leaf).expect("mkdir");
        let ino = fs::metadata(&leaf).expect("stat").ino();
        let mut map = CgroupIdMap::new(root.path()).with_rescan_interval(Duration::ZERO);
        assert_eq!(
            map.resolve(ino).as_deref(),
            Some(format!("/kubepods/besteffort/pod1/{ID}").as_str())
        );
        assert_eq!(
            map.resolve_container(ino).map(|c| c.id),
            Some(ID.to_owned())
        );
        let root_ino = fs::metadata(root.path()).expect("stat").ino();
        assert_eq!(map.resolve(root_ino).as_deref(), Some("/"));
        assert_eq!(map.resolve(u64::MAX), None);
        assert_eq!(map.stats().misses, 1);
        // A cgroup made later is found by the rescan an unknown id triggers.
        let later = root.path().join("later");
        fs::create_dir(&later).expect("mkdir");
        let ino = fs::metadata(&later).expect("stat").ino();
        assert_eq!(map.resolve(ino).as_deref(), Some("/later"));
    }

    #[test]
    fn kernel_updates_resolve_without_rescans_and_removals_wait_a_grace() {
        let root = tempfile::tempdir().expect("tempdir");
        let (feed, rx) = CgroupFeed::channel(4);
        let mut map = CgroupIdMap::new(root.path())
            .with_rescan_interval(Duration::from_secs(3600))
            .with_removal_grace(Duration::ZERO);
        map.set_feed(rx);
        // The first lookup scans the (empty) tree; the id is not on disk at all.
        assert_eq!(map.resolve(4242), None);
        assert!(feed.send(CgroupUpdate::Created {
            id: 4242,
            path: format!("/kubepods/besteffort/pod8f3a2b1c-4d5e-6f70-8192-a3b4c5d6e7f8/{ID}"),
        }));
        assert_eq!(
            map.resolve_container(4242).map(|c| c.id),
            Some(ID.to_owned())
        );
        assert_eq!(map.stats().rescans, 1, "known from the feed, no rescan");
        assert!(feed.send(CgroupUpdate::Removed { id: 4242 }));
        assert_eq!(map.resolve(4242), None, "forgotten after a zero grace");
        for id in 0..10 {
            feed.send(CgroupUpdate::Removed { id });
        }
        assert!(feed.dropped() > 0, "a full feed drops and counts");
    }

    #[test]
    fn rescans_are_rate_limited() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut map = CgroupIdMap::new(root.path()).with_rescan_interval(Duration::from_secs(3600));
        assert_eq!(map.resolve(u64::MAX), None);
        assert_eq!(map.resolve(u64::MAX - 1), None);
        assert_eq!(map.stats().rescans, 1);
        assert_eq!(map.stats().misses, 2);
    }
}
