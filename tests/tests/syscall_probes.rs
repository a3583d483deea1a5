//! How tracepoint mode times reads, writes and opens, on the real kernel:
//! - every way it can attach (per-syscall tracepoints, the default; `raw_syscalls` as
//!   BTF-typed or raw tracepoints; the hash map instead of the slot array; the end read
//!   from the precise clock every time) times a slow read, and leaves a fast one alone;
//! - the exit's jiffies pre-check (an operation ending within a few ticks of its start is
//!   judged fast without reading the clock) never drops an operation over the threshold:
//!   reads just over it are all counted.
//!
//! A slow read here is a pipe read that waits for a writer: tracepoint mode times it, then
//! leaves it out as not on a traced filesystem, counted under
//! `iostall_kernel_filtered_total{reason="other_fs"}`. `--pid` keeps the rest of the
//! machine out, so the count is exact. The reads are made by a small Python program (real
//! syscalls), which also measures each one itself.
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use iostall_tests::{
    iostall_proc::Iostall,
    otlp_receiver::{metric, metrics_addr_from_log, scrape},
    slowfs::{ensure_kernel_mounts, require_root},
};

/// Threshold of every run here, in ms: the pre-check is on at it (3 ticks at HZ=250).
const THRESHOLD_MS: f64 = 20.0;
const OTHER_FS: &str = "iostall_kernel_filtered_total{reason=\"other_fs\"}";

/// Waits for `dir/go` (polling with stat and sleep, which are not timed), then makes one
/// pipe read per wait given in ms (a thread writes after the wait), and prints each
/// read's own duration in ms.
const PROGRAM: &str = r#"
import os, sys, threading, time
dir, waits = sys.argv[1], [float(w) for w in sys.argv[2].split(",")]
go = os.path.join(dir, "go")
while not os.path.exists(go):
    time.sleep(0.02)
took = []
for wait_ms in waits:
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (time.sleep(wait_ms / 1000), os.write(w, b"x")))
    t.start()
    start = time.monotonic()
    os.read(r, 1)
    took.append((time.monotonic() - start) * 1000)
    t.join(); os.close(r); os.close(w)
print(" ".join("%.3f" % ms for ms in took), flush=True)
"#;

/// What one run saw.
struct Run {
    /// `other_fs` counted while the reads ran.
    counted: u64,
    /// Each read's duration as the program measured it, ms (never shorter than the
    /// syscall itself: it adds the program's own steps around it).
    took_ms: Vec<f64>,
    /// iostall's stderr.
    log: String,
}

