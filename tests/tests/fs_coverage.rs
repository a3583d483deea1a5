//! Silent where it looks: a runtime directory not on a traced filesystem is named at start and
//! in `iostall probe`, and tracepoint mode says which IO paths it never times.
//!
//! The node is made in a private mount and pid namespace (`unshare`), so nothing of the
//! machine's own mounts changes: a tmpfs over `/var/lib` there, containerd's directory
//! on a tmpfs (not ext4) and the kubelet's on a real ext4 loop filesystem. Inside the
//! namespace the shell is pid 1, so its mount table is the "node's" table iostall reads
//! (`/proc/1/mountinfo`), as a DaemonSet pod with `hostPID` reads the node's.
use std::process::Command;

use iostall_tests::{
    iostall_proc::iostall_binary,
    slowfs::{ensure_kernel_mounts, require_root},
};

/// Runs `script` as pid 1 of a new mount + pid namespace; returns (ok, stdout, stderr).
fn in_private_node(script: &str) -> (bool, String, String) {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-ec",
            script,
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run unshare (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runtime_directories_off_ext4_are_named() {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    let bin = iostall_binary().expect("iostall binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("kubelet.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .arg("16M")
        .status()
        .expect("mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 failed");
    let script = format!(
        "mount -t tmpfs tmpfs /var/lib\n\
         mkdir -p /var/lib/containerd /var/lib/kubelet\n\
         mount -t tmpfs tmpfs /var/lib/containerd\n\
         mount -o loop {image} /var/lib/kubelet\n\
         echo '== probe'\n\
         {bin} probe\n\
         echo '== run' >&2\n\
         {bin} --attach tracepoint --duration 1 --output json --metrics-listen off\n",
        image = image.display(),
        bin = bin.display(),
    );
    let (ok, stdout, stderr) = in_private_node(&script);
    assert!(ok, "the namespace script failed:\n{stdout}\n{stderr}");

    let probe = stdout
        .split("== probe")
        .nth(1)
        .expect("probe output")
        .to_owned();
    let not_seen = "/var/lib/containerd is on tmpfs: iostall traces ext4, xfs and btrfs only, so \
                    containerd IO there is not seen";
    assert!(
        probe
            .lines()
            .any(|l| l.starts_with("fs /var/lib/containerd") && l.contains(not_seen)),
        "probe must name containerd's directory as unseen:\n{probe}"
    );
    assert!(
        probe.lines().any(|l| l.starts_with("fs /var/lib/kubelet")
            && l.contains(" yes ")
            && l.contains("is on ext4")),
        "probe must show the kubelet's directory as seen:\n{probe}"
    );
    // Absent roots are not reported.
    assert!(!probe.contains("/var/lib/docker"), "{probe}");

    let run = stderr.split("== run").nth(1).expect("run log").to_owned();
    assert!(
        run.lines()
            .any(|l| l.contains("WARN") && l.contains(not_seen)),
        "the run must warn about containerd's directory:\n{run}"
    );
    assert!(
        !run.contains("/var/lib/kubelet is on"),
        "a directory on ext4 is no warning:\n{run}"
    );
    assert!(
        run.contains("never sees io_uring reads and writes, AIO (io_submit), mmap page faults, sendfile, splice and copy_file_range"),
        "tracepoint mode must say what it never times:\n{run}"
    );
}
