//! What the per-device view (`why.disk`) costs the node's IO: a 4 KiB random-write
//! workload on a fast disk, with iostall's view on and off, and beside it what the block
//! tracepoints (the alternative source, which splits queue wait from device time) cost.
//!
//! `cargo run --release -p iostall-tests --bin bench-disk` (as root, bpftrace installed).
//! The disk: a real ext4 on a loop device over a file in `/dev/shm`, so that the
//! figures measure the block layer and what is attached to it, not the shared host disk
//! under it (on these machines other builds make a host-backed loop's writes swing from
//! 0.4 to 12 ms). The workload: O_DIRECT
//! `pwrite`s of 4 KiB at random 4 KiB-aligned offsets of a 64 MiB file, one thread, so
//! every write is one block request. Sides, each started once a round in an order
//! rotated every round: bare; iostall (tracepoint mode) with `why.disk.enabled: false`;
//! iostall as shipped (the view on: one `/proc/diskstats` read a second); and a bpftrace
//! script on `block:block_rq_insert/issue/complete` that sums queue wait and device time
//! per device (a hash map keyed by device and sector, as one would write it).
//! Printed: median [min–max] over the rounds of the writing thread's CPU µs per write
//! (the block layer's submission work and any program on its tracepoints run in it; a
//! shared machine does not inflate it as it does wall time, which is printed beside),
//! and of its ratio to the reference side in the same round (view on ÷ view off; block
//! tracepoints ÷ bare); the CPU the view's own sampler thread used, per second; and
//! the block tracepoint programs' own time per write as the kernel counts it
//! (`kernel.bpf_stats_enabled`, on for that side only), which resolves what the
//! per-write ratio cannot on a shared machine.
use std::{
    fs::File,
    io::{BufRead, BufReader, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use iostall_tests::{
    bench::{BpfStats, bpf_program_stats, median},
    iostall_proc::{iostall_binary, wait_attached},
    slowfs::{ensure_kernel_mounts, require_root},
};

/// ext4 on a loop device over a `/dev/shm` file; torn down on drop.
struct RamExt4 {
    dir: tempfile::TempDir,
    loop_dev: String,
    mounted: bool,
}

impl RamExt4 {
    fn create(size_mib: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("iostall-bench-disk-")
            .tempdir_in("/dev/shm")?;
        let image = dir.path().join("disk.img");
        File::create(&image)?.set_len(size_mib << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .context("losetup")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut me = Self {
            loop_dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            dir,
            mounted: false,
        };
        let mnt = me.mount_point();
        std::fs::create_dir(&mnt)?;
        run("mkfs.ext4", &["-q", "-F", &me.loop_dev])?;
        run("mount", &[&me.loop_dev, &mnt.to_string_lossy()])?;
        me.mounted = true;
        Ok(me)
    }

    fn mount_point(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for RamExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("umount", &[&self.mount_point().to_string_lossy()]);
        }
        let _ = run("losetup", &["-d", &self.loop_dev]);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .context(cmd.to_owned())?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[derive(Debug, Parser)]
#[command(about = "Cost of the per-device view (why.disk) against the block tracepoints")]
struct Args {
    /// Rounds (each side once per round).
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Seconds of writing per side and round (the view samples once a second).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Bare,
    ViewOff,
    ViewOn,
    BlockTracepoints,
}

impl Side {
    const ALL: [Self; 4] = [
        Self::Bare,
        Self::ViewOff,
        Self::ViewOn,
        Self::BlockTracepoints,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::ViewOff => "iostall, why.disk off",
            Self::ViewOn => "iostall, why.disk on (shipped)",
            Self::BlockTracepoints => "bpftrace block_rq_* split",
        }
    }

    /// The side each one is compared with, in the same round.
    fn reference(self) -> Self {
        match self {
            Self::ViewOn => Self::ViewOff,
            _ => Self::Bare,
        }
    }
}

const BLOCK_SCRIPT: &str = r#"
BEGIN { printf("ready\n"); }
tracepoint:block:block_rq_insert { @insert[args->dev, args->sector] = nsecs; }
tracepoint:block:block_rq_issue {
  @issue[args->dev, args->sector] = nsecs;
  $q = @insert[args->dev, args->sector];
  if ($q) { @queue_ns[args->dev] = sum(nsecs - $q); delete(@insert[args->dev, args->sector]); }
}
tracepoint:block:block_rq_complete /@issue[args->dev, args->sector]/ {
  @device_ns[args->dev] = sum(nsecs - @issue[args->dev, args->sector]);
  @ios[args->dev] = count();
  delete(@issue[args->dev, args->sector]);
}
END { clear(@insert); clear(@issue); clear(@queue_ns); clear(@device_ns); clear(@ios); }
"#;

/// What runs beside the workload for one side.
struct Running(Option<Child>);

impl Running {
    /// CPU seconds used so far by iostall's thread named `name`, if it runs one.
    fn thread_cpu_s(&self, name: &str) -> Option<f64> {
        let pid = self.0.as_ref()?.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            // schedstat: nanoseconds on a CPU first (finer than stat's clock ticks).
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(ns / 1e9);
        }
        None
    }
}

impl Running {
    fn start(side: Side, config: &std::path::Path) -> Result<Self> {
        let child = match side {
            Side::Bare => None,
            Side::ViewOff | Side::ViewOn => {
                let mut cmd = Command::new(iostall_binary()?);
                cmd.args(["--attach", "tracepoint", "--output", "json"])
                    .args(["--threshold-ms", "1000", "--metrics-listen", "off"])
                    .args(["--containerd-socket", "off", "--docker-socket", "off"])
                    .env("IOSTALL_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                if side == Side::ViewOff {
                    cmd.arg("--config").arg(config);
                }
                let mut child = cmd.spawn().context("starting iostall")?;
                wait_attached(child.stderr.take().context("no stderr")?)?;
                Some(child)
            }
            Side::BlockTracepoints => {
                let mut child = Command::new("bpftrace")
                    .args(["-e", BLOCK_SCRIPT])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace (apt-get install bpftrace)")?;
                let stdout = child.stdout.take().context("no stdout")?;
                let mut lines = BufReader::new(stdout).lines();
                // "Attaching N probes...", then our BEGIN's line.
                if !lines.by_ref().map_while(Result::ok).any(|l| l == "ready") {
                    bail!("bpftrace did not attach");
                }
                std::thread::spawn(move || lines.map_while(Result::ok).count());
                Some(child)
            }
        };
        Ok(Self(child))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// O_DIRECT 4 KiB writes at random offsets for `seconds`; (CPU, wall) µs per write, and
/// how many writes.
fn random_writes(
    file: &File,
    blocks: u64,
    seconds: f64,
    seed: &mut u64,
) -> Result<(f64, f64, u64)> {
    use std::os::unix::fs::FileExt as _;
    // O_DIRECT wants an aligned buffer.
    let layout = std::alloc::Layout::from_size_align(4096, 4096)?;
    // SAFETY: a non-zero-sized layout; freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        bail!("out of memory");
    }
    // SAFETY: 4096 initialised bytes at `ptr`, ours until dealloc.
    let buf = unsafe { std::slice::from_raw_parts(ptr, 4096) };
    let started = Instant::now();
    let cpu0 = thread_cpu_ns();
    let deadline = Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    let result = loop {
        if n.is_multiple_of(64) && started.elapsed() >= deadline {
            let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e3 / n as f64;
            break Ok((cpu, started.elapsed().as_secs_f64() * 1e6 / n as f64, n));
        }
        // xorshift: cheap, and the same sequence for every side.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        if let Err(e) = file.write_all_at(buf, (*seed % blocks) * 4096) {
            break Err(e.into());
        }
        n += 1;
    };
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    ensure_kernel_mounts()?;
    let fs = RamExt4::create(128)?;
    let path = fs.mount_point().join("random.dat");
    let blocks = 64 * 256;
    {
        // Allocated for real, so the writes overwrite blocks and need no allocation.
        let mut f = File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let file = File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .context("O_DIRECT open")?;
    let mut config = tempfile::NamedTempFile::new()?;
    config.write_all(b"why:\n  disk:\n    enabled: false\n")?;

    let sides = Side::ALL;
    let mut us = vec![vec![f64::NAN; args.rounds]; sides.len()];
    let mut wall = vec![vec![f64::NAN; args.rounds]; sides.len()];
    let mut sampler_cpu = Vec::new();
    // The block tracepoint programs' own time per write, and per run.
    let mut program_ns_per_write = Vec::new();
    let mut program_ns_per_run = Vec::new();
    for round in 0..args.rounds {
        for k in 0..sides.len() {
            let s = (k + round) % sides.len();
            let stats = if sides[s] == Side::BlockTracepoints {
                Some(BpfStats::enable()?)
            } else {
                None
            };
            let running = Running::start(sides[s], config.path())?;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
            let before = running.thread_cpu_s("iostall-disksta");
            let programs_before = running.0.as_ref().and_then(|c| bpf_program_stats(c.id()));
            let t0 = Instant::now();
            let writes;
            (us[s][round], wall[s][round], writes) =
                random_writes(&file, blocks, args.seconds, &mut seed)?;
            if let (Some(b), Some(a)) = (before, running.thread_cpu_s("iostall-disksta")) {
                sampler_cpu.push((a - b) / t0.elapsed().as_secs_f64());
            }
            if stats.is_some()
                && let (Some(b), Some(a)) = (
                    programs_before,
                    running.0.as_ref().and_then(|c| bpf_program_stats(c.id())),
                )
                && a.1 > b.1
            {
                program_ns_per_write.push((a.0 - b.0) as f64 / writes.max(1) as f64);
                program_ns_per_run.push((a.0 - b.0) as f64 / (a.1 - b.1) as f64);
            }
            drop(running);
            drop(stats);
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    println!(
        "{:<32} {:>26} {:>24} {:>16}  against",
        "side", "CPU µs/write med [min–max]", "ratio med [min–max]", "wall µs/write med"
    );
    let spread = |v: &[f64]| {
        let mut v = v.to_vec();
        let m = median(&mut v);
        format!("{m:.3} [{:.3}–{:.3}]", v[0], v[v.len() - 1])
    };
    for (s, side) in sides.iter().enumerate() {
        let r = sides
            .iter()
            .position(|x| *x == side.reference())
            .unwrap_or(0);
        let ratios: Vec<f64> = (0..args.rounds).map(|i| us[s][i] / us[r][i]).collect();
        let mut w = wall[s].clone();
        println!(
            "{:<32} {:>26} {:>24} {:>16.1}  {}",
            side.name(),
            spread(&us[s]),
            if r == s {
                "-".to_owned()
            } else {
                spread(&ratios)
            },
            median(&mut w),
            if r == s { "" } else { sides[r].name() }
        );
    }
    if !program_ns_per_write.is_empty() {
        let bare = sides
            .iter()
            .position(|x| *x == Side::Bare)
            .map(|b| median(&mut us[b].clone()));
        let per_write = median(&mut program_ns_per_write);
        println!(
            "the block tracepoint programs' own time (kernel.bpf_stats_enabled): {:.0} ns per \
             write ({:.0} ns per program run), {:.2}% of bare's CPU per write",
            per_write,
            median(&mut program_ns_per_run),
            bare.map_or(f64::NAN, |b| per_write / (b * 1e3) * 100.0)
        );
    }
    if !sampler_cpu.is_empty() {
        let m = median(&mut sampler_cpu);
        println!(
            "the view's sampler thread: {:.1} µs CPU per second ({:.4}% of one CPU)",
            m * 1e6,
            m * 100.0
        );
    }
    Ok(())
}
