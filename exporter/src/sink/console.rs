//! The `ext4slower` table, with the pod and container each operation belongs to and
//! its filesystem: `TIME COMM PID T BYTES OFF_KB LAT(ms) POD CONTAINER FS FILENAME`.
use std::io::Write;

use super::Sink;
use crate::{
    bounds::{into_printable, printable},
    correlate::{CorrelatedEvent, CorrelatedRecord},
    runtime::RuntimeEvent,
};

/// Writes the table to any writer (stdout in the CLI).
pub struct ConsoleSink<W: Write> {
    out: W,
    header_written: bool,
}

impl<W: Write + Send> ConsoleSink<W> {
    /// A table on `out`; the header is printed with the first row.
    pub fn new(out: W) -> Self {
        Self {
            out,
            header_written: false,
        }
    }

    /// The header line.
    pub const HEADER: &'static str = "TIME     COMM             PID     T BYTES   OFF_KB   LAT(ms) \
         POD                            CONTAINER        FS    WHY                  FILENAME";
}

/// Width of the POD column (`namespace/name`, cut with `…`).
const POD_WIDTH: usize = 30;
/// Width of the CONTAINER column (its name in the pod, else a short id).
const CONTAINER_WIDTH: usize = 16;
/// Width of the WHY column (`sat 500/s jbd2 310ms`, cut with `…`).
const WHY_WIDTH: usize = 20;

/// `s` cut to `width` characters, the cut marked with `…`.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// One table row for a record (without newline).
#[must_use]
pub fn format_row(correlated: &CorrelatedRecord) -> String {
    let record = &correlated.record;
    let who = &correlated.enrichment;
    let pod = match (&who.pod_namespace, &who.pod_name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => who.pod_uid.clone().unwrap_or_else(|| "-".to_owned()),
    };
    let container = match (&who.container_name, &who.container_id) {
        (Some(name), _) => name.clone(),
        (None, Some(id)) => id.chars().take(12).collect(),
        (None, None) => "-".to_owned(),
    };
    let bytes = match record.op {
        crate::event::IoOp::Read | crate::event::IoOp::Write => record.bytes.to_string(),
        _ => "-".to_owned(),
    };
    let off_kb = record
        .offset
        .map_or_else(|| "-".to_owned(), |o| (o / 1024).to_string());
    let mut name = into_printable(record.display_path());
    // `ls -F`'s mark: a directory's fsync (its name alone reads like a file's).
    if record.directory {
        name.push('/');
    }
    // The path is the real file's, under the runtime's snapshot directory: say that the
    // process saw it through its container's overlayfs root.
    if record.via_overlayfs {
        name.push_str(" (via overlayfs)");
    }
    if let Some(errno) = record.errno() {
        name.push_str(&format!(" [{}]", std::io::Error::from_raw_os_error(errno)));
    }
    format!(
        "{} {:<16} {:<7} {} {:<7} {:<8} {:>7.2} {:<pw$} {:<cw$} {:<5} {:<ww$} {}",
        local_hms(record.end_unix_ns),
        printable(&record.comm),
        record.pid,
        record.op.letter(),
        bytes,
        off_kb,
        record.latency_ns as f64 / 1e6,
        fit(&printable(&pod), POD_WIDTH),
        fit(&printable(&container), CONTAINER_WIDTH),
        record.fs.as_str(),
        fit(&record.why.short(), WHY_WIDTH),
        name,
        pw = POD_WIDTH,
        cw = CONTAINER_WIDTH,
        ww = WHY_WIDTH,
    )
}

