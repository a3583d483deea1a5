//! A disk capped at N IOPS at the device, as a cloud volume is (the seed's gp2/gp3 or
//! Azure disk): every IO of every process waits, the journal's, the metadata's and the
//! directory fsyncs' included, whatever cgroup it comes from.
//!
//! Made of real parts: a FUSE filesystem served by this process ([`fuser`], no libfuse)
//! holds one file, `disk.img`, opened in direct-IO mode so no page cache hides the
//! requests. It serves one request at a time, at most `iops` a second, from a backing
//! file. A loop device over `disk.img` carries a real ext4 filesystem (or xfs, or btrfs:
//! [`CappedExt4::create_fs`]). The cgroup
//! fixture ([`crate::slowfs::SlowExt4`]) only slows its own cgroup's IO and needs cgroup
//! v1 `blkio`; this one needs neither.
use std::{
    ffi::OsStr,
    fs::{self, File},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::slowfs::{
    FsType, SETUP_LOCK, attach_loop, format_and_mount, make_temp_dir, mount_fs, read_dev_numbers,
    run_paths, unmount, wait_loop_detached,
};

const DISK_INO: u64 = 2;
const DISK_NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(3600);

/// What the FUSE side shares with the fixture.
#[derive(Debug, Default)]
struct Pace {
    /// Requests a second; 0 = uncapped.
    iops: AtomicU64,
    /// When the next request may be served.
    next: Mutex<Option<Instant>>,
    /// Requests served (reads, writes, fsyncs).
    served: AtomicU64,
}

impl Pace {
    /// Waits for this request's slot: one request every 1/iops s, none in a burst.
    fn wait(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let iops = self.iops.load(Ordering::Relaxed);
        if iops == 0 {
            return;
        }
        let gap = Duration::from_secs_f64(1.0 / iops as f64);
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + gap);
            slot
        };
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
    }
}

