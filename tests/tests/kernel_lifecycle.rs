//! End to end, as root, on the real kernel: iostall's lifecycle tracepoints
//! (`cgroup_mkdir`/`rmdir`, `sched_process_exec`/`exit`, `oom:mark_victim`) report what
//! happens to container cgroups and runtime daemons, read from `--output json`.
//!
//! Containers here are real cgroups with the kubelet's cgroupfs shape
//! (`/kubepods/besteffort/pod<uid>/<64-hex id>`) in the unified hierarchy (and, for the
//! OOM test, the v1 memory hierarchy), with real processes moved into them; no runtime
//! is needed for the kernel to see them. Nothing is mocked.
use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use iostall_tests::{
    iostall_proc::Iostall,
    otlp_receiver::{metric, metrics_addr_from_log, scrape},
    slowfs::{ensure_kernel_mounts, require_root},
};
use serde_json::Value;

const UNIFIED: &str = "/sys/fs/cgroup/unified";
const MEMORY: &str = "/sys/fs/cgroup/memory";
const WAIT: Duration = Duration::from_secs(15);

fn setup() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs mount");
    assert!(
        Path::new(UNIFIED).join("cgroup.procs").exists(),
        "this test needs the unified hierarchy at {UNIFIED}"
    );
}

/// Fresh hex digits, different per call and per test process.
fn hex(len: usize) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{:x}{:08x}{:08x}",
        nanos,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    seed.chars().cycle().take(len).collect()
}

