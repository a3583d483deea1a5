//! End to end, as root: the IO a runtime does on a pod's behalf — containerd writing a
//! container's status files, the shim and runc their task and state files, all under
//! directories named after the container or sandbox id — is attributed to that pod by
//! path (`iostall.attribution = path`), from the real kernel's dentry names. That needs
//! the whole 64-hex id in each parent name and enough parents to reach it: before, the
//! kernel side sent 63 characters of each name and 4 parents, and no real runtime path
//! was ever attributed. Threshold 0, so every ext4 operation of the runtime is seen; the
//! private containerd keeps its root and state under `/tmp` (checked to be ext4).
use std::time::Duration;

use anyhow::{Result, ensure};
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    iostall_proc::Iostall,
    slowfs::{ensure_kernel_mounts, require_root},
};
use serde_json::Value as Json;

/// `EXT4_SUPER_MAGIC`.
const EXT4_MAGIC: i64 = 0xEF53;

fn fs_magic(path: &std::path::Path) -> Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs fills the struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    ensure!(
        unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0,
        "statfs {}",
        path.display()
    );
    Ok(st.f_type as i64)
}

#[test]
fn runtime_io_for_a_pod_is_attributed_to_it_by_path() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let ctd = Containerd::start()?;
    ensure!(
        fs_magic(ctd.dir())? == EXT4_MAGIC,
        "{} is not on ext4: this test needs containerd's directories on ext4",
        ctd.dir().display()
    );
    ctd.import_test_images()?;
    let socket = ctd.socket().to_string_lossy().into_owned();
    let mut iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-o",
        "json",
        "--containerd-socket",
        &socket,
        "--docker-socket",
        "off",
        "--metrics-listen",
        "off",
    ])?;
    // Every event of the containers made next is expected: wait for the source.
    iostall.wait_for_source(&socket)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (uid, sandbox_id, id) = rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let uid = new_pod_uid()?;
        let sandbox = cri.run_pod_sandbox("web-0", "paths", &uid, 0).await?;
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "exit 0"]);
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await?;
        cri.wait_exited(&id, Duration::from_secs(60)).await?;
        cri.remove_all_pods().await?;
        anyhow::Ok((uid, sandbox.id, id))
    })?;
    let finished = iostall.stop()?;
    assert!(finished.success, "{}", finished.stderr);
    let lines = finished.json()?;
    let by_path: Vec<&Json> = lines
        .iter()
        .filter(|l| l["type"] != "runtime" && l["iostall.attribution"] == "path")
        .collect();
    for (what, cid) in [("container", &id), ("sandbox", &sandbox_id)] {
        let mine: Vec<&&Json> = by_path
            .iter()
            .filter(|l| l["container.id"] == cid.as_str())
            .collect();
        assert!(
            mine.iter().any(|l| l["comm"] == "containerd"),
            "no IO of containerd attributed by path to the {what} {cid}: {:#?}",
            by_path.iter().take(20).collect::<Vec<_>>()
        );
        // IO the runtime does before it announces the container (creating its
        // directories) knows the id only: it waits for the announcement
        // (`runtime.unannounced_hold_ms`), so every record names its pod.
        for l in &mine {
            assert_eq!(l["k8s.pod.uid"], uid.as_str(), "{l}");
            assert_eq!(l["k8s.pod.name"], "web-0", "{l}");
            assert_eq!(l["k8s.namespace.name"], "paths", "{l}");
        }
        eprintln!(
            "{what}: {} operations attributed by path ({} named), by {:?}",
            mine.len(),
            mine.iter().filter(|l| !l["k8s.pod.name"].is_null()).count(),
            mine.iter()
                .filter_map(|l| l["comm"].as_str())
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    // Every id-named directory of this pod's runtime IO named one of its two ids.
    for l in &by_path {
        let cid = l["container.id"].as_str().unwrap_or_default();
        if l["k8s.pod.uid"] == uid.as_str() {
            assert!(cid == id || cid == sandbox_id, "{l}");
        }
    }
    Ok(())
}
