//! Ring-buffer bytes → [`IoRecord`]: length and kind checks, C strings, kernel time to
//! wall-clock time (once, here), and the full path from the mount table.
use exporter_common::{EventHeader, IoEvent, JournalCommitEvent, event_kind, io_flags};

use crate::{
    clock::MonotonicToUnix,
    event::{AttachMode, FsKind, IoOp, IoRecord},
    mounts::{MountTable, split_kernel_dev},
    why::journal::JournalCommit,
};

/// A record the decoder rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the type its kind names.
    #[error("record of {len} bytes is shorter than its type ({need} bytes)")]
    Short {
        /// Bytes received.
        len: usize,
        /// Bytes the type needs.
        need: usize,
    },
    /// A kind this build does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// An operation code this build does not know.
    #[error("unknown operation code {0}")]
    UnknownOp(u32),
    /// A filesystem code this build does not know.
    #[error("unknown filesystem code {0}")]
    UnknownFs(u32),
}

/// Turns raw records into [`IoRecord`]s.
#[derive(Debug)]
pub struct Decoder {
    clock: MonotonicToUnix,
    mounts: MountTable,
    mode: AttachMode,
}

impl Decoder {
    /// A decoder for records produced in `mode`.
    #[must_use]
    pub fn new(mode: AttachMode) -> Self {
        Self {
            clock: MonotonicToUnix::new(),
            mounts: MountTable::load(),
            mode,
        }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<IoRecord, DecodeError> {
        let header: EventHeader = read_pod(bytes)?;
        if header.kind != event_kind::IO {
            return Err(DecodeError::UnknownKind(header.kind));
        }
        let ev: IoEvent = read_pod(bytes)?;
        let op = IoOp::from_code(ev.op).ok_or(DecodeError::UnknownOp(ev.op))?;
        let fs = FsKind::from_code(ev.fs).ok_or(DecodeError::UnknownFs(ev.fs))?;
        self.clock.refresh_if_stale();
        let start_unix_ns = self.clock.to_unix_ns(ev.header.start_ns);
        let (dev_major, dev_minor) = split_kernel_dev(ev.dev);
        let parent_count = (ev.parent_count as usize).min(ev.parents.len());
        let parents: Vec<String> = ev.parents[..parent_count]
            .iter()
            .map(|p| c_str(p))
            .collect();
        let path_complete = ev.flags & io_flags::PATH_COMPLETE != 0;
        let file_name = c_str(&ev.file_name);
        let mount_point = self
            .mounts
            .mount_point(dev_major, dev_minor)
            .map(str::to_owned);
        let file_path = match (&mount_point, path_complete) {
            (Some(mp), true) => Some(join_path(mp, &parents, &file_name)),
            _ => None,
        };
        let offset = match op {
            IoOp::Read | IoOp::Write if ev.flags & io_flags::OFFSET_UNKNOWN == 0 => Some(ev.offset),
            _ => None,
        };
        Ok(IoRecord {
            op,
            start_unix_ns,
            end_unix_ns: start_unix_ns.saturating_add(ev.latency_ns),
            latency_ns: ev.latency_ns,
            pid: ev.header.pid,
            tid: ev.header.tid,
            comm: c_str(&ev.header.comm),
            cgroup_id: ev.header.cgroup_id,
            mntns: ev.header.mntns,
            bytes: ev.bytes,
            offset,
            ret: ev.ret,
            inode: ev.inode,
            dev_major,
            dev_minor,
            file_name,
            parents,
            path_complete,
            mount_point,
            file_path,
            datasync: ev.flags & io_flags::DATASYNC != 0,
            directory: ev.flags & io_flags::DIRECTORY != 0,
            via_overlayfs: ev.flags & io_flags::VIA_OVERLAYFS != 0,
            attach_mode: self.mode,
            fs,
            why: Default::default(),
        })
    }
}

/// The kind of a ring-buffer record, if it is long enough to have a header.
#[must_use]
pub fn record_kind(bytes: &[u8]) -> Option<u32> {
    read_pod::<EventHeader>(bytes).ok().map(|h| h.kind)
}

impl Decoder {
    /// Decodes a [`event_kind::JOURNAL_COMMIT`] record, with the same clock as the IO
    /// records beside it.
    pub fn decode_commit(&mut self, bytes: &[u8]) -> Result<JournalCommit, DecodeError> {
        let ev: JournalCommitEvent = read_pod(bytes)?;
        if ev.header.kind != event_kind::JOURNAL_COMMIT {
            return Err(DecodeError::UnknownKind(ev.header.kind));
        }
        self.clock.refresh_if_stale();
        let (dev_major, dev_minor) = split_kernel_dev(ev.dev);
        Ok(JournalCommit {
            dev_major,
            dev_minor,
            tid: ev.tid,
            start_unix_ns: self.clock.to_unix_ns(ev.header.start_ns),
            end_unix_ns: self.clock.to_unix_ns(ev.end_ns),
            handles: ev.handles,
            blocks: ev.blocks,
            blocks_logged: ev.blocks_logged,
        })
    }
}

/// Copies a `T` out of the front of `bytes` after checking the length.
pub(crate) fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; `T` is a `#[repr(C)]` integer/byte-array type valid for
    // any bit pattern; read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A NUL-terminated (or full) byte array as text.
pub(crate) fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `mount_point` + parents (root first) + name.
fn join_path(mount_point: &str, parents_nearest_first: &[String], name: &str) -> String {
    let mut path = mount_point.trim_end_matches('/').to_owned();
    for parent in parents_nearest_first.iter().rev() {
        path.push('/');
        path.push_str(parent);
    }
    path.push('/');
    path.push_str(name);
    path
}

#[cfg(test)]
mod tests {
    use exporter_common::{FILE_NAME_LEN, MAX_PARENTS, PARENT_NAME_LEN, fs_kind, op};

