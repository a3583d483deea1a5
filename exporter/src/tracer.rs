//! Loading iostall's eBPF object into the kernel and attaching one family of programs
//! (see [`AttachMode`]); `auto` tries them cheapest first and keeps why each was refused.
use std::{fs, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use exporter_common::{
    CONFIG_FAST_JIFFIES, CONFIG_THRESHOLD_NS, JournalFields, KernelOffsets, LoadConfig,
    TracepointFields, stat, syscall_kind, syscall_probe, watch,
};

use crate::{
    btf_offsets,
    event::{AttachMode, FsKind, FsSet},
};

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/iostall-ebpf"));

/// Where tracefs is expected.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors while loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The binary was built with `AYA_BUILD_SKIP=1` and has no eBPF object.
    #[error(
        "this iostall binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild without it"
    )]
    NoObject,
    /// Kernel offsets could not be resolved.
    #[error(transparent)]
    Offsets(#[from] btf_offsets::OffsetError),
    /// The kernel refused the object (maps, BTF).
    #[error("failed to load the eBPF object into the kernel: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A map the object must have is missing or of the wrong type.
    #[error("eBPF object has no usable map {name}: {reason}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Setting the threshold or reading counters failed.
    #[error("failed to access map {name}: {source}")]
    MapAccess {
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The requested mode (or, for `auto`, every mode) could not attach.
    #[error("could not attach in {}", describe_refusals(.0))]
    Attach(Vec<Refusal>),
}

fn describe_refusals(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("{} mode ({})", r.mode, r.reason))
        .collect::<Vec<_>>()
        .join("; nor in ")
}

/// Why a mode could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The mode.
    pub mode: AttachMode,
    /// What the kernel (or the check before it) said.
    pub reason: String,
}

/// What the user asks for with `--attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachRequest {
    /// Try fentry, then kprobe, then tracepoint.
    #[default]
    Auto,
    /// Only fentry.
    Fentry,
    /// Only kprobe.
    Kprobe,
    /// Only tracepoint.
    Tracepoint,
}

impl AttachRequest {
    fn modes(self) -> &'static [AttachMode] {
        match self {
            Self::Auto => &AttachMode::ALL,
            Self::Fentry => &[AttachMode::Fentry],
            Self::Kprobe => &[AttachMode::Kprobe],
            Self::Tracepoint => &[AttachMode::Tracepoint],
        }
    }
}

/// How the tracepoint mode times read, write and open (fsync is
/// `ext4_sync_file_enter/exit` on ext4, the `fsync`/`fdatasync` syscalls on xfs and btrfs). Chosen by `IOSTALL_SYSCALL_PROBES` (`btf`, `raw`,
/// `per-syscall`), `IOSTALL_INFLIGHT` (`slots`, `hash`) and `IOSTALL_ENTER_FILTER=1`, so
/// that `bench-syscalls` can compare them; the default measured cheapest (README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallProbes {
    /// Which tracepoints.
    pub tracepoints: SyscallTracepoints,
    /// Bits of `exporter_common::syscall_probe` (generic tracepoints only).
    pub bits: u32,
    /// Whether an operation's end is first judged on jiffies (`IOSTALL_EXIT_PRECHECK=0`
    /// turns it off, so that `bench-syscalls` can measure what it saves).
    pub jiffies_precheck: bool,
}

/// The tracepoints read/write/open are timed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallTracepoints {
    /// `raw_syscalls:sys_enter/sys_exit` as BTF-typed tracepoints (`tp_btf`).
    Btf,
    /// The same two as raw tracepoints.
    Raw,
    /// One `syscalls:sys_enter_*`/`sys_exit_*` pair per syscall (the portable fallback).
    PerSyscall,
}

impl SyscallProbes {
    /// The choice made by the environment, else the default.
    #[must_use]
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        // Per-syscall tracepoints by default: on the generic ones every other syscall of
        // the node runs a program too (getppid 1.8× bare against 1.16×), for a few
        // nanoseconds less on a read (bench-syscalls, README).
        let tracepoints = match var("IOSTALL_SYSCALL_PROBES").as_str() {
            "raw" => SyscallTracepoints::Raw,
            "btf" => SyscallTracepoints::Btf,
            _ => SyscallTracepoints::PerSyscall,
        };
        let mut bits = 0;
        if var("IOSTALL_INFLIGHT") == "hash" {
            bits |= syscall_probe::HASH;
        }
        if var("IOSTALL_ENTER_FILTER") == "1" {
            bits |= syscall_probe::ENTER_FILTER;
        }
        Self {
            tracepoints,
            bits,
            jiffies_precheck: var("IOSTALL_EXIT_PRECHECK") != "0",
        }
    }
}

/// Settings fixed at load.
#[derive(Debug, Clone, Default)]
pub struct TracerOptions {
    /// Threshold in nanoseconds (0 = all operations).
    pub threshold_ns: u64,
    /// Only this process (tgid).
    pub filter_pid: Option<u32>,
    /// Only threads with this comm (at most 15 bytes; longer is cut as the kernel does).
    pub filter_comm: Option<String>,
    /// The filesystems traced (`--fs`; default: all).
    pub filesystems: FsSet,
    /// How read/write/open are timed in tracepoint mode; `None`: [`SyscallProbes::from_env`].
    pub syscall_probes: Option<SyscallProbes>,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Operations not timed because the in-flight map was full.
    pub inflight_full: u64,
    /// Events written to the ring buffer.
    pub events: u64,
    /// Slow operations on filesystems not traced (not in `--fs`, or pipes and sockets
    /// in tracepoint mode), filtered out.
    pub other_fs: u64,
    /// Slow operations whose file could not be resolved.
    pub file_unresolved: u64,
    /// Slow operations on FIFOs, sockets or devices of a traced filesystem, filtered out.
    pub not_regular: u64,
    /// Slow operations of threads other than `--comm`'s, filtered out.
    pub other_comm: u64,
    /// Lifecycle events lost because their ring buffer was full.
    pub lifecycle_drops: u64,
    /// Lifecycle events written to their ring buffer.
    pub lifecycle_events: u64,
    /// jbd2 commit records written to the ring buffer (`why.journal`).
    pub journal_commits: u64,
    /// jbd2 commit records lost because the ring buffer was full.
    pub journal_drops: u64,
    /// Operations whose thread's in-flight slot held another thread's operation
    /// (`pid_max` above the slot array's length), timed through the hash map instead.
    pub inflight_shared_slot: u64,
}