/// A container-shaped cgroup in the unified hierarchy (and optionally the v1 memory
/// one), removed on drop even after a failed assertion: leftover processes are moved
/// back to the root first.
struct ContainerCgroup {
    id: String,
    pod_uid: String,
    rel: String,
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    fn create(with_memory: bool) -> Self {
        let h = hex(32);
        let pod_uid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let id = hex(64);
        let rel = format!("kubepods/besteffort/pod{pod_uid}/{id}");
        let mut roots = vec![UNIFIED];
        if with_memory {
            roots.push(MEMORY);
        }
        let dirs: Vec<PathBuf> = roots.iter().map(|r| Path::new(r).join(&rel)).collect();
        let me = Self {
            id,
            pod_uid,
            rel,
            dirs,
        };
        for dir in &me.dirs {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        me
    }

    fn unified(&self) -> PathBuf {
        self.dirs[0].clone()
    }

    /// A shell line that moves the shell into this cgroup (every hierarchy) first.
    fn enter(&self) -> String {
        self.dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs; ", d.display()))
            .collect()
    }

    fn remove(&self) {
        for dir in &self.dirs {
            let root = dir
                .ancestors()
                .find(|a| a.parent() == Some(Path::new("/sys/fs/cgroup")))
                .map(Path::to_path_buf);
            if let (Ok(procs), Some(root)) = (fs::read_to_string(dir.join("cgroup.procs")), root) {
                for pid in procs.lines() {
                    let _ = fs::write(root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(dir);
            // The pod and QoS levels too, when no other test uses them.
            for parent in dir.ancestors().skip(1).take(3) {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn start_iostall() -> Iostall {
    start_iostall_with("off", &[])
}

/// iostall with `/metrics` on `metrics_listen` and `extra` arguments.
fn start_iostall_with(metrics_listen: &str, extra: &[&str]) -> Iostall {
    let mut args = vec![
        "--output",
        "json",
        "--attach",
        "tracepoint",
        // No slow IO lines: only runtime lines are looked at, but keep the output small.
        "--threshold-ms",
        "60000",
        "--metrics-listen",
        metrics_listen,
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
    ];
    args.extend_from_slice(extra);
    Iostall::start(&args).expect("iostall starts and attaches")
}

/// The kernel runtime events among JSON lines.
fn kernel_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "runtime" && v["runtime"] == "kernel")
        .collect()
}

fn is_event(line: &str, name: &str, pred: &dyn Fn(&Value) -> bool) -> bool {
    serde_json::from_str::<Value>(line)
        .is_ok_and(|v| v["runtime"] == "kernel" && v["event.name"] == name && pred(&v))
}

/// Waits for a kernel event `name` matching `pred`; panics with what was seen if none.
fn wait_event(
    iostall: &mut Iostall,
    seen: &mut Vec<String>,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(line) = seen.iter().find(|l| is_event(l, name, &pred)) {
        return serde_json::from_str(line).expect("json");
    }
    match iostall.wait_for_line(WAIT, |l| is_event(l, name, &pred), seen) {
        Some(line) => serde_json::from_str(&line).expect("json"),
        None => panic!(
            "no {name} event within {WAIT:?}; kernel events seen: {:#?}\nstderr:\n{}",
            kernel_events(seen),
            iostall.stderr_text()
        ),
    }
}

fn attr<'a>(event: &'a Value, key: &str) -> &'a str {
    event["attributes"][key].as_str().unwrap_or_default()
}

fn pid_is(pid: u32) -> impl Fn(&Value) -> bool {
    move |v: &Value| attr(v, "process.pid") == pid.to_string()
}

/// Runs `sh -c script` and returns its pid and exit status.
fn run_sh(script: &str) -> (u32, std::process::ExitStatus) {
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    (pid, child.wait().expect("wait sh"))
}

/// mkdir of a container-shaped cgroup is reported with its container id and pod uid;
/// a process moved into it is reported at exec (pid, file) and exit (code 7, then 137
/// with signal 9 for a SIGKILL), attributed to the container; a process in a host
/// cgroup is not reported at all; rmdir is reported.
#[test]
fn container_cgroup_and_its_processes_are_reported() {
    setup();
    let mut iostall = start_iostall();
    let mut seen = Vec::new();
    let cg = ContainerCgroup::create(false);

    let created = wait_event(&mut iostall, &mut seen, "cgroup.created", |v| {
        v["container_id"] == cg.id.as_str()
    });
    assert_eq!(attr(&created, "k8s.pod.uid"), cg.pod_uid);
    assert_eq!(
        attr(&created, "iostall.cgroup.path"),
        format!("/{}", cg.rel)
    );
    assert_eq!(attr(&created, "iostall.pod.qos"), "BestEffort");
    assert_eq!(created["kind"], "cgroup_created");
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let t = created["time_unix_ns"].as_u64().expect("time");
    assert!(
        t <= now_ns && now_ns - t < 60_000_000_000,
        "kernel time converted to wall-clock time: {t} vs now {now_ns}"
    );

    // exit(7) after an exec inside the container.
    let (pid, status) = run_sh(&format!("{}exec /bin/sh -c 'exit 7'", cg.enter()));
    assert_eq!(status.code(), Some(7));
    let exec = wait_event(&mut iostall, &mut seen, "process.exec", pid_is(pid));
    assert_eq!(exec["container_id"], cg.id.as_str());
    assert_eq!(attr(&exec, "process.executable.path"), "/bin/sh");
    assert_eq!(attr(&exec, "k8s.pod.uid"), cg.pod_uid);
    let exit = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(pid));
    assert_eq!(exit["exit_code"], 7);
    assert_eq!(exit["signal"], Value::Null);
    assert_eq!(exit["container_id"], cg.id.as_str());
    assert_eq!(attr(&exit, "iostall.watched_as"), "container");

    // SIGKILL inside the container.
    let mut sleeper = Command::new("/bin/sh")
        .args(["-c", &format!("{}exec /bin/sleep 60", cg.enter())])
        .spawn()
        .expect("spawn");
    let sleeper_pid = sleeper.id();
    wait_event(&mut iostall, &mut seen, "process.exec", |v| {
        pid_is(sleeper_pid)(v) && attr(v, "process.executable.path") == "/bin/sleep"
    });
    sleeper.kill().expect("SIGKILL");
    assert_eq!(sleeper.wait().expect("wait").signal(), Some(9));
    let killed = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(sleeper_pid));
    assert_eq!(killed["exit_code"], 137);
    assert_eq!(killed["signal"], 9);
    assert_eq!(killed["container_id"], cg.id.as_str());

    // A process in a host (non-container) cgroup: not watched, never reported.
    let host_cg = Path::new(UNIFIED).join(format!("iostall-test-host-{}", hex(8)));
    fs::create_dir(&host_cg).expect("mkdir host cgroup");
    let (host_pid, status) = run_sh(&format!(
        "echo $$ > {}/cgroup.procs; exec /bin/sh -c 'exit 5'",
        host_cg.display()
    ));
    assert_eq!(status.code(), Some(5));
    let _ = fs::remove_dir(&host_cg);

    fs::remove_dir(cg.unified()).expect("rmdir the container cgroup");
    let removed = wait_event(&mut iostall, &mut seen, "cgroup.removed", |v| {
        v["container_id"] == cg.id.as_str()
    });
    assert_eq!(attr(&removed, "k8s.pod.uid"), cg.pod_uid);

    let finished = iostall.stop().expect("stop");
    assert!(
        !finished.stderr.contains("kernel lifecycle signals"),
        "every lifecycle program loads and attaches on this kernel:\n{}",
        finished.stderr
    );
    seen.extend(finished.stdout);
    let events = kernel_events(&seen);
    let about_host: Vec<&Value> = events
        .iter()
        .filter(|v| {
            pid_is(host_pid)(v)
                || v["attributes"]["iostall.cgroup.path"]
                    .as_str()
                    .is_some_and(|p| p.contains("iostall-test-host-"))
        })
        .collect();
    assert!(
        about_host.is_empty(),
        "host cgroups and their processes are not reported: {about_host:#?}"
    );
    assert!(
        events
            .iter()
            .all(|v| v["container_id"].is_string()
                || attr(v, "iostall.watched_as") == "runtime-daemon"),
        "every kernel event is about a container or a runtime daemon: {events:#?}"
    );
}

/// Containers that existed before iostall started are found by its startup scan: their
/// processes are reported without any mkdir event.
#[test]
fn containers_from_before_the_start_are_watched() {
    setup();
    let cg = ContainerCgroup::create(false);
    let mut iostall = start_iostall();
    let mut seen = Vec::new();
    let (pid, status) = run_sh(&format!("{}exec /bin/sh -c 'exit 3'", cg.enter()));
    assert_eq!(status.code(), Some(3));
    let exit = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(pid));
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["container_id"], cg.id.as_str());
    assert_eq!(attr(&exit, "k8s.pod.uid"), cg.pod_uid);
    drop(cg);
    iostall.stop().expect("stop");
}

