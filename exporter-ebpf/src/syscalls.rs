//! The in-flight halves of read/write/open timing shared by tracepoint mode's programs
//! (`begin`, `end`), and programs on the two generic syscall tracepoints
//! (`raw_syscalls:sys_enter`/`sys_exit`), BTF-typed (`tp_btf`) or raw.
//!
//! An operation in flight lives in the thread's slot of an array indexed by thread id:
//! the verifier inlines an array lookup, where a hash map update and delete are two
//! helper calls with locking (half of what tracepoint mode used to add to a `pread`).
//!
//! The generic tracepoints avoid the perf trace buffer the per-syscall ones fill, but
//! run a program on every syscall of the node; measured (`bench-syscalls`), that costs
//! every other syscall more than it saves on reads and writes, so userspace attaches the
//! per-syscall ones unless told otherwise (`IOSTALL_SYSCALL_PROBES`). The generic
//! programs read arguments from `struct pt_regs` at x86-64's offsets, which userspace
//! checks in the kernel's BTF first.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use exporter_common::{OVERLAYFS_SUPER_MAGIC, fs_kind, op, stat, syscall_kind, syscall_probe};

use crate::{
    emit::emit,
    inflight::{Finished, InFlight, finish, finished_if_slow, in_flight},
    kernel::{magic_of_fd, read_at},
    maps::{INFLIGHT_IO, INFLIGHT_SLOTS, SYSCALL_KINDS, count, load_config, tgid_wanted},
};

/// x86-64 `struct pt_regs`: offset of `r10` (4th syscall argument), then in 8-byte steps
/// `r9 r8 ax cx dx si di orig_ax ip cs` (`dx`, `si`, `di`: 3rd, 2nd, 1st arguments).
const REGS_R10: usize = 56;
const R10: usize = 0;
const DX: usize = 5;
const DI: usize = 7;
const ORIG_AX: usize = 8;
const CS: usize = 10;
/// Registers read, from `r10` to `cs`.
const REGS_LEN: usize = 11;
/// The code segment of 64-bit user mode: a 32-bit (ia32) task's syscall numbers differ.
const USER_CS_64: u64 = 0x33;

/// The operation a syscall number measures, `NONE` for every other syscall.
#[inline(always)]
fn kind_of(id: u64) -> u32 {
    match SYSCALL_KINDS.get(id as u32) {
        Some(kind) if id < u64::from(syscall_kind::TABLE_LEN) => *kind,
        _ => syscall_kind::NONE,
    }
}

/// Starts timing syscall `kind` of thread `owner`; `regs` holds a copy of its registers
/// (`r10` … `cs`).
#[inline(always)]
fn enter(kind: u32, owner: Owner, regs: &[u64; REGS_LEN]) {
    if regs[CS] != USER_CS_64 {
        return;
    }
    let (op, fd, pos, count_) = match kind {
        syscall_kind::READ => (op::READ, regs[DI], -1, regs[DX]),
        syscall_kind::WRITE => (op::WRITE, regs[DI], -1, regs[DX]),
        syscall_kind::PREAD => (op::READ, regs[DI], regs[R10] as i64, regs[DX]),
        syscall_kind::PWRITE => (op::WRITE, regs[DI], regs[R10] as i64, regs[DX]),
        syscall_kind::READV => (op::READ, regs[DI], -1, 0),
        syscall_kind::WRITEV => (op::WRITE, regs[DI], -1, 0),
        syscall_kind::PREADV => (op::READ, regs[DI], regs[R10] as i64, 0),
        syscall_kind::PWRITEV => (op::WRITE, regs[DI], regs[R10] as i64, 0),
        _ => (op::OPEN, 0, -1, 0),
    };
    begin(owner, op, fd, pos, count_);
}

/// Whose an in-flight slot is (`key`), and which slot is theirs (`index`).
#[derive(Clone, Copy)]
pub struct Owner {
    key: u64,
    index: u32,
}

impl Owner {
    /// The current thread, by id (a helper call): what the per-syscall tracepoints
    /// have. Their context's first word names no thread: since 6.x it points at a
    /// per-CPU copy of the registers, not the thread's own.
    #[inline(always)]
    pub fn current_thread() -> Self {
        let tid = bpf_get_current_pid_tgid() as u32;
        Self {
            key: u64::from(tid),
            index: tid & load_config!(slots_mask),
        }
    }

    /// The thread whose `struct pt_regs` is at `regs` (the raw generic tracepoints'
    /// first argument). A thread's registers are saved at the top of its own kernel
    /// stack, so the address names the thread while it is in a syscall, and costs no
    /// helper call. Stacks are 16 KiB-aligned: the bits below say nothing. (The
    /// BTF-typed programs cannot: there the address is a typed pointer, which the
    /// verifier neither lets be shifted nor stored.)
    #[inline(always)]
    fn of_regs(regs: u64) -> Self {
        Self {
            key: regs,
            index: (regs >> 14) as u32 & load_config!(slots_mask),
        }
    }
}

