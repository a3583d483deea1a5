//! What iostall's tracepoint mode costs every syscall of the node, against no tracer and
//! against a bpftrace script on the same syscall tracepoints (a per-tid start map, as an
//! SRE would write it).
//!
//! `cargo run --release -p iostall-tests --bin bench-syscalls` (as root, bpftrace
//! installed). Workloads: page-cache `pread`s of 4 KiB on ext4, `getppid` (a syscall
//! nobody measures), and 4 KiB write+read through a pipe. Sides: bare, bpftrace, and one
//! or more iostall variants (`--variants`, see `SyscallProbes` in the exporter). Each
//! round starts every side once, in an order rotated each round, and runs every workload
//! under it; so each side's figure has a bare figure from the same minute beside it.
//! Time is the looping thread's CPU time (syscalls and the tracers' programs in them
//! included), which other processes on a shared machine do not inflate as they do wall
//! time (`--wall` to compare that instead). Each workload runs `--repeats` times under a
//! side in a round, pinned to one CPU the tracers' userspace stays off, and the round
//! keeps the fastest: interference only ever adds time.
//! Printed per workload and side: min / median / max over the rounds of ns per op, of the
//! ratio to bare in the same round, and of the time added as a fraction of what bpftrace
//! added in the same round; events/s is events over the time iostall was collecting.
//! Times are only compared inside one run: these machines are shared.
//!
//! The side `floor` attaches an empty program (`return 0`) to each of the same syscall
//! tracepoints: what any program there costs on this kernel (the perf trace buffer and
//! argument copy, and the syscall-tracing slow path every syscall then takes), whatever
//! it does. `--baseline <iostall binary>` adds another build of iostall as a side, so
//! that a change's cost is measured in the same run.
use std::{
    io::{BufRead, BufReader},
    os::fd::OwnedFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    bench::{BpfStats, bpf_program_stats},
    iostall_proc::{iostall_binary, wait_attached},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
    workload::run_workload_summary,
};

#[derive(Debug, Parser)]
#[command(about = "Per-syscall cost of iostall (tracepoint mode) against bare and bpftrace")]
struct Args {
    /// Rounds (each side once per round).
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Page-cache preads per run.
    #[arg(long, default_value_t = 100_000)]
    preads: u64,
    /// getppid calls per run.
    #[arg(long, default_value_t = 300_000)]
    getppids: u64,
    /// Pipe write+read pairs per run.
    #[arg(long, default_value_t = 50_000)]
    pipes: u64,
    /// iostall variants, comma-separated: `btf`, `raw` or `per-syscall`, then `+slots` or
    /// `+hash`, then optionally `+enter-filter`; `default` is iostall as shipped
    /// (ext4, xfs and btrfs); `ext4-only` is it with `--fs ext4` (the same run then shows
    /// whether tracing three filesystems costs a syscall more than one).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    variants: Vec<String>,
    /// Threshold iostall and bpftrace run with, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    threshold_ms: f64,
    /// Print one JSON object per workload and side instead of the table.
    #[arg(long)]
    json: bool,
    /// Compare wall-clock time instead of the looping thread's CPU time.
    #[arg(long)]
    wall: bool,
    /// Another iostall binary (e.g. the build before a change), run as shipped as one
    /// more side.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Runs of each workload under a side in one round; the round keeps the fastest.
    /// Interference (another guest, a timer, a migration) only ever adds time, so the
    /// fastest of a few short runs is the steadiest figure of what the tracer costs.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// The CPU the workloads run on (the tracers' own processes stay off it); `none`
    /// leaves them unpinned. Default: the last CPU.
    #[arg(long)]
    cpu: Option<String>,
    /// After the rounds, each side once more with `kernel.bpf_stats_enabled`: the
    /// kernel's own timing of the side's programs, per operation (the share of the cost
    /// that is the programs' work, not the tracepoints').
    #[arg(long)]
    program_time: bool,
}

/// A tracer (or none) the workloads run under.
#[derive(Debug, Clone)]
enum Side {
    Bare,
    Bpftrace,
    /// Empty programs on the same tracepoints.
    Floor,
    Iostall(String),
    /// Another iostall binary, as shipped.
    Baseline(PathBuf),
}

