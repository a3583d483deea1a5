//! A host without any container runtime (one node over SSH, or a node whose runtime is
//! not up yet): iostall starts quietly — one INFO line per absent runtime socket, no
//! warnings — attaches, and stops on Ctrl-C. Runs the real binary as root.
use iostall_tests::{iostall_proc::Iostall, slowfs::require_root};

#[test]
fn absent_runtimes_are_info_lines_not_warnings() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let containerd = dir.path().join("containerd.sock");
    let docker = dir.path().join("docker.sock");
    let iostall = Iostall::start(&[
        "--metrics-listen",
        "off",
        "--output",
        "json",
        "--containerd-socket",
        &containerd.to_string_lossy(),
        "--docker-socket",
        &docker.to_string_lossy(),
    ])
    .expect("iostall attaches with no runtime at all");
    // The sources try at once; give them a moment to report.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let finished = iostall.stop().expect("iostall stops");
    eprintln!("{}", finished.stderr);
    eprintln!("stopped {:?} after SIGINT", finished.stop_took);
    assert!(finished.success, "exit status");
    let warnings: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        warnings.is_empty(),
        "warnings on a runtime-less host: {warnings:#?}"
    );
    for (source, socket) in [
        ("containerd events", &containerd),
        ("CRI", &containerd),
        ("docker events", &docker),
    ] {
        let what = format!("{source} at {}", socket.display());
        let lines: Vec<&str> = finished
            .stderr
            .lines()
            .filter(|l| l.contains(" INFO ") && l.contains(&what))
            .filter(|l| l.contains("the socket does not exist"))
            .collect();
        assert_eq!(lines.len(), 1, "one INFO line for {what}: {lines:#?}");
    }
}
