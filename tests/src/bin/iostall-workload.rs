//! `iostall-workload`: does real file IO and reports, as JSON lines on stdout, how long
//! each timed syscall took, so end-to-end tests can compare iostall's reports with the
//! ground truth.
//!
//! Every reported operation is exactly one syscall, made through `libc` directly.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

/// Does real IO and prints one JSON object per timed operation.
#[derive(Debug, Parser)]
#[command(name = "iostall-workload", version)]
struct Cli {
    /// Cgroup directory to join (writes our pid to DIR/cgroup.procs) before any IO.
    #[arg(long, global = true, value_name = "DIR")]
    cgroup: Option<PathBuf>,

    /// Sets our comm (thread name, at most 15 bytes) before any IO.
    #[arg(long, global = true, value_name = "NAME")]
    comm: Option<String>,

    /// Right before the timed operations, brings blk-throttle into its steady state:
    /// repeats an unreported O_DIRECT write+fsync (write subcommands) or O_DIRECT read
    /// (read subcommands) of a scratch file `.iostall-prime` in the target directory
    /// until two in a row take >= 50 ms (at most 12), then unlinks it. Without this the
    /// first IO after an idle throttled cgroup goes through at once. The priming ops
    /// may themselves be slow (and visible to tracers) on `.iostall-prime`.
    #[arg(long, global = true)]
    prime_throttle: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes COUNT blocks of SIZE bytes to DIR/`<PREFIX>data` at offsets i*SIZE, each
    /// followed by fsync; reports every write and every fsync.
    WriteFsync {
        /// Directory to write in.
        #[arg(long)]
        dir: PathBuf,
        /// Number of write+fsync pairs.
        #[arg(long)]
        count: u64,
        /// Bytes per write.
        #[arg(long)]
        size: usize,
        /// Prefix of the data file's name (the file is `<PREFIX>data`).
        #[arg(long, default_value = "")]
        name_prefix: String,
        /// Open the file with O_DIRECT, so each write itself goes to the disk (and is as
        /// slow as the throttle); SIZE must then be a multiple of 512.
        #[arg(long)]
        direct: bool,
    },
    /// Reads COUNT blocks of SIZE bytes from FILE at offsets i*SIZE with O_DIRECT pread;
    /// reports every read. FILE is created or extended first if too short.
    ReadDirect {
        /// File to read.
        #[arg(long)]
        file: PathBuf,
        /// Number of reads.
        #[arg(long)]
        count: u64,
        /// Bytes per read (a multiple of 512 unless --no-direct).
        #[arg(long)]
        size: usize,
        /// Read through the page cache instead, after dropping FILE's cached pages
        /// with posix_fadvise(DONTNEED).
        #[arg(long)]
        no_direct: bool,
        /// Use sequential read(2) instead of pread(2) (reported as op "read").
        #[arg(long)]
        use_read: bool,
    },
    /// Creates and opens COUNT files DIR/open-{i} (O_CREAT|O_RDWR); reports every open.
    Open {
        /// Directory to create the files in.
        #[arg(long)]
        dir: PathBuf,
        /// Number of files.
        #[arg(long)]
        count: u64,
    },
    /// Opens existing FILES read-only, one after the other; reports every open. With a
    /// cold cache (drop_caches) each open reads its directory and inode from the disk.
    OpenExisting {
        /// Where `--prime-throttle` primes reads (must not hold FILES' directories).
        #[arg(long)]
        prime_dir: PathBuf,
        /// Files to open.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Benchmark: COUNT page-cache preads of SIZE bytes at offset 0; prints one summary.
    PreadLoop {
        /// File to read (created or extended to SIZE bytes first).
        #[arg(long)]
        file: PathBuf,
        /// Number of preads.
        #[arg(long)]
        count: u64,
        /// Bytes per pread.
        #[arg(long)]
        size: usize,
    },
    /// Benchmark: COUNT `getppid`s (a syscall iostall does not measure); prints one summary.
    GetppidLoop {
        /// Number of calls.
        #[arg(long)]
        count: u64,
    },
    /// Benchmark: COUNT x (write SIZE bytes into a pipe + read them back); prints one summary.
    PipeLoop {
        /// Number of write+read pairs.
        #[arg(long)]
        count: u64,
        /// Bytes per write and read.
        #[arg(long)]
        size: usize,
    },
    /// Benchmark: COUNT x (pwrite SIZE bytes at offset 0 + fdatasync); prints one summary.
    FsyncLoop {
        /// File to write (created if missing).
        #[arg(long)]
        file: PathBuf,
        /// Number of pwrite+fdatasync pairs.
        #[arg(long)]
        count: u64,
        /// Bytes per pwrite.
        #[arg(long)]
        size: usize,
    },
}

/// One timed syscall.
#[derive(Debug, Serialize)]
struct OpRecord<'a> {
    op: &'static str,
    path: &'a str,
    file_name: &'a str,
    parent: &'a str,
    pid: u32,
    tid: u32,
    comm: &'a str,
    start_unix_ns: u64,
    duration_ns: u64,
    bytes: u64,
    offset: u64,
}

