//! Kernel-side lifecycle signals on plain tracepoints: what runtimes cannot report about
//! themselves (a watchdog killing containerd) or report late (a container's exit code,
//! the OOM killer's victim).
//!
//! Field offsets in the tracepoint records come from tracefs at load time
//! (`LOAD_CONFIG.tracepoints`) and are read with `bpf_probe_read_kernel`, so a field a
//! kernel lacks is skipped instead of read at a wrong offset.
//!
//! Cost: `sched_process_exit` runs for every thread exit, `sched_process_exec` for every
//! exec. Both return after one read and at most two hash lookups unless the process is
//! in a watched cgroup or is a runtime daemon.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use exporter_common::{
    CgroupEvent, EventHeader, ExecEvent, ExitEvent, KernelOffsets, OomEvent, event_kind, stat,
    watch,
};

use crate::{
    kernel::{current_mntns, read_at},
    maps::{DAEMON_COMMS, LIFECYCLE_EVENTS, WATCHED_CGROUPS, count, load_config},
};

/// Reads a `T` at `offset` into the tracepoint record; `None` when the field is unknown.
#[inline(always)]
pub(crate) fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == KernelOffsets::UNKNOWN {
        return None;
    }
    let at = ctx.as_ptr() as u64 + offset as u64;
    // SAFETY: bpf_probe_read_kernel tolerates any address; it fails instead of faulting.
    unsafe { bpf_probe_read_kernel(at as *const T).ok() }
}

/// Copies the string a `__data_loc` field points at into `out` (empty when unknown).
#[inline(always)]
fn data_loc_str<const N: usize>(ctx: &TracePointContext, offset: u32, out: &mut [u8; N]) {
    out[0] = 0;
    if let Some(loc) = field::<u32>(ctx, offset) {
        let at = ctx.as_ptr() as u64 + (loc & 0xffff) as u64;
        // SAFETY: as above; the helper NUL-terminates within `out`.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, out) };
    }
}

/// Fills the common header for the current task.
#[inline(always)]
pub(crate) fn header(kind: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        mntns: current_mntns(),
        // SAFETY: helpers without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// `cgroup:cgroup_mkdir`.
#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    cgroup_event(&ctx, event_kind::CGROUP_MKDIR);
    0
}

/// `cgroup:cgroup_rmdir`.
#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    cgroup_event(&ctx, event_kind::CGROUP_RMDIR);
    0
}

