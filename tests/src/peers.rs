//! Third-party OTLP peers, run for real: `rotel` (a Rust OpenTelemetry collector) and
//! Arize Phoenix (a trace backend with OTLP ingest and a REST API for reading spans),
//! from the virtual environment `scripts/setup.sh` installs.
//!
//! Phoenix's gRPC port binds every address, so the peers (and iostall) run inside a
//! private network namespace that [`NetNs`] creates and removes: nothing listens outside
//! its loopback. Processes enter it with `setns(CLONE_NEWNET)` just before `exec` rather
//! than through `ip netns exec`, which would also remount `/sys` and hide the tracefs
//! and cgroup mounts iostall needs. The test reaches the servers from a thread that
//! entered the namespace.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::TcpStream,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value as Json;

/// The virtual environment holding `rotel` and `arize-phoenix` (`IOSTALL_PEERS_VENV`,
/// else `$HOME/.cache/iostall/peers-venv`); an error naming `scripts/setup.sh` when it
/// is not installed.
pub fn peers_venv() -> Result<PathBuf> {
    let venv = match std::env::var_os("IOSTALL_PEERS_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/iostall/peers-venv"),
    };
    ensure!(
        venv.join(".iostall-requirements").exists(),
        "{} holds no installed peers: run scripts/setup.sh (as root)",
        venv.display()
    );
    Ok(venv)
}

/// The `rotel-agent` binary the `rotel` wheel carries.
pub fn rotel_agent() -> Result<PathBuf> {
    let lib = peers_venv()?.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("{}", lib.display()))? {
        let bin = entry?.path().join("site-packages/rotel/rotel-agent");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!("no rotel/rotel-agent under {}", lib.display())
}

/// A network namespace of its own, with `lo` up; removed on drop (drop what runs in it
/// first).
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// `ip netns add iostall-<tag>-<pid>-<n>`, then `lo` up.
    pub fn create(tag: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "iostall-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop removes it.
        let path = Path::new("/run/netns").join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        let me = Self { name, file };
        run(Command::new("ip").args(["-n", &me.name, "link", "set", "lo", "up"]))?;
        Ok(me)
    }

    /// Its name (`ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `cmd` enter this namespace just before it executes.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: setns(2) on an fd this process holds open, between fork and exec; it
        // allocates nothing and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens are in there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns(2) on an fd we hold open; it changes this thread only.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
        })
    }

    /// `GET http://127.0.0.1:<port><path>` inside the namespace: status and body.
    pub fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.run(|| http_get_here(port, path))
    }

    /// Whether something accepts TCP connections on `127.0.0.1:<port>` in here.
    pub fn listening(&self, port: u16) -> bool {
        self.run(|| Ok(TcpStream::connect(("127.0.0.1", port)).is_ok()))
            .unwrap_or(false)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// HTTP/1.1 GET on loopback from the calling thread's namespace.
fn http_get_here(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size, "short chunk");
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
}

/// Kills a child and its process group, and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on the process group our own child leads.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// A running Arize Phoenix (`phoenix serve`), its data in a temporary directory.
pub struct Phoenix {
    child: Child,
    dir: tempfile::TempDir,
    /// The web UI and REST API (and OTLP/HTTP at `/v1/traces`).
    pub http_port: u16,
    /// OTLP/gRPC.
    pub grpc_port: u16,
}

