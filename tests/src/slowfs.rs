//! A real, slow ext4 (or xfs, or btrfs: [`FsType`]) filesystem for end-to-end tests, and
//! related host helpers.
//!
//! [`SlowExt4`] builds a sparse backing file under `/tmp`, attaches it to a loop device
//! with `--direct-io=on`, formats it as ext4 ([`SlowExt4::create_fs`]: xfs or btrfs),
//! mounts it, and creates a leaf cgroup v1
//! blkio cgroup whose `blkio.throttle.*_iops_device` limits apply to that loop device.
//! The limit only works for processes placed in that leaf cgroup, so the process doing
//! the IO must be added with [`SlowExt4::add_pid`] (or write its own pid into
//! `cgroup.procs`, as `iostall-workload --cgroup` does).
//!
//! Every fixture tears itself down on drop, even while a test is unwinding from a panic.
//!
//! # How the throttle behaves (measured, kernel 6.18)
//!
//! blk-throttle limits an average rate, not each IO. The first IO after the cgroup's
//! direction was idle for a throttle slice (100 ms) goes through at once, and at 10
//! IOPS about one IO in ten consecutive ones is also free (its slice accounting drifts
//! because each IO takes ~108 ms, not 100). Back-to-back 4 KiB write+fsync at 10 write
//! IOPS otherwise take ~108 ms each, at 5 IOPS ~208 ms, unthrottled ~1 ms. Use
//! `iostall-workload --prime-throttle` to get the throttle into its steady state right
//! before the timed IO, and keep runs short (<= 5 ops at 10 IOPS) when every single op
//! must be slow, or 5 IOPS for longer runs (30 back-to-back ops were all slow).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Root of the cgroup v1 blkio hierarchy on the test machines.
pub const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

/// Where tracefs is (or gets) mounted.
pub const TRACEFS_MOUNT: &str = "/sys/kernel/tracing";

/// Where bpffs is (or gets) mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Counter making cgroup names unique within this process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Serializes loop device allocation and kernel mounts made from this process.
pub(crate) static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// Panics with a clear message unless the effective user is root.
///
/// End-to-end tests call this first: without root they must fail loudly, never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (effective uid is {euid}): it creates loop devices, mounts \
         filesystems and cgroups; run it as root, e.g. `sudo -E cargo test -p iostall-tests`"
    );
}

/// One line of `/proc/self/mountinfo` reduced to what the fixtures need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount point, with mountinfo's octal escapes decoded.
    pub mount_point: PathBuf,
    /// The filesystem type (`ext4`, `tmpfs`, `tracefs`, ...).
    pub fs_type: String,
    /// The mount source (a device path or a pseudo name such as `tmpfs`).
    pub source: String,
}

/// Decodes the `\NNN` octal escapes mountinfo uses for spaces, tabs, newlines and `\`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Parses `/proc/self/mountinfo`.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut entries = Vec::new();
    for line in text.lines() {
        // Format: id parent maj:min root mount-point options [optional...] - type source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            bail!("malformed mountinfo line (no ' - ' separator): {line:?}");
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            bail!("malformed mountinfo line (no mount point): {line:?}");
        };
        let mut rest = after.split(' ');
        let fs_type = rest.next().unwrap_or_default().to_owned();
        let source = rest.next().unwrap_or_default().to_owned();
        entries.push(MountEntry {
            mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(
                mount_point,
            ))),
            fs_type,
            source,
        });
    }
    Ok(entries)
}

/// Whether anything is mounted exactly at `path` according to `/proc/self/mountinfo`.
pub fn is_mounted(path: &Path) -> Result<bool> {
    Ok(mounts()?.iter().any(|m| m.mount_point == path))
}

/// Mounts tracefs at [`TRACEFS_MOUNT`] and bpffs at [`BPFFS_MOUNT`] unless already mounted.
///
/// A fresh test machine has neither; without tracefs, syscall tracepoints are "not found".
pub fn ensure_kernel_mounts() -> Result<()> {
    let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (fs_type, target) in [("tracefs", TRACEFS_MOUNT), ("bpf", BPFFS_MOUNT)] {
        let mounted = mounts()?
            .iter()
            .any(|m| m.fs_type == fs_type && m.mount_point == Path::new(target));
        if mounted {
            continue;
        }
        run("mount", &["-t", fs_type, fs_type, target]).with_context(|| {
            format!("mounting {fs_type} at {target} (needs root and a kernel with {fs_type})")
        })?;
        let now = mounts()?
            .iter()
            .any(|m| m.fs_type == fs_type && m.mount_point == Path::new(target));
        if !now {
            bail!("mounted {fs_type} at {target} but it does not show in /proc/self/mountinfo");
        }
    }
    Ok(())
}