/// Summary of a benchmark loop.
#[derive(Debug, Serialize)]
struct LoopSummary {
    op: &'static str,
    count: u64,
    size: usize,
    total_ns: u64,
    ns_per_op: f64,
    /// CPU time of the looping thread per op (kernel time included: a tracer's programs
    /// run in the syscall). Unlike wall time it does not count time other processes
    /// took on a shared machine.
    cpu_ns_per_op: f64,
}

/// Process-wide facts repeated in every record.
struct Ctx {
    pid: u32,
    tid: u32,
    comm: String,
    /// Whether to run `prime_throttle` right before the timed IO.
    prime: bool,
}

impl Ctx {
    /// Primes the throttle for `direction` in `dir` if `--prime-throttle` was given.
    fn maybe_prime(&self, dir: &Path, direction: Direction) -> Result<()> {
        if self.prime {
            prime_throttle(dir, direction)?;
        }
        Ok(())
    }
}

/// A path with its pieces prepared for records.
struct Target {
    c_path: CString,
    path: String,
    file_name: String,
    parent: String,
}

impl Target {
    fn new(path: &Path) -> Result<Target> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The parent directory's own name, as a dentry walk would see it.
        let parent = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            c_path,
            path: path.to_string_lossy().into_owned(),
            file_name,
            parent,
        })
    }
}

/// An owned file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(size: usize, fill: u8) -> Result<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(size.max(1), 4096)
            .context("buffer layout for O_DIRECT")?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            bail!("allocating a {size}-byte aligned buffer failed");
        }
        // SAFETY: ptr points to layout.size() writable bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, layout.size()) };
        Ok(AlignedBuf { ptr, layout })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into; these clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Runs one syscall, returning (its result, start in CLOCK_REALTIME ns, duration ns).
fn timed<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let start_unix = realtime_ns();
    let t0 = monotonic_ns();
    let r = f();
    let t1 = monotonic_ns();
    (r, start_unix, t1.saturating_sub(t0))
}

fn check_ret(ret: isize, what: &str, target: &Target) -> Result<usize> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{what} {}", target.path));
    }
    Ok(ret.unsigned_abs())
}

fn emit(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value).context("serializing a record")?;
    out.write_all(b"\n").context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

struct Reporter<'a> {
    ctx: &'a Ctx,
    out: std::io::StdoutLock<'static>,
}

impl Reporter<'_> {
    fn report(
        &mut self,
        op: &'static str,
        target: &Target,
        start_unix_ns: u64,
        duration_ns: u64,
        bytes: u64,
        offset: u64,
    ) -> Result<()> {
        let rec = OpRecord {
            op,
            path: &target.path,
            file_name: &target.file_name,
            parent: &target.parent,
            pid: self.ctx.pid,
            tid: self.ctx.tid,
            comm: &self.ctx.comm,
            start_unix_ns,
            duration_ns,
            bytes,
            offset,
        };
        emit(&mut self.out, &rec)
    }
}