impl Side {
    fn name(&self) -> String {
        match self {
            Self::Bare => "bare".into(),
            Self::Bpftrace => "bpftrace".into(),
            Self::Floor => "floor (empty programs)".into(),
            Self::Iostall(v) => format!("iostall {v}"),
            Self::Baseline(_) => "iostall baseline binary".into(),
        }
    }
}

/// Empty BPF programs attached to syscall tracepoints with the raw syscalls (aya needs an
/// object file; two instructions do not).
mod floor {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use anyhow::{Context, Result};

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    /// `_IOW('$', 8, u32)` and `_IO('$', 0)`.
    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
    const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

    /// The head of `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        rest: [u64; 13],
    }

    /// `struct perf_event_attr`, `PERF_ATTR_SIZE_VER0` (64 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct PerfEventAttr {
        type_: u32,
        size: u32,
        config: u64,
        sample_period: u64,
        sample_type: u64,
        read_format: u64,
        flags: u64,
        wakeup_events: u32,
        bp_type: u32,
        config1: u64,
    }

    fn os_fd(ret: libc::c_long, what: &str) -> Result<OwnedFd> {
        if ret < 0 {
            return Err(std::io::Error::last_os_error()).context(what.to_owned());
        }
        // SAFETY: a new fd the syscall just returned, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
    }

    /// `r0 = 0; exit`, as a tracepoint program.
    fn load_empty() -> Result<OwnedFd> {
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = b"GPL\0";
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_TRACEPOINT,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        // SAFETY: a valid, fully initialised attr of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
            )
        };
        os_fd(ret, "loading an empty tracepoint program")
    }

    fn tracepoint_id(name: &str) -> Result<u64> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            let path = format!("{root}/events/syscalls/{name}/id");
            if let Ok(text) = std::fs::read_to_string(&path) {
                return text
                    .trim()
                    .parse()
                    .with_context(|| format!("parsing {path}"));
            }
        }
        anyhow::bail!("no tracepoint syscalls:{name} in tracefs")
    }

    /// The empty program attached to `sys_enter_<s>` and `sys_exit_<s>` for each of
    /// `syscalls` the kernel has; detached when dropped.
    pub fn attach(syscalls: &[&str]) -> Result<Vec<OwnedFd>> {
        let prog = load_empty()?;
        let mut fds = Vec::new();
        for s in syscalls {
            for dir in ["enter", "exit"] {
                let Ok(id) = tracepoint_id(&format!("sys_{dir}_{s}")) else {
                    continue; // e.g. no `open` on arm64
                };
                let attr = PerfEventAttr {
                    type_: PERF_TYPE_TRACEPOINT,
                    size: std::mem::size_of::<PerfEventAttr>() as u32,
                    config: id,
                    sample_period: 1,
                    wakeup_events: 1,
                    ..PerfEventAttr::default()
                };
                // SAFETY: a valid attr; pid -1 and cpu 0 as a BPF tracepoint link takes
                // (the program runs for every CPU).
                let ret = unsafe {
                    libc::syscall(
                        libc::SYS_perf_event_open,
                        &attr as *const PerfEventAttr,
                        -1,
                        0,
                        -1,
                        PERF_FLAG_FD_CLOEXEC,
                    )
                };
                let event = os_fd(ret, "perf_event_open on a syscall tracepoint")?;
                // SAFETY: ioctls on our own perf fd.
                unsafe {
                    if libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0
                        || libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error())
                            .context("attaching the empty program");
                    }
                }
                fds.push(event);
            }
        }
        anyhow::ensure!(!fds.is_empty(), "no syscall tracepoint to attach to");
        fds.push(prog);
        Ok(fds)
    }
}

/// The environment that selects an iostall variant.
fn variant_env(variant: &str) -> Result<Vec<(&'static str, &'static str)>> {
    if variant == "default" {
        return Ok(Vec::new());
    }
    let mut env = Vec::new();
    for part in variant.split('+') {
        env.push(match part {
            "btf" => ("IOSTALL_SYSCALL_PROBES", "btf"),
            "raw" => ("IOSTALL_SYSCALL_PROBES", "raw"),
            "per-syscall" => ("IOSTALL_SYSCALL_PROBES", "per-syscall"),
            "slots" => ("IOSTALL_INFLIGHT", "slots"),
            "hash" => ("IOSTALL_INFLIGHT", "hash"),
            "enter-filter" => ("IOSTALL_ENTER_FILTER", "1"),
            // The end of every operation read from the precise clock, as before the
            // jiffies pre-check.
            "precise-exit" => ("IOSTALL_EXIT_PRECHECK", "0"),
            // A flag, not a variable: see `variant_args`.
            "ext4-only" => continue,
            other => bail!("unknown variant part {other:?} in {variant:?}"),
        });
    }
    Ok(env)
}