/// The FUSE filesystem: a root directory holding `disk.img`.
struct CappedFs {
    backing: File,
    size: u64,
    pace: Arc<Pace>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let (kind, perm, nlink) = if ino == DISK_INO {
        (FileType::RegularFile, 0o600, 1)
    } else {
        (FileType::Directory, 0o755, 2)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Filesystem for CappedFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) == 1 && name == DISK_NAME {
            reply.entry(&TTL, &attr(DISK_INO, self.size), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 => reply.attr(&TTL, &attr(1, 0)),
            DISK_INO => reply.attr(&TTL, &attr(DISK_INO, self.size)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if u64::from(ino) == DISK_INO {
            // Direct IO: every read and write of the loop device reaches us.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.pace.wait();
        let len = (size as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        match self.backing.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.pace.wait();
        if offset.saturating_add(data.len() as u64) > self.size {
            reply.error(Errno::ENOSPC);
            return;
        }
        match self.backing.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A cache flush is one more IO for the device; the backing file needs no
        // durability (it is thrown away), so it is not synced for real.
        self.pace.wait();
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A real ext4 (or xfs, or btrfs) filesystem on a device capped at N IOPS.
pub struct CappedExt4 {
    fs_type: FsType,
    temp_dir: PathBuf,
    mount_point: PathBuf,
    loop_device: Option<PathBuf>,
    disk_image: PathBuf,
    device: (u32, u32),
    mounted: bool,
    pace: Arc<Pace>,
    session: Option<fuser::BackgroundSession>,
}

impl CappedExt4 {
    /// Makes a `size_mib` ext4 filesystem (formatted uncapped), then caps its device at
    /// `iops` requests a second.
    pub fn create(size_mib: u64, iops: u64) -> Result<Self> {
        Self::create_fs(size_mib, iops, FsType::Ext4)
    }

    /// [`CappedExt4::create`] with a filesystem of type `fs_type`; `size_mib` must be at
    /// least [`FsType::min_size_mib`] (the backing file is sparse).
    pub fn create_fs(size_mib: u64, iops: u64, fs_type: FsType) -> Result<Self> {
        if size_mib < fs_type.min_size_mib() {
            bail!(
                "size_mib must be at least {} for {} (got {size_mib})",
                fs_type.min_size_mib(),
                fs_type.name()
            );
        }
        let temp_dir = make_temp_dir("iostall-capped-")?;
        let fuse_dir = temp_dir.join("fuse");
        let mut disk = CappedExt4 {
            fs_type,
            mount_point: temp_dir.join("mnt"),
            disk_image: fuse_dir.join(DISK_NAME),
            temp_dir,
            loop_device: None,
            device: (0, 0),
            mounted: false,
            pace: Arc::new(Pace::default()),
            session: None,
        };
        // From here on, `?` drops `disk`, which cleans up what exists so far.
        let backing_path = disk.temp_dir.join("backing.img");
        let backing = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&backing_path)
            .with_context(|| format!("creating {}", backing_path.display()))?;
        let size = size_mib * 1024 * 1024;
        backing.set_len(size).context("sizing the backing file")?;
        fs::create_dir(&fuse_dir).context("creating the FUSE mount point")?;
        fs::create_dir(&disk.mount_point).context("creating the ext4 mount point")?;

        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("iostall-capped".into()),
            MountOption::Subtype("capped".into()),
        ];
        let fs = CappedFs {
            backing,
            size,
            pace: disk.pace.clone(),
        };
        disk.session = Some(
            fuser::spawn_mount(fs, &fuse_dir, &config)
                .context("mounting the FUSE filesystem (is /dev/fuse there?)")?,
        );
        wait_for(|| disk.disk_image.exists(), "the FUSE disk image to appear")?;

        // Buffered: the FUSE file is opened in direct-IO mode on its side already.
        let loop_dev = attach_loop(&disk.disk_image, false)?;
        disk.loop_device = Some(loop_dev.clone());
        disk.device = read_dev_numbers(&loop_dev)?;
        format_and_mount(&loop_dev, &disk.mount_point, fs_type)?;
        disk.mounted = true;
        disk.set_iops(iops);
        Ok(disk)
    }

    /// Caps the device at `iops` requests a second from now on (0 = uncapped).
    pub fn set_iops(&self, iops: u64) {
        self.pace.iops.store(iops, Ordering::Relaxed);
    }

    /// Evicts every cached page, dentry and inode of this filesystem (unmounts and
    /// mounts it again, uncapped meanwhile): the next open or read goes to the device.
    /// `drop_caches` is not enough: it leaves dentries that are still referenced.
    pub fn evict_caches(&mut self) -> Result<()> {
        let iops = self.pace.iops.swap(0, Ordering::Relaxed);
        let dev = self.loop_device.clone().context("no loop device")?;
        unmount(&self.mount_point)?;
        self.mounted = false;
        mount_fs(&dev, &self.mount_point, self.fs_type)?;
        self.mounted = true;
        self.set_iops(iops);
        Ok(())
    }

    /// Requests the device served so far.
    pub fn served(&self) -> u64 {
        self.pace.served.load(Ordering::Relaxed)
    }

    /// Where the filesystem is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The loop device's (major, minor).
    pub fn device(&self) -> (u32, u32) {
        self.device
    }

    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        // Unmounting writes back what is dirty: never at 10 IOPS.
        self.set_iops(0);
        if self.mounted {
            match unmount(&self.mount_point) {
                Ok(_) => self.mounted = false,
                Err(e) => errors.push(e),
            }
        }
        if let Some(dev) = self.loop_device.take() {
            let detached = {
                let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                run_paths("losetup", &["-d".as_ref(), dev.as_os_str()])
            };
            if let Err(e) = detached.and_then(|_| wait_loop_detached(&dev, &self.disk_image)) {
                errors.push(e);
            }
        }
        // Dropping the session unmounts the FUSE filesystem.
        drop(self.session.take());
        if let Err(e) = fs::remove_dir_all(&self.temp_dir) {
            errors.push(
                anyhow::Error::new(e).context(format!("removing {}", self.temp_dir.display())),
            );
        }
        errors
    }
}

impl Drop for CappedExt4 {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("iostall-tests: CappedExt4 teardown: {e:#}");
        }
    }
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
