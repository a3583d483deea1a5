//! The tracer as a library, as root, on the real kernel: the threshold changes while
//! attached, and a full ring buffer loses events only where the drop counter says so.
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use iostall::{
    decode::Decoder,
    event::{AttachMode, IoRecord},
    tracer::{AttachRequest, Tracer, TracerOptions},
};
use iostall_tests::{
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
    workload::{run_workload, run_workload_summary},
};

fn setup() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs mount");
}

/// Decodes everything waiting in the ring buffer, keeping `comm`'s records.
fn drain(ring: &mut RingBuf<MapData>, decoder: &mut Decoder, comm: &str) -> Vec<IoRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let record = decoder.decode(&item).expect("kernel records decode");
        if record.comm == comm {
            out.push(record);
        }
    }
    out
}

#[test]
fn threshold_changes_while_attached() -> Result<()> {
    setup();
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let dir = fs.mount_point().to_string_lossy().into_owned();
    let comm = "iost-threshold";
    let mut tracer = Tracer::load(&TracerOptions {
        threshold_ns: 3_600 * 1_000_000_000,
        filter_pid: None,
        filter_comm: None,
        syscall_probes: None,
        ..TracerOptions::default()
    })?;
    let (mode, _) = tracer.attach(AttachRequest::Tracepoint)?;
    assert_eq!(mode, AttachMode::Tracepoint);
    let mut ring = tracer.take_events()?;
    let mut decoder = Decoder::new(mode);
    let workload = |prefix: &str| {
        run_workload(&[
            "--comm",
            comm,
            "write-fsync",
            "--dir",
            &dir,
            "--count",
            "3",
            "--size",
            "4096",
            "--name-prefix",
            prefix,
        ])
    };

    workload("hour-")?;
    let at_an_hour = drain(&mut ring, &mut decoder, comm);
    assert!(
        at_an_hour.is_empty(),
        "reported under a 1 h threshold: {at_an_hour:?}"
    );

    tracer.set_threshold_ns(0)?;
    let ops = workload("zero-")?;
    let at_zero = drain(&mut ring, &mut decoder, comm);
    for op in &ops {
        assert!(
            at_zero.iter().any(|r| r.file_name == "zero-data"
                && r.op.as_str() == op.op
                && r.tid as u64 == op.tid
                && r.start_unix_ns + 2_000_000 >= op.start_unix_ns),
            "{op:?} not reported at threshold 0: {at_zero:#?}"
        );
    }

    tracer.set_threshold_ns(3_600 * 1_000_000_000)?;
    workload("hour-again-")?;
    let again = drain(&mut ring, &mut decoder, comm);
    assert!(
        again.is_empty(),
        "reported after raising the threshold: {again:?}"
    );
    Ok(())
}

#[test]
fn full_ring_buffer_drops_are_counted_not_hidden() -> Result<()> {
    setup();
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let file = fs
        .mount_point()
        .join("flood")
        .to_string_lossy()
        .into_owned();
    let mut tracer = Tracer::load(&TracerOptions::default())?;
    tracer.attach(AttachRequest::Tracepoint)?;
    // Nobody reads the ring buffer while the workload runs: it fills up.
    let mut ring = tracer.take_events()?;
    let before = tracer.stats()?;
    let preads = 30_000u64;
    run_workload_summary(&[
        "--comm",
        "iost-flood",
        "pread-loop",
        "--file",
        &file,
        "--count",
        &preads.to_string(),
        "--size",
        "4096",
    ])?;
    let after = tracer.stats()?;
    let emitted = after.events - before.events;
    let dropped = after.ringbuf_drops - before.ringbuf_drops;
    assert!(
        dropped > 0,
        "30k events at threshold 0 must overflow a 4 MiB ring buffer"
    );
    assert!(
        emitted + dropped >= preads,
        "every pread is either in the ring or counted as dropped: {emitted} + {dropped} < {preads}"
    );
    let mut in_ring = 0u64;
    while ring.next().is_some() {
        in_ring += 1;
    }
    assert!(
        in_ring >= after.events,
        "{in_ring} records in the ring, but the kernel counted {} emitted",
        after.events
    );
    Ok(())
}
