//! The enrich lookups against this host's real `/proc` and cgroup trees.

use std::{
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
    process::Command,
    time::Duration,
};

use iostall::enrich::{
    cgroup_path::parse_proc_cgroup_lines,
    pid_map::{CgroupIdMap, PidMap, find_unified_root},
};
use iostall_tests::slowfs::require_root;

/// The cgroup id the kernel reports for the cgroup directory `dir` (what
/// `bpf_get_current_cgroup_id()` returns for a thread in it): its file handle.
fn kernel_cgroup_id(dir: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 64],
    }
    let mut handle = Handle {
        handle_bytes: 64,
        handle_type: 0,
        f_handle: [0; 64],
    };
    let mut mount_id: libc::c_int = 0;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
    // SAFETY: `handle` is a file_handle header followed by 64 bytes, as handle_bytes says.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&raw mut handle).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(rc, 0, "name_to_handle_at({}) failed", dir.display());
    assert_eq!(handle.handle_bytes, 8, "a cgroup handle is its 64-bit id");
    let mut id = [0u8; 8];
    id.copy_from_slice(&handle.f_handle[..8]);
    u64::from_ne_bytes(id)
}

#[test]
fn cgroup_id_is_the_directory_inode_and_resolves_to_its_path() {
    require_root();
    let root = find_unified_root().expect("a cgroup v2 hierarchy is mounted");
    let text = fs::read_to_string("/proc/self/cgroup").expect("read");
    let own = parse_proc_cgroup_lines(&text)
        .find(|l| l.is_unified())
        .expect("a 0:: line")
        .path
        .to_owned();
    let dir = root.join(own.trim_start_matches('/'));
    let ino = fs::metadata(&dir).expect("stat").ino();
    assert_eq!(
        kernel_cgroup_id(&dir),
        ino,
        "cgroup id != inode for {}",
        dir.display()
    );
    // No rate limit: the leaf made below must be found by the next rescan.
    let mut map = CgroupIdMap::new(&root).with_rescan_interval(Duration::ZERO);
    assert_eq!(map.resolve(ino).as_deref(), Some(own.as_str()));

    // A fresh leaf, named like a container under a pod, resolves to a container.
    let uid = fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid");
    let id = "ab".repeat(32);
    let pod = root.join(format!("kubepods/besteffort/pod{}", uid.trim()));
    let leaf = pod.join(&id);
    fs::create_dir_all(&leaf).expect("mkdir cgroup");
    let leaf_id = kernel_cgroup_id(&leaf);
    let found = map.resolve_container(leaf_id);
    fs::remove_dir(&leaf).expect("rmdir leaf");
    fs::remove_dir(&pod).expect("rmdir pod");
    let found = found.expect("the leaf names a container");
    assert_eq!(found.id, id);
    assert_eq!(found.pod_uid.as_deref(), Some(uid.trim()));
    assert!(map.stats().rescans >= 2, "an unknown id rescans");
}

#[test]
fn pid_map_on_real_proc() {
    let mut map = PidMap::default();
    // This test process runs on the host, in no container.
    assert_eq!(map.resolve(std::process::id()), None);
    // A process that exited before the lookup is a miss.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    assert_eq!(map.resolve(pid), None);
    assert_eq!(map.stats().misses, 1);
    assert_eq!(map.stats().errors, 0);
}
