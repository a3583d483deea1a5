//! The end half shared by every attach mode: check that the file is on a filesystem of
//! `--fs` (through overlayfs to the real file, for a container's root filesystem), then
//! fill an `IoEvent` in the ring buffer. Runs only for operations that crossed the
//! threshold.
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_cgroup_id,
};
use exporter_common::{
    IoEvent, MAX_PARENTS, OVERLAYFS_SUPER_MAGIC, event_kind, fs_kind, io_flags, op, stat,
};

use crate::{
    inflight::{Finished, target_flags},
    kernel::{current_mntns, file_of_fd, overlay_real_file, read_at},
    maps::{EVENTS, comm_wanted, count, load_config},
};

/// File type bits of `i_mode`.
const S_IFMT: u16 = 0o170_000;
/// A regular file.
const S_IFREG: u16 = 0o100_000;
/// A directory.
const S_IFDIR: u16 = 0o040_000;

/// Emits `done` if its file is on a filesystem of `--fs`. `ret` is the operation's return value.
#[inline(always)]
pub fn emit(done: &Finished, ret: i64) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !comm_wanted(&comm) {
        count(stat::OTHER_COMM);
        return;
    }
    let started = &done.started;
    let file = if started.flags & target_flags::IS_FILE != 0 {
        Some(started.target)
    } else if started.op == op::OPEN {
        if ret < 0 {
            None
        } else {
            file_of_fd(ret as u64)
        }
    } else {
        file_of_fd(started.target)
    };
    let Some(file) = file else {
        count(stat::FILE_UNRESOLVED);
        return;
    };
    let Some(mut inode) = read_at::<u64>(file, load_config!(offsets.file_inode)) else {
        count(stat::FILE_UNRESOLVED);
        return;
    };
    let mut sb: u64 = read_at(inode, load_config!(offsets.inode_sb)).unwrap_or(0);
    let mut magic: u64 = read_at(sb, load_config!(offsets.sb_magic)).unwrap_or(0);
    // A container's root filesystem: what waits is the real file below overlayfs, whose
    // inode, device and path are reported (the position stays the overlay file's).
    let mut real = file;
    let mut flags = 0u32;
    if magic == OVERLAYFS_SUPER_MAGIC
        && let Some(below) = below_overlay(file, inode)
    {
        (real, inode, sb, magic) = below;
        flags |= io_flags::VIA_OVERLAYFS;
    }
    let fs = fs_kind::of_magic(magic);
    if load_config!(fs_mask) & (1 << fs) == 0 {
        count(stat::OTHER_FS);
        return;
    }
    // Regular files, and directories' fsyncs (runtimes fsync a directory to make a rename
    // durable; ext4 syncs it as a file). Opening a FIFO waits for its other end,
    // and reading one for data, not for the disk (containerd's stdio FIFOs "opened" for
    // 19 s).
    if let Some(mode) = read_at::<u16>(inode, load_config!(offsets.inode_mode)) {
        let kind = mode & S_IFMT;
        if kind == S_IFDIR && started.op == op::FSYNC {
            flags |= io_flags::DIRECTORY;
        } else if kind != S_IFREG {
            count(stat::NOT_REGULAR);
            return;
        }
    }

    let Some(mut entry) = EVENTS.reserve::<IoEvent>(0) else {
        count(stat::RINGBUF_DROPS);
        return;
    };
    let ev = entry.as_mut_ptr();
    if started.flags & target_flags::DATASYNC != 0 {
        flags |= io_flags::DATASYNC;
    }
    // Offset: positional IO knows it; otherwise the position after the op, less what moved.
    let offset = if started.pos >= 0 {
        started.pos
    } else if started.op == op::READ || started.op == op::WRITE {
        match read_at::<i64>(file, load_config!(offsets.file_pos)) {
            Some(pos) if ret > 0 => pos - ret,
            Some(pos) => pos,
            None => {
                flags |= io_flags::OFFSET_UNKNOWN;
                0
            }
        }
    } else {
        0
    };
    let bytes = if ret >= 0 && started.op != op::OPEN && started.op != op::FSYNC {
        ret as u64
    } else {
        started.count
    };

    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of
    // `IoEvent`'s size; every field written below lies inside it.
    unsafe {
        (*ev).header.kind = event_kind::IO;
        (*ev).header.pid = done.pid;
        (*ev).header.tid = done.tid;
        (*ev).header.mntns = current_mntns();
        (*ev).header.start_ns = started.start_ns;
        (*ev).header.cgroup_id = bpf_get_current_cgroup_id();
        (*ev).header.comm = comm;
        (*ev).latency_ns = done.end_ns.wrapping_sub(started.start_ns);
        (*ev).ret = ret;
        (*ev).bytes = bytes;
        (*ev).offset = offset;
        (*ev).inode = read_at(inode, load_config!(offsets.inode_ino)).unwrap_or(0);
        (*ev).dev = read_at(sb, load_config!(offsets.sb_dev)).unwrap_or(0);
        (*ev).op = started.op;
        (*ev).fs = fs;
        (*ev).reserved = 0;

        let mut dentry: u64 = read_at(real, load_config!(offsets.file_dentry)).unwrap_or(0);
        // Before 6.8 a backing file's path was overlayfs's own (the container's view),
        // not a path on the real file's device: then it is not joined to a mount point.
        let path_on_device = flags & io_flags::VIA_OVERLAYFS == 0
            || read_at::<u64>(dentry, load_config!(offsets.dentry_sb)) == Some(sb);
        (*ev).file_name[0] = 0;
        if let Some(name) = read_at::<u64>(dentry, load_config!(offsets.dentry_name)) {
            let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*ev).file_name);
        }
        let mut parents = 0u32;
        for i in 0..MAX_PARENTS {
            let parent: u64 = read_at(dentry, load_config!(offsets.dentry_parent)).unwrap_or(0);
            if parent == 0 {
                break;
            }
            if parent == dentry {
                flags |= io_flags::PATH_COMPLETE;
                break;
            }
            (*ev).parents[i][0] = 0;
            if let Some(name) = read_at::<u64>(parent, load_config!(offsets.dentry_name)) {
                let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*ev).parents[i]);
            }
            parents += 1;
            dentry = parent;
        }
        // The walk may stop at its bound exactly below the root: look one step further.
        if flags & io_flags::PATH_COMPLETE == 0 && parents as usize == MAX_PARENTS {
            let parent: u64 = read_at(dentry, load_config!(offsets.dentry_parent)).unwrap_or(0);
            if parent == dentry {
                flags |= io_flags::PATH_COMPLETE;
            }
        }
        // The root's own name is "/": it is not a parent directory to report.
        if parents > 0 && flags & io_flags::PATH_COMPLETE != 0 {
            parents -= 1;
        }
        if !path_on_device {
            flags &= !io_flags::PATH_COMPLETE;
        }
        (*ev).parent_count = parents;
        (*ev).flags = flags;
    }
    entry.submit(0);
    count(stat::EVENTS);
}

/// The real file below overlayfs regular file `file` (inode `inode`), with its inode, super
/// block and super block magic; `None` for anything else overlayfs holds (directories,
/// devices, FIFOs: their `private_data` is not overlayfs's file) or when it cannot be read.
#[inline(always)]
fn below_overlay(file: u64, inode: u64) -> Option<(u64, u64, u64, u64)> {
    let mode: u16 = read_at(inode, load_config!(offsets.inode_mode))?;
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    let real = overlay_real_file(file)?;
    let inode: u64 = read_at(real, load_config!(offsets.file_inode))?;
    let sb: u64 = read_at(inode, load_config!(offsets.inode_sb))?;
    let magic: u64 = read_at(sb, load_config!(offsets.sb_magic))?;
    Some((real, inode, sb, magic))
}
