//! Reads of kernel structures at offsets resolved from the running kernel's BTF.
use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use exporter_common::KernelOffsets;

use crate::maps::load_config;

/// Reads a `T` at `base + offset`; `None` if the offset is unknown or the read faults.
#[inline(always)]
pub fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if offset == KernelOffsets::UNKNOWN || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address; it fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The `struct file *` behind `fd` in the current task's fd table.
#[inline(always)]
pub fn file_of_fd(fd: u64) -> Option<u64> {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_at(task, load_config!(offsets.task_files))?;
    let fdt: u64 = read_at(files, load_config!(offsets.files_fdt))?;
    let max_fds: u32 = read_at(fdt, load_config!(offsets.fdt_max_fds))?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = read_at(fdt, load_config!(offsets.fdt_fd))?;
    let file: u64 = read_at(fd_array + fd * 8, 0)?;
    if file == 0 { None } else { Some(file) }
}

/// The current task's mount namespace inode number, 0 when unknown.
#[inline(always)]
pub fn current_mntns() -> u32 {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let inum = || -> Option<u32> {
        let nsproxy: u64 = read_at(task, load_config!(offsets.task_nsproxy))?;
        let mnt_ns: u64 = read_at(nsproxy, load_config!(offsets.nsproxy_mnt_ns))?;
        read_at(mnt_ns, load_config!(offsets.mnt_ns_inum))
    };
    inum().unwrap_or(0)
}

/// The super block magic of the file behind `fd`; `None` if any read fails.
#[inline(always)]
pub fn magic_of_fd(fd: u64) -> Option<u64> {
    let file = file_of_fd(fd)?;
    let inode: u64 = read_at(file, load_config!(offsets.file_inode))?;
    let sb: u64 = read_at(inode, load_config!(offsets.inode_sb))?;
    read_at(sb, load_config!(offsets.sb_magic))
}

/// The real file below an overlayfs regular file `file` (a container's root
/// filesystem): the upper file, or the lower one it was opened on. `None` when
/// overlayfs's layout is unknown here or the read fails.
///
/// From 6.13 `file->private_data` is a `struct ovl_file { realfile; upperfile; }`, where
/// `upperfile` is set once the file was copied up after it was opened (reads and writes
/// then go there); before, `private_data` is the real file itself. Userspace tells which
/// from BTF. The caller checks that `file` is a regular file: a directory's
/// `private_data` is another struct, a device's belongs to its driver.
#[inline(always)]
pub fn overlay_real_file(file: u64) -> Option<u64> {
    let private: u64 = read_at(file, load_config!(offsets.file_private_data))?;
    let realfile = load_config!(offsets.ovl_file_realfile);
    let real = if realfile == KernelOffsets::UNKNOWN {
        private
    } else {
        match read_at::<u64>(private, load_config!(offsets.ovl_file_upperfile)) {
            Some(upper) if upper != 0 => upper,
            _ => read_at(private, realfile)?,
        }
    };
    if real == 0 { None } else { Some(real) }
}