/// The loaded object; programs attach with [`Tracer::attach`].
pub struct Tracer {
    ebpf: Ebpf,
    /// The kernel's BTF as aya parses it, only while fentry programs are loaded
    /// against it: released once a mode is attached (tens of MiB).
    btf: Option<Btf>,
    /// BTF id of the first fentry target, to ask the kernel whether it takes tracing
    /// programs before aya parses the BTF ([`crate::fentry_probe`]).
    fentry_probe_target: Option<u32>,
    config: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    mode: Option<AttachMode>,
    /// The attached links, owned apart from their programs so that they detach all at
    /// once ([`detach_concurrently`]).
    links: Vec<Box<dyn Send>>,
    tracepoints: TracepointFields,
    journal: JournalFields,
    syscall_probes: SyscallProbes,
    /// The filesystems traced.
    filesystems: FsSet,
    /// Traced filesystems whose file operations the kernel's BTF lacks (built as a
    /// module, or not at all): fentry and kprobe modes leave them out.
    missing_functions: FsSet,
}

/// Gives freed heap pages back to the kernel: a BTF parse leaves many small blocks
/// that glibc's malloc would otherwise keep (musl's returns them itself).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Tracer {
    /// Resolves kernel offsets from BTF and loads the object (maps, not yet programs).
    pub fn load(options: &TracerOptions) -> Result<Self, TracerError> {
        if EBPF_OBJECT.is_empty() {
            return Err(TracerError::NoObject);
        }
        raise_memlock_limit();
        // The offsets' reader (a position index and a few names, not a parsed type
        // table) is dropped before anything else is loaded.
        let (offsets, fentry_probe_target, syscall_regs, missing_functions) = {
            let kernel_btf = btf_offsets::load_kernel_btf(FENTRY_PROGRAMS.iter().map(|(_, f)| *f))?;
            let target = btf_offsets::function_id(&kernel_btf, FENTRY_PROGRAMS[0].1);
            let regs = btf_offsets::check_syscall_regs(&kernel_btf);
            let missing = FsSet::from_kinds(
                FENTRY_PROGRAMS
                    .iter()
                    .filter(|(_, f)| btf_offsets::function_id(&kernel_btf, f).is_none())
                    .filter_map(|(_, f)| fs_of_function(f)),
            );
            (btf_offsets::resolve(&kernel_btf)?, target, regs, missing)
        };
        trim_heap();
        let mut syscall_probes = options
            .syscall_probes
            .unwrap_or_else(SyscallProbes::from_env);
        if syscall_probes.tracepoints != SyscallTracepoints::PerSyscall
            && let Err(why) = syscall_regs
        {
            tracing::debug!(%why, "per-syscall tracepoints instead of raw_syscalls");
            syscall_probes.tracepoints = SyscallTracepoints::PerSyscall;
        }
        let slots = inflight_slots();
        let load_config = LoadConfig {
            filter_tgid: options.filter_pid.unwrap_or(0),
            self_tgid: std::process::id(),
            filter_comm: comm_filter(options.filter_comm.as_deref()),
            syscall_probe: syscall_probes.bits,
            fs_mask: options.filesystems.mask(),
            slots_mask: slots - 1,
            offsets,
            tracepoints: lifecycle_fields(),
        };
        // No kernel BTF for the loader: the programs read kernel structures at the
        // offsets above (no CO-RE relocations), and aya's parse of the kernel's BTF was
        // the start-up peak (~25 MiB). Only fentry programs need it, parsed then.
        let journal = journal_fields();
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global("LOAD_CONFIG", &load_config, true)
            .override_global("JOURNAL_FIELDS", &journal, true)
            .map_max_entries("INFLIGHT_SLOTS", slots)
            .load(EBPF_OBJECT)
            .map_err(|e| TracerError::Load(Box::new(e)))?;
        let config = take_map(&mut ebpf, "CONFIG", Array::try_from)?;
        let stats = take_map(&mut ebpf, "STATS", PerCpuArray::try_from)?;
        let mut tracer = Self {
            ebpf,
            btf: None,
            fentry_probe_target,
            config,
            stats,
            mode: None,
            links: Vec::new(),
            tracepoints: load_config.tracepoints,
            journal,
            syscall_probes,
            filesystems: options.filesystems,
            missing_functions,
        };
        tracer.set_threshold_ns(options.threshold_ns)?;
        Ok(tracer)
    }

    /// Attaches the programs of the first mode of `request` the kernel accepts. Returns
    /// the mode and why the modes tried before it were refused.
    pub fn attach(
        &mut self,
        request: AttachRequest,
    ) -> Result<(AttachMode, Vec<Refusal>), TracerError> {
        let mut refusals = Vec::new();
        for &mode in request.modes() {
            let attached_before = self.links.len();
            match self.attach_mode(mode) {
                Ok(()) => {
                    self.mode = Some(mode);
                    self.release_btf();
                    return Ok((mode, refusals));
                }
                Err(reason) => {
                    self.links.truncate(attached_before);
                    self.detach_mode(mode);
                    refusals.push(Refusal { mode, reason });
                }
            }
        }
        Err(TracerError::Attach(refusals))
    }

    /// The attached mode.
    #[must_use]
    pub fn mode(&self) -> Option<AttachMode> {
        self.mode
    }

    /// Changes the threshold while attached (0 = every operation), and with it how many
    /// jiffies surely stay under it (the exit's pre-check, `exporter_common::fast_jiffies`).
    pub fn set_threshold_ns(&mut self, threshold_ns: u64) -> Result<(), TracerError> {
        let tick_ns = tick_ns();
        let fast_jiffies = if self.syscall_probes.jiffies_precheck {
            exporter_common::fast_jiffies(threshold_ns, tick_ns)
        } else {
            0
        };
        if fast_jiffies > 0 {
            tracing::info!(
                fast_jiffies,
                tick_ms = tick_ns as f64 / 1e6,
                "an operation that ends fewer than {fast_jiffies} ticks after it starts is \
                 under the threshold for sure: its end is not read from the precise clock"
            );
        } else {
            tracing::debug!(
                tick_ms = tick_ns as f64 / 1e6,
                "every operation's end is read from the precise clock (threshold within \
                 a tick and 5 ms, or IOSTALL_EXIT_PRECHECK=0)"
            );
        }
        let map_err = |source| TracerError::MapAccess {
            name: "CONFIG",
            source,
        };
        // Lowering the threshold: the pre-check first, so that no operation between the
        // two writes is judged fast against the old threshold's count; raising it: the
        // threshold first.
        let old = self.config.get(&CONFIG_THRESHOLD_NS, 0).map_err(map_err)?;
        let writes = if threshold_ns < old {
            [
                (CONFIG_FAST_JIFFIES, fast_jiffies),
                (CONFIG_THRESHOLD_NS, threshold_ns),
            ]
        } else {
            [
                (CONFIG_THRESHOLD_NS, threshold_ns),
                (CONFIG_FAST_JIFFIES, fast_jiffies),
            ]
        };
        for (index, value) in writes {
            self.config.set(index, value, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Reads the kernel-side counters.
    pub fn stats(&self) -> Result<KernelStats, TracerError> {
        let read = |index: u32| -> Result<u64, TracerError> {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(|source| TracerError::MapAccess {
                    name: "STATS",
                    source,
                })?;
            Ok(values.iter().sum())
        };
        Ok(KernelStats {
            ringbuf_drops: read(stat::RINGBUF_DROPS)?,
            inflight_full: read(stat::INFLIGHT_FULL)?,
            events: read(stat::EVENTS)?,
            other_fs: read(stat::OTHER_FS)?,
            file_unresolved: read(stat::FILE_UNRESOLVED)?,
            not_regular: read(stat::NOT_REGULAR)?,
            other_comm: read(stat::OTHER_COMM)?,
            lifecycle_drops: read(stat::LIFECYCLE_DROPS)?,
            lifecycle_events: read(stat::LIFECYCLE_EVENTS)?,
            journal_commits: read(stat::JOURNAL_COMMITS)?,
            journal_drops: read(stat::JOURNAL_DROPS)?,
            inflight_shared_slot: read(stat::INFLIGHT_SHARED_SLOT)?,
        })
    }

    /// Attaches the lifecycle programs (cgroup mkdir/rmdir, exec/exit, OOM kills) beside
    /// whichever IO mode is attached, and fills the runtime daemon table. They are
    /// extras: a tracepoint this kernel lacks or refuses costs that signal only. Returns
    /// one line per signal that could not be attached.
    pub fn attach_lifecycle(&mut self) -> Vec<String> {
        if let Err(e) = ensure_tracefs() {
            return vec![format!("every lifecycle signal: {e}")];
        }
        if let Err(e) = self.fill_daemon_comms() {
            tracing::debug!(error = %e, "runtime daemon table not filled");
        }
        let mut refused = Vec::new();
        let known = |offset: u32| offset != KernelOffsets::UNKNOWN;
        let fields = self.tracepoints;
        for (prog, category, tp) in LIFECYCLE_PROGRAMS {
            let usable = match *category {
                "cgroup" => known(fields.cgroup_root) && known(fields.cgroup_id),
                "oom" => known(fields.oom_pid),
                _ => true,
            };
            if !usable {
                refused.push(format!(
                    "{prog}: {category}/{tp} is missing or its record lacks the fields read"
                ));
                continue;
            }
            let links = &mut self.links;
            let attached = program_mut::<TracePoint>(&mut self.ebpf, prog).and_then(|program| {
                program.load().map_err(|e| explain(prog, &e))?;
                let link = program
                    .attach(category, tp)
                    .map_err(|e| explain(&format!("{prog} on {category}/{tp}"), &e))?;
                own(links, program.take_link(link), prog)
            });
            if let Err(reason) = attached {
                refused.push(reason);
            }
        }
        trim_heap();
        refused
    }

    /// Attaches the jbd2 commit programs ([`crate::why::journal`]): their records join
    /// the IO ring. An extra like the lifecycle signals: `Err` says why it is off.
    pub fn attach_journal(&mut self) -> Result<(), String> {
        ensure_tracefs()?;
        let known = |offset: u32| offset != KernelOffsets::UNKNOWN;
        let f = self.journal;
        if ![f.start_dev, f.start_tid, f.stats_dev, f.stats_tid]
            .into_iter()
            .all(known)
        {
            return Err(
                "jbd2/jbd2_start_commit or jbd2_run_stats is missing or its record \
                        lacks dev and tid (no ext4/jbd2 in this kernel?)"
                    .into(),
            );
        }
        // run_stats first: a commit start is never kept without its end attached.
        for prog in ["jbd2_run_stats", "jbd2_start_commit"] {
            let links = &mut self.links;
            program_mut::<TracePoint>(&mut self.ebpf, prog).and_then(|program| {
                program.load().map_err(|e| explain(prog, &e))?;
                let link = program
                    .attach("jbd2", prog)
                    .map_err(|e| explain(&format!("{prog} on jbd2/{prog}"), &e))?;
                own(links, program.take_link(link), prog)
            })?;
        }
        Ok(())
    }

    fn fill_daemon_comms(&mut self) -> Result<(), TracerError> {
        let map = self.ebpf.map_mut("DAEMON_COMMS").ok_or(TracerError::Map {
            name: "DAEMON_COMMS",
            reason: "not in the object".into(),
        })?;
        let mut comms: BpfHashMap<&mut MapData, [u8; 16], u32> = BpfHashMap::try_from(map)
            .map_err(|e| TracerError::Map {
                name: "DAEMON_COMMS",
                reason: e.to_string(),
            })?;
        for (comm, bits) in RUNTIME_DAEMONS {
            comms
                .insert(comm_key(comm), bits, 0)
                .map_err(|source| TracerError::MapAccess {
                    name: "DAEMON_COMMS",
                    source,
                })?;
        }
        Ok(())
    }

    /// Takes the ring buffer of lifecycle events (once).
    pub fn take_lifecycle_events(&mut self) -> Result<RingBuf<MapData>, TracerError> {
        take_map(&mut self.ebpf, "LIFECYCLE_EVENTS", RingBuf::try_from)
    }

    /// Takes the set of watched (container) cgroup ids (once).
    pub fn take_watched_cgroups(&mut self) -> Result<BpfHashMap<MapData, u64, u8>, TracerError> {
        take_map(&mut self.ebpf, "WATCHED_CGROUPS", BpfHashMap::try_from)
    }

    /// Takes the ring buffer of events (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, TracerError> {
        take_map(&mut self.ebpf, "EVENTS", RingBuf::try_from)
    }

    /// Parses the kernel's BTF for aya (fentry and BTF-typed tracepoint programs load
    /// against it), once.
    fn parse_aya_btf(&mut self) -> Result<(), String> {
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?);
        }
        Ok(())
    }

    /// Frees the kernel's BTF once nothing needs it: only fentry programs are loaded
    /// against it, and only before a mode is attached.
    fn release_btf(&mut self) {
        self.btf = None;
        // Program loads (verifier logs, relocated copies) leave freed blocks at the top
        // of the heap too: measured 32 MiB kept for 0.7 MiB in use until trimmed.
        trim_heap();
    }

    fn attach_mode(&mut self, mode: AttachMode) -> Result<(), String> {
        match mode {
            AttachMode::Fentry => self.attach_fentry(),
            AttachMode::Kprobe => self.attach_kprobe(),
            AttachMode::Tracepoint => self.attach_tracepoint(),
        }
    }

    fn attach_fentry(&mut self) -> Result<(), String> {
        if let Some(error) = self
            .fentry_probe_target
            .and_then(crate::fentry_probe::refused)
        {
            return Err(format!(
                "{}: the kernel refuses tracing programs: the BPF_PROG_LOAD syscall returned \
                 {error}",
                FENTRY_PROGRAMS[0].0
            ));
        }
        self.parse_aya_btf()?;
        let Some(btf) = self.btf.as_ref() else {
            return Err("kernel BTF unavailable".into());
        };
        let wanted = self.function_filesystems(AttachMode::Fentry);
        for (prog, function) in FENTRY_PROGRAMS {
            if !fs_of_function(function).is_some_and(|fs| wanted.contains(fs)) {
                continue;
            }
            let program: &mut FEntry = program_mut(&mut self.ebpf, prog)?;
            program.load(function, btf).map_err(|e| explain(prog, &e))?;
            let link = program.attach().map_err(|e| explain(prog, &e))?;
            own(&mut self.links, program.take_link(link), prog)?;
        }
        for (prog, function) in FEXIT_PROGRAMS {
            if !fs_of_function(function).is_some_and(|fs| wanted.contains(fs)) {
                continue;
            }
            let program: &mut FExit = program_mut(&mut self.ebpf, prog)?;
            program.load(function, btf).map_err(|e| explain(prog, &e))?;
            let link = program.attach().map_err(|e| explain(prog, &e))?;
            own(&mut self.links, program.take_link(link), prog)?;
        }
        Ok(())
    }

    /// The filesystems of `--fs` whose functions fentry and kprobe modes can attach to;
    /// says which they leave out (not in the kernel's BTF: a module, or not built).
    fn function_filesystems(&self, mode: AttachMode) -> FsSet {
        let wanted = FsSet::from_kinds(
            self.filesystems
                .iter()
                .filter(|fs| !self.missing_functions.contains(*fs)),
        );
        for fs in self
            .filesystems
            .iter()
            .filter(|fs| self.missing_functions.contains(*fs))
        {
            tracing::warn!(
                "{fs}'s file operations are not in the kernel's BTF (a module, or not \
                 built): {mode} mode does not trace {fs}; --attach tracepoint does"
            );
        }
        wanted
    }

    fn attach_kprobe(&mut self) -> Result<(), String> {
        // Load every program first: the verifier's verdict is worth reporting even on a
        // kernel that then cannot attach kprobes.
        for (prog, _) in KPROBE_PROGRAMS {
            let program: &mut KProbe = program_mut(&mut self.ebpf, prog)?;
            program.load().map_err(|e| explain(prog, &e))?;
        }
        if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            return Err(
                "programs load, but the kernel has no kprobe support (CONFIG_KPROBES is off)"
                    .into(),
            );
        }
        let wanted = self.function_filesystems(AttachMode::Kprobe);
        for (prog, functions) in KPROBE_PROGRAMS {
            let program: &mut KProbe = program_mut(&mut self.ebpf, prog)?;
            for function in *functions {
                if !fs_of_function(function).is_some_and(|fs| wanted.contains(fs)) {
                    continue;
                }
                let link = program.attach(function, 0).map_err(|e| explain(prog, &e))?;
                own(&mut self.links, program.take_link(link), prog)?;
            }
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self) -> Result<(), String> {
        ensure_tracefs()?;
        self.attach_syscalls()?;
        if self.filesystems.contains(FsKind::Ext4) {
            for (prog, tp) in [
                ("ext4_sync_file_exit", "ext4_sync_file_exit"),
                ("ext4_sync_file_enter", "ext4_sync_file_enter"),
            ] {
                let program: &mut RawTracePoint = program_mut(&mut self.ebpf, prog)?;
                program.load().map_err(|e| explain(prog, &e))?;
                let link = program.attach(tp).map_err(|e| explain(prog, &e))?;
                own(&mut self.links, program.take_link(link), prog)?;
            }
        }
        // xfs's and btrfs's fsync tracepoints have no exit: their fsyncs are timed on
        // the syscalls (see the eBPF side's `tracepoint.rs`), whichever way read/write/
        // open are (fsyncs are rare: the per-syscall tracepoints cost nothing else).
        if self.filesystems.contains(FsKind::Xfs) || self.filesystems.contains(FsKind::Btrfs) {
            self.attach_tracepoint_programs(FSYNC_SYSCALL_PROGRAMS)?;
        }
        Ok(())
    }

    /// Attaches the read/write/open programs: the generic syscall tracepoints, else (or
    /// if this kernel refuses them) the per-syscall ones.
    fn attach_syscalls(&mut self) -> Result<(), String> {
        let generic = match self.syscall_probes.tracepoints {
            SyscallTracepoints::PerSyscall => return self.attach_per_syscall(),
            SyscallTracepoints::Btf => self.attach_generic(true),
            SyscallTracepoints::Raw => self.attach_generic(false),
        };
        match generic {
            Ok(()) => {
                tracing::debug!(probes = ?self.syscall_probes, "read/write/open on raw_syscalls");
                Ok(())
            }
            Err(why) => {
                tracing::info!(%why, "raw_syscalls tracepoints refused; per-syscall ones instead");
                self.syscall_probes.tracepoints = SyscallTracepoints::PerSyscall;
                self.attach_per_syscall()
            }
        }
    }

    /// `raw_syscalls:sys_exit` then `sys_enter`, BTF-typed or raw.
    fn attach_generic(&mut self, btf: bool) -> Result<(), String> {
        self.fill_syscall_kinds()?;
        if btf {
            self.parse_aya_btf()?;
        }
        let attached_before = self.links.len();
        let result = (|| {
            for tp in ["sys_exit", "sys_enter"] {
                if btf {
                    let prog = format!("btf_{tp}");
                    let program: &mut BtfTracePoint = program_mut(&mut self.ebpf, &prog)?;
                    program
                        .load(tp, self.btf.as_ref().ok_or("kernel BTF unavailable")?)
                        .map_err(|e| explain(&prog, &e))?;
                    let link = program.attach().map_err(|e| explain(&prog, &e))?;
                    own(&mut self.links, program.take_link(link), &prog)?;
                } else {
                    let prog = format!("raw_{tp}");
                    let program: &mut RawTracePoint = program_mut(&mut self.ebpf, &prog)?;
                    program.load().map_err(|e| explain(&prog, &e))?;
                    let link = program.attach(tp).map_err(|e| explain(&prog, &e))?;
                    own(&mut self.links, program.take_link(link), &prog)?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.links.truncate(attached_before);
        }
        result
    }

    /// Fills `SYSCALL_KINDS` with this architecture's numbers of the measured syscalls.
    fn fill_syscall_kinds(&mut self) -> Result<(), String> {
        let map = self
            .ebpf
            .map_mut("SYSCALL_KINDS")
            .ok_or("eBPF object has no map SYSCALL_KINDS")?;
        let mut kinds: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|e| explain("SYSCALL_KINDS", &e))?;
        for (number, kind) in measured_syscalls() {
            let Ok(index) = u32::try_from(number) else {
                continue;
            };
            kinds
                .set(index, kind, 0)
                .map_err(|e| explain("SYSCALL_KINDS", &e))?;
        }
        Ok(())
    }

    fn attach_per_syscall(&mut self) -> Result<(), String> {
        self.attach_tracepoint_programs(SYSCALL_PROGRAMS)
    }

    /// Attaches syscall tracepoint programs (enter ones listed first).
    fn attach_tracepoint_programs(&mut self, programs: &[(&str, &[&str])]) -> Result<(), String> {
        check_syscall_layout()?;
        // Exits first, so no enter is recorded without its exit attached.
        for (prog, tracepoints) in programs.iter().rev() {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, prog)?;
            program.load().map_err(|e| explain(prog, &e))?;
            for tp in *tracepoints {
                let optional = OPTIONAL_SYSCALLS.iter().any(|o| tp.ends_with(o));
                if optional && !tracepoint_exists("syscalls", tp) {
                    tracing::debug!(tracepoint = tp, "not on this kernel, skipped");
                    continue;
                }
                let link = program
                    .attach("syscalls", tp)
                    .map_err(|e| explain(&format!("{prog} on syscalls/{tp}"), &e))?;
                own(&mut self.links, program.take_link(link), prog)?;
            }
        }
        Ok(())
    }

    /// Unloads (and so detaches) every program of a mode after a partial attach.
    fn detach_mode(&mut self, mode: AttachMode) {
        let names: Vec<&str> = match mode {
            AttachMode::Fentry => FENTRY_PROGRAMS
                .iter()
                .chain(FEXIT_PROGRAMS.iter())
                .map(|(p, _)| *p)
                .collect(),
            AttachMode::Kprobe => KPROBE_PROGRAMS.iter().map(|(p, _)| *p).collect(),
            AttachMode::Tracepoint => SYSCALL_PROGRAMS
                .iter()
                .chain(FSYNC_SYSCALL_PROGRAMS)
                .map(|(p, _)| *p)
                .chain(["ext4_sync_file_enter", "ext4_sync_file_exit"])
                .chain([
                    "btf_sys_enter",
                    "btf_sys_exit",
                    "raw_sys_enter",
                    "raw_sys_exit",
                ])
                .collect(),
        };
        for name in names {
            if let Some(program) = self.ebpf.program_mut(name) {
                let result = match program {
                    aya::programs::Program::FEntry(p) => p.unload(),
                    aya::programs::Program::FExit(p) => p.unload(),
                    aya::programs::Program::KProbe(p) => p.unload(),
                    aya::programs::Program::TracePoint(p) => p.unload(),
                    aya::programs::Program::RawTracePoint(p) => p.unload(),
                    aya::programs::Program::BtfTracePoint(p) => p.unload(),
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::debug!(program = name, error = %e, "unload after refused attach");
                }
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        detach_concurrently(std::mem::take(&mut self.links));
    }
}

/// Keeps an attached link (taken from its program) in `links`.
fn own<L: Send + 'static>(
    links: &mut Vec<Box<dyn Send>>,
    link: Result<L, ProgramError>,
    prog: &str,
) -> Result<(), String> {
    links.push(Box::new(link.map_err(|e| explain(prog, &e))?));
    Ok(())
}

/// Detaches `links` from several threads at once. Closing a tracepoint's perf event
/// waits for an RCU grace period (50–90 ms each, measured here), so detaching ~30 links
/// one after the other held every exit up by about 2 s; concurrent closes share grace
/// periods.
fn detach_concurrently(mut links: Vec<Box<dyn Send>>) {
    const THREADS: usize = 16;
    if links.len() <= 1 {
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let chunk: Vec<Box<dyn Send>> = links.drain(..per_thread.min(links.len())).collect();
            // A thread that cannot start leaves its links to be dropped here, in turn.
            let _ = std::thread::Builder::new()
                .name("iostall-detach".into())
                .spawn_scoped(scope, move || drop(chunk));
        }
    });
}