/// Runs a command to completion and returns its stdout; fails with its stderr otherwise.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting `{program}`"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{program}` printed non-UTF-8"))
}

/// Like [`run`] for commands whose arguments include paths.
pub(crate) fn run_paths(program: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting `{program}`"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{program}` printed non-UTF-8"))
}

/// Creates a unique temporary directory under `/tmp` that is NOT removed automatically.
pub(crate) fn make_temp_dir(prefix: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .context("creating a temporary directory under /tmp")?;
    Ok(dir.keep())
}

/// Unmounts `path`, retrying while it is busy, then falls back to a lazy unmount.
///
/// Returns whether the lazy fallback was used (the filesystem may then live on until
/// its last user goes away).
pub(crate) fn unmount(path: &Path) -> Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("mount point {} contains a NUL byte", path.display()))?;
    let mut last_err = None;
    for _ in 0..20 {
        // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::umount2(c_path.as_ptr(), 0) };
        if rc == 0 {
            return Ok(false);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => {
                last_err = Some(err);
                thread::sleep(Duration::from_millis(100));
            }
            // Not mounted (any more): nothing to do.
            Some(libc::EINVAL) if !is_mounted(path).unwrap_or(true) => return Ok(false),
            _ => return Err(err).with_context(|| format!("umount {}", path.display())),
        }
    }
    eprintln!(
        "iostall-tests: {} still busy after retries ({}), detaching lazily",
        path.display(),
        last_err.map(|e| e.to_string()).unwrap_or_default()
    );
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("umount -l {}", path.display()));
    }
    Ok(true)
}

/// The filesystem a fixture formats its loop device with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsType {
    /// ext4, 4 KiB blocks, inode tables and journal initialised at mkfs.
    #[default]
    Ext4,
    /// xfs (`mkfs.xfs`, from `xfsprogs`).
    Xfs,
    /// btrfs (`mkfs.btrfs`, from `btrfs-progs`).
    Btrfs,
}

impl FsType {
    /// The name `mount -t` and `/proc/self/mountinfo` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
        }
    }

    /// The smallest filesystem its mkfs makes, in MiB: `mkfs.xfs` refuses under 300 MiB
    /// (xfsprogs 6.1: "Filesystem must be larger than 300MB"), `mkfs.btrfs` under
    /// 109 MiB (btrfs-progs 6.2).
    pub fn min_size_mib(self) -> u64 {
        match self {
            Self::Ext4 => 8,
            Self::Xfs => 300,
            Self::Btrfs => 128,
        }
    }
}

/// Options for [`SlowExt4::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowExt4Options {
    /// Size of the (sparse) backing file and filesystem, in MiB.
    pub size_mib: u64,
    /// Write IOPS allowed to processes in the fixture's cgroup; `None` means unthrottled.
    pub write_iops: Option<u32>,
    /// Read IOPS allowed to processes in the fixture's cgroup; `None` means unthrottled.
    pub read_iops: Option<u32>,
}

impl Default for SlowExt4Options {
    fn default() -> Self {
        Self {
            size_mib: 64,
            write_iops: None,
            read_iops: None,
        }
    }
}

/// A mounted ext4 filesystem on a direct-IO loop device, plus a blkio cgroup that
/// throttles IO to that loop device for the processes put into it.
///
/// Dropping it moves any remaining processes back to the root blkio cgroup, removes
/// the cgroup, unmounts, detaches the loop device and deletes the temporary directory.
#[derive(Debug)]
pub struct SlowExt4 {
    temp_dir: PathBuf,
    backing_file: PathBuf,
    mount_point: PathBuf,
    loop_device: Option<PathBuf>,
    device: (u32, u32),
    mounted: bool,
    cgroup_dir: Option<PathBuf>,
}

impl SlowExt4 {
    /// Builds the ext4 filesystem and its cgroup; see the module documentation.
    ///
    /// On error, whatever was already set up is torn down again.
    pub fn create(opts: SlowExt4Options) -> Result<SlowExt4> {
        Self::create_fs(opts, FsType::Ext4)
    }