impl Phoenix {
    /// Starts Phoenix in `ns` (HTTP on 127.0.0.1:6006, gRPC on 4317 — all addresses of
    /// the namespace), with its telemetry off, and waits up to 180 s for `/healthz`.
    pub fn start(ns: &NetNs) -> Result<Self> {
        let venv = peers_venv()?;
        let dir = tempfile::tempdir()?;
        let log = File::create(dir.path().join("phoenix.log"))?;
        let (http_port, grpc_port) = (6006, 4317);
        let mut cmd = Command::new(venv.join("bin/phoenix"));
        cmd.arg("serve")
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", http_port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        ns.enter_on_exec(&mut cmd);
        let child = cmd.spawn().context("spawning phoenix serve")?;
        let mut me = Self {
            child,
            dir,
            http_port,
            grpc_port,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = ns.http_get(http_port, "/healthz") {
                return Ok(me);
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("phoenix exited ({status}):\n{}", me.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "phoenix not up within 180 s:\n{}",
                me.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("phoenix.log"), 4000)
    }

    /// Every span of `trace_id` Phoenix keeps in `project`
    /// (`GET /v1/projects/<project>/spans?trace_id=…`, every page); none while Phoenix
    /// has not made the project (it does so with the project's first span).
    pub fn spans(&self, ns: &NetNs, project: &str, trace_id: &str) -> Result<Vec<Json>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/v1/projects/{project}/spans?trace_id={trace_id}&limit=1000");
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&c.replace('=', "%3D"));
            }
            let (status, body) = ns.http_get(self.http_port, &path)?;
            // A project exists from its first span on: none yet, no spans yet.
            if status == 404 && body.contains("not found") && project != "default" {
                return Ok(out);
            }
            ensure!(status == 200, "GET {path}: {status} {body}");
            let page: Json = serde_json::from_str(&body).context("spans: not JSON")?;
            out.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
        bail!("more than 100 pages of spans for {trace_id}")
    }

    /// Waits up to `timeout` until `pred` holds for the spans of `trace_id`; returns
    /// the last answer either way.
    pub fn spans_until(
        &self,
        ns: &NetNs,
        project: &str,
        trace_id: &str,
        timeout: Duration,
        pred: impl Fn(&[Json]) -> bool,
    ) -> Result<Vec<Json>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans(ns, project, trace_id)?;
            if pred(&spans) || Instant::now() > deadline {
                return Ok(spans);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// How rotel sends to Phoenix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotelExport {
    /// OTLP/gRPC to Phoenix's gRPC port.
    Grpc,
    /// OTLP/HTTP (protobuf) to Phoenix's HTTP port.
    Http,
}

/// A running `rotel-agent`: OTLP in (gRPC and HTTP), traces out to Phoenix, logs to its
/// blackhole exporter (Phoenix takes no logs), and both printed in full on its debug
/// log, which the test reads.
pub struct Rotel {
    child: Child,
    dir: tempfile::TempDir,
    /// Its OTLP/gRPC receiver.
    pub grpc_port: u16,
    /// Its OTLP/HTTP receiver.
    pub http_port: u16,
}

