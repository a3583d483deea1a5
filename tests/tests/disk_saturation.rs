//! "A disk capped at the device": a steady writer on a disk capped at 10 IOPS, then
//! uncapped. The spans iostall sends while the cap holds say the disk is saturated at a
//! ceiling near 10; once it lifts, they say it is not. `/metrics` says the same.
//!
//! Nothing is mocked: the device is a loop device over a FUSE file served at N
//! requests a second by this process ([`CappedExt4`], whose cap changes at run time),
//! with a real ext4 on it; iostall runs attached to the kernel in tracepoint mode and
//! exports to an in-process OTLP receiver. The only thing iostall is told is nothing:
//! the saturation is inferred from `/proc/diskstats`, as it must be on a cloud disk.
use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use iostall_tests::{
    capped_disk::CappedExt4,
    iostall_proc::Iostall,
    otlp_receiver::{OtlpReceiver, metrics_addr_from_log, scrape, str_attr},
    slowfs::{FsType, ensure_kernel_mounts, require_root},
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};

const COMM: &str = "iost-disk-sat";
const CAP: u64 = 10;

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Writes 4 KiB and fsyncs, in a loop, as thread `COMM`, until `stop`; a short pause
/// between pairs keeps the uncapped phases from flooding the output.
fn steady_writer(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::Builder::new()
        .name(COMM.into())
        .spawn(move || {
            let file = File::options()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open the data file");
            let block = [0x5au8; 4096];
            let mut pairs = 0u64;
            while !stop.load(Ordering::Relaxed) {
                file.write_all_at(&block, (pairs % 256) * 4096)
                    .expect("write");
                file.sync_all().expect("fsync");
                pairs += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            pairs
        })
        .expect("spawn the writer")
}

/// `name{device="M:m",...} v` from a /metrics text.
fn gauge(text: &str, name: &str, device: &str) -> Option<f64> {
    let prefix = format!("{name}{{device=\"{device}\",");
    text.lines()
        .find(|l| l.starts_with(&prefix))?
        .rsplit_once(' ')?
        .1
        .parse()
        .ok()
}

#[test]
fn ext4_spans_say_the_disk_is_saturated_at_its_cap_and_not_once_it_lifts() {
    saturated_at_the_cap_and_not_once_it_lifts(FsType::Ext4);
}

/// The same on xfs: what the detector sees is the device, whatever filesystem issues
/// the requests, and xfs issues them differently (its log, its own fsync path).
#[test]
fn xfs_spans_say_the_disk_is_saturated_at_its_cap_and_not_once_it_lifts() {
    saturated_at_the_cap_and_not_once_it_lifts(FsType::Xfs);
}

fn saturated_at_the_cap_and_not_once_it_lifts(fs: FsType) {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs");
    let disk = CappedExt4::create_fs(fs.min_size_mib().max(64), CAP, fs).expect("capped disk");
    let span_name = format!("{} fsync", fs.name());
    disk.set_iops(0);
    let (major, minor) = disk.device();
    let device = format!("{major}:{minor}");
    let dir = disk.mount_point().join("w");
    std::fs::create_dir(&dir).expect("mkdir");

    let mut rx = OtlpReceiver::grpc().expect("receiver");
    let endpoint = rx.endpoint();
    let iostall = Iostall::start_with_env(
        &[
            "-o",
            "otlp",
            "--comm",
            COMM,
            "-t",
            "0",
            "--attach",
            "tracepoint",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .expect("start iostall");
    let metrics_addr = metrics_addr_from_log(&iostall.stderr_text()).expect("metrics address");

    // What /metrics said each second, for the failure message and the gauge checks.
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (seen, stop, device) = (seen.clone(), stop.clone(), device.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = scrape(metrics_addr, "/metrics") {
                    let line = [
                        "iostall_disk_iops",
                        "iostall_disk_in_flight",
                        "iostall_disk_await_seconds",
                        "iostall_disk_saturated",
                        "iostall_disk_ceiling_iops",
                    ]
                    .iter()
                    .map(|n| format!("{}={:?}", &n[12..], gauge(&text, n, &device)))
                    .collect::<Vec<_>>()
                    .join(" ");
                    seen.lock().expect("lock").push((unix_ns(), line));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let writer = steady_writer(dir.join("data"), stop.clone());
    // Uncapped first: the view learns the device's unloaded await.
    std::thread::sleep(Duration::from_secs(3));
    disk.set_iops(CAP);
    let capped_at = unix_ns();
    std::thread::sleep(Duration::from_secs(16));
    disk.set_iops(0);
    let lifted_at = unix_ns();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let pairs = writer.join().expect("writer");
    monitor.join().expect("monitor");

    let is_ours = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        s.name == span_name && str_attr(&s.attributes, "file.name").as_deref() == Some("data")
    };
    // Everything up to the last fsync's span.
    let last_end = unix_ns();
    let got = rx.collect_until(Duration::from_secs(20), |c| {
        c.spans
            .iter()
            .any(|(_, s)| is_ours(s) && s.end_time_unix_nano + 500_000_000 >= last_end)
    });
    let finished = iostall.stop().expect("stop iostall");
    let history = seen.lock().expect("lock").clone();
    let context = || {
        let h: Vec<String> = history
            .iter()
            .map(|(t, l)| {
                let rel = (*t as i128 - capped_at as i128) / 1_000_000;
                format!("  t{rel:+}ms {l}")
            })
            .collect();
        format!(
            "{pairs} write+fsync pairs; /metrics each second (t from the cap):\n{}\nstderr:\n{}",
            h.join("\n"),
            finished.stderr
        )
    };

    let fsyncs: Vec<_> = got
        .spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| is_ours(s))
        .collect();
    let saturated = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        attr(&s.attributes, "iostall.disk.saturated").cloned()
    };
    // Every fsync span once the view has its first seconds says which device and how
    // it was at that moment.
    for s in fsyncs
        .iter()
        .filter(|s| s.start_time_unix_nano >= capped_at)
    {
        assert_eq!(
            str_attr(&s.attributes, "iostall.disk.device").as_deref(),
            Some(device.as_str()),
            "{s:?}\n{}",
            context()
        );
        for key in [
            "iostall.disk.iops",
            "iostall.disk.await_ms",
            "iostall.disk.bytes_per_second",
        ] {
            assert!(
                matches!(attr(&s.attributes, key), Some(Value::DoubleValue(_))),
                "{key} on {s:?}"
            );
        }
        assert!(
            matches!(
                attr(&s.attributes, "iostall.disk.in_flight"),
                Some(Value::IntValue(_))
            ),
            "{s:?}"
        );
    }

    // During the cap, once the detector has seen 5 whole seconds of it (a sample comes
    // up to 1 s late, and the first capped second may be partly uncapped).
    let settled = capped_at + 8_000_000_000;
    let during: Vec<_> = fsyncs
        .iter()
        .filter(|s| s.start_time_unix_nano >= settled && s.end_time_unix_nano <= lifted_at)
        .collect();
    assert!(
        during.len() >= 3,
        "{} fsync spans in the settled cap:\n{}",
        during.len(),
        context()
    );
    for s in &during {
        assert_eq!(
            saturated(s),
            Some(Value::BoolValue(true)),
            "an fsync {} s into the cap is not marked saturated: {:?}\n{}",
            (s.start_time_unix_nano - capped_at) / 1_000_000_000,
            s.attributes,
            context()
        );
        let Some(Value::DoubleValue(ceiling)) = attr(&s.attributes, "iostall.disk.ceiling_iops")
        else {
            panic!("no ceiling on {:?}\n{}", s.attributes, context());
        };
        assert!(
            (CAP as f64 * 0.8..=CAP as f64 * 1.2).contains(ceiling),
            "ceiling {ceiling} for a cap of {CAP}\n{}",
            context()
        );
    }

    // After the cap lifts (a sample or two later), nothing is saturated.
    let after: Vec<_> = fsyncs
        .iter()
        .filter(|s| s.start_time_unix_nano >= lifted_at + 2_000_000_000)
        .collect();
    assert!(
        after.len() >= 10,
        "{} fsync spans after the cap lifted:\n{}",
        after.len(),
        context()
    );
    for s in &after {
        assert_eq!(
            saturated(s),
            Some(Value::BoolValue(false)),
            "an fsync after the cap lifted: {:?}\n{}",
            s.attributes,
            context()
        );
        assert!(attr(&s.attributes, "iostall.disk.ceiling_iops").is_none());
    }

    // /metrics said so too: saturated at some second of the cap, not at the end.
    let said = |from: u64, to: u64, value: &str| {
        history
            .iter()
            .any(|(t, l)| *t >= from && *t <= to && l.contains(&format!("saturated={value}")))
    };
    assert!(said(settled, lifted_at, "Some(1.0)"), "{}", context());
    assert!(
        said(lifted_at + 2_000_000_000, u64::MAX, "Some(0.0)"),
        "{}",
        context()
    );
    assert!(
        !said(lifted_at + 2_000_000_000, u64::MAX, "Some(1.0)"),
        "{}",
        context()
    );
}