    /// [`SlowExt4::create`] with a filesystem of type `fs`; `size_mib` must be at least
    /// [`FsType::min_size_mib`].
    pub fn create_fs(opts: SlowExt4Options, fs_type: FsType) -> Result<SlowExt4> {
        if opts.size_mib < fs_type.min_size_mib() {
            bail!(
                "size_mib must be at least {} for {} (got {})",
                fs_type.min_size_mib(),
                fs_type.name(),
                opts.size_mib
            );
        }
        let temp_dir = make_temp_dir("iostall-slowfs-")?;
        let mut fs = SlowExt4 {
            backing_file: temp_dir.join("backing.img"),
            mount_point: temp_dir.join("mnt"),
            temp_dir,
            loop_device: None,
            device: (0, 0),
            mounted: false,
            cgroup_dir: None,
        };
        // From here on, `?` drops `fs`, which cleans up what exists so far.

        let file = File::create(&fs.backing_file)
            .with_context(|| format!("creating {}", fs.backing_file.display()))?;
        file.set_len(opts.size_mib * 1024 * 1024)
            .with_context(|| format!("sizing {}", fs.backing_file.display()))?;
        drop(file);
        fs::create_dir(&fs.mount_point)
            .with_context(|| format!("creating {}", fs.mount_point.display()))?;

        let loop_dev = attach_loop(&fs.backing_file, true)?;
        fs.loop_device = Some(loop_dev.clone());
        fs.device = read_dev_numbers(&loop_dev)?;

        format_and_mount(&loop_dev, &fs.mount_point, fs_type)?;
        fs.mounted = true;

        remove_stale_cgroups();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let cgroup =
            Path::new(BLKIO_ROOT).join(format!("iostall-test-{}-{id}", std::process::id()));
        fs::create_dir(&cgroup).with_context(|| {
            format!(
                "creating blkio cgroup {} (is cgroup v1 blkio mounted at {BLKIO_ROOT}?)",
                cgroup.display()
            )
        })?;
        fs.cgroup_dir = Some(cgroup);
        if let Some(iops) = opts.write_iops {
            fs.set_write_iops(iops)?;
        }
        if let Some(iops) = opts.read_iops {
            fs.set_read_iops(iops)?;
        }
        Ok(fs)
    }

    /// Where the ext4 filesystem is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The leaf blkio cgroup whose processes are throttled.
    pub fn cgroup_dir(&self) -> &Path {
        // Always set once `create` has returned.
        self.cgroup_dir.as_deref().unwrap_or(Path::new(BLKIO_ROOT))
    }

    /// The loop device's (major, minor) numbers.
    pub fn device(&self) -> (u32, u32) {
        self.device
    }

    /// The loop device node, e.g. `/dev/loop3`.
    pub fn loop_device(&self) -> &Path {
        self.loop_device.as_deref().unwrap_or(Path::new(""))
    }

    /// The sparse file backing the loop device.
    pub fn backing_file(&self) -> &Path {
        &self.backing_file
    }

    /// Moves process `pid` (all its threads) into the throttled cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        let procs = self.cgroup_dir().join("cgroup.procs");
        write_file(&procs, &format!("{pid}\n"))
            .with_context(|| format!("moving pid {pid} into {}", self.cgroup_dir().display()))
    }

    /// Sets the write IOPS limit of the cgroup for this device; 0 removes the limit.
    pub fn set_write_iops(&self, iops: u32) -> Result<()> {
        self.set_limit("blkio.throttle.write_iops_device", iops)
    }

    /// Sets the read IOPS limit of the cgroup for this device; 0 removes the limit.
    pub fn set_read_iops(&self, iops: u32) -> Result<()> {
        self.set_limit("blkio.throttle.read_iops_device", iops)
    }

    fn set_limit(&self, file: &str, value: u32) -> Result<()> {
        let (major, minor) = self.device;
        let path = self.cgroup_dir().join(file);
        write_file(&path, &format!("{major}:{minor} {value}\n"))
            .with_context(|| format!("setting {} to {major}:{minor} {value}", path.display()))
    }

    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if let Some(cgroup) = self.cgroup_dir.take()
            && let Err(e) = remove_cgroup(&cgroup)
        {
            errors.push(e);
        }
        let mut lazily = false;
        if self.mounted {
            match unmount(&self.mount_point) {
                Ok(lazy) => {
                    self.mounted = false;
                    lazily = lazy;
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(dev) = self.loop_device.take() {
            match run_paths("losetup", &["-d".as_ref(), dev.as_os_str()]) {
                // After a lazy unmount the filesystem still holds the device; the
                // kernel detaches it (auto-clear) once the last user goes away.
                Ok(_) if lazily => {}
                Ok(_) => {
                    if let Err(e) = wait_loop_detached(&dev, &self.backing_file) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(e.context(format!("detaching {}", dev.display()))),
            }
        }
        if self.mounted {
            // Never delete recursively through a filesystem that is still mounted.
            errors.push(anyhow::anyhow!(
                "leaving {} in place because {} is still mounted",
                self.temp_dir.display(),
                self.mount_point.display()
            ));
        } else if let Err(e) = fs::remove_dir_all(&self.temp_dir) {
            errors.push(
                anyhow::Error::new(e).context(format!("removing {}", self.temp_dir.display())),
            );
        }
        errors
    }
}

impl Drop for SlowExt4 {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("iostall-tests: SlowExt4 teardown: {e:#}");
        }
    }
}