/// Lifecycle programs and the tracepoint (category, name) each attaches to.
const LIFECYCLE_PROGRAMS: &[(&str, &str, &str)] = &[
    ("cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    ("cgroup_rmdir", "cgroup", "cgroup_rmdir"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("mark_victim", "oom", "mark_victim"),
];

/// Container runtime daemons (by `comm`, 15 bytes at most) whose exits are reported
/// wherever they run: when a watchdog kills containerd, nobody else says so. Shims and
/// monitors exit with every container, so only their abnormal exits are.
pub const RUNTIME_DAEMONS: &[(&str, u32)] = &[
    ("containerd", watch::DAEMON),
    ("dockerd", watch::DAEMON),
    ("kubelet", watch::DAEMON),
    ("crio", watch::DAEMON),
    ("cri-dockerd", watch::DAEMON),
    // `containerd-shim-runc-v2` and the other v2 shims, cut to the comm's 15 bytes.
    ("containerd-shim", watch::DAEMON_ABNORMAL_EXIT),
    ("conmon", watch::DAEMON_ABNORMAL_EXIT),
];

/// A comm as the kernel stores it: NUL-padded to 16 bytes, cut at 15.
fn comm_key(comm: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = comm.len().min(15);
    key[..n].copy_from_slice(&comm.as_bytes()[..n]);
    key
}

/// Offsets of the lifecycle tracepoints' fields from tracefs; a tracepoint or field this
/// kernel lacks stays unknown (its program then skips the field, or never attaches).
fn lifecycle_fields() -> TracepointFields {
    use crate::tracefs_format::field_offset;
    let mut fields = TracepointFields::ALL_UNKNOWN;
    if ensure_tracefs().is_err() {
        return fields;
    }
    let format = |category: &str, tp: &str| {
        fs::read_to_string(Path::new(TRACEFS).join(format!("events/{category}/{tp}/format")))
            .unwrap_or_default()
    };
    let offset = |text: &str, name: &str| {
        field_offset(text, name)
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(KernelOffsets::UNKNOWN)
    };
    // mkdir and rmdir share one record layout (the `cgroup` event class).
    let cgroup = format("cgroup", "cgroup_mkdir");
    let rmdir = format("cgroup", "cgroup_rmdir");
    if cgroup.is_empty() || offset(&cgroup, "path") != offset(&rmdir, "path") {
        tracing::debug!("cgroup_mkdir and cgroup_rmdir records differ; cgroup events off");
    } else {
        fields.cgroup_root = offset(&cgroup, "root");
        fields.cgroup_level = offset(&cgroup, "level");
        fields.cgroup_id = offset(&cgroup, "id");
        fields.cgroup_path = offset(&cgroup, "path");
    }
    fields.exec_filename = offset(&format("sched", "sched_process_exec"), "filename");
    fields.exit_group_dead = offset(&format("sched", "sched_process_exit"), "group_dead");
    let oom = format("oom", "mark_victim");
    fields.oom_pid = offset(&oom, "pid");
    fields.oom_comm = offset(&oom, "comm");
    fields.oom_total_vm = offset(&oom, "total_vm");
    fields.oom_anon_rss = offset(&oom, "anon_rss");
    fields.oom_file_rss = offset(&oom, "file_rss");
    fields.oom_shmem_rss = offset(&oom, "shmem_rss");
    fields.oom_score_adj = offset(&oom, "oom_score_adj");
    fields
}

/// Offsets of the jbd2 tracepoints' fields from tracefs (unknown where absent).
fn journal_fields() -> JournalFields {
    use crate::tracefs_format::field_offset;
    let mut fields = JournalFields::ALL_UNKNOWN;
    if ensure_tracefs().is_err() {
        return fields;
    }
    let format = |tp: &str| {
        fs::read_to_string(Path::new(TRACEFS).join(format!("events/jbd2/{tp}/format")))
            .unwrap_or_default()
    };
    let offset = |text: &str, name: &str| {
        field_offset(text, name)
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(KernelOffsets::UNKNOWN)
    };
    let start = format("jbd2_start_commit");
    fields.start_dev = offset(&start, "dev");
    fields.start_sync = offset(&start, "sync_commit");
    fields.start_tid = offset(&start, "transaction");
    let stats = format("jbd2_run_stats");
    fields.stats_dev = offset(&stats, "dev");
    fields.stats_tid = offset(&stats, "tid");
    fields.stats_handle_count = offset(&stats, "handle_count");
    fields.stats_blocks = offset(&stats, "blocks");
    fields.stats_blocks_logged = offset(&stats, "blocks_logged");
    fields
}

/// The filesystem a file operation belongs to, by its name's prefix.
fn fs_of_function(function: &str) -> Option<FsKind> {
    FsKind::ALL.into_iter().find(|fs| {
        function
            .strip_prefix(fs.as_str())
            .is_some_and(|r| r.starts_with('_'))
    })
}

/// fentry programs and the function each attaches to: each filesystem's file operations,
/// as libbpf-tools' `fsslower` (ext4 first: its read is the probe of `fentry_probe`).
const FENTRY_PROGRAMS: &[(&str, &str)] = &[
    ("fentry_read", "ext4_file_read_iter"),
    ("fentry_write", "ext4_file_write_iter"),
    ("fentry_open", "ext4_file_open"),
    ("fentry_sync", "ext4_sync_file"),
    ("fentry_xfs_read", "xfs_file_read_iter"),
    ("fentry_xfs_write", "xfs_file_write_iter"),
    ("fentry_xfs_open", "xfs_file_open"),
    ("fentry_xfs_sync", "xfs_file_fsync"),
    ("fentry_btrfs_read", "btrfs_file_read_iter"),
    ("fentry_btrfs_write", "btrfs_file_write_iter"),
    ("fentry_btrfs_open", "btrfs_file_open"),
    ("fentry_btrfs_sync", "btrfs_sync_file"),
];
/// fexit programs, likewise.
const FEXIT_PROGRAMS: &[(&str, &str)] = &[
    ("fexit_read", "ext4_file_read_iter"),
    ("fexit_write", "ext4_file_write_iter"),
    ("fexit_open", "ext4_file_open"),
    ("fexit_sync", "ext4_sync_file"),
    ("fexit_xfs_read", "xfs_file_read_iter"),
    ("fexit_xfs_write", "xfs_file_write_iter"),
    ("fexit_xfs_open", "xfs_file_open"),
    ("fexit_xfs_sync", "xfs_file_fsync"),
    ("fexit_btrfs_read", "btrfs_file_read_iter"),
    ("fexit_btrfs_write", "btrfs_file_write_iter"),
    ("fexit_btrfs_open", "btrfs_file_open"),
    ("fexit_btrfs_sync", "btrfs_sync_file"),
];
/// kprobe/kretprobe programs and the functions each attaches to.
const KPROBE_PROGRAMS: &[(&str, &[&str])] = &[
    (
        "kretprobe_io",
        &[
            "ext4_file_read_iter",
            "ext4_file_write_iter",
            "ext4_file_open",
            "xfs_file_read_iter",
            "xfs_file_write_iter",
            "xfs_file_open",
            "btrfs_file_read_iter",
            "btrfs_file_write_iter",
            "btrfs_file_open",
        ],
    ),
    (
        "kretprobe_sync",
        &["ext4_sync_file", "xfs_file_fsync", "btrfs_sync_file"],
    ),
    (
        "kprobe_read",
        &[
            "ext4_file_read_iter",
            "xfs_file_read_iter",
            "btrfs_file_read_iter",
        ],
    ),
    (
        "kprobe_write",
        &[
            "ext4_file_write_iter",
            "xfs_file_write_iter",
            "btrfs_file_write_iter",
        ],
    ),
    (
        "kprobe_open",
        &["ext4_file_open", "xfs_file_open", "btrfs_file_open"],
    ),
    (
        "kprobe_sync",
        &["ext4_sync_file", "xfs_file_fsync", "btrfs_sync_file"],
    ),
];
/// xfs's and btrfs's fsync, timed on the syscalls (enter ones first).
const FSYNC_SYSCALL_PROGRAMS: &[(&str, &[&str])] = &[
    ("sys_enter_fsync", &["sys_enter_fsync"]),
    ("sys_enter_fdatasync", &["sys_enter_fdatasync"]),
    ("sys_exit_fsync", &["sys_exit_fsync", "sys_exit_fdatasync"]),
];
/// Syscall tracepoint programs (enter ones first) and the tracepoints each attaches to.
const SYSCALL_PROGRAMS: &[(&str, &[&str])] = &[
    ("sys_enter_read", &["sys_enter_read"]),
    ("sys_enter_write", &["sys_enter_write"]),
    ("sys_enter_pread", &["sys_enter_pread64"]),
    ("sys_enter_pwrite", &["sys_enter_pwrite64"]),
    ("sys_enter_readv", &["sys_enter_readv"]),
    ("sys_enter_writev", &["sys_enter_writev"]),
    (
        "sys_enter_preadv",
        &["sys_enter_preadv", "sys_enter_preadv2"],
    ),
    (
        "sys_enter_pwritev",
        &["sys_enter_pwritev", "sys_enter_pwritev2"],
    ),
    (
        "sys_enter_open",
        &[
            "sys_enter_open",
            "sys_enter_creat",
            "sys_enter_openat",
            "sys_enter_openat2",
        ],
    ),
    (
        "sys_exit_io",
        &[
            "sys_exit_read",
            "sys_exit_write",
            "sys_exit_pread64",
            "sys_exit_pwrite64",
            "sys_exit_readv",
            "sys_exit_writev",
            "sys_exit_preadv",
            "sys_exit_preadv2",
            "sys_exit_pwritev",
            "sys_exit_pwritev2",
            "sys_exit_open",
            "sys_exit_creat",
            "sys_exit_openat",
            "sys_exit_openat2",
        ],
    ),
];
/// Syscalls some architectures lack (arm64 has no `open`/`creat`); skipped when absent.
const OPTIONAL_SYSCALLS: &[&str] = &["_open", "_creat", "_openat2", "_preadv2", "_pwritev2"];

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("eBPF object has no program {name}"))?;
    program
        .try_into()
        .map_err(|e: ProgramError| explain(name, &e))
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, TracerError> {
    let map = ebpf.take_map(name).ok_or(TracerError::Map {
        name,
        reason: "not in the object".into(),
    })?;
    convert(map).map_err(|e| TracerError::Map {
        name,
        reason: e.to_string(),
    })
}

