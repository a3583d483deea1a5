//! End to end with third-party OTLP peers, as root: iostall's OTLP goes through a real
//! collector (`rotel`) into a real trace backend (Arize Phoenix), and the test reads the
//! traces back from Phoenix's REST API (`GET /v1/projects/<project>/spans?trace_id=…`).
//! No mock: a real slow ext4 (loop device, 10 write IOPS), a real containerd driven
//! through CRI, the real kernel's eBPF. Phoenix, rotel and iostall run in a private
//! network namespace (Phoenix's gRPC port binds every address).
//!
//! - OTLP/gRPC: iostall → rotel (gRPC in, gRPC out) → Phoenix's gRPC ingest; slow
//!   fsyncs, then a pod started through CRI on a containerd whose root is on the slow
//!   disk: the whole startup trace (root, phases, IO children) is read back.
//! - OTLP/HTTP (protobuf): iostall → rotel (HTTP in, HTTP out) → Phoenix's
//!   `/v1/traces`, into the project the Resource names (`openinference.project.name`).
//!
//! Each span must come back with the ids, parent, name, times and attributes rotel
//! received (rotel's detailed debug log is the reference for what was sent). Phoenix
//! keeps no logs: the log records are checked where they end, in rotel's debug log.
//! What Phoenix drops or changes (the Resource, span kind, links, nanoseconds) is
//! asserted as such, so a change in Phoenix shows up here; README's "Collector and
//! backends" section says the same.
//!
//! With `IOSTALL_PHOENIX_SCREENSHOT=<file.png>` the test also has headless Chromium
//! (Debian's `chromium`) take a picture of Phoenix's view of the startup trace
//! (`scripts/phoenix-screenshot.sh`).
use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use iostall_tests::{
    containerd::{ContainerSpec, Containerd, new_pod_uid},
    iostall_proc::Iostall,
    peers::{DebugRecord, NetNs, Phoenix, Rotel, RotelExport, printed_str},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};
use serde_json::Value as Json;

const WORKLOAD: &str = env!("CARGO_BIN_EXE_iostall-workload");
const COUNT: usize = 4;
/// The Phoenix project of the HTTP run, named by the Resource.
const HTTP_PROJECT: &str = "iostall-http";

/// Runs write-fsync in the throttled cgroup; returns its fsync JSON lines.
fn workload(fs: &SlowExt4, comm: &str, prefix: &str) -> Result<Vec<Json>> {
    let out = Command::new(WORKLOAD)
        .arg("--prime-throttle")
        .arg("--cgroup")
        .arg(fs.cgroup_dir())
        .args(["--comm", comm, "write-fsync", "--dir"])
        .arg(fs.mount_point())
        .args(["--count", &COUNT.to_string(), "--size", "4096"])
        .args(["--name-prefix", prefix])
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["op"] == "fsync")
        .collect())
}

/// Unix nanoseconds of Phoenix's `2026-12-01T23:05:58.505050+00:00` (UTC).
fn iso_ns(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time
        .strip_suffix("+00:00")
        .or_else(|| time.strip_suffix('Z'))?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac_ns: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + frac_ns).ok()
}

