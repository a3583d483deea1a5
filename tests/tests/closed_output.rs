//! A reader that goes away: `iostall … 2>&1 | head -5` as the issue tried it, a log
//! shipper that died. iostall must stop quietly (exit 0: its table has no reader left),
//! never panic (exit 101). The real binary, the real kernel, IO on a real ext4 fixture so
//! that rows keep coming after `head` has left.
use std::{
    io::Write as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use iostall_tests::{
    iostall_proc::iostall_binary,
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

#[test]
fn a_closed_pipe_stops_iostall_quietly() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), fs.mount_point().join("busy"));
        std::thread::spawn(move || -> Result<u64> {
            let mut f = std::fs::File::create(&path)?;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&[7; 512])?;
                f.sync_data()?;
                n += 1;
            }
            Ok(n)
        })
    };
    let bin = iostall_binary()?;
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "timeout 60 {} --attach tracepoint -t 0 --metrics-listen off \
             --containerd-socket off --docker-socket off 2>&1 | head -5 >/dev/null; \
             echo \"${{PIPESTATUS[0]}}\"",
            bin.display()
        ))
        .output()
        .context("running the pipeline")?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let fsyncs = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("iostall exit code {code} after {took:?} ({fsyncs} fsyncs meanwhile)");
    assert_ne!(code, "101", "iostall panicked on the closed pipe");
    assert_ne!(code, "124", "iostall kept running with no reader for 60 s");
    assert_eq!(code, "0", "a quiet stop");
    assert!(took < Duration::from_secs(60));
    Ok(())
}
