//! Maps and the load-time global shared by every program.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use exporter_common::{CONFIG_LEN, IoEvent, LoadConfig, stat};

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
    /// `jiffies` at start: the exit's cheap pre-check (see `finished_if_slow`).
    pub start_jiffies: u64,
}

/// Bits of [`InFlight::flags`].
pub mod target_flags {
    /// `target` is a `struct file *`, not an fd.
    pub const IS_FILE: u32 = 1 << 0;
    /// The fsync is a `datasync` one.
    pub const DATASYNC: u32 = 1 << 1;
}

/// Settings fixed at load time; userspace overwrites it with `EbpfLoader::set_global`.
#[unsafe(no_mangle)]
pub static LOAD_CONFIG: LoadConfig = LoadConfig::DEFAULT;

/// Lifecycle records (cgroup mkdir/rmdir, exec/exit, OOM kills), to userspace: apart
/// from `EVENTS` so a burst of slow IO never costs a lifecycle record, nor the reverse.
/// 256 KiB holds ~700 of the largest record.
#[map]
pub static LIFECYCLE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// cgroup v2 ids of container cgroups, filled by userspace (startup scan, mkdir events):
/// exec and exit are reported only for processes in these.
#[map]
pub static WATCHED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

/// Container runtime daemons by `comm`, whose exec and exit are reported wherever they
/// run; values are `exporter_common::watch` bits. Filled by userspace at load.
#[map]
pub static DAEMON_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(64, 0);

/// Slow operations, to userspace. 4 MiB holds ~7,000 events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Read/write/open operations in flight, by thread id: all of them with
/// `syscall_probe::HASH`, else those whose `INFLIGHT_SLOTS` slot was taken.
#[map]
pub static INFLIGHT_IO: HashMap<u32, InFlight> = HashMap::with_max_entries(32768, 0);

/// A thread's read/write/open in flight: `owner` says whose it is (two threads may share
/// a slot: the later one is kept in `INFLIGHT_IO`), `started.start_ns == 0` that it is
/// empty. The owner is the thread id on the per-syscall tracepoints, and the address of
/// the thread's `struct pt_regs` on the generic ones, where it comes without a helper
/// call (see `syscalls::Owner`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    pub owner: u64,
    pub started: InFlight,
}

/// In-flight read/write/open operations, indexed by `syscalls::Owner`: an array lookup
/// is inlined by the verifier, where a hash update and delete are two helper calls with
/// locking. Userspace sizes it from `pid_max` before load.
#[map]
pub static INFLIGHT_SLOTS: Array<Slot> = Array::with_max_entries(65536, 0);

/// `exporter_common::syscall_kind` of each syscall number, filled by userspace.
#[map]
pub static SYSCALL_KINDS: Array<u32> =
    Array::with_max_entries(exporter_common::syscall_kind::TABLE_LEN, 0);

/// fsyncs in flight, by thread id (apart from `INFLIGHT_IO` because an `O_SYNC` write
/// runs an fsync inside itself).
#[map]
pub static INFLIGHT_SYNC: HashMap<u32, InFlight> = HashMap::with_max_entries(32768, 0);

/// Run-time settings userspace may change while attached (the threshold).
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_LEN, 0);

/// Counters, one slot per `exporter_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds one to a counter of `STATS`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// Reads a field of `LOAD_CONFIG` so the compiler cannot fold the build-time default.
macro_rules! load_config {
    ($($field:tt)+) => {
        {
            // SAFETY: a read of a plain integer in a read-only global.
            #[allow(unused_unsafe)]
            let value = unsafe { core::ptr::read_volatile(&$crate::maps::LOAD_CONFIG.$($field)+) };
            value
        }
    };
}
pub(crate) use load_config;

/// Whether a process is one iostall traces (the `--pid` filter, never iostall itself).
#[inline(always)]
pub fn tgid_wanted(tgid: u32) -> bool {
    let filter = load_config!(filter_tgid);
    if filter != 0 && filter != tgid {
        return false;
    }
    tgid != load_config!(self_tgid)
}

/// Whether a thread named `comm` is one iostall reports (the `--comm` filter). Asked
/// only once an operation crossed the threshold: that is enough to keep other
/// processes' slow IO out of the ring buffer, and costs nothing on the fast path.
#[inline(always)]
pub fn comm_wanted(comm: &[u8; 16]) -> bool {
    let filter = load_config!(filter_comm);
    if filter[0] == 0 {
        return true;
    }
    // Two 8-byte compares instead of a 16-step loop the verifier would walk.
    // SAFETY: [u8; 16] and [u64; 2] have the same size; any bit pattern is valid.
    let (a, b) = unsafe {
        (
            core::mem::transmute::<[u8; 16], [u64; 2]>(filter),
            core::mem::transmute::<[u8; 16], [u64; 2]>(*comm),
        )
    };
    a == b
}

/// Current threshold in nanoseconds (0 = every operation).
#[inline(always)]
pub fn threshold_ns() -> u64 {
    match CONFIG.get(exporter_common::CONFIG_THRESHOLD_NS) {
        Some(v) => *v,
        None => 0,
    }
}

/// The exit's jiffies pre-check (`CONFIG_FAST_JIFFIES`; 0 = off).
#[inline(always)]
pub fn fast_jiffies() -> u64 {
    match CONFIG.get(exporter_common::CONFIG_FAST_JIFFIES) {
        Some(v) => *v,
        None => 0,
    }
}

/// Size check kept here so a change to `IoEvent` that breaks the ring buffer fails the build.
const _: () = assert!(core::mem::size_of::<IoEvent>() < 4096);
