//! What the storm test (`tests/tests/storm.rs`) and `bench-storm` share: iostall started
//! with its stdout thrown away (at threshold 0 it prints 100k lines a second, which a
//! reader here would have to queue), its CPU and memory sampled from `/proc`, a
//! page-cache `pread` storm on named threads, and the entries of one process's BPF maps,
//! read through the kernel by map id.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::FileExt,
    },
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    iostall_proc::{READY_MARKER, iostall_binary},
    otlp_receiver::{metric, metrics_addr_from_log, scrape},
};

/// A running iostall whose stdout goes to `/dev/null` and whose log is kept.
pub struct QuietIostall {
    child: Child,
    log: Arc<Mutex<String>>,
    metrics: SocketAddr,
}

impl QuietIostall {
    /// iostall as the storm runs it: threshold 0, ext4 only, only threads named `comm`,
    /// JSON to nowhere, no runtime or API server: what it costs is the storm's alone.
    pub fn for_storm(comm: &str) -> Result<Self> {
        Self::start(&[
            "--attach",
            "tracepoint",
            "--threshold-ms",
            "0",
            "--comm",
            comm,
            "--fs",
            "ext4",
            "--output",
            "json",
            "--containerd-socket",
            "off",
            "--docker-socket",
            "off",
            "--kube",
            "off",
        ])
    }

    /// Starts iostall with `args` (plus `--metrics-listen 127.0.0.1:0`) and waits up to
    /// 60 s for it to attach and serve `/metrics`.
    pub fn start(args: &[&str]) -> Result<Self> {
        let bin = iostall_binary()?;
        let mut child = Command::new(&bin)
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("IOSTALL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let err = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = log.lock().map(|s| s.clone()).unwrap_or_default();
            if text.contains(READY_MARKER)
                && let Some(metrics) = metrics_addr_from_log(&text)
            {
                return Ok(Self {
                    child,
                    log,
                    metrics,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("iostall exited ({status}) before attaching:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("iostall did not attach within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Its `/metrics` now.
    pub fn scrape(&self) -> Result<Metrics> {
        scrape(self.metrics, "/metrics").map(Metrics)
    }

    /// Stops it with SIGINT; fails unless it exits with success within 20 s.
    pub fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                let log = self.log();
                if !status.success() {
                    bail!("iostall exited with {status}:\n{log}");
                }
                return Ok(log);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("iostall did not stop within 20 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for QuietIostall {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `/metrics` exposition.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of `series` (`name` or `name{labels}` as exposed); 0 when absent.
    pub fn get(&self, series: &str) -> u64 {
        metric(&self.0, series).unwrap_or(0)
    }

    /// `iostall_cache_entries{cache="<cache>"}`; fails when the series is absent (a
    /// build without the gauge).
    pub fn cache(&self, cache: &str) -> Result<u64> {
        let series = format!("iostall_cache_entries{{cache=\"{cache}\"}}");
        metric(&self.0, &series).with_context(|| format!("{series} not served"))
    }
}

/// One reading of a process's `/proc` files.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Since the sampler started.
    pub at: Duration,
    /// `utime + stime`, in clock ticks.
    pub cpu_ticks: u64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
}

/// `utime + stime` (clock ticks) and `VmRSS` (KiB) of `pid` now.
pub fn read_proc(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the comm's closing parenthesis; utime and stime are fields 14 and 15
    // of the whole line, so 12 and 13 (0-based 11 and 12) after it.
    let rest = stat.rsplit_once(')').context("no ')' in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("stat too short")?
            .parse()
            .context("stat field not a number")
    };
    let cpu = tick(11)? + tick(12)?;
    let rss = crate::otlp_receiver::vm_rss_kib(pid).context("no VmRSS")?;
    Ok((cpu, rss))
}

/// Clock ticks per second (for [`ProcSample::cpu_ticks`]).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Samples a process's CPU and RSS on a thread until finished.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<ProcSample>>,
}

impl Sampler {
    /// Samples `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut out = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((cpu_ticks, rss_kib)) = read_proc(pid) {
                    out.push(ProcSample {
                        at: start.elapsed(),
                        cpu_ticks,
                        rss_kib,
                    });
                }
                std::thread::sleep(every);
            }
            out
        });
        Self { stop, handle }
    }