/// The flags that select an iostall variant: `ext4-only` traces one filesystem
/// (`--fs ext4`), to show the per-syscall cost does not grow with the number traced.
fn variant_args(variant: &str) -> Vec<&'static str> {
    if variant.split('+').any(|p| p == "ext4-only") {
        vec!["--fs", "ext4"]
    } else {
        Vec::new()
    }
}

/// The syscalls iostall's tracepoint mode times (bpftrace gets the same ones).
const SYSCALLS: &[&str] = &[
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "open", "openat", "openat2", "creat",
];

fn bpftrace_script(threshold_ns: u64) -> String {
    let probes = |dir: &str| {
        SYSCALLS
            .iter()
            .map(|s| format!("tracepoint:syscalls:sys_{dir}_{s}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "BEGIN {{ printf(\"ready\\n\"); }}\n\
         {enter} {{ @start[tid] = nsecs; }}\n\
         {exit} /@start[tid]/ {{\n  $d = nsecs - @start[tid];\n  delete(@start[tid]);\n  \
         if ($d >= {threshold_ns}) {{ printf(\"%s %d %d\\n\", comm, pid, $d); }}\n}}\n",
        enter = probes("enter"),
        exit = probes("exit"),
    )
}

/// A tracer attached for one round; counts the events it prints.
struct Running {
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<u64>>,
    since: Instant,
    /// The floor's program and perf events.
    _attached: Vec<OwnedFd>,
}

impl Running {
    fn start(side: &Side, threshold_ms: f64) -> Result<Self> {
        let mut child = match side {
            Side::Bare => {
                return Ok(Self {
                    child: None,
                    reader: None,
                    since: Instant::now(),
                    _attached: Vec::new(),
                });
            }
            Side::Floor => {
                return Ok(Self {
                    child: None,
                    reader: None,
                    since: Instant::now(),
                    _attached: floor::attach(SYSCALLS)?,
                });
            }
            Side::Bpftrace => {
                let script = bpftrace_script((threshold_ms * 1e6) as u64);
                Command::new("bpftrace")
                    .args(["-e", &script])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace (apt-get install bpftrace)")?
            }
            Side::Iostall(_) | Side::Baseline(_) => {
                let (binary, variant) = match side {
                    Side::Baseline(binary) => (binary.clone(), "default"),
                    Side::Iostall(variant) => (iostall_binary()?, variant.as_str()),
                    _ => unreachable!("matched above"),
                };
                let mut child = Command::new(binary)
                    .args(["--attach", "tracepoint", "--output", "json"])
                    .args(["--threshold-ms", &threshold_ms.to_string()])
                    .args(["--metrics-listen", "off"])
                    .args(["--containerd-socket", "off", "--docker-socket", "off"])
                    .args(variant_args(variant))
                    .envs(variant_env(variant)?)
                    .env("IOSTALL_LOG", "info")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting iostall")?;
                wait_attached(child.stderr.take().context("no stderr")?)?;
                child
            }
        };
        let stdout = child.stdout.take().context("no stdout")?;
        let is_bpftrace = matches!(side, Side::Bpftrace);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut events = 0u64;
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if is_bpftrace && line == "ready" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if line.starts_with('{') && line.contains("\"op\"") || is_bpftrace {
                    events += 1;
                }
            }
            events
        });
        if is_bpftrace {
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .context("bpftrace did not attach")?;
        }
        Ok(Self {
            child: Some(child),
            reader: Some(reader),
            since: Instant::now(),
            _attached: Vec::new(),
        })
    }

    /// Stops the tracer; returns its events and the seconds it collected them over.
    fn stop(mut self) -> Result<(u64, f64)> {
        let Some(mut child) = self.child.take() else {
            return Ok((0, 0.0));
        };
        std::thread::sleep(Duration::from_millis(100));
        let secs = self.since.elapsed().as_secs_f64();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        child.wait()?;
        let events = self
            .reader
            .take()
            .map(|r| r.join().unwrap_or(0))
            .unwrap_or(0);
        Ok((events, secs))
    }
}

impl Running {
    /// The process holding the side's programs: the tracer's, or the bench itself for
    /// the floor (it loads the empty programs); `None` for bare.
    fn programs_pid(&self) -> Option<u32> {
        match (&self.child, self._attached.is_empty()) {
            (Some(child), _) => Some(child.id()),
            (None, false) => Some(std::process::id()),
            (None, true) => None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// min, median, max.
fn spread(values: &[f64]) -> [f64; 3] {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    [v[0], median, v[v.len() - 1]]
}

/// One workload × side, over the rounds.
/// The kernel's own timing of a side's programs (`kernel.bpf_stats_enabled`), per
/// operation of each workload.
#[derive(serde::Serialize)]
struct ProgramTime {
    side: String,
    /// Nanoseconds of the side's programs per operation, one per workload (a pipe
    /// operation is a write and a read).
    program_ns_per_op: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
struct Outcome {
    workload: String,
    side: String,
    ns_per_op: [f64; 3],
    ratio_to_bare: [f64; 3],
    share_of_bpftrace_added: [f64; 3],
    events_per_s: f64,
}

/// Each side with programs, started once more with the kernel timing every program run:
/// its programs' nanoseconds per operation of each workload. Apart from the rounds,
/// because the timing itself costs every run two clock reads.
fn program_times(
    sides: &[Side],
    workloads: &[(&str, Vec<&str>)],
    cpu: Option<usize>,
    threshold_ms: f64,
) -> Result<Vec<ProgramTime>> {
    let mut out = Vec::new();
    for side in sides {
        let running = Running::start(side, threshold_ms)?;
        let Some(pid) = running.programs_pid() else {
            continue;
        };
        let _stats = BpfStats::enable()?;
        let _pinned = cpu.map(Pinned::to).transpose()?;
        let mut per_op = Vec::new();
        for (_, argv) in workloads {
            let before = bpf_program_stats(pid).context("the side's programs")?;
            let summary = run_workload_summary(argv)?;
            let after = bpf_program_stats(pid).context("the side's programs")?;
            let ops = summary["count"].as_f64().context("no count")?;
            per_op.push(after.0.saturating_sub(before.0) as f64 / ops.max(1.0));
        }
        drop(_pinned);
        drop(_stats);
        running.stop()?;
        out.push(ProgramTime {
            side: side.name(),
            program_ns_per_op: per_op,
        });
    }
    Ok(out)
}

/// The CPU `--cpu` names: the last one by default, `None` for `none`.
fn workload_cpu(arg: Option<&str>) -> Result<Option<usize>> {
    match arg {
        Some("none") => Ok(None),
        Some(n) => Ok(Some(n.parse().with_context(|| format!("--cpu {n:?}"))?)),
        None => Ok(Some(
            std::thread::available_parallelism()
                .map(|n| n.get() - 1)
                .unwrap_or(0),
        )),
    }
}

/// The calling thread (and what it starts) on one CPU while this lives; then every
/// CPU again.
struct Pinned;

impl Pinned {
    fn to(cpu: usize) -> Result<Self> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        set_affinity(&set).with_context(|| format!("pinning the workloads to CPU {cpu}"))?;
        Ok(Self)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: as above; every CPU the set can name.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in 0..libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        let _ = set_affinity(&set);
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: a valid set of the size passed, for the calling thread (0).
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let pread_file = fs.mount_point().join("pread.dat");
    let pread_file = pread_file.to_string_lossy();
    let (preads, getppids, pipes) = (
        args.preads.to_string(),
        args.getppids.to_string(),
        args.pipes.to_string(),
    );
    let workloads: [(&str, Vec<&str>); 3] = [
        (
            "pread 4 KiB, page cache (ext4)",
            vec![
                "pread-loop",
                "--file",
                &pread_file,
                "--count",
                &preads,
                "--size",
                "4096",
            ],
        ),
        ("getppid", vec!["getppid-loop", "--count", &getppids]),
        (
            "pipe write+read 4 KiB",
            vec!["pipe-loop", "--count", &pipes, "--size", "4096"],
        ),
    ];
    // Bare and bpftrace first: the ratios are to them.
    let mut sides = vec![Side::Bare, Side::Bpftrace, Side::Floor];
    for v in &args.variants {
        variant_env(v)?;
        sides.push(Side::Iostall(v.clone()));
    }
    if let Some(binary) = &args.baseline {
        anyhow::ensure!(
            binary.is_file(),
            "--baseline {} is not a file",
            binary.display()
        );
        sides.push(Side::Baseline(binary.clone()));
    }
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let workload_cpu = workload_cpu(args.cpu.as_deref())?;
    // ns_per_op[side][workload][round]; events and seconds per side.
    let mut ns = vec![vec![vec![f64::NAN; args.rounds]; workloads.len()]; sides.len()];
    let mut collected = vec![(0u64, 0f64); sides.len()];
    // Indexes, not iterators: a round fills one cell of every side's row, rotated.
    #[allow(clippy::needless_range_loop)]
    for round in 0..args.rounds {
        for k in 0..sides.len() {
            let s = (k + round) % sides.len();
            let running = Running::start(&sides[s], args.threshold_ms)?;
            // Pinned only while the workloads run: the tracers started above keep the
            // whole machine, so their userspace never shares the workload's CPU.
            let _pinned = workload_cpu.map(Pinned::to).transpose()?;
            for (w, (_, argv)) in workloads.iter().enumerate() {
                let key = if args.wall {
                    "ns_per_op"
                } else {
                    "cpu_ns_per_op"
                };
                let mut fastest = f64::INFINITY;
                for _ in 0..args.repeats {
                    let summary = run_workload_summary(argv)?;
                    fastest = fastest.min(summary[key].as_f64().context("no ns per op")?);
                }
                ns[s][w][round] = fastest;
            }
            drop(_pinned);
            let (events, secs) = running.stop()?;
            collected[s].0 += events;
            collected[s].1 += secs;
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    let program_times = if args.program_time {
        program_times(&sides, &workloads, workload_cpu, args.threshold_ms)?
    } else {
        Vec::new()
    };
    if !args.json {
        println!(
            "{:<32} {:<34} {:>22} {:>20} {:>22} {:>9}",
            "workload",
            "side",
            "ns/op min/med/max",
            "× bare min/med/max",
            "÷ bpftrace added",
            "events/s"
        );
    }
    for (w, (workload, _)) in workloads.iter().enumerate() {
        for (s, side) in sides.iter().enumerate() {
            let per_round = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
                (0..args.rounds).map(f).collect::<Vec<_>>()
            };
            let ratio = per_round(&|r| ns[s][w][r] / ns[0][w][r]);
            let share = per_round(&|r| (ns[s][w][r] - ns[0][w][r]) / (ns[1][w][r] - ns[0][w][r]));
            let (events, secs) = collected[s];
            let o = Outcome {
                workload: (*workload).into(),
                side: side.name(),
                ns_per_op: spread(&ns[s][w]),
                ratio_to_bare: spread(&ratio),
                share_of_bpftrace_added: spread(&share),
                events_per_s: if secs > 0.0 {
                    events as f64 / secs
                } else {
                    0.0
                },
            };
            if args.json {
                println!("{}", serde_json::to_string(&o)?);
            } else {
                let f = |v: [f64; 3], p: usize| {
                    format!("{:.p$}/{:.p$}/{:.p$}", v[0], v[1], v[2], p = p)
                };
                println!(
                    "{:<32} {:<34} {:>22} {:>20} {:>22} {:>9.1}",
                    o.workload,
                    o.side,
                    f(o.ns_per_op, 0),
                    f(o.ratio_to_bare, 2),
                    f(o.share_of_bpftrace_added, 2),
                    o.events_per_s
                );
            }
        }
    }
    if !program_times.is_empty() && !args.json {
        println!();
        println!(
            "programs' own time per operation (kernel.bpf_stats_enabled, a pass of its own; \
             includes the kernel's two clock reads per run)"
        );
        print!("{:<34}", "side");
        for (workload, _) in &workloads {
            print!(" {workload:>32}");
        }
        println!();
    }
    for t in &program_times {
        if args.json {
            println!("{}", serde_json::to_string(t)?);
        } else {
            print!("{:<34}", t.side);
            for ns in &t.program_ns_per_op {
                print!(" {ns:>32.1}");
            }
            println!();
        }
    }
    Ok(())
}