fn open_fd(target: &Target, flags: libc::c_int) -> Result<Fd> {
    // SAFETY: c_path is NUL-terminated; mode is passed for O_CREAT.
    let fd = unsafe { libc::open(target.c_path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("open {}", target.path));
    }
    Ok(Fd(fd))
}

fn to_off(offset: u64) -> Result<libc::off_t> {
    libc::off_t::try_from(offset).with_context(|| format!("offset {offset} too large"))
}

fn offset_of(i: u64, size: usize) -> Result<u64> {
    i.checked_mul(size as u64)
        .with_context(|| format!("offset {i} * {size} overflows"))
}

/// Makes sure `target` is at least `len` bytes long, writing real data (not a hole)
/// and syncing it, without reporting anything.
fn ensure_filled(target: &Target, len: u64) -> Result<()> {
    let fd = open_fd(target, libc::O_CREAT | libc::O_RDWR)?;
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("fstat {}", target.path));
    }
    let have = u64::try_from(st.st_size).unwrap_or(0);
    if have >= len {
        return Ok(());
    }
    let chunk = vec![0x5au8; 1 << 20];
    let mut off = have;
    while off < len {
        let n = usize::try_from((len - off).min(chunk.len() as u64)).unwrap_or(chunk.len());
        // SAFETY: chunk holds at least n bytes.
        let ret = unsafe { libc::pwrite(fd.0, chunk.as_ptr().cast(), n, to_off(off)?) };
        let written = check_ret(ret, "filling (pwrite)", target)?;
        if written == 0 {
            bail!("filling {}: pwrite wrote nothing", target.path);
        }
        off += written as u64;
    }
    // SAFETY: fd is open.
    if unsafe { libc::fsync(fd.0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("fsync after filling {}", target.path));
    }
    Ok(())
}

fn write_fsync(
    rep: &mut Reporter<'_>,
    dir: &Path,
    count: u64,
    size: usize,
    prefix: &str,
    direct: bool,
) -> Result<()> {
    if direct && (size == 0 || !size.is_multiple_of(512)) {
        bail!("--size must be a non-zero multiple of 512 with --direct (got {size})");
    }
    let target = Target::new(&dir.join(format!("{prefix}data")))?;
    let flags = libc::O_CREAT | libc::O_RDWR | if direct { libc::O_DIRECT } else { 0 };
    let fd = open_fd(&target, flags)?;
    let buf = AlignedBuf::new(size, 0xa5)?;
    rep.ctx.maybe_prime(dir, Direction::Write)?;
    for i in 0..count {
        let offset = offset_of(i, size)?;
        let off = to_off(offset)?;
        // SAFETY: buf holds `size` bytes.
        let (ret, start, dur) = timed(|| unsafe { libc::pwrite(fd.0, buf.ptr.cast(), size, off) });
        let n = check_ret(ret, "pwrite", &target)?;
        if n != size {
            bail!("short pwrite to {}: {n} of {size} bytes", target.path);
        }
        rep.report("write", &target, start, dur, n as u64, offset)?;
        // SAFETY: fd is open.
        let (ret, start, dur) = timed(|| unsafe { libc::fsync(fd.0) });
        check_ret(ret as isize, "fsync", &target)?;
        rep.report("fsync", &target, start, dur, 0, 0)?;
    }
    Ok(())
}