/// A program error with its whole cause chain (aya's top-level messages are terse).
fn explain(what: &str, err: &dyn std::error::Error) -> String {
    let mut out = format!("{what}: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Mounts tracefs if it is not mounted (as root this is what a user would do by hand).
pub fn ensure_tracefs() -> Result<(), String> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let source = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !Path::new(TRACEFS).join("events").is_dir() {
        return Err(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed ({}); \
             run `mount -t tracefs tracefs {TRACEFS}` as root",
            std::io::Error::last_os_error()
        ));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .is_dir()
}

/// Checks that syscall tracepoint records have the layout the programs read directly.
fn check_syscall_layout() -> Result<(), String> {
    use crate::tracefs_format::field_offset;
    let expect = |tp: &str, field: &str, want: usize| -> Result<(), String> {
        let path = Path::new(TRACEFS).join(format!("events/syscalls/{tp}/format"));
        let text = fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (syscall tracepoints missing: CONFIG_FTRACE_SYSCALLS?)",
                path.display()
            )
        })?;
        match field_offset(&text, field) {
            Some(got) if got == want => Ok(()),
            got => Err(format!(
                "syscalls/{tp} has {field} at offset {got:?}, the programs expect {want}"
            )),
        }
    };
    expect("sys_enter_pread64", "fd", 16)?;
    expect("sys_enter_pread64", "pos", 40)?;
    expect("sys_exit_read", "ret", 16)
}

