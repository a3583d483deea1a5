//! What the per-device view (`why.disk`) costs the node's IO: a 4 KiB random-write
//! workload on a fast disk, with iostall's view on and off, and beside it what the block
//! tracepoints (the alternative source, which splits queue wait from device time) cost.
//!
//! `cargo run --release -p iostall-tests --bin bench-disk` (as root, bpftrace installed).
//! The disk: a real ext4 on a direct-IO loop device, unthrottled. The workload: O_DIRECT
//! `pwrite`s of 4 KiB at random 4 KiB-aligned offsets of a 64 MiB file, one thread, so
//! every write is one block request. Sides, each started once a round in an order
//! rotated every round: bare; iostall (tracepoint mode) with `why.disk.enabled: false`;
//! iostall as shipped (the view on: one `/proc/diskstats` read a second); and a bpftrace
//! script on `block:block_rq_insert/issue/complete` that sums queue wait and device time
//! per device (a hash map keyed by device and sector, as one would write it).
//! Printed: median [min–max] over the rounds of µs per write and of the ratio to the
//! reference side in the same round (view on ÷ view off; block tracepoints ÷ bare).
//! Wall time: the cost of a block-layer program lands in the submitting thread and in
//! the completion context, not only in the thread's CPU time.
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
    bench::median,
    iostall_proc::{iostall_binary, wait_attached},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

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
    const ALL: [Self; 4] = [Self::Bare, Self::ViewOff, Self::ViewOn, Self::BlockTracepoints];

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
tracepoint:block:block_rq_insert { @insert[args.dev, args.sector] = nsecs; }
tracepoint:block:block_rq_issue {
  @issue[args.dev, args.sector] = nsecs;
  $q = @insert[args.dev, args.sector];
  if ($q) { @queue_ns[args.dev] = sum(nsecs - $q); delete(@insert[args.dev, args.sector]); }
}
tracepoint:block:block_rq_complete /@issue[args.dev, args.sector]/ {
  @device_ns[args.dev] = sum(nsecs - @issue[args.dev, args.sector]);
  @ios[args.dev] = count();
  delete(@issue[args.dev, args.sector]);
}
END { clear(@insert); clear(@issue); clear(@queue_ns); clear(@device_ns); clear(@ios); }
"#;

/// What runs beside the workload for one side.
struct Running(Option<Child>);

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
                match lines.next() {
                    Some(Ok(l)) if l == "ready" => {}
                    other => bail!("bpftrace did not attach: {other:?}"),
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

/// O_DIRECT 4 KiB writes at random offsets for `seconds`; µs per write.
fn random_writes(file: &File, blocks: u64, seconds: f64, seed: &mut u64) -> Result<f64> {
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
    let deadline = Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    let result = loop {
        if n % 64 == 0 && started.elapsed() >= deadline {
            break Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64);
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
    let fs = SlowExt4::create(SlowExt4Options {
        size_mib: 128,
        ..Default::default()
    })?;
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
    for round in 0..args.rounds {
        for k in 0..sides.len() {
            let s = (k + round) % sides.len();
            let running = Running::start(sides[s], config.path())?;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
            us[s][round] = random_writes(&file, blocks, args.seconds, &mut seed)?;
            drop(running);
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    println!(
        "{:<32} {:>26} {:>24}  against",
        "side", "µs/write med [min–max]", "ratio med [min–max]"
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
        println!(
            "{:<32} {:>26} {:>24}  {}",
            side.name(),
            spread(&us[s]),
            if r == s {
                "-".to_owned()
            } else {
                spread(&ratios)
            },
            if r == s { "" } else { sides[r].name() }
        );
    }
    Ok(())
}