fn read_direct(
    rep: &mut Reporter<'_>,
    file: &Path,
    count: u64,
    size: usize,
    no_direct: bool,
    use_read: bool,
) -> Result<()> {
    if !no_direct && (size == 0 || !size.is_multiple_of(512)) {
        bail!("--size must be a non-zero multiple of 512 for O_DIRECT (got {size})");
    }
    let target = Target::new(file)?;
    ensure_filled(&target, offset_of(count, size)?)?;
    let flags = if no_direct {
        libc::O_RDONLY
    } else {
        libc::O_RDONLY | libc::O_DIRECT
    };
    let fd = open_fd(&target, flags)?;
    if no_direct {
        // SAFETY: fd is open.
        let rc = unsafe { libc::posix_fadvise(fd.0, 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .with_context(|| format!("posix_fadvise(DONTNEED) {}", target.path));
        }
    }
    let buf = AlignedBuf::new(size, 0)?;
    rep.ctx.maybe_prime(&parent_dir(file), Direction::Read)?;
    for i in 0..count {
        let offset = offset_of(i, size)?;
        let off = to_off(offset)?;
        let (op, (ret, start, dur)) = if use_read {
            // SAFETY: buf holds at least `size` writable bytes.
            (
                "read",
                timed(|| unsafe { libc::read(fd.0, buf.ptr.cast(), size) }),
            )
        } else {
            // SAFETY: as above.
            (
                "pread",
                timed(|| unsafe { libc::pread(fd.0, buf.ptr.cast(), size, off) }),
            )
        };
        let n = check_ret(ret, op, &target)?;
        if n != size {
            bail!("short {op} from {}: {n} of {size} bytes", target.path);
        }
        rep.report(op, &target, start, dur, n as u64, offset)?;
    }
    Ok(())
}

fn open_many(rep: &mut Reporter<'_>, dir: &Path, count: u64) -> Result<()> {
    let mut fds = Vec::new();
    rep.ctx.maybe_prime(dir, Direction::Write)?;
    for i in 0..count {
        let target = Target::new(&dir.join(format!("open-{i}")))?;
        let flags = libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC;
        // SAFETY: c_path is NUL-terminated; mode is passed for O_CREAT.
        let (fd, start, dur) =
            timed(|| unsafe { libc::open(target.c_path.as_ptr(), flags, 0o644) });
        check_ret(fd as isize, "open", &target)?;
        fds.push(Fd(fd));
        rep.report("open", &target, start, dur, 0, 0)?;
    }
    drop(fds);
    Ok(())
}

fn open_existing(rep: &mut Reporter<'_>, prime_dir: &Path, files: &[PathBuf]) -> Result<()> {
    let mut fds = Vec::new();
    rep.ctx.maybe_prime(prime_dir, Direction::Read)?;
    for file in files {
        let target = Target::new(file)?;
        // SAFETY: c_path is NUL-terminated.
        let (fd, start, dur) = timed(|| unsafe {
            libc::open(target.c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
        });
        check_ret(fd as isize, "open", &target)?;
        fds.push(Fd(fd));
        rep.report("open", &target, start, dur, 0, 0)?;
    }
    drop(fds);
    Ok(())
}

fn pread_loop(ctx: &Ctx, file: &Path, count: u64, size: usize) -> Result<()> {
    let target = Target::new(file)?;
    ensure_filled(&target, size as u64)?;
    let fd = open_fd(&target, libc::O_RDONLY)?;
    let mut buf = vec![0u8; size];
    // One warm-up read so the loop measures page-cache hits only.
    // SAFETY: buf holds `size` writable bytes.
    let ret = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), size, 0) };
    check_ret(ret, "pread", &target)?;
    ctx.maybe_prime(&parent_dir(file), Direction::Read)?;
    let c0 = thread_cpu_ns();
    let t0 = monotonic_ns();
    for _ in 0..count {
        // SAFETY: as above.
        let ret = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), size, 0) };
        let n = check_ret(ret, "pread", &target)?;
        if n != size {
            bail!("short pread from {}: {n} of {size} bytes", target.path);
        }
    }
    let total = monotonic_ns().saturating_sub(t0);
    let cpu = thread_cpu_ns().saturating_sub(c0);
    summary("pread-loop", count, size, total, cpu)
}