/// Whether sysfs says loop device `dev` is backed by `backing` (possibly deleted).
pub fn loop_backed_by(dev: &Path, backing: &Path) -> Result<bool> {
    let name = dev
        .file_name()
        .with_context(|| format!("odd loop device path {}", dev.display()))?;
    let sys = Path::new("/sys/block").join(name).join("loop/backing_file");
    match fs::read(&sys) {
        // Detached devices have no `loop/` directory; a reused one names another file.
        Ok(b) => Ok(
            b.strip_suffix(b"\n").unwrap_or(&b) == backing.as_os_str().as_bytes()
                || b.starts_with(&[backing.as_os_str().as_bytes(), b" (deleted)"].concat()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", sys.display())),
    }
}

/// Waits until `losetup -d` really detached `dev`.
///
/// When something else (a concurrent `losetup`, `blkid`, ...) has the device open, the
/// kernel only marks it auto-clear and detaches it on the last close.
pub(crate) fn wait_loop_detached(dev: &Path, backing: &Path) -> Result<()> {
    for _ in 0..100 {
        if !loop_backed_by(dev, backing)? {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} is still attached to {} 5 s after `losetup -d` (it will detach on last close)",
        dev.display(),
        backing.display()
    )
}

/// Attaches `file` to a free loop device (with `--direct-io=on` when `direct_io`), under
/// the set-up lock so concurrent fixtures never race for the same free device.
pub(crate) fn attach_loop(file: &Path, direct_io: bool) -> Result<PathBuf> {
    let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut args: Vec<&std::ffi::OsStr> = vec!["--find".as_ref(), "--show".as_ref()];
    if direct_io {
        args.push("--direct-io=on".as_ref());
    }
    args.push(file.as_os_str());
    let dev = run_paths("losetup", &args)
        .with_context(|| format!("attaching {} to a loop device", file.display()))?;
    Ok(PathBuf::from(dev.trim()))
}

/// Formats `dev` as `fs_type`, then mounts it on `mount_point`. ext4 gets 4 KiB blocks and
/// every inode table and the journal initialised now (no ext4lazyinit IO in the
/// background while tests measure); xfs and btrfs skip the discard of the whole device
/// (`-K`), which a capped device would serve at its IOPS.
pub(crate) fn format_and_mount(dev: &Path, mount_point: &Path, fs_type: FsType) -> Result<()> {
    let args: &[&str] = match fs_type {
        // Small filesystems would get 1 KiB blocks; use what real disks use.
        FsType::Ext4 => &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
        ],
        FsType::Xfs | FsType::Btrfs => &["-q", "-f", "-K"],
    };
    let mkfs = format!("mkfs.{}", fs_type.name());
    let mut argv: Vec<&std::ffi::OsStr> = Vec::new();
    if fs_type == FsType::Btrfs {
        // mkfs.btrfs looks at every mount to see whether `dev` is in use, and gives up
        // on a FUSE mount whose server died ("cannot check mount status … Transport
        // endpoint is not connected"; a killed test leaves one). It runs in a private
        // mount namespace with the FUSE mounts detached there, and only there.
        argv.extend(
            [
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "awk '$3 ~ /^fuse/ { print $2 }' /proc/self/mounts | \
                 while read -r m; do umount -l \"$m\" 2>/dev/null || true; done; exec \"$@\"",
                "sh",
            ]
            .map(std::ffi::OsStr::new),
        );
        argv.push(mkfs.as_ref());
    }
    argv.extend(args.iter().map(std::ffi::OsStr::new));
    argv.push(dev.as_os_str());
    let program = if fs_type == FsType::Btrfs {
        "unshare"
    } else {
        mkfs.as_str()
    };
    run_paths(program, &argv)
        .with_context(|| format!("formatting the loop device as {}", fs_type.name()))?;
    mount_fs(dev, mount_point, fs_type)
}

/// Mounts the `fs_type` filesystem on `dev` at `mount_point`.
pub(crate) fn mount_fs(dev: &Path, mount_point: &Path, fs_type: FsType) -> Result<()> {
    run_paths(
        "mount",
        &[
            "-t".as_ref(),
            fs_type.name().as_ref(),
            dev.as_os_str(),
            mount_point.as_os_str(),
        ],
    )
    .with_context(|| format!("mounting the {} filesystem", fs_type.name()))?;
    Ok(())
}

/// Reads `MAJ:MIN` of a block device node from `/sys/block/<name>/dev`.
pub(crate) fn read_dev_numbers(dev: &Path) -> Result<(u32, u32)> {
    let name = dev
        .file_name()
        .with_context(|| format!("losetup printed an odd device path {}", dev.display()))?;
    let sys = Path::new("/sys/block").join(name).join("dev");
    let text = fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .with_context(|| format!("{} holds {text:?}, not MAJ:MIN", sys.display()))?;
    let major = major
        .parse()
        .with_context(|| format!("bad major in {}: {text:?}", sys.display()))?;
    let minor = minor
        .parse()
        .with_context(|| format!("bad minor in {}: {text:?}", sys.display()))?;
    Ok((major, minor))
}

/// Writes `contents` to a cgroup/sysfs file in one `write` call.
fn write_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(contents.as_bytes())
}