#[inline(always)]
fn cgroup_event(ctx: &TracePointContext, kind: u32) {
    // Only the unified hierarchy (id 0): its ids are the ones `bpf_get_current_cgroup_id`
    // returns; v1 hierarchies mirror the same paths on hybrid hosts.
    let Some(root) = field::<i32>(ctx, load_config!(tracepoints.cgroup_root)) else {
        return;
    };
    if root != 0 {
        return;
    }
    let Some(id) = field::<u64>(ctx, load_config!(tracepoints.cgroup_id)) else {
        return;
    };
    let Some(mut entry) = LIFECYCLE_EVENTS.reserve::<CgroupEvent>(0) else {
        count(stat::LIFECYCLE_DROPS);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record of `CgroupEvent`'s size.
    unsafe {
        (*ev).header = header(kind);
        (*ev).id = id;
        (*ev).level =
            field::<i32>(ctx, load_config!(tracepoints.cgroup_level)).unwrap_or(-1) as u32;
        (*ev).root = root as u32;
        data_loc_str(ctx, load_config!(tracepoints.cgroup_path), &mut (*ev).path);
    }
    entry.submit(0);
    count(stat::LIFECYCLE_EVENTS);
}

/// Why the current process is reported: its cgroup is watched, or its comm is a daemon's.
#[inline(always)]
fn watched(cgroup_id: u64, comm: &[u8; 16]) -> u32 {
    // SAFETY: the value is only read, and copied at once.
    if unsafe { WATCHED_CGROUPS.get(cgroup_id) }.is_some() {
        return watch::CGROUP;
    }
    // SAFETY: as above.
    match unsafe { DAEMON_COMMS.get(comm) } {
        Some(bits) => *bits,
        None => 0,
    }
}

/// `sched:sched_process_exec`: after the new program is in place (comm already updated).
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // Shims start with every container: only their abnormal exits are news.
    let why = watched(cgroup_id, &comm) & (watch::CGROUP | watch::DAEMON);
    if why == 0 {
        return 0;
    }
    let Some(mut entry) = LIFECYCLE_EVENTS.reserve::<ExecEvent>(0) else {
        count(stat::LIFECYCLE_DROPS);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record of `ExecEvent`'s size.
    unsafe {
        (*ev).header = header(event_kind::EXEC);
        (*ev).why = why;
        (*ev).pad = 0;
        data_loc_str(
            &ctx,
            load_config!(tracepoints.exec_filename),
            &mut (*ev).filename,
        );
    }
    entry.submit(0);
    count(stat::LIFECYCLE_EVENTS);
    0
}

/// `sched:sched_process_exit`: runs for every exiting thread; only the one that ends
/// its thread group (`group_dead`, or the leader on kernels without that field) counts.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let group_dead = match field::<u8>(&ctx, load_config!(tracepoints.exit_group_dead)) {
        Some(dead) => dead != 0,
        None => {
            let pid_tgid = bpf_get_current_pid_tgid();
            (pid_tgid >> 32) as u32 == pid_tgid as u32
        }
    };
    if !group_dead {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let why = watched(cgroup_id, &comm);
    if why == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let exit_code: u32 =
        read_at::<i32>(task, load_config!(offsets.task_exit_code)).map_or(u32::MAX, |c| c as u32);
    if why & (watch::CGROUP | watch::DAEMON) == 0 && exit_code == 0 {
        // A shim (or monitor) that exited cleanly along with its container.
        return 0;
    }
    let Some(mut entry) = LIFECYCLE_EVENTS.reserve::<ExitEvent>(0) else {
        count(stat::LIFECYCLE_DROPS);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record of `ExitEvent`'s size.
    unsafe {
        (*ev).header = header(event_kind::EXIT);
        (*ev).exit_code = exit_code;
        (*ev).why = why;
    }
    entry.submit(0);
    count(stat::LIFECYCLE_EVENTS);
    0
}

/// `oom:mark_victim`: the OOM killer picked a victim (memory cgroup limit or global).
#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let Some(victim) = field::<i32>(&ctx, load_config!(tracepoints.oom_pid)) else {
        return 0;
    };
    let Some(mut entry) = LIFECYCLE_EVENTS.reserve::<OomEvent>(0) else {
        count(stat::LIFECYCLE_DROPS);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    let kb = |offset: u32| field::<u64>(&ctx, offset).unwrap_or(0);
    // SAFETY: `ev` points at a reserved, exclusively owned record of `OomEvent`'s size.
    unsafe {
        (*ev).header = header(event_kind::OOM);
        (*ev).victim_pid = victim as u32;
        (*ev).oom_score_adj = field::<i16>(&ctx, load_config!(tracepoints.oom_score_adj))
            .map_or(i16::MIN as i32, |v| v as i32);
        (*ev).total_vm_kb = kb(load_config!(tracepoints.oom_total_vm));
        (*ev).anon_rss_kb = kb(load_config!(tracepoints.oom_anon_rss));
        (*ev).file_rss_kb = kb(load_config!(tracepoints.oom_file_rss));
        (*ev).shmem_rss_kb = kb(load_config!(tracepoints.oom_shmem_rss));
        data_loc_str(
            &ctx,
            load_config!(tracepoints.oom_comm),
            &mut (*ev).victim_comm,
        );
    }
    entry.submit(0);
    count(stat::LIFECYCLE_EVENTS);
    0
}
