//! Two threads whose ids are equal modulo 65536 share one slot of the kernel side's
//! in-flight array once `pid_max` is above 65536. Both of their slow operations must be
//! timed when they overlap: before, the later start overwrote the earlier one's slot and
//! the earlier operation went unmeasured and uncounted.
//!
//! Real kernel, real iostall (tracepoint mode). The test raises
//! `/proc/sys/kernel/pid_max` to 262144 while it runs (put back when it ends, also on
//! failure), then a Python process makes two threads with chosen ids T and T + 65536
//! (writing `ns_last_pid` just before each thread is created, retried when another
//! process on the machine took the id first). Thread T reads a pipe for 400 ms; thread
//! T + 65536 starts its own 200 ms pipe read 100 ms later, inside T's. A slow pipe read
//! is counted as `iostall_kernel_filtered_total{reason="other_fs"}` (tracepoint mode
//! times every read, then leaves out what is not on a traced filesystem), and `--pid`
//! keeps every other process out, so the count is exact: both reads, 2; the second
//! start timed through the hash map, `iostall_kernel_inflight_shared_slot_total` 1.
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use iostall_tests::{
    iostall_proc::{Iostall, iostall_binary},
    otlp_receiver::{metric, metrics_addr_from_log, scrape},
    slowfs::{ensure_kernel_mounts, require_root},
};

const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// `INFLIGHT_SLOTS`' length when `pid_max` is above it.
const SLOTS: u32 = 65536;

/// Makes threads with ids T and T + 65536, waits for `dir/go`, then overlaps their slow
/// pipe reads as the module doc says. Prints the two ids, then "done".
const PROGRAM: &str = r#"
import os, sys, threading, time
dir, slots = sys.argv[1], int(sys.argv[2])
go = os.path.join(dir, "go")

def thread_with_tid(want, body):
    """A thread whose kernel id is `want`, running `body` (None if it could not be had)."""
    for _ in range(20):
        if os.path.exists("/proc/%d" % want):
            return None
        got = []
        ready = threading.Event()
        def run():
            got.append(threading.get_native_id())
            ready.set()
            if got[0] == want:
                body()
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(want - 1))
        t = threading.Thread(target=run)
        t.start()
        ready.wait()
        if got[0] == want:
            return t
        t.join()
    return None

start_a, start_b = threading.Event(), threading.Event()
ra, wa = os.pipe()
rb, wb = os.pipe()
def reader(start, r):
    def body():
        start.wait()
        os.read(r, 1)
    return body

for low in range(40000, 60000, 97):
    a = thread_with_tid(low, reader(start_a, ra))
    if a is None:
        continue
    b = thread_with_tid(low + slots, reader(start_b, rb))
    if b is None:
        start_a.set(); os.write(wa, b"x"); a.join()
        start_a.clear()
        ra, wa = os.pipe()
        continue
    break
else:
    sys.exit("no pair of free thread ids T, T+%d" % slots)
print(low, low + slots, flush=True)

while not os.path.exists(go):
    time.sleep(0.02)
start_a.set()          # T reads from 0 ms ...
time.sleep(0.1)
start_b.set()          # ... T+65536 from 100 ms, in T's slot ...
time.sleep(0.2)
os.write(wb, b"x")     # ... until 300 ms;
time.sleep(0.1)
os.write(wa, b"x")     # T until 400 ms.
a.join(); b.join()
print("done", flush=True)
"#;

/// Puts `pid_max` back when dropped.
struct PidMax(String);

impl PidMax {
    fn raise_to(value: u32) -> Self {
        let old = std::fs::read_to_string(PID_MAX).expect("read pid_max");
        std::fs::write(PID_MAX, value.to_string()).expect("raise pid_max");
        Self(old.trim().to_owned())
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PID_MAX, &self.0) {
            eprintln!("could not put pid_max back to {}: {e}", self.0);
        }
    }
}

/// Scrapes /metrics until `series` reaches `at_least` or 10 s pass.
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

#[test]
fn threads_sharing_a_slot_are_both_timed() {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    // Built before pid_max is raised, so the machine runs with it raised for seconds.
    iostall_binary().expect("iostall builds");
    let pid_max = PidMax::raise_to(4 * SLOTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("shared_slot.py");
    std::fs::File::create(&program)
        .and_then(|mut f| f.write_all(PROGRAM.as_bytes()))
        .expect("write program");
    let mut child = Command::new("python3")
        .arg(&program)
        .arg(dir.path())
        .arg(SLOTS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut ids = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut ids).expect("read thread ids");
    let ids: Vec<u32> = ids
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "the program made no colliding thread pair: {ids:?}"
    );
    assert_eq!(ids[0] % SLOTS, ids[1] % SLOTS, "{ids:?} share a slot");

    // iostall loads with pid_max raised: 65536 slots, so the two ids share one.
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "50",
        "-o",
        "json",
        "--pid",
        &child.id().to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .expect("start iostall");
    let addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address");
    std::fs::write(dir.path().join("go"), b"").expect("go");
    let out = child.wait_with_output().expect("python output");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
    assert!(
        out.status.success() && rest.contains("done"),
        "the Python program failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(pid_max);

    let other_fs = "iostall_kernel_filtered_total{reason=\"other_fs\"}";
    let text = metrics_when(addr, other_fs, 2);
    let shared = metric(&text, "iostall_kernel_inflight_shared_slot_total");
    let untimed = metric(
        &text,
        "iostall_kernel_untimed_operations_total{reason=\"inflight_full\"}",
    );
    let finished = iostall.stop().expect("stop iostall");
    assert!(finished.success, "iostall failed: {}", finished.stderr);
    assert_eq!(
        metric(&text, other_fs),
        Some(2),
        "both slow pipe reads of threads {ids:?} must be timed:\n{text}"
    );
    assert_eq!(
        shared,
        Some(1),
        "the second start went to the hash map:\n{text}"
    );
    assert_eq!(untimed, Some(0), "{text}");
}