/// A process over its container's v1 memory limit is OOM-killed: the kill is reported
/// with the victim's pid and comm and the container it ran in, and its exit as SIGKILL.
#[test]
fn oom_kill_is_attributed_to_the_container() {
    setup();
    let mut iostall = start_iostall();
    let mut seen = Vec::new();
    let cg = ContainerCgroup::create(true);
    fs::write(
        cg.dirs[1].join("memory.limit_in_bytes"),
        (16u64 << 20).to_string(),
    )
    .expect("set a 16 MiB memory limit");
    // Without swap accounting the limit may be evaded by swapping; cap that too.
    let _ = fs::write(
        cg.dirs[1].join("memory.memsw.limit_in_bytes"),
        (16u64 << 20).to_string(),
    );
    // `tail` keeps the whole line (64 MiB of zeros, no newline) in memory: the victim.
    // Only tail enters the container (the inner shell, `$0`, moves itself in, then execs
    // it): with the waiting shell inside too, a second OOM before tail's memory is freed
    // killed the shell as well on a busy machine. The outer shell prints tail's pid (`$!`
    // of a background pipeline is its last command).
    let out = Command::new("/bin/sh")
        .args([
            "-c",
            "head -c 64M /dev/zero | /bin/sh -c \"$0\" >/dev/null & echo $!; wait $!",
            &format!("{}exec tail", cg.enter()),
        ])
        .stderr(Stdio::null())
        .output()
        .expect("run the allocating pipeline");
    let victim: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the shell printed tail's pid");
    assert_eq!(
        out.status.code(),
        Some(137),
        "tail was killed by SIGKILL (the OOM killer)"
    );

    let oom = wait_event(&mut iostall, &mut seen, "oom.kill", pid_is(victim));
    assert_eq!(oom["container_id"], cg.id.as_str());
    assert_eq!(attr(&oom, "k8s.pod.uid"), cg.pod_uid);
    assert_eq!(attr(&oom, "process.command"), "tail");
    let rss_kb: u64 = attr(&oom, "iostall.oom.anon_rss_kb").parse().unwrap_or(0);
    assert!(
        rss_kb > 8 * 1024,
        "the victim held most of the 16 MiB limit: {rss_kb} kB"
    );
    let exit = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(victim));
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["container_id"], cg.id.as_str());
    drop(cg);
    iostall.stop().expect("stop");
}