/// This architecture's numbers of the syscalls the generic programs time, with their kind.
fn measured_syscalls() -> Vec<(libc::c_long, u32)> {
    let mut out = vec![
        (libc::SYS_read, syscall_kind::READ),
        (libc::SYS_write, syscall_kind::WRITE),
        (libc::SYS_pread64, syscall_kind::PREAD),
        (libc::SYS_pwrite64, syscall_kind::PWRITE),
        (libc::SYS_readv, syscall_kind::READV),
        (libc::SYS_writev, syscall_kind::WRITEV),
        (libc::SYS_preadv, syscall_kind::PREADV),
        (libc::SYS_pwritev, syscall_kind::PWRITEV),
        (libc::SYS_preadv2, syscall_kind::PREADV),
        (libc::SYS_pwritev2, syscall_kind::PWRITEV),
        (libc::SYS_openat, syscall_kind::OPEN),
        (libc::SYS_openat2, syscall_kind::OPEN),
    ];
    #[cfg(target_arch = "x86_64")]
    out.extend([
        (libc::SYS_open, syscall_kind::OPEN),
        (libc::SYS_creat, syscall_kind::OPEN),
    ]);
    out
}

/// Length of `INFLIGHT_SLOTS`: a power of two covering `pid_max` (then no two threads
/// share a slot), at most 65536 (3 MiB; beyond, threads whose ids differ by a multiple of
/// it share one: one that finds the slot taken is timed through the hash map instead).
fn inflight_slots() -> u32 {
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    pid_max.clamp(1024, 65536).next_power_of_two()
}