/// Removes `iostall-test-<pid>-<n>` cgroups left behind by test processes that died
/// without running `Drop` (e.g. killed by a signal). Errors are only printed.
fn remove_stale_cgroups() {
    let Ok(entries) = fs::read_dir(BLKIO_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("iostall-test-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if let Err(e) = remove_cgroup(&entry.path()) {
            eprintln!("iostall-tests: removing stale cgroup: {e:#}");
        }
    }
}

/// Moves every process out of `cgroup` into the root blkio cgroup, then removes it.
fn remove_cgroup(cgroup: &Path) -> Result<()> {
    let root_procs = Path::new(BLKIO_ROOT).join("cgroup.procs");
    let procs = cgroup.join("cgroup.procs");
    let mut last_err = None;
    for _ in 0..50 {
        let pids = match fs::read_to_string(&procs) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", procs.display()));
            }
        };
        for pid in pids.split_whitespace() {
            if let Err(e) = write_file(&root_procs, &format!("{pid}\n")) {
                // The process may just have exited.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    eprintln!(
                        "iostall-tests: moving pid {pid} out of {}: {e}",
                        cgroup.display()
                    );
                }
            }
        }
        match fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                last_err = Some(e);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(anyhow::anyhow!(
        "removing cgroup {}: {}",
        cgroup.display(),
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A small tmpfs mounted in a fresh temporary directory; unmounted and removed on drop.
///
/// Used to check that operations on non-ext4 filesystems are NOT reported.
#[derive(Debug)]
pub struct TmpfsDir {
    temp_dir: PathBuf,
    mount_point: PathBuf,
    mounted: bool,
}

impl TmpfsDir {
    /// Mounts a tmpfs of `size_mib` MiB at `<new temp dir>/mnt`.
    pub fn create(size_mib: u64) -> Result<TmpfsDir> {
        let temp_dir = make_temp_dir("iostall-tmpfs-")?;
        let mut dir = TmpfsDir {
            mount_point: temp_dir.join("mnt"),
            temp_dir,
            mounted: false,
        };
        fs::create_dir(&dir.mount_point)
            .with_context(|| format!("creating {}", dir.mount_point.display()))?;
        let size = format!("size={size_mib}m");
        run_paths(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                size.as_ref(),
                "iostall-tmpfs".as_ref(),
                dir.mount_point.as_os_str(),
            ],
        )
        .context("mounting tmpfs")?;
        dir.mounted = true;
        Ok(dir)
    }

    /// Where the tmpfs is mounted.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for TmpfsDir {
    fn drop(&mut self) {
        if self.mounted {
            match unmount(&self.mount_point) {
                Ok(_) => self.mounted = false,
                Err(e) => eprintln!("iostall-tests: TmpfsDir teardown: {e:#}"),
            }
        }
        if self.mounted {
            eprintln!(
                "iostall-tests: TmpfsDir teardown: leaving {} because it is still mounted",
                self.temp_dir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.temp_dir) {
            eprintln!(
                "iostall-tests: TmpfsDir teardown: removing {}: {e}",
                self.temp_dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(r"/a\134b"), b"/a\\b");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/tail\04"), b"/tail\\04");
    }
}
