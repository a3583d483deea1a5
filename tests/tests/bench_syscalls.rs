//! As root: `bench-syscalls` runs end to end (bare, bpftrace, the floor of empty
//! programs and iostall on the same workloads) and its figures are sane. No time limit is checked: CI machines are shared.
use std::process::Command;

use iostall_tests::{iostall_proc::iostall_binary, slowfs::require_root};
use serde_json::Value;

#[test]
fn bench_syscalls_runs_and_its_figures_are_sane() {
    require_root();
    // Builds every binary of the workspace, the bench among them, beside iostall.
    let bench = iostall_binary()
        .expect("binaries build")
        .with_file_name("bench-syscalls");
    let out = Command::new(&bench)
        .args(["--rounds", "2", "--preads", "20000", "--getppids", "50000"])
        .args([
            "--pipes",
            "10000",
            "--repeats",
            "2",
            "--threshold-ms",
            "0",
            "--program-time",
            "--json",
        ])
        .output()
        .expect("bench-syscalls starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // The rounds' rows, then the program-time pass's (one per side with programs).
    let (program_times, rows): (Vec<Value>, Vec<Value>) = lines
        .into_iter()
        .partition(|l| l.get("program_ns_per_op").is_some());
    assert_eq!(
        rows.len(),
        3 * 4,
        "3 workloads × (bare, bpftrace, floor, iostall): {rows:?}"
    );
    let num = |v: &Value| v.as_f64().expect("a number");
    for row in &rows {
        let ns: Vec<f64> = row["ns_per_op"]
            .as_array()
            .expect("min/med/max")
            .iter()
            .map(num)
            .collect();
        assert!(ns[0] > 0.0 && ns[0] <= ns[1] && ns[1] <= ns[2], "{row}");
        let ratio: Vec<f64> = row["ratio_to_bare"]
            .as_array()
            .expect("ratios")
            .iter()
            .map(num)
            .collect();
        // Sane, not fast: no tracer makes a syscall 50× slower or 2× faster.
        assert!(ratio.iter().all(|r| (0.5..50.0).contains(r)), "{row}");
        let events = num(&row["events_per_s"]);
        assert!(events.is_finite() && events >= 0.0, "{row}");
    }
    // At threshold 0 every read/write on ext4 is an event: the tracers saw the workloads.
    for side in ["bpftrace", "iostall default"] {
        let row = rows
            .iter()
            .find(|r| r["side"] == side)
            .expect("a row per side");
        assert!(
            num(&row["events_per_s"]) > 100.0,
            "{side} collected events: {row}"
        );
    }
    for side in ["bare", "floor (empty programs)"] {
        let row = rows
            .iter()
            .find(|r| r["side"] == side)
            .expect("a row per side");
        assert_eq!(
            num(&row["events_per_s"]),
            0.0,
            "{side} reports nothing: {row}"
        );
    }
    // The kernel's own timing of each side's programs: bpftrace, the floor, iostall.
    let sides: Vec<&str> = program_times
        .iter()
        .map(|t| t["side"].as_str().expect("side"))
        .collect();
    assert_eq!(
        sides,
        ["bpftrace", "floor (empty programs)", "iostall default"],
        "{program_times:?}"
    );
    for t in &program_times {
        let per_op: Vec<f64> = t["program_ns_per_op"]
            .as_array()
            .expect("one per workload")
            .iter()
            .map(num)
            .collect();
        assert_eq!(per_op.len(), 3, "{t}");
        // pread and pipe ops run programs on every side; a program run is more than a
        // nanosecond and less than 100 µs.
        for ns in [per_op[0], per_op[2]] {
            assert!((1.0..100_000.0).contains(&ns), "{t}");
        }
    }
    // iostall's programs do work per read, the floor's return at once.
    let pread = |side: &str| {
        let t = program_times
            .iter()
            .find(|t| t["side"] == side)
            .expect("a side");
        num(&t["program_ns_per_op"][0])
    };
    assert!(
        pread("iostall default") > pread("floor (empty programs)"),
        "{program_times:?}"
    );
}