/// Runs the reads of `waits_ms` under iostall started with `env`, in tracepoint mode at
/// [`THRESHOLD_MS`] and `--pid` of the program.
fn run(env: &[(&str, &str)], waits_ms: &[f64]) -> Run {
    require_root();
    ensure_kernel_mounts().expect("kernel mounts");
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("reads.py");
    std::fs::File::create(&program)
        .and_then(|mut f| f.write_all(PROGRAM.as_bytes()))
        .expect("write program");
    let waits: Vec<String> = waits_ms.iter().map(|w| w.to_string()).collect();
    let child = Command::new("python3")
        .arg(&program)
        .arg(dir.path())
        .arg(waits.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let pid = child.id().to_string();
    let threshold = THRESHOLD_MS.to_string();
    let iostall = Iostall::start_with_env(
        &[
            "--attach",
            "tracepoint",
            "-t",
            &threshold,
            "-o",
            "json",
            "--pid",
            &pid,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        env,
    )
    .expect("start iostall");
    let addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address");
    let before = metric(&scrape(addr, "/metrics").expect("scrape"), OTHER_FS);
    assert_eq!(before, Some(0), "nothing counted before the reads");
    std::fs::write(dir.path().join("go"), b"").expect("go");
    let out = wait_output(child);
    let took_ms: Vec<f64> = out
        .split_whitespace()
        .map(|t| t.parse().expect("a duration"))
        .collect();
    assert_eq!(
        took_ms.len(),
        waits_ms.len(),
        "one duration per read: {out}"
    );
    // The kernel's counters are read every second: wait until two reads agree.
    let mut counted = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = metric(&scrape(addr, "/metrics").expect("scrape"), OTHER_FS).unwrap_or(0);
        if now == counted || Instant::now() > deadline {
            break;
        }
        counted = now;
    }
    let finished = iostall.stop().expect("stop");
    assert!(finished.success, "{}", finished.stderr);
    Run {
        counted,
        took_ms,
        log: finished.stderr,
    }
}

fn wait_output(child: std::process::Child) -> String {
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the Python program hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "the Python program failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `run` counted every read surely over the threshold and none surely under
/// it. A read the program measured within 1 ms of the threshold may go either way: the
/// program's own duration is a little longer than the syscall's.
fn assert_counted_exactly_the_slow(run: &Run, what: &str) {
    let surely_slow = run
        .took_ms
        .iter()
        .filter(|&&ms| ms >= THRESHOLD_MS + 1.0)
        .count() as u64;
    let either = run
        .took_ms
        .iter()
        .filter(|&&ms| (THRESHOLD_MS - 1.0..THRESHOLD_MS + 1.0).contains(&ms))
        .count() as u64;
    assert!(
        (surely_slow..=surely_slow + either).contains(&run.counted),
        "{what}: {} counted, reads took {:?} ms (threshold {THRESHOLD_MS} ms)\n{}",
        run.counted,
        run.took_ms,
        run.log
    );
}

/// Each attach variant (`IOSTALL_SYSCALL_PROBES`, `IOSTALL_INFLIGHT`,
/// `IOSTALL_EXIT_PRECHECK`) times two slow reads and leaves two fast ones alone.
#[test]
fn every_variant_times_slow_reads_and_leaves_fast_ones() {
    let variants: [(&str, &[(&str, &str)]); 5] = [
        ("per-syscall tracepoints, slots (default)", &[]),
        (
            "raw_syscalls, BTF-typed",
            &[("IOSTALL_SYSCALL_PROBES", "btf")],
        ),
        ("raw_syscalls, raw", &[("IOSTALL_SYSCALL_PROBES", "raw")]),
        ("hash map", &[("IOSTALL_INFLIGHT", "hash")]),
        (
            "precise clock at every end",
            &[("IOSTALL_EXIT_PRECHECK", "0")],
        ),
    ];
    for (what, env) in variants {
        let run = run(env, &[60.0, 1.0, 45.0, 2.0]);
        assert!(
            !run.log.contains("refused"),
            "{what}: the variant attached as asked\n{}",
            run.log
        );
        assert!(
            run.took_ms[0] >= THRESHOLD_MS + 1.0 && run.took_ms[2] >= THRESHOLD_MS + 1.0,
            "{what}: the slow reads were slow: {:?}",
            run.took_ms
        );
        assert_counted_exactly_the_slow(&run, what);
        let precheck = run
            .log
            .contains("ticks after it starts is under the threshold");
        assert_eq!(
            precheck,
            env.is_empty() || env[0].0 != "IOSTALL_EXIT_PRECHECK",
            "{what}: the pre-check is on unless turned off\n{}",
            run.log
        );
    }
}

/// At 20 ms on a 4 ms tick the pre-check judges fast, without the clock, what ended
/// fewer than 3 ticks after its start (under 17 ms, however late jiffies runs by up to
/// 5 ms). Reads just over the threshold must all be counted, and none under it.
#[test]
fn the_jiffies_precheck_drops_only_what_is_surely_fast() {
    let run = run(&[], &[21.0, 22.0, 24.0, 30.0, 13.0, 5.0, 1.0, 0.0]);
    let tick_ms = tick_ms();
    let expected_ticks = ((THRESHOLD_MS - 5.0f64.max(tick_ms)) / tick_ms).ceil() - 1.0;
    assert!(
        run.log.contains(&format!(
            "fewer than {expected_ticks} ticks after it starts"
        )),
        "the pre-check is on with {expected_ticks} ticks (tick {tick_ms} ms)\n{}",
        run.log
    );
    let over = run.took_ms.iter().filter(|&&ms| ms >= 21.0).count();
    assert!(
        over >= 4,
        "four reads over the threshold: {:?}",
        run.took_ms
    );
    assert_counted_exactly_the_slow(&run, "default");
}

/// The kernel's tick, ms: the resolution of `CLOCK_MONOTONIC_COARSE`.
fn tick_ms() -> f64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    assert_eq!(rc, 0, "clock_getres");
    res.tv_sec as f64 * 1e3 + res.tv_nsec as f64 / 1e6
}