/// Whether `--pid` leaves the current process out. Without `--pid` the verifier prunes
/// the helper call (the filter is a read-only global): iostall's own operations are then
/// left out at the end, only if slow (`finished_if_slow`).
#[inline(always)]
fn other_process() -> bool {
    load_config!(filter_tgid) != 0 && !tgid_wanted((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// Starts timing a read/write (of `fd`) or open of thread `owner`: the enter half
/// shared with the per-syscall tracepoints.
#[inline(always)]
pub fn begin(owner: Owner, op: u32, fd: u64, pos: i64, count_: u64) {
    if other_process() {
        return;
    }
    let probe = load_config!(syscall_probe);
    if probe & syscall_probe::ENTER_FILTER != 0 && op != op::OPEN && !on_traced_fs(fd) {
        return;
    }
    let value = in_flight(op, fd, pos, count_, 0);
    if probe & syscall_probe::HASH != 0 {
        if INFLIGHT_IO
            .insert(bpf_get_current_pid_tgid() as u32, value, 0)
            .is_err()
        {
            count(stat::INFLIGHT_FULL);
        }
    } else if let Some(slot) = INFLIGHT_SLOTS.get_ptr_mut(owner.index) {
        // SAFETY: an array slot, shared only by threads whose owners fall on the same
        // index: one that finds another's operation in it keeps its own in the hash map
        // instead of overwriting it.
        unsafe {
            if (*slot).started.start_ns != 0 && (*slot).owner != owner.key {
                spill(value);
            } else {
                (*slot).owner = owner.key;
                (*slot).started = value;
            }
        }
    }
}

/// Keeps `value` (the current thread's operation, whose slot another thread's operation
/// holds) in `INFLIGHT_IO` by thread id, where `end` looks when the slot is not the
/// thread's.
#[inline(always)]
fn spill(value: InFlight) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if INFLIGHT_IO.insert(tid, value, 0).is_err() {
        count(stat::INFLIGHT_FULL);
    } else {
        count(stat::INFLIGHT_SHARED_SLOT);
    }
}

/// Whether `fd` is a file of a filesystem of `--fs`, or an overlayfs one that may be on
/// one below (the enter-side filter, see `syscall_probe`; `emit` follows overlay files):
/// one mask test whatever the number of filesystems.
#[inline(always)]
fn on_traced_fs(fd: u64) -> bool {
    magic_of_fd(fd)
        .is_none_or(|m| m == OVERLAYFS_SUPER_MAGIC || fs_kind::wanted(m, load_config!(fs_mask)))
}

/// Ends thread `owner`'s read/write/open; `Some` if it crossed the threshold. The exit
/// half shared with the per-syscall tracepoints.
#[inline(always)]
pub fn end(owner: Owner) -> Option<Finished> {
    if load_config!(syscall_probe) & syscall_probe::HASH != 0 {
        return finish(&INFLIGHT_IO);
    }
    // Other processes (`--pid`) never started one: they stop here, before the slot.
    if other_process() {
        return None;
    }
    let slot = INFLIGHT_SLOTS.get_ptr_mut(owner.index)?;
    // SAFETY: as in `begin`; the value is copied out, then the slot is marked empty.
    let started = unsafe {
        if (*slot).owner == owner.key && (*slot).started.start_ns != 0 {
            let started = (*slot).started;
            (*slot).started.start_ns = 0;
            started
        } else {
            // Not in its slot: kept in the hash map if the slot was taken at its start
            // (else never started: an enter filtered, or before attach).
            unspill()?
        }
    };
    finished_if_slow(started)
}

/// Takes the current thread's operation out of `INFLIGHT_IO`, if `begin` kept it there.
#[inline(always)]
fn unspill() -> Option<InFlight> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let started = unsafe { *INFLIGHT_IO.get(tid)? };
    let _ = INFLIGHT_IO.remove(tid);
    Some(started)
}

/// `sys_enter(struct pt_regs *regs, long id)`, BTF-typed: `regs` is read directly.
#[btf_tracepoint(function = "sys_enter")]
pub fn btf_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    let kind = kind_of(id);
    if kind == syscall_kind::NONE {
        return 0;
    }
    let regs: *const u64 = ctx.arg(0);
    let mut copy = [0u64; REGS_LEN];
    for (i, r) in copy.iter_mut().enumerate() {
        // SAFETY: a BTF-typed pointer to this syscall's `pt_regs`; the verifier checks
        // each load against the struct's layout.
        *r = unsafe { *regs.add(REGS_R10 / 8 + i) };
    }
    enter(kind, Owner::current_thread(), &copy);
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`, BTF-typed.
#[btf_tracepoint(function = "sys_exit")]
pub fn btf_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: as in `btf_sys_enter`.
    let id = unsafe { *regs.add(REGS_R10 / 8 + ORIG_AX) };
    if kind_of(id) == syscall_kind::NONE {
        return 0;
    }
    if let Some(done) = end(Owner::current_thread()) {
        let ret: i64 = ctx.arg(1);
        emit(&done, ret);
    }
    0
}

/// `sys_enter` as a raw tracepoint: `regs` is read with a helper.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    let kind = kind_of(id);
    if kind == syscall_kind::NONE {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel fails instead of faulting.
    if let Ok(copy) =
        unsafe { bpf_probe_read_kernel((regs + REGS_R10 as u64) as *const [u64; REGS_LEN]) }
    {
        enter(kind, Owner::of_regs(regs), &copy);
    }
    0
}

/// `sys_exit` as a raw tracepoint.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let offset = (REGS_R10 + ORIG_AX * 8) as u32;
    let Some(id) = read_at::<u64>(regs, offset) else {
        return 0;
    };
    if kind_of(id) == syscall_kind::NONE {
        return 0;
    }
    if let Some(done) = end(Owner::of_regs(regs)) {
        let ret: i64 = ctx.arg(1);
        emit(&done, ret);
    }
    0
}