fn getppid_loop(count: u64) -> Result<()> {
    let c0 = thread_cpu_ns();
    let t0 = monotonic_ns();
    for _ in 0..count {
        // SAFETY: no preconditions; black_box keeps the call in the loop.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    let total = monotonic_ns().saturating_sub(t0);
    let cpu = thread_cpu_ns().saturating_sub(c0);
    summary("getppid-loop", count, 0, total, cpu)
}

fn pipe_loop(count: u64, size: usize) -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let (r, w) = (Fd(fds[0]), Fd(fds[1]));
    let mut buf = vec![0x5au8; size];
    let c0 = thread_cpu_ns();
    let t0 = monotonic_ns();
    for _ in 0..count {
        // SAFETY: buf holds `size` bytes; both ends are open.
        let wrote = unsafe { libc::write(w.0, buf.as_ptr().cast(), size) };
        // SAFETY: as above.
        let read = unsafe { libc::read(r.0, buf.as_mut_ptr().cast(), size) };
        if wrote != size as isize || read != size as isize {
            bail!("pipe write/read: {wrote}/{read} of {size} bytes");
        }
    }
    let total = monotonic_ns().saturating_sub(t0);
    let cpu = thread_cpu_ns().saturating_sub(c0);
    summary("pipe-loop", count, size, total, cpu)
}

fn fsync_loop(ctx: &Ctx, file: &Path, count: u64, size: usize) -> Result<()> {
    let target = Target::new(file)?;
    let fd = open_fd(&target, libc::O_CREAT | libc::O_RDWR)?;
    let buf = vec![0xa5u8; size];
    ctx.maybe_prime(&parent_dir(file), Direction::Write)?;
    let c0 = thread_cpu_ns();
    let t0 = monotonic_ns();
    for _ in 0..count {
        // SAFETY: buf holds `size` bytes.
        let ret = unsafe { libc::pwrite(fd.0, buf.as_ptr().cast(), size, 0) };
        let n = check_ret(ret, "pwrite", &target)?;
        if n != size {
            bail!("short pwrite to {}: {n} of {size} bytes", target.path);
        }
        // SAFETY: fd is open.
        let ret = unsafe { libc::fdatasync(fd.0) };
        check_ret(ret as isize, "fdatasync", &target)?;
    }
    let total = monotonic_ns().saturating_sub(t0);
    let cpu = thread_cpu_ns().saturating_sub(c0);
    summary("fsync-loop", count, size, total, cpu)
}

fn summary(op: &'static str, count: u64, size: usize, total_ns: u64, cpu_ns: u64) -> Result<()> {
    let per_op = |ns: u64| {
        if count == 0 {
            0.0
        } else {
            ns as f64 / count as f64
        }
    };
    let ns_per_op = per_op(total_ns);
    let s = LoopSummary {
        op,
        count,
        size,
        total_ns,
        ns_per_op,
        cpu_ns_per_op: per_op(cpu_ns),
    };
    emit(&mut std::io::stdout().lock(), &s)
}

fn set_comm(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 {
        bail!("--comm must be 1 to 15 bytes (the kernel's TASK_COMM_LEN), got {name:?}");
    }
    let c = CString::new(name).context("--comm contains a NUL byte")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    Ok(())
}

fn get_comm() -> Result<String> {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_GET_NAME)");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn join_cgroup(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing our pid to {}", procs.display()))
}

/// The directory `file` is in.
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// How long a priming IO must take to count as "the throttle made us wait".
const PRIME_THROTTLED_NS: u64 = 50_000_000;

/// Consecutive throttled priming IOs that mean the throttle is in its steady state.
const PRIME_STEADY: u32 = 2;

/// Most priming IOs per direction before giving up (e.g. when not throttled at all).
const PRIME_MAX_IOS: u32 = 12;