/// A runtime daemon killed on the host (as a watchdog kills containerd) is reported
/// with its signal, though it runs in no container; a shim that exits normally is not
/// (shims exit with every container), one that is killed is.
#[test]
fn runtime_daemon_exit_is_reported_wherever_it_runs() {
    setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let containerd = dir.path().join("containerd");
    let shim = dir.path().join("containerd-shim-runc-v2");
    for copy in [&containerd, &shim] {
        fs::copy("/bin/sleep", copy).expect("copy sleep");
    }
    let mut iostall = start_iostall();
    let mut seen = Vec::new();

    let mut daemon = Command::new(&containerd).arg("60").spawn().expect("spawn");
    let daemon_pid = daemon.id();
    let exec = wait_event(&mut iostall, &mut seen, "process.exec", pid_is(daemon_pid));
    assert_eq!(attr(&exec, "process.command"), "containerd");
    assert_eq!(attr(&exec, "iostall.watched_as"), "runtime-daemon");
    daemon.kill().expect("SIGKILL");
    daemon.wait().expect("wait");
    let exit = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(daemon_pid));
    assert_eq!(exit["exit_code"], 137);
    assert_eq!(exit["signal"], 9);
    assert_eq!(attr(&exit, "process.command"), "containerd");
    assert_eq!(attr(&exit, "iostall.exit.signal"), "9");

    let clean = Command::new(&shim).arg("0").status().expect("run shim");
    assert!(clean.success());
    let mut killed_shim = Command::new(&shim).arg("60").spawn().expect("spawn shim");
    let killed_pid = killed_shim.id();
    std::thread::sleep(Duration::from_millis(200));
    killed_shim.kill().expect("SIGKILL");
    killed_shim.wait().expect("wait");
    let exit = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(killed_pid));
    assert_eq!(exit["signal"], 9);
    assert_eq!(attr(&exit, "process.command"), "containerd-shim");

    let finished = iostall.stop().expect("stop");
    seen.extend(finished.stdout);
    let shim_lines: Vec<Value> = kernel_events(&seen)
        .into_iter()
        .filter(|v| attr(v, "process.command") == "containerd-shim")
        .collect();
    assert_eq!(
        shim_lines.len(),
        1,
        "only the killed shim's exit, no shim exec, no clean shim exit: {shim_lines:#?}"
    );
}

