//! Runs the `iostall-workload` binary and reads back what it did.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Path of the workload binary, next to the iostall binary of this workspace.
pub fn workload_binary() -> Result<PathBuf> {
    let iostall = crate::iostall_proc::iostall_binary()?;
    let bin = iostall.with_file_name("iostall-workload");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"]);
        if iostall
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release")
        {
            cmd.arg("--release");
        }
        let status = cmd.status().context("building iostall-workload")?;
        if !status.success() || !bin.exists() {
            bail!("building iostall-workload failed: {status}");
        }
    }
    Ok(bin)
}

/// One operation the workload timed (a line of its JSON output).
#[derive(Debug, Clone)]
pub struct WorkloadOp {
    /// `write`, `fsync`, `read`, `pread`, `open`.
    pub op: String,
    /// Full path of the file.
    pub path: String,
    /// File name.
    pub file_name: String,
    /// Name of the directory holding it.
    pub parent: String,
    /// Process id.
    pub pid: u64,
    /// Thread id.
    pub tid: u64,
    /// Wall clock just before the syscall.
    pub start_unix_ns: u64,
    /// Duration measured in userspace.
    pub duration_ns: u64,
    /// Bytes the syscall returned (reads, writes).
    pub bytes: u64,
    /// Offset (reads, writes).
    pub offset: u64,
}

fn field_u64(v: &Value, key: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .with_context(|| format!("workload record has no integer {key}: {v}"))
}

fn field_str(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("workload record has no string {key}: {v}"))
}

/// Runs the workload with `args` to completion and returns its stdout.
fn run_to_stdout(args: &[&str]) -> Result<String> {
    let bin = workload_binary()?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "workload {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("workload output is not UTF-8")
}

/// The three slow operations a throttled filesystem shows, each three times, run as
/// `comm` in the fixture's throttled `cgroup` (throttle primed): buffered writes whose
/// fsyncs wait for the disk, O_DIRECT writes that wait themselves (`direct-*`), and
/// O_DIRECT reads of `dir/data`. Returns what the workload measured of each.
pub fn throttled_slow_ops(
    cgroup: &str,
    comm: &str,
    dir: &std::path::Path,
) -> Result<Vec<WorkloadOp>> {
    let dir_s = dir.to_string_lossy().into_owned();
    let throttled = |args: &[&str]| {
        let mut all = vec!["--cgroup", cgroup, "--comm", comm, "--prime-throttle"];
        all.extend_from_slice(args);
        run_workload(&all)
    };
    let sized = ["--count", "3", "--size", "4096"];
    let mut ops = throttled(&[&["write-fsync", "--dir", &dir_s][..], &sized].concat())?;
    ops.extend(throttled(
        &[
            &["write-fsync", "--dir", &dir_s][..],
            &sized,
            &["--direct", "--name-prefix", "direct-"],
        ]
        .concat(),
    )?);
    let data = dir.join("data").to_string_lossy().into_owned();
    ops.extend(throttled(
        &[&["read-direct", "--file", &data][..], &sized].concat(),
    )?);
    Ok(ops)
}

/// Runs the workload with `args` and returns the operations it reported.
pub fn run_workload(args: &[&str]) -> Result<Vec<WorkloadOp>> {
    run_to_stdout(args)?
        .lines()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("bad line {line}"))?;
            Ok(WorkloadOp {
                op: field_str(&v, "op")?,
                path: field_str(&v, "path")?,
                file_name: field_str(&v, "file_name")?,
                parent: field_str(&v, "parent")?,
                pid: field_u64(&v, "pid")?,
                tid: field_u64(&v, "tid")?,
                start_unix_ns: field_u64(&v, "start_unix_ns")?,
                duration_ns: field_u64(&v, "duration_ns")?,
                bytes: field_u64(&v, "bytes")?,
                offset: field_u64(&v, "offset")?,
            })
        })
        .collect()
}

/// Runs the workload and returns its single summary line (benchmark subcommands).
pub fn run_workload_summary(args: &[&str]) -> Result<Value> {
    let text = run_to_stdout(args)?;
    let line = text.lines().last().context("workload printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("bad summary {line}"))
}

/// Writes dirty pages back and drops the page, dentry and inode caches, so the next
/// open or read must go to the disk.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}
