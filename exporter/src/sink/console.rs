//! The `ext4slower` table: `TIME COMM PID T BYTES OFF_KB LAT(ms) FILENAME`.
use std::io::Write;

use super::Sink;
use crate::{correlate::CorrelatedRecord, event::IoRecord};

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
    pub const HEADER: &'static str =
        "TIME     COMM             PID     T BYTES   OFF_KB   LAT(ms) FILENAME";
}

/// One table row for a record (without newline).
#[must_use]
pub fn format_row(record: &IoRecord) -> String {
    let bytes = match record.op {
        crate::event::IoOp::Read | crate::event::IoOp::Write => record.bytes.to_string(),
        _ => "-".to_owned(),
    };
    let off_kb = record
        .offset
        .map_or_else(|| "-".to_owned(), |o| (o / 1024).to_string());
    let mut name = record.display_path();
    if let Some(errno) = record.errno() {
        name.push_str(&format!(" [{}]", std::io::Error::from_raw_os_error(errno)));
    }
    format!(
        "{} {:<16} {:<7} {} {:<7} {:<8} {:>7.2} {}",
        local_hms(record.end_unix_ns),
        record.comm,
        record.pid,
        record.op.letter(),
        bytes,
        off_kb,
        record.latency_ns as f64 / 1e6,
        name
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
        writeln!(self.out, "{}", format_row(&record.record))
    }

    fn idle(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttachMode, IoOp};

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
            attach_mode: AttachMode::Tracepoint,
        }
    }

    #[test]
    fn row_has_ext4slower_columns() {
        let row = format_row(&record());
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..7], ["dockerd", "3616", "W", "4096", "8", "125.43"]);
        assert_eq!(cols[7], "…/io.containerd.metadata.v1.bolt/meta.db");
    }

    #[test]
    fn errors_are_shown_and_header_printed_once() {
        let mut rec = record();
        rec.ret = -5;
        let rec = crate::correlate::Correlator::new("n").correlate(rec);
        let mut sink = ConsoleSink::new(Vec::new());
        sink.record(&rec).expect("write");
        sink.record(&rec).expect("write");
        let text = String::from_utf8(sink.out).expect("utf8");
        assert_eq!(text.matches("LAT(ms)").count(), 1);
        assert!(text.contains("Input/output error"), "{text}");
    }
}