/// A container that execs in a tight loop (a build, a shell loop) gets its burst of
/// process events, then the budget's rate, and every event held back is counted on
/// `/metrics`: what was reported plus what was counted is exactly what the container did.
/// Exits by a signal are never held back.
#[test]
fn a_containers_exec_storm_is_rate_limited_and_counted() {
    const BURST: u64 = 10;
    const RUNS: u64 = 100;
    setup();
    let mut config = tempfile::NamedTempFile::new().expect("config file");
    std::io::Write::write_all(
        &mut config,
        format!("lifecycle:\n  process_event_burst: {BURST}\n  process_events_per_second: 1\n")
            .as_bytes(),
    )
    .expect("write config");
    let config_path = config.path().to_string_lossy().into_owned();
    let mut iostall = start_iostall_with("127.0.0.1:0", &["--config", &config_path]);
    let metrics_addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address");
    let mut seen = Vec::new();
    let cg = ContainerCgroup::create(false);
    wait_event(&mut iostall, &mut seen, "cgroup.created", |v| {
        v["container_id"] == cg.id.as_str()
    });

    // dash runs `[` and `$((…))` itself: the container's processes are the shell (one
    // exec, one exit) and RUNS × /bin/true (an exec and an exit each).
    let started = std::time::Instant::now();
    let (_, status) = run_sh(&format!(
        "{}exec /bin/sh -c 'i=0; while [ $i -lt {RUNS} ]; do /bin/true; i=$((i+1)); done'",
        cg.enter()
    ));
    let storm = started.elapsed();
    assert!(status.success());
    let done_by_container = 2 + 2 * RUNS;
    // A killed process afterwards: over budget or not, it is reported.
    let mut sleeper = Command::new("/bin/sh")
        .args(["-c", &format!("{}exec /bin/sleep 60", cg.enter())])
        .spawn()
        .expect("spawn");
    let sleeper_pid = sleeper.id();
    std::thread::sleep(Duration::from_millis(200));
    sleeper.kill().expect("SIGKILL");
    sleeper.wait().expect("wait");
    let killed = wait_event(&mut iostall, &mut seen, "process.exit", pid_is(sleeper_pid));
    assert_eq!(killed["signal"], 9);

    // The sleeper's exec is held back or not depending on the storm's pace; either way
    // it is not the storm's.
    let sleeper_exec_reported = |seen: &[String]| {
        kernel_events(seen)
            .iter()
            .any(|v| v["event.name"] == "process.exec" && pid_is(sleeper_pid)(v))
    };
    let storm_events = |seen: &[String]| {
        kernel_events(seen)
            .into_iter()
            .filter(|v| {
                v["container_id"] == cg.id.as_str()
                    && ["process.exec", "process.exit"]
                        .contains(&v["event.name"].as_str().unwrap_or(""))
                    && !pid_is(sleeper_pid)(v)
            })
            .count() as u64
    };
    // The counter is published after each read of the ring: wait until it holds all.
    let deadline = std::time::Instant::now() + WAIT;
    let (reported, limited) = loop {
        iostall.wait_for_line(Duration::from_millis(200), |_| false, &mut seen);
        let text = scrape(metrics_addr, "/metrics").expect("scrape /metrics");
        let limited = metric(&text, "iostall_runtime_events_rate_limited_total")
            .expect("the series")
            .saturating_sub(u64::from(!sleeper_exec_reported(&seen)));
        let reported = storm_events(&seen);
        if reported + limited >= done_by_container || std::time::Instant::now() > deadline {
            break (reported, limited);
        }
    };
    assert_eq!(
        reported + limited,
        done_by_container,
        "reported ({reported}) + rate-limited ({limited}) = the container's process events"
    );
    eprintln!(
        "storm of {RUNS} execs in {storm:?}: {reported} events reported, {limited} rate-limited"
    );
    // One token a second comes back during the storm.
    let allowed = BURST + 1 + storm.as_secs_f64().ceil() as u64;
    assert!(
        (BURST..=allowed).contains(&reported),
        "the burst and at most its refill were reported: {reported} (storm took {storm:?})"
    );
    assert!(
        iostall
            .stderr_text()
            .contains("iostall_runtime_events_rate_limited_total"),
        "one line says events are held back and where they are counted"
    );
    drop(cg);
    iostall.stop().expect("stop");
}
