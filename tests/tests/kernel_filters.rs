//! The kernel side's filters, tested as kernel-side, on the real kernel:
//! - `--pid` keeps every other process's slow IO out of the ring buffer: what reached
//!   userspace (`iostall_kernel_events_total`) is exactly what was reported.
//! - each `iostall_kernel_filtered_total{reason}` counts its own kind of slow operation:
//!   a slow pipe read (`other_fs`), a FIFO open on ext4 that waits for its writer
//!   (`not_regular`), and a read whose fd another thread closed meanwhile
//!   (`file_unresolved`).
//!
//! `--pid` isolates the test's process from the rest of the machine, so counts are
//! exact. The slow operations are made by a small Python program (real syscalls).
use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use iostall_tests::{
    capped_disk::CappedExt4,
    iostall_proc::Iostall,
    otlp_receiver::{metric, metrics_addr_from_log, scrape},
    slowfs::{ensure_kernel_mounts, require_root},
};
use serde_json::Value;

/// Waits for `dir/go`, then does its slow operations and exits. Waiting polls with
/// stat and sleep, which are not traced: nothing before `go` counts.
const PROGRAM: &str = r#"
import os, sys, threading, time
mode, dir = sys.argv[1], sys.argv[2]
go = os.path.join(dir, "go")
while not os.path.exists(go):
    time.sleep(0.02)

def later(f):
    t = threading.Thread(target=lambda: (time.sleep(0.1), f()))
    t.start()
    return t

if mode == "filtered":
    # other_fs: a read that waits 100 ms on a pipe.
    r, w = os.pipe()
    t = later(lambda: os.write(w, b"x"))
    os.read(r, 1)
    t.join(); os.close(r); os.close(w)
    # not_regular: opening a FIFO on ext4 waits for its writer.
    fifo = os.path.join(dir, "fifo")
    os.mkfifo(fifo)
    t = later(lambda: os.close(os.open(fifo, os.O_WRONLY)))
    fd = os.open(fifo, os.O_RDONLY)
    t.join(); os.close(fd)
    # file_unresolved: the fd is closed (then written to) while the read waits.
    r, w = os.pipe()
    def close_then_write():
        os.close(r)
        os.write(w, b"x")
    t = later(close_then_write)
    os.read(r, 1)
    t.join(); os.close(w)
else:
    # Slow fsyncs on the capped disk.
    for i in range(3):
        with open(os.path.join(dir, "data-" + mode), "ab") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
print("done", flush=True)
"#;

/// A Python process running [`PROGRAM`] in `mode`, waiting for `dir/go`.
fn spawn(program: &Path, mode: &str, dir: &Path) -> Child {
    Command::new("python3")
        .arg(program)
        .arg(mode)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3")
}

fn finish(child: Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the Python program hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("done"),
        "the Python program failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn program_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("slow_ops.py");
    let mut f = std::fs::File::create(&path).expect("create program");
    f.write_all(PROGRAM.as_bytes()).expect("write program");
    path
}

/// Scrapes /metrics until the counter `series` reaches `at_least` (the kernel's
/// counters are read every second), then returns the whole text.
fn metrics_when(addr: std::net::SocketAddr, series: &str, at_least: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr, "/metrics").expect("scrape");
        if metric(&text, series).unwrap_or(0) >= at_least || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// iostall in tracepoint mode at 20 ms, JSON out, only `pid`, with /metrics.
fn iostall_for(pid: &str) -> (Iostall, std::net::SocketAddr) {
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "20",
        "-o",
        "json",
        "--pid",
        pid,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .expect("start iostall");
    let addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address");
    (iostall, addr)
}

#[test]
fn pid_filter_keeps_other_processes_out_of_the_ring() {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    let disk = CappedExt4::create(32, 10).expect("capped disk");
    let dir = disk.mount_point();
    let program = program_file(dir);
    let wanted = spawn(&program, "wanted", dir);
    let other = spawn(&program, "other", dir);
    let pid = wanted.id().to_string();
    let (iostall, addr) = iostall_for(&pid);
    std::fs::write(dir.join("go"), b"").expect("go");
    finish(wanted);
    finish(other);
    // The kernel's counters are read every second: wait until they caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_when(addr, "iostall_records_total", 3);
        let caught_up = metric(&text, "iostall_kernel_events_total").unwrap_or(0)
            >= metric(&text, "iostall_records_total").unwrap_or(u64::MAX);
        if caught_up || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let finished = iostall.stop().expect("stop");
    assert!(finished.success, "{}", finished.stderr);
    // IO records only: runtime events of the node's containers print too.
    let events: Vec<Value> = finished
        .json()
        .expect("json")
        .into_iter()
        .filter(|e| e.get("op").is_some())
        .collect();
    let fsyncs = |name: &str| {
        events
            .iter()
            .filter(|e| e["op"] == "fsync" && e["file_name"] == name)
            .count()
    };
    assert_eq!(fsyncs("data-wanted"), 3, "{events:#?}");
    assert_eq!(fsyncs("data-other"), 0, "{events:#?}");
    assert!(
        events
            .iter()
            .all(|e| e["pid"].as_u64() == Some(pid.parse().unwrap_or(0))),
        "only --pid's records: {events:#?}"
    );
    // Kernel-side: the other process's slow fsyncs never reached userspace.
    let kernel_events = metric(&text, "iostall_kernel_events_total").expect("kernel events");
    let records = metric(&text, "iostall_records_total").expect("records");
    assert_eq!(
        kernel_events, records,
        "every event in the ring is a reported record\n{text}"
    );
    assert_eq!(records, events.len() as u64, "{text}");
}

#[test]
fn each_kernel_filtered_reason_is_counted() {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    let disk = CappedExt4::create(32, 0).expect("ext4");
    let dir = disk.mount_point();
    let program = program_file(dir);
    let child = spawn(&program, "filtered", dir);
    let pid = child.id().to_string();
    let (iostall, addr) = iostall_for(&pid);
    let before = scrape(addr, "/metrics").expect("scrape");
    std::fs::write(dir.join("go"), b"").expect("go");
    finish(child);
    let text = metrics_when(
        addr,
        "iostall_kernel_filtered_total{reason=\"file_unresolved\"}",
        1,
    );
    let finished = iostall.stop().expect("stop");
    assert!(finished.success, "{}", finished.stderr);
    let reason = |t: &str, r: &str| {
        metric(
            t,
            &format!("iostall_kernel_filtered_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {r} series in\n{t}"))
    };
    for r in ["other_fs", "not_regular", "file_unresolved"] {
        assert_eq!(
            reason(&before, r),
            0,
            "{r} before the program ran\n{before}"
        );
        assert_eq!(
            reason(&text, r),
            1,
            "one slow operation of kind {r}\n{text}"
        );
    }
    // Left out in the kernel: none of them is a record.
    let events = finished.json().expect("json");
    assert!(
        events
            .iter()
            .all(|e| e["op"] != "read" && e["op"] != "open"),
        "{events:#?}"
    );
    assert_eq!(
        metric(&text, "iostall_kernel_events_total"),
        Some(0),
        "{text}"
    );
}