/// The kernel's tick in nanoseconds: the resolution of `CLOCK_MONOTONIC_COARSE`, which
/// moves with jiffies. 0 (no jiffies pre-check) if it cannot be read.
fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return 0;
    }
    u64::try_from(res.tv_sec)
        .ok()
        .zip(u64::try_from(res.tv_nsec).ok())
        .map_or(0, |(s, ns)| s * 1_000_000_000 + ns)
}

/// `comm` as the kernel holds it: NUL-padded, cut at 15 bytes.
fn comm_filter(comm: Option<&str>) -> [u8; exporter_common::COMM_LEN] {
    let mut out = [0u8; exporter_common::COMM_LEN];
    if let Some(comm) = comm {
        let bytes = comm.as_bytes();
        let n = bytes.len().min(out.len() - 1);
        out[..n].copy_from_slice(&bytes[..n]);
    }
    out
}

/// Lets older kernels (before memcg accounting of BPF memory) load the maps.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels ≥ 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_names_its_filesystem_and_each_has_all_four() {
        assert_eq!(fs_of_function("xfs_file_fsync"), Some(FsKind::Xfs));
        assert_eq!(fs_of_function("btrfs_sync_file"), Some(FsKind::Btrfs));
        assert_eq!(fs_of_function("ext4_file_open"), Some(FsKind::Ext4));
        assert_eq!(fs_of_function("ext4slower"), None);
        for fs in FsKind::ALL {
            for list in [FENTRY_PROGRAMS, FEXIT_PROGRAMS] {
                let n = list
                    .iter()
                    .filter(|(_, f)| fs_of_function(f) == Some(fs))
                    .count();
                assert_eq!(n, 4, "{fs}: read, write, open, fsync");
            }
            let n: usize = KPROBE_PROGRAMS
                .iter()
                .map(|(_, fs_)| fs_.iter().filter(|f| fs_of_function(f) == Some(fs)).count())
                .sum();
            assert_eq!(n, 8, "{fs}: a kprobe and a kretprobe per operation");
        }
    }
}