/// `HH:MM:SS` in local time.
fn local_hms(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: zeroed tm is a valid out value; localtime_r is thread safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialised values.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

impl<W: Write + Send> Sink for ConsoleSink<W> {
    fn record(&mut self, record: &CorrelatedRecord) -> std::io::Result<()> {
        if !self.header_written {
            writeln!(self.out, "{}", Self::HEADER)?;
            self.header_written = true;
        }
        writeln!(self.out, "{}", format_row(record))
    }

    fn runtime_event(&mut self, event: &CorrelatedEvent) -> std::io::Result<()> {
        writeln!(self.out, "{}", format_runtime_event(&event.event))
    }

    fn startup_summary(
        &mut self,
        summary: &crate::startup::report::StartupSummary,
    ) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{} {}",
            local_hms(summary.end_unix_ns),
            printable(&summary.line())
        )
    }

    fn idle(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A runtime event as one line between the table rows:
/// `TIME [runtime] event.name short-id namespace/pod container key=value…`.
#[must_use]
pub fn format_runtime_event(event: &RuntimeEvent) -> String {
    use crate::{enrich::metadata, runtime::RuntimeEventKind};
    let label = |k: &str| event.labels.get(k).map(String::as_str);
    let mut line = format!(
        "{} [{}] {}",
        local_hms(event.time_unix_ns),
        event.runtime,
        event.kind.name()
    );
    if let Some(id) = &event.container_id {
        line.push(' ');
        line.extend(id.chars().take(12));
    }
    if let (Some(ns), Some(pod)) = (
        label(metadata::LABEL_POD_NAMESPACE),
        label(metadata::LABEL_POD_NAME),
    ) {
        line.push_str(&format!(" {ns}/{pod}"));
    }
    if let Some(name) = label(metadata::LABEL_CONTAINER_NAME) {
        line.push_str(&format!(" {name}"));
    }
    if let RuntimeEventKind::ContainerExited { exit_code } = event.kind {
        line.push_str(&format!(" exit_code={exit_code}"));
    }
    if event.runtime == crate::runtime::EventSource::Kernel {
        push_kernel_details(&mut line, event);
    }
    if let Some(image) = &event.image {
        line.push_str(&format!(" image={image}"));
    }
    // Labels and names are what a container's creator wrote.
    into_printable(line)
}

/// What a kernel lifecycle event adds to its line: pod uid (when no label named the
/// pod), the process, and per kind the file, exit status, memory, or cgroup path.
fn push_kernel_details(line: &mut String, event: &RuntimeEvent) {
    use crate::{lifecycle::attr, runtime::RuntimeEventKind};
    let get = |k: &str| event.attributes.get(k).map(String::as_str);
    if !event
        .labels
        .contains_key(crate::enrich::metadata::LABEL_POD_NAME)
        && let Some(uid) = get(attr::POD_UID)
    {
        line.push_str(&format!(" pod={uid}"));
    }
    match event.kind {
        RuntimeEventKind::CgroupCreated | RuntimeEventKind::CgroupRemoved => {
            if let Some(path) = get(attr::CGROUP_PATH) {
                line.push_str(&format!(" cgroup={path}"));
            }
            return;
        }
        RuntimeEventKind::OomKill => line.push_str(" victim"),
        _ => {}
    }
    for (key, label) in [(attr::PID, "pid"), (attr::COMMAND, "comm")] {
        if let Some(value) = get(key) {
            line.push_str(&format!(" {label}={value}"));
        }
    }
    match event.kind {
        RuntimeEventKind::ProcessExec => {
            if let Some(file) = get(attr::EXECUTABLE) {
                line.push_str(&format!(" file={file}"));
            }
        }
        RuntimeEventKind::ProcessExit { exit_code, signal } => {
            line.push_str(&format!(" exit_code={exit_code}"));
            if let Some(signal) = signal {
                line.push_str(&format!(" signal={signal}"));
            }
        }
        RuntimeEventKind::OomKill => {
            if let Some(kb) = get(attr::OOM_ANON_RSS_KB) {
                line.push_str(&format!(" anon_rss_kb={kb}"));
            }
        }
        _ => {}
    }
    if get(attr::WATCHED_AS) == Some("runtime-daemon") {
        line.push_str(" (runtime daemon)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::Correlator,
        enrich::{AttributionMethod, Enrichment},
        event::{AttachMode, FsKind, IoOp, IoRecord},
    };

    pub(crate) fn record() -> IoRecord {
        IoRecord {
            op: IoOp::Write,
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_125_000_000,
            latency_ns: 125_430_000,
            pid: 3616,
            tid: 3617,
            comm: "dockerd".into(),
            cgroup_id: 1,
            mntns: 2,
            bytes: 4096,
            offset: Some(8192),
            ret: 4096,
            inode: 12,
            dev_major: 7,
            dev_minor: 0,
            file_name: "meta.db".into(),
            parents: vec!["io.containerd.metadata.v1.bolt".into()],
            path_complete: false,
            mount_point: None,
            file_path: None,
            datasync: false,
            directory: false,
            via_overlayfs: false,
            attach_mode: AttachMode::Tracepoint,
            fs: FsKind::Ext4,
            why: Default::default(),
        }
    }

    #[test]
    fn row_has_ext4slower_columns_then_pod_and_container() {
        let row = format_row(&Correlator::new("n").correlate(record()));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..7], ["dockerd", "3616", "W", "4096", "8", "125.43"]);
        assert_eq!(cols[7..9], ["-", "-"], "no pod, no container");
        assert_eq!(cols[9], "ext4");
        assert_eq!(cols[10], "-", "no cause");
        assert_eq!(cols[11], "…/io.containerd.metadata.v1.bolt/meta.db");
        let mut dir_sync = record();
        dir_sync.op = crate::event::IoOp::Fsync;
        dir_sync.file_name = "containers".into();
        dir_sync.directory = true;
        let row = format_row(&Correlator::new("n").correlate(dir_sync));
        assert!(
            row.ends_with("/containers/"),
            "a directory is marked: {row}"
        );
        let mut rootfs_write = record();
        rootfs_write.via_overlayfs = true;
        let row = format_row(&Correlator::new("n").correlate(rootfs_write));
        assert!(
            row.ends_with("/meta.db (via overlayfs)"),
            "overlayfs is marked: {row}"
        );
        let in_pod = Enrichment {
            method: AttributionMethod::Cgroup,
            container_id: Some("0123456789abcdef".into()),
            pod_name: Some("a-very-long-deployment-name-7d9f8b6c5d-x2x4z".into()),
            pod_namespace: Some("shop".into()),
            ..Enrichment::none()
        };
        let row = format_row(&Correlator::new("n").correlate_enriched(record(), in_pod));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[7], "shop/a-very-long-deployment-n…");
        assert_eq!(cols[7].chars().count(), POD_WIDTH);
        assert_eq!(cols[8], "0123456789ab", "short id when the name is unknown");
        assert_eq!(
            row.find("…/io.containerd")
                .map(|i| row[..i].chars().count()),
            ConsoleSink::<Vec<u8>>::HEADER.find("FILENAME"),
            "FILENAME column lines up with the header"
        );
    }

    #[test]
    fn runtime_events_are_one_line_with_pod_and_exit_code() {
        use crate::runtime::{EventSource, RuntimeEvent, RuntimeEventKind};
        let mut ev = RuntimeEvent::new(
            1_700_000_000_000_000_000,
            EventSource::Containerd,
            RuntimeEventKind::ContainerExited { exit_code: 7 },
        );
        ev.container_id = Some("0123456789abcdef".into());
        for (k, v) in [
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.container.name", "app"),
        ] {
            ev.labels.insert(k.into(), v.into());
        }
        let line = format_runtime_event(&ev);
        assert!(
            line.ends_with("[containerd] container.exited 0123456789ab shop/web-0 app exit_code=7"),
            "{line}"
        );
        let mut json = super::super::json::JsonSink::new(Vec::new());
        let ev = Correlator::new("n").correlate_event(ev, Enrichment::none());
        json.runtime_event(&ev).expect("write");
        let text = String::from_utf8(json.into_inner()).expect("utf8");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "runtime");
        assert_eq!(v["event.name"], "container.exited");
        assert_eq!(v["kind"], "container_exited");
        assert_eq!(v["exit_code"], 7);
        assert_eq!(v["trace_id"], ev.trace_id.to_string());
    }

    #[test]
    fn kernel_events_show_the_process_and_how_it_ended() {
        use crate::{
            lifecycle::attr,
            runtime::{EventSource, RuntimeEvent, RuntimeEventKind},
        };
        let mut ev = RuntimeEvent::new(
            1_700_000_000_000_000_000,
            EventSource::Kernel,
            RuntimeEventKind::ProcessExit {
                exit_code: 137,
                signal: Some(9),
            },
        );
        ev.container_id = Some("0123456789abcdef".into());
        for (k, v) in [
            (attr::POD_UID, "uid-1"),
            (attr::PID, "42"),
            (attr::COMMAND, "sh"),
            (attr::WATCHED_AS, "container"),
        ] {
            ev.attributes.insert(k.into(), v.into());
        }
        let line = format_runtime_event(&ev);
        assert!(
            line.ends_with(
                "[kernel] process.exit 0123456789ab pod=uid-1 pid=42 comm=sh exit_code=137 signal=9"
            ),
            "{line}"
        );
        let mut json = super::super::json::JsonSink::new(Vec::new());
        let ev = Correlator::new("n").correlate_event(ev, Enrichment::none());
        json.runtime_event(&ev).expect("write");
        let v: serde_json::Value =
            serde_json::from_slice(&json.into_inner()).expect("one JSON line");
        assert_eq!(v["event.name"], "process.exit");
        assert_eq!(v["runtime"], "kernel");
        assert_eq!(
            (v["exit_code"].as_i64(), v["signal"].as_i64()),
            (Some(137), Some(9))
        );
        assert_eq!(v["attributes"]["k8s.pod.uid"], "uid-1");

        let mut daemon = RuntimeEvent::new(0, EventSource::Kernel, RuntimeEventKind::ProcessExec);
        daemon
            .attributes
            .insert(attr::COMMAND.into(), "containerd".into());
        daemon
            .attributes
            .insert(attr::EXECUTABLE.into(), "/usr/bin/containerd".into());
        daemon
            .attributes
            .insert(attr::WATCHED_AS.into(), "runtime-daemon".into());
        assert!(
            format_runtime_event(&daemon).ends_with(
                "process.exec comm=containerd file=/usr/bin/containerd (runtime daemon)"
            ),
            "{}",
            format_runtime_event(&daemon)
        );
    }

    #[test]
    fn errors_are_shown_and_header_printed_once() {
        let mut rec = record();
        rec.ret = -5;
        let rec = Correlator::new("n").correlate(rec);
        let mut sink = ConsoleSink::new(Vec::new());
        sink.record(&rec).expect("write");
        sink.record(&rec).expect("write");
        let text = String::from_utf8(sink.out).expect("utf8");
        assert_eq!(text.matches("LAT(ms)").count(), 1);
        assert!(text.contains("Input/output error"), "{text}");
    }
}