    /// Stops sampling; the samples in order.
    pub fn finish(self) -> Vec<ProcSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// What a [`pread_storm`] did.
#[derive(Debug, Clone, Copy)]
pub struct StormRun {
    /// `pread` calls made (all succeeded).
    pub ops: u64,
    /// From the first thread's start to the last one's end.
    pub elapsed: Duration,
}

impl StormRun {
    /// Operations a second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Bytes each `pread` reads.
pub const PREAD_SIZE: usize = 4096;

/// Writes `file` (1 MiB, so it stays in the page cache) for [`pread_storm`].
pub fn storm_file(file: &Path) -> Result<()> {
    std::fs::write(file, vec![0x5a_u8; 1 << 20])
        .with_context(|| format!("writing {}", file.display()))
}

/// `threads` threads named `comm` (so iostall's `--comm` keeps only them) `pread`
/// 4 KiB of `file` (cached) in a loop for `duration`, each at most `per_thread_rate`
/// a second when given.
pub fn pread_storm(
    file: &Path,
    threads: usize,
    duration: Duration,
    comm: &str,
    per_thread_rate: Option<u64>,
) -> Result<StormRun> {
    let f = Arc::new(File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let blocks = (f.metadata()?.len() / PREAD_SIZE as u64).max(1);
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let f = f.clone();
        let ops = ops.clone();
        let handle = std::thread::Builder::new()
            .name(comm.to_owned())
            .spawn(move || -> Result<()> {
                let mut buf = vec![0_u8; PREAD_SIZE];
                let mut n: u64 = 0;
                let begun = Instant::now();
                loop {
                    for _ in 0..256 {
                        let block = (n + t as u64) % blocks;
                        f.read_at(&mut buf, block * PREAD_SIZE as u64)
                            .context("pread")?;
                        n += 1;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if let Some(rate) = per_thread_rate {
                        let due = begun + Duration::from_secs_f64(n as f64 / rate as f64);
                        if due > now {
                            std::thread::sleep((due - now).min(deadline - now));
                        }
                    }
                }
                ops.fetch_add(n, Ordering::Relaxed);
                Ok(())
            })
            .context("spawning a storm thread")?;
        handles.push(handle);
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a storm thread panicked"))??;
    }
    Ok(StormRun {
        ops: ops.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// The keys (8 bytes, native order: the cgroup ids of `WATCHED_CGROUPS`) now in the
/// BPF map called `name` that process `pid` holds open.
pub fn bpf_map_u64_keys(pid: u32, name: &str) -> Result<Vec<u64>> {
    let mut keys = Vec::new();
    with_map(pid, name, |fd, key_size| {
        if key_size != 8 {
            bail!("{name} has {key_size}-byte keys, not 8");
        }
        walk_keys(fd, key_size, |k| {
            let mut b = [0_u8; 8];
            b.copy_from_slice(k);
            keys.push(u64::from_ne_bytes(b));
        })
    })?;
    Ok(keys)
}

/// Entries now in the BPF map called `name` that process `pid` holds open (found
/// through `/proc/<pid>/fdinfo`, so another iostall on the machine is not counted).
pub fn bpf_map_entries(pid: u32, name: &str) -> Result<usize> {
    with_map(pid, name, |fd, key_size| walk_keys(fd, key_size, |_| {}))
}

/// Calls `f` with the fd and key size of the BPF map called `name` that `pid` holds.
fn with_map<T>(pid: u32, name: &str, f: impl FnOnce(i32, usize) -> Result<T>) -> Result<T> {
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let info = aya::maps::MapInfo::from_id(id).context("map info by id")?;
        if info.name_as_str() != Some(name) {
            continue;
        }
        let fd = info.fd().context("map fd by id")?;
        return f(fd.as_fd().as_raw_fd(), info.key_size() as usize);
    }
    bail!("process {pid} holds no BPF map named {name}")
}

/// Walks a map's keys with `BPF_MAP_GET_NEXT_KEY` (what `bpftool map dump` does),
/// calling `each` with every key; returns how many.
fn walk_keys(fd: i32, key_size: usize, mut each: impl FnMut(&[u8])) -> Result<usize> {
    #[repr(C)]
    struct NextKeyAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0_u8; key_size];
    let mut next = vec![0_u8; key_size];
    let mut n = 0;
    let mut first = true;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr points at buffers of the map's key size that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(err).context("BPF_MAP_GET_NEXT_KEY");
        }
        n += 1;
        each(&next);
        first = false;
        std::mem::swap(&mut key, &mut next);
        if n > 10_000_000 {
            bail!("map walk does not end");
        }
    }
}

/// min, median and max of `values` (sorted copy); zeros when empty.
pub fn min_median_max(values: &[u64]) -> (u64, u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(b), Some(c)) => (*a, *b, *c),
        _ => (0, 0, 0),
    }
}