impl Rotel {
    /// Starts rotel in `ns` on `grpc_port`/`http_port`, exporting traces to `phoenix`.
    pub fn start(
        ns: &NetNs,
        phoenix: &Phoenix,
        export: RotelExport,
        grpc_port: u16,
        http_port: u16,
    ) -> Result<Self> {
        let bin = rotel_agent()?;
        let dir = tempfile::tempdir()?;
        let log = File::create(dir.path().join("rotel.log"))?;
        let (protocol, endpoint) = match export {
            RotelExport::Grpc => ("grpc", format!("http://127.0.0.1:{}", phoenix.grpc_port)),
            RotelExport::Http => ("http", format!("http://127.0.0.1:{}", phoenix.http_port)),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporters", "phoenix:otlp,drop:blackhole"])
            .args(["--exporters-traces", "phoenix", "--exporters-logs", "drop"])
            .args(["--debug-log", "traces", "--debug-log", "logs"])
            .args(["--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .env("ROTEL_EXPORTER_PHOENIX_ENDPOINT", endpoint)
            .env("ROTEL_EXPORTER_PHOENIX_PROTOCOL", protocol)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        ns.enter_on_exec(&mut cmd);
        let child = cmd.spawn().context("spawning rotel-agent")?;
        let mut me = Self {
            child,
            dir,
            grpc_port,
            http_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(ns.listening(grpc_port) && ns.listening(http_port)) {
            if let Some(status) = me.child.try_wait()? {
                bail!("rotel exited ({status}):\n{}", me.output());
            }
            ensure!(
                Instant::now() < deadline,
                "rotel not listening within 20 s:\n{}",
                me.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// Everything it printed (ANSI colours removed).
    pub fn output(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("rotel.log")).unwrap_or_default())
    }

    /// The spans and log records its debug log printed.
    pub fn records(&self) -> Vec<DebugRecord> {
        parse_debug_log(&self.output())
    }

    /// Waits up to `timeout` until `pred` holds for [`Rotel::records`] (rotel may
    /// answer an export before it prints it); returns the last read either way.
    pub fn records_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[DebugRecord]) -> bool,
    ) -> Vec<DebugRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if pred(&records) || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One span or log record as rotel's detailed debug log prints it (the format of the
/// Collector's `debug` exporter).
#[derive(Debug, Clone, Default)]
pub struct DebugRecord {
    /// `span` or `log`.
    pub signal: &'static str,
    /// Its Resource's attributes, values as printed (`Str(iostall)`, `Int(3)`).
    pub resource: BTreeMap<String, String>,
    /// Its fields (`Trace ID`, `ID`, `Parent ID`, `Span ID`, `Name`, `EventName`…).
    pub fields: BTreeMap<String, String>,
    /// Its attributes, values as printed.
    pub attributes: BTreeMap<String, String>,
}

impl DebugRecord {
    /// A field's value (empty when absent).
    pub fn field(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// `Str(x)` → `x` (other types as printed).
pub fn printed_str(v: &str) -> &str {
    v.strip_prefix("Str(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(v)
}

fn parse_debug_log(text: &str) -> Vec<DebugRecord> {
    let mut out: Vec<DebugRecord> = Vec::new();
    let mut resource = BTreeMap::new();
    // Where attribute lines go: the Resource, or the last record.
    let mut in_resource = false;
    let mut in_record = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") || t.starts_with("ResourceLog") {
            resource = BTreeMap::new();
            in_resource = true;
            in_record = false;
        } else if t.starts_with("Span #") || t.starts_with("LogRecord #") {
            out.push(DebugRecord {
                signal: if t.starts_with("Span") { "span" } else { "log" },
                resource: resource.clone(),
                ..DebugRecord::default()
            });
            in_resource = false;
            in_record = true;
        } else if t.starts_with("ScopeSpans")
            || t.starts_with("ScopeLogs")
            || t.starts_with("Link #")
            || t.starts_with("SpanEvent #")
        {
            // A link's or event's own ids and attributes are not the span's.
            in_resource = false;
            in_record = false;
        } else if let Some(kv) = t.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else {
                continue;
            };
            if in_resource {
                resource.insert(k.to_owned(), v.to_owned());
            } else if let (true, Some(r)) = (in_record, out.last_mut()) {
                r.attributes.insert(k.to_owned(), v.to_owned());
            }
        } else if let (true, Some(r), Some((k, v))) = (in_record, out.last_mut(), t.split_once(':'))
        {
            r.fields.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_debug_log() {
        let text = "\u{1b}[2mx\u{1b}[0m INFO Starting Rotel.\nResourceSpans #0\nResource attributes:\n     -> service.name: Str(iostall)\nScopeSpans #0\nSpan #0\n    Trace ID       : ab\n    Parent ID      : \n    ID             : cd\n    Name           : ext4 fsync\nAttributes:\n     -> process.pid: Int(7)\nResourceLog #0\nResource attributes:\n     -> k8s.pod.uid: Str(u)\nScopeLogs #0\nLogRecord #0\nEventName: iostall.io.slow\nBody: Str(12:00:00 dd)\nAttributes:\n     -> file.name: Str(f)\n    Trace ID       : ab\n    Span ID        : cd\n";
        let r = parse_debug_log(&strip_ansi(text));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].signal, "span");
        assert_eq!(r[0].field("ID"), "cd");
        assert_eq!(r[0].field("Parent ID"), "");
        assert_eq!(printed_str(&r[0].resource["service.name"]), "iostall");
        assert_eq!(r[0].attributes["process.pid"], "Int(7)");
        assert_eq!(r[1].signal, "log");
        assert_eq!(r[1].field("Span ID"), "cd");
        assert_eq!(r[1].field("EventName"), "iostall.io.slow");
        assert_eq!(r[1].field("Body"), "Str(12:00:00 dd)");
        assert_eq!(printed_str(&r[1].resource["k8s.pod.uid"]), "u");
        assert!(!r[1].resource.contains_key("service.name"));
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").ok().as_deref(),
            Some("abcde")
        );
    }
}