    use super::*;

    fn name<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn sample() -> IoEvent {
        let mut parents = [[0u8; PARENT_NAME_LEN]; MAX_PARENTS];
        parents[0] = name("containers");
        parents[1] = name("docker");
        IoEvent {
            header: EventHeader {
                kind: event_kind::IO,
                pid: 4242,
                tid: 4243,
                mntns: 4026531841,
                start_ns: 1_000_000_000,
                cgroup_id: 77,
                comm: name("dockerd"),
            },
            latency_ns: 125_000_000,
            ret: 0,
            bytes: 0,
            offset: 0,
            inode: 1234,
            dev: 254 << 20,
            op: op::FSYNC,
            flags: io_flags::PATH_COMPLETE | io_flags::DATASYNC,
            parent_count: 2,
            fs: fs_kind::XFS,
            reserved: 0,
            file_name: name::<FILE_NAME_LEN>(".tmp-hostconfig.json378595825"),
            parents,
        }
    }

    fn bytes_of(ev: &IoEvent) -> Vec<u8> {
        // SAFETY: IoEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts((ev as *const IoEvent).cast::<u8>(), size_of::<IoEvent>())
        }
        .to_vec()
    }

    #[test]
    fn round_trips_every_field() {
        let mut decoder = Decoder::new(AttachMode::Tracepoint);
        let rec = decoder.decode(&bytes_of(&sample())).expect("decodes");
        assert_eq!(rec.op, IoOp::Fsync);
        assert_eq!((rec.pid, rec.tid), (4242, 4243));
        assert_eq!(rec.comm, "dockerd");
        assert_eq!(rec.cgroup_id, 77);
        assert_eq!(rec.mntns, 4026531841);
        assert_eq!(rec.latency_ns, 125_000_000);
        assert_eq!(rec.end_unix_ns - rec.start_unix_ns, 125_000_000);
        assert_eq!((rec.dev_major, rec.dev_minor), (254, 0));
        assert_eq!(rec.inode, 1234);
        assert_eq!(rec.file_name, ".tmp-hostconfig.json378595825");
        assert_eq!(rec.parents, vec!["containers", "docker"]);
        assert!(rec.path_complete && rec.datasync);
        assert!(!rec.directory);
        assert!(!rec.via_overlayfs);
        assert_eq!(rec.offset, None, "fsync has no offset");
        assert_eq!(rec.attach_mode, AttachMode::Tracepoint);
        assert_eq!(rec.fs, FsKind::Xfs);
    }