/// Repeats `io` until it was throttled `PRIME_STEADY` times in a row (or gives up).
fn prime_direction(mut io: impl FnMut() -> Result<u64>) -> Result<()> {
    let mut slow_in_a_row = 0;
    for _ in 0..PRIME_MAX_IOS {
        if io()? >= PRIME_THROTTLED_NS {
            slow_in_a_row += 1;
            if slow_in_a_row >= PRIME_STEADY {
                break;
            }
        } else {
            slow_in_a_row = 0;
        }
    }
    Ok(())
}

/// Which throttle direction to prime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Write,
    Read,
}

/// Brings blk-throttle into its steady state for one direction; see `--prime-throttle`.
///
/// Must run right before the timed IO: an idle gap of a throttle slice (100 ms) in that
/// direction resets the throttle and makes the next IO free again.
fn prime_throttle(dir: &Path, direction: Direction) -> Result<()> {
    let path = dir.join(".iostall-prime");
    let target = Target::new(&path)?;
    let fd = open_fd(&target, libc::O_CREAT | libc::O_RDWR | libc::O_DIRECT)?;
    let buf = AlignedBuf::new(4096, 0x11)?;
    // SAFETY: buf holds 4096 bytes; fd is open.
    let ret = unsafe { libc::pwrite(fd.0, buf.ptr.cast(), 4096, 0) };
    check_ret(ret, "priming pwrite", &target)?;
    match direction {
        Direction::Write => prime_direction(|| {
            // SAFETY: buf holds 4096 bytes; fd is open.
            let (ret, _, dur) = timed(|| unsafe {
                let r = libc::pwrite(fd.0, buf.ptr.cast(), 4096, 0);
                if r < 0 { r } else { libc::fsync(fd.0) as isize }
            });
            check_ret(ret, "priming pwrite+fsync", &target)?;
            Ok(dur)
        })?,
        Direction::Read => prime_direction(|| {
            // SAFETY: buf holds 4096 writable bytes; fd is open.
            let (ret, _, dur) = timed(|| unsafe { libc::pread(fd.0, buf.ptr.cast(), 4096, 0) });
            check_ret(ret, "priming pread", &target)?;
            Ok(dur)
        })?,
    }
    drop(fd);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", target.path))
}

fn run(cli: Cli) -> Result<()> {
    if let Some(name) = &cli.comm {
        set_comm(name)?;
    }
    if let Some(dir) = &cli.cgroup {
        join_cgroup(dir)?;
    }
    let ctx = Ctx {
        pid: std::process::id(),
        // SAFETY: gettid has no preconditions.
        tid: u32::try_from(unsafe { libc::gettid() }).context("gettid")?,
        comm: get_comm()?,
        prime: cli.prime_throttle,
    };
    let mut rep = Reporter {
        ctx: &ctx,
        out: std::io::stdout().lock(),
    };
    match cli.command {
        Cmd::WriteFsync {
            dir,
            count,
            size,
            name_prefix,
            direct,
        } => write_fsync(&mut rep, &dir, count, size, &name_prefix, direct),
        Cmd::ReadDirect {
            file,
            count,
            size,
            no_direct,
            use_read,
        } => read_direct(&mut rep, &file, count, size, no_direct, use_read),
        Cmd::Open { dir, count } => open_many(&mut rep, &dir, count),
        Cmd::OpenExisting { prime_dir, files } => open_existing(&mut rep, &prime_dir, &files),
        Cmd::PreadLoop { file, count, size } => {
            drop(rep);
            pread_loop(&ctx, &file, count, size)
        }
        Cmd::GetppidLoop { count } => getppid_loop(count),
        Cmd::PipeLoop { count, size } => pipe_loop(count, size),
        Cmd::FsyncLoop { file, count, size } => {
            drop(rep);
            fsync_loop(&ctx, &file, count, size)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("iostall-workload: error: {e:#}");
        std::process::exit(1);
    }
}