/// An attribute as rotel printed it (`Int(3)`, `Str(x)`, `Double(0.5)`, `Bool(true)`)
/// against the value Phoenix returns.
fn same_value(printed: &str, got: &Json) -> bool {
    let inner = |p: &str| {
        printed
            .strip_prefix(p)
            .and_then(|v| v.strip_prefix('('))
            .and_then(|v| v.strip_suffix(')'))
            .map(str::to_owned)
    };
    if let Some(s) = inner("Str") {
        return got.as_str() == Some(s.as_str());
    }
    if let Some(i) = inner("Int") {
        return i.parse::<i64>().ok() == got.as_i64();
    }
    if let Some(d) = inner("Double") {
        return match (d.parse::<f64>(), got.as_f64()) {
            (Ok(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            _ => false,
        };
    }
    if let Some(b) = inner("Bool") {
        return b.parse::<bool>().ok() == got.as_bool();
    }
    false
}

/// Phoenix's attributes, flattened back to dotted keys.
fn flat_attributes(span: &Json) -> BTreeMap<String, Json> {
    fn walk(prefix: &str, v: &Json, out: &mut BTreeMap<String, Json>) {
        match v.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            None => {
                out.insert(prefix.to_owned(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &span["attributes"], &mut out);
    out
}

fn span_id(s: &Json) -> &str {
    s["context"]["span_id"].as_str().unwrap_or_default()
}

/// Checks one span Phoenix returned against the span rotel received: ids, parent,
/// name, times (to Phoenix's microsecond), status, every attribute with its type.
/// Returns the attributes Phoenix added.
fn check_span(got: &Json, sent: &DebugRecord) -> Result<Vec<String>> {
    let id = sent.field("ID");
    ensure!(span_id(got) == id, "span id");
    ensure!(got["context"]["trace_id"].as_str() == Some(sent.field("Trace ID")));
    ensure!(
        got["name"].as_str() == Some(sent.field("Name")),
        "{id}: name"
    );
    let parent = sent.field("Parent ID");
    ensure!(
        got["parent_id"].as_str().unwrap_or_default() == parent,
        "{id}: parent {:?}, sent {parent:?}",
        got["parent_id"]
    );
    for (field, key) in [("Start time", "start_time"), ("End time", "end_time")] {
        let sent_ns: u64 = sent.field(field).parse().context("time")?;
        let got_ns = got[key].as_str().and_then(iso_ns).context(key)?;
        ensure!(
            got_ns.abs_diff(sent_ns) <= 2_000,
            "{id}: {key} {got_ns} against {sent_ns} sent"
        );
    }
    let attrs = flat_attributes(got);
    for (k, v) in &sent.attributes {
        let g = attrs
            .get(k)
            .with_context(|| format!("{id}: attribute {k} dropped"))?;
        ensure!(
            same_value(v, g),
            "{id}: attribute {k}: {g} against {v} sent"
        );
    }
    Ok(attrs
        .keys()
        .filter(|k| !sent.attributes.contains_key(*k))
        .cloned()
        .collect())
}

/// The spans rotel received of `trace_id`, by span id.
fn sent_of(records: &[DebugRecord], trace_id: &str) -> BTreeMap<String, DebugRecord> {
    records
        .iter()
        .filter(|r| r.signal == "span" && r.field("Trace ID") == trace_id)
        .map(|r| (r.field("ID").to_owned(), r.clone()))
        .collect()
}

/// The slow fsyncs of `prefix` in iostall's JSON: in Phoenix (project `project`) as
/// rotel received them, under the Resource iostall set (as rotel printed it, since
/// Phoenix keeps none), and each one's log record in rotel's debug log.
fn check_fsyncs(
    ns: &NetNs,
    phoenix: &Phoenix,
    rotel: &Rotel,
    project: &str,
    json: &[Json],
    workload: &[Json],
    prefix: &str,
) -> Result<()> {
    let ours: Vec<&Json> = json
        .iter()
        .filter(|l| {
            l["op"] == "fsync"
                && l["file_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    let clearly_slow = workload
        .iter()
        .filter(|w| w["duration_ns"].as_u64().is_some_and(|d| d >= 30_000_000))
        .count();
    ensure!(
        ours.len() >= clearly_slow && clearly_slow >= COUNT - 1,
        "{} fsync lines of {prefix} for {clearly_slow} slow fsyncs",
        ours.len()
    );
    // Every span and log record of ours, as rotel printed them.
    let records = rotel.records_until(Duration::from_secs(10), |r| {
        ours.iter().filter_map(|l| l["span_id"].as_str()).all(|id| {
            let printed =
                |signal, field| r.iter().any(|x| x.signal == signal && x.field(field) == id);
            printed("span", "ID") && printed("log", "Span ID")
        })
    });
    let traces: BTreeSet<&str> = ours.iter().filter_map(|l| l["trace_id"].as_str()).collect();
    let mut added = BTreeSet::new();
    for tid in traces {
        let want: Vec<&str> = ours
            .iter()
            .filter(|l| l["trace_id"] == tid)
            .filter_map(|l| l["span_id"].as_str())
            .collect();
        let got = phoenix.spans_until(ns, project, tid, Duration::from_secs(30), |s| {
            want.iter().all(|w| s.iter().any(|g| span_id(g) == *w))
        })?;
        let sent = sent_of(&records, tid);
        for w in &want {
            let g = got
                .iter()
                .find(|g| span_id(g) == *w)
                .with_context(|| format!("fsync span {w} not in Phoenix's {project}"))?;
            let s = sent
                .get(*w)
                .with_context(|| format!("fsync span {w} not in rotel's debug log"))?;
            added.extend(check_span(g, s)?);
            ensure!(g["name"] == "ext4 fsync");
            ensure!(
                g["parent_id"].is_null(),
                "slow IO outside a startup is a root"
            );
            ensure!(g["status_code"] == "UNSET", "{g}");
            // Mangled: the OTLP kind (INTERNAL) becomes OpenInference's UNKNOWN.
            ensure!(s.field("Kind") == "SPAN_KIND_INTERNAL");
            ensure!(g["span_kind"] == "UNKNOWN", "{g}");
            // The Resource rotel received; Phoenix's span has none.
            ensure!(printed_str(&s.resource["service.name"]) == "iostall-peers");
            ensure!(printed_str(&s.resource["k8s.node.name"]) == "peers-node");
            ensure!(g.get("resource").is_none());
            // The log record, with the span's ids and attributes, in rotel's output.
            let log = records
                .iter()
                .find(|r| r.signal == "log" && r.field("Span ID") == *w)
                .with_context(|| format!("no log record of {w} in rotel's debug log"))?;
            ensure!(log.field("Trace ID") == tid);
            ensure!(log.field("EventName") == "iostall.io.slow");
            ensure!(log.attributes == s.attributes, "{log:?}\n{s:?}");
            ensure!(log.resource == s.resource);
        }
    }
    ensure!(added.is_empty(), "Phoenix added attributes: {added:?}");
    Ok(())
}

/// The startup trace `summary` (iostall's JSON `startup` line) in Phoenix's default
/// project: every span rotel received, root `pod startup` with the pod's identity,
/// phases in order under it, IO spans under the phases. Returns its trace id.
fn check_startup(
    ns: &NetNs,
    phoenix: &Phoenix,
    rotel: &Rotel,
    summary: &Json,
    uid: &str,
) -> Result<String> {
    let tid = summary["trace_id"].as_str().context("trace_id")?.to_owned();
    let root_id = summary["span_id"].as_str().context("span_id")?;
    // Until Phoenix has as many spans of the trace as rotel printed (re-read: rotel
    // may answer an export before it prints it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (got, sent) = loop {
        let sent = sent_of(&rotel.records(), &tid);
        let got = phoenix.spans(ns, "default", &tid)?;
        if (sent.contains_key(root_id) && got.len() == sent.len()) || Instant::now() > deadline {
            break (got, sent);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    ensure!(
        sent.contains_key(root_id),
        "rotel received no root {root_id}"
    );
    ensure!(
        got.len() == sent.len(),
        "Phoenix has {} spans of the startup trace, rotel received {}",
        got.len(),
        sent.len()
    );
    for g in &got {
        let s = sent
            .get(span_id(g))
            .with_context(|| format!("a span rotel never sent: {g}"))?;
        let added = check_span(g, s)?;
        ensure!(added.is_empty(), "Phoenix added {added:?}");
    }
    let root = got.iter().find(|g| span_id(g) == root_id).context("root")?;
    ensure!(root["name"] == "pod startup" && root["parent_id"].is_null());
    ensure!(root["status_code"] == "UNSET", "{root}");
    // The pod's identity is on the root's attributes too, so it survives the Resource
    // being dropped.
    let attrs = flat_attributes(root);
    ensure!(attrs.get("k8s.pod.uid").and_then(Json::as_str) == Some(uid));
    ensure!(attrs.get("k8s.pod.name").and_then(Json::as_str) == Some("web-peers"));
    let mut phases: Vec<&Json> = got
        .iter()
        .filter(|g| g["parent_id"].as_str() == Some(root_id))
        .collect();
    phases.sort_by_key(|p| p["start_time"].as_str().and_then(iso_ns));
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    ensure!(
        names == ["pod sandbox", "container create", "container start"],
        "phases {names:?}"
    );
    let phase_ids: BTreeSet<&str> = phases.iter().map(|p| span_id(p)).collect();
    let io: Vec<&Json> = got
        .iter()
        .filter(|g| g["name"].as_str().is_some_and(|n| n.starts_with("ext4 ")))
        .collect();
    ensure!(!io.is_empty(), "no IO inside the startup on a 10-IOPS disk");
    for s in &io {
        ensure!(
            s["parent_id"]
                .as_str()
                .is_some_and(|p| phase_ids.contains(p)),
            "IO not under a phase: {s}"
        );
    }
    ensure!(
        got.len() == 1 + phases.len() + io.len(),
        "only root, phases and IO"
    );
    ensure!(attrs.get("iostall.stall.ops").and_then(Json::as_i64) == Some(io.len() as i64));
    eprintln!(
        "startup trace {tid}: {} spans in Phoenix ({} IO under {} phases)",
        got.len(),
        io.len(),
        phases.len()
    );
    Ok(tid)
}

/// iostall in `ns` with `env`, JSON on stdout, threshold 5 ms.
fn start_iostall(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> Result<Iostall> {
    let mut all = vec!["-o", "otlp,json", "-t", "5", "--metrics-listen", "off"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.extend([
        ("OTEL_SERVICE_NAME", "iostall-peers"),
        ("NODE_NAME", "peers-node"),
    ]);
    Iostall::start_configured(&all, &env, |cmd| ns.enter_on_exec(cmd))
}

/// Reads iostall's stdout until `pred` holds for a JSON line (up to `timeout`).
fn wait_json(
    iostall: &mut Iostall,
    seen: &mut Vec<String>,
    timeout: Duration,
    pred: impl Fn(&Json) -> bool,
) -> Option<Json> {
    iostall
        .wait_for_line(
            timeout,
            |l| serde_json::from_str::<Json>(l).is_ok_and(|v| pred(&v)),
            seen,
        )
        .and_then(|l| serde_json::from_str(&l).ok())
}

fn all_json(seen: Vec<String>, rest: Vec<String>) -> Vec<Json> {
    seen.into_iter()
        .chain(rest)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[test]
fn iostall_through_rotel_into_phoenix() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let began = Instant::now();
    let slow = SlowExt4::create(SlowExt4Options {
        size_mib: 512,
        write_iops: Some(10),
        read_iops: None,
    })?;
    let ctd = Containerd::start_in(slow.mount_point())?;
    ctd.import_test_images()?;
    // Dropped in reverse: iostall, rotels, Phoenix, then the namespace.
    let ns = NetNs::create("peers")?;
    let phoenix = Phoenix::start(&ns)?;
    let rotel_grpc = Rotel::start(&ns, &phoenix, RotelExport::Grpc, 14317, 14318)?;
    let rotel_http = Rotel::start(&ns, &phoenix, RotelExport::Http, 24317, 24318)?;
    eprintln!("peers up after {:.1}s", began.elapsed().as_secs_f64());

    // 1. OTLP/gRPC, with containerd: slow fsyncs, then a pod startup.
    let socket = ctd.socket().to_string_lossy().into_owned();
    let grpc_endpoint = format!("http://127.0.0.1:{}", rotel_grpc.grpc_port);
    let mut iostall = start_iostall(
        &ns,
        &["--containerd-socket", &socket, "--docker-socket", "off"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )?;
    iostall.wait_for_source(&socket)?;
    let fsyncs = workload(&slow, "peers-grpc", "grpc-")?;
    // containerd's own writes now wait on the 10 IOPS too (its root is on that disk).
    slow.add_pid(ctd.pid().context("containerd is not running")?)?;
    let rt = tokio::runtime::Runtime::new()?;
    let uid = new_pod_uid()?;
    rt.block_on(async {
        let mut cri = ctd.cri().await?;
        let sandbox = cri.run_pod_sandbox("web-peers", "peers", &uid, 0).await?;
        let spec = ContainerSpec::busybox("app", &["sh", "-c", "sleep 3600"]);
        let id = cri.create_container(&sandbox, &spec).await?;
        cri.start_container(&id).await
    })?;
    let mut seen = Vec::new();
    let summary = wait_json(&mut iostall, &mut seen, Duration::from_secs(60), |v| {
        v["type"] == "startup" && v["k8s.pod.uid"] == uid.as_str()
    });
    let finished = iostall.stop()?;
    rt.block_on(async {
        if let Ok(mut cri) = ctd.cri().await {
            let _ = cri.remove_all_pods().await;
        }
    });
    let summary = summary.with_context(|| format!("no startup summary\n{}", finished.stderr))?;
    let json = all_json(seen, finished.stdout.clone());
    check_fsyncs(
        &ns,
        &phoenix,
        &rotel_grpc,
        "default",
        &json,
        &fsyncs,
        "grpc-",
    )
    .with_context(|| format!("gRPC\niostall:\n{}", finished.stderr))?;
    let startup_trace = check_startup(&ns, &phoenix, &rotel_grpc, &summary, &uid)
        .with_context(|| format!("startup\nrotel:\n{}", phoenix.log_tail()))?;
    // rotel sent nothing to Phoenix that failed (logs went to its blackhole).
    let out = rotel_grpc.output();
    ensure!(!out.contains("Exporting failed"), "{out}");

    // 2. OTLP/HTTP (protobuf), into the project the Resource names.
    let http_endpoint = format!("http://127.0.0.1:{}", rotel_http.http_port);
    let iostall = start_iostall(
        &ns,
        &[
            "--comm",
            "peers-http",
            "--containerd-socket",
            "off",
            "--docker-socket",
            "off",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &http_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                &format!("openinference.project.name={HTTP_PROJECT}"),
            ),
        ],
    )?;
    let fsyncs = workload(&slow, "peers-http", "http-")?;
    let finished = iostall.stop()?;
    let json = all_json(Vec::new(), finished.stdout.clone());
    check_fsyncs(
        &ns,
        &phoenix,
        &rotel_http,
        HTTP_PROJECT,
        &json,
        &fsyncs,
        "http-",
    )
    .with_context(|| format!("HTTP\niostall:\n{}", finished.stderr))?;
    // Not in the default project: the Resource reached Phoenix (for the project only).
    let tid = json
        .iter()
        .find(|l| {
            l["file_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("http-"))
        })
        .and_then(|l| l["trace_id"].as_str())
        .context("an http- fsync")?;
    ensure!(phoenix.spans(&ns, "default", tid)?.is_empty());
    let out = rotel_http.output();
    ensure!(!out.contains("Exporting failed"), "{out}");

    if let Some(png) = std::env::var_os("IOSTALL_PHOENIX_SCREENSHOT") {
        screenshot(&ns, &phoenix, &startup_trace, std::path::Path::new(&png))?;
    }
    eprintln!("done after {:.1}s", began.elapsed().as_secs_f64());
    Ok(())
}

/// Headless Chromium, in the namespace, takes a picture of Phoenix's trace view.
fn screenshot(ns: &NetNs, phoenix: &Phoenix, trace_id: &str, png: &std::path::Path) -> Result<()> {
    let (status, body) = ns.http_get(phoenix.http_port, "/v1/projects")?;
    ensure!(status == 200, "{body}");
    let projects: Json = serde_json::from_str(&body)?;
    let project_id = projects["data"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "default"))
        .and_then(|p| p["id"].as_str())
        .context("the default project")?
        .to_owned();
    let url = format!(
        "http://127.0.0.1:{}/projects/{project_id}/traces/{trace_id}",
        phoenix.http_port
    );
    let profile = tempfile::tempdir()?;
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1600,1000",
        "--virtual-time-budget=15000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(&url)
    .stdin(Stdio::null());
    ns.enter_on_exec(&mut cmd);
    let out = cmd.output().context("running chromium")?;
    ensure!(
        out.status.success() && png.exists(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshot of {url} in {}", png.display());
    Ok(())
}

#[test]
fn iso_times_parse() {
    assert_eq!(iso_ns("1970-01-01T00:00:01.5+00:00"), Some(1_500_000_000));
    assert_eq!(
        iso_ns("2026-12-01T23:05:58.505050+00:00"),
        Some(1_796_166_358_505_050_000)
    );
    assert_eq!(
        iso_ns("2000-03-01T00:00:00+00:00"),
        Some(951_868_800_000_000_000)
    );
}