    #[test]
    fn directory_fsync_flag_decodes() {
        let mut ev = sample();
        ev.flags |= io_flags::DIRECTORY;
        let rec = Decoder::new(AttachMode::Tracepoint)
            .decode(&bytes_of(&ev))
            .expect("decodes");
        assert!(rec.directory && rec.datasync);
    }

    #[test]
    fn via_overlayfs_flag_decodes() {
        let mut ev = sample();
        ev.op = op::WRITE;
        ev.flags |= io_flags::VIA_OVERLAYFS;
        let rec = Decoder::new(AttachMode::Tracepoint)
            .decode(&bytes_of(&ev))
            .expect("decodes");
        assert!(rec.via_overlayfs && !rec.directory);
    }

    #[test]
    fn joins_full_path_only_when_complete() {
        assert_eq!(
            join_path("/", &["containers".into(), "docker".into()], "f"),
            "/docker/containers/f"
        );
        assert_eq!(join_path("/mnt/x/", &[], "f"), "/mnt/x/f");
        let mut ev = sample();
        ev.flags = 0;
        let rec = Decoder::new(AttachMode::Tracepoint)
            .decode(&bytes_of(&ev))
            .expect("decodes");
        assert_eq!(rec.file_path, None);
        assert_eq!(
            rec.display_path(),
            "…/docker/containers/.tmp-hostconfig.json378595825"
        );
    }

    #[test]
    fn journal_commits_decode_with_the_io_clock() {
        let ev = JournalCommitEvent {
            header: EventHeader {
                kind: event_kind::JOURNAL_COMMIT,
                pid: 300,
                tid: 300,
                mntns: 0,
                start_ns: 1_000_000_000,
                cgroup_id: 1,
                comm: name("jbd2/loop3-8"),
            },
            end_ns: 1_200_000_000,
            dev: (7 << 20) | 3,
            tid: 42,
            handles: 9,
            blocks: 6,
            blocks_logged: 8,
            sync_commit: 0,
        };
        // SAFETY: plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const JournalCommitEvent).cast::<u8>(),
                size_of::<JournalCommitEvent>(),
            )
        };
        assert_eq!(record_kind(bytes), Some(event_kind::JOURNAL_COMMIT));
        let mut decoder = Decoder::new(AttachMode::Tracepoint);
        let commit = decoder.decode_commit(bytes).expect("decodes");
        assert_eq!((commit.dev_major, commit.dev_minor, commit.tid), (7, 3, 42));
        assert_eq!(commit.end_unix_ns - commit.start_unix_ns, 200_000_000);
        assert_eq!(
            (commit.handles, commit.blocks, commit.blocks_logged),
            (9, 6, 8)
        );
        let io = decoder.decode(&bytes_of(&sample())).expect("decodes");
        // Same clock: 1 s of monotonic time is the same wall-clock instant for both.
        assert_eq!(io.start_unix_ns, commit.start_unix_ns);
        assert!(matches!(
            decoder.decode_commit(&bytes[..60]),
            Err(DecodeError::Short { len: 60, .. })
        ));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let bytes = bytes_of(&sample());
        let mut decoder = Decoder::new(AttachMode::Tracepoint);
        assert!(matches!(
            decoder.decode(&bytes[..40]),
            Err(DecodeError::Short { len: 40, .. })
        ));
        assert!(matches!(
            decoder.decode(&bytes[..100]),
            Err(DecodeError::Short { len: 100, .. })
        ));
        let mut ev = sample();
        ev.header.kind = 99;
        assert_eq!(
            decoder.decode(&bytes_of(&ev)),
            Err(DecodeError::UnknownKind(99))
        );
        let mut ev = sample();
        ev.op = 9;
        assert_eq!(
            decoder.decode(&bytes_of(&ev)),
            Err(DecodeError::UnknownOp(9))
        );
        let mut ev = sample();
        ev.fs = fs_kind::OTHER;
        assert_eq!(
            decoder.decode(&bytes_of(&ev)),
            Err(DecodeError::UnknownFs(0))
        );
    }
}
