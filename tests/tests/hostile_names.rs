//! File names that are hostile to whoever reads them: terminal escape sequences (retitle,
//! recolour), a newline (a fake table row), bytes that are not UTF-8, a Unicode direction
//! override. Made on a real ext4 loop filesystem, fsynced by a real process, seen by the
//! real iostall in tracepoint mode. The table must show each as one escaped, inert row;
//! JSON lines must parse and carry the name exactly (bad bytes as U+FFFD); OTLP must
//! carry it as the span's `file.name`. Nothing here is mocked.
use std::{
    io::{BufRead, BufReader, Write as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use iostall_tests::{
    iostall_proc::{READY_MARKER, iostall_binary},
    otlp_receiver::{OtlpReceiver, str_attr},
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

/// The names, as bytes on disk.
const NAMES: &[&[u8]] = &[
    b"esc\x1b]0;pwned\x07\x1b[31mred",
    b"nl\nnext 00:00:00 fake 1 S - - 999.00 - - - shadow",
    b"bad\xff\xfeutf8",
    "bidi\u{202e}txt.exe".as_bytes(),
];

/// How each name must appear in the table.
const SHOWN: &[&str] = &[
    "esc\\x1b]0;pwned\\x07\\x1b[31mred",
    "nl\\nnext 00:00:00 fake",
    "bad\u{fffd}\u{fffd}utf8",
    "bidi\\u{202e}txt.exe",
];

/// iostall with its stdout and stderr in files (raw bytes: a reader that stops at the
/// first bad UTF-8 line would hide exactly what this test looks for).
struct Raw {
    child: Child,
    stdout: tempfile::NamedTempFile,
    stderr: tempfile::NamedTempFile,
}

impl Raw {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let stdout = tempfile::NamedTempFile::new()?;
        let stderr = tempfile::NamedTempFile::new()?;
        let child = Command::new(iostall_binary()?)
            .args(args)
            .envs(env.iter().copied())
            .env("IOSTALL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout.reopen()?)
            .stderr(stderr.reopen()?)
            .spawn()
            .context("spawning iostall")?;
        let me = Self {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(me.stderr.path())?.contains(READY_MARKER) {
            if Instant::now() > deadline {
                bail!(
                    "iostall did not attach: {}",
                    std::fs::read_to_string(me.stderr.path())?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn stop(mut self) -> Result<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "iostall exited with {status}");
        Ok(std::fs::read(self.stdout.path())?)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hostile_file_names_stay_inert_in_the_table_and_exact_in_json_and_otlp() -> Result<()> {
    require_root();
    ensure_kernel_mounts()?;
    let fs = SlowExt4::create(SlowExt4Options::default())?;
    let dir = fs.mount_point().to_owned();
    let mut rx = OtlpReceiver::grpc()?;
    // A writer that waits for the go, so both iostalls are attached first; its pid is
    // the filter, so only its operations are reported.
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             sys.stdin.readline()\n\
             for name in sys.argv[2:]:\n\
             \x20   p = os.path.join(os.fsencode(sys.argv[1]), bytes.fromhex(name))\n\
             \x20   fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)\n\
             \x20   os.write(fd, b'x' * 4096)\n\
             \x20   os.fsync(fd)\n\
             \x20   os.close(fd)\n",
        )
        .arg(&dir)
        .args(NAMES.iter().map(hex))
        .stdin(Stdio::piped())
        .spawn()
        .context("python3")?;
    let pid = writer.id().to_string();
    let filter = [
        "-t",
        "0",
        "-p",
        pid.as_str(),
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let table = Raw::start(&[&filter[..], &["-o", "table"]].concat(), &[])?;
    let endpoint = rx.endpoint();
    let json = Raw::start(
        &[&filter[..], &["-o", "json,otlp"]].concat(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )?;
    writer.stdin.take().context("stdin")?.write_all(b"go\n")?;
    anyhow::ensure!(writer.wait()?.success(), "the writer failed");
    let table = table.stop()?;
    let json = json.stop()?;

    // The table: UTF-8, no raw control character or override, one row per name.
    let text = String::from_utf8(table).context("the table is not UTF-8")?;
    for (i, c) in text.char_indices() {
        let bad = (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c);
        anyhow::ensure!(!bad, "raw {c:?} at byte {i} of the table:\n{text}");
    }
    for shown in SHOWN {
        let rows: Vec<&str> = text.lines().filter(|l| l.contains(shown)).collect();
        anyhow::ensure!(!rows.is_empty(), "no row shows {shown:?}:\n{text}");
        anyhow::ensure!(
            rows.iter().all(|r| r.split_whitespace().count() >= 11),
            "a row with {shown:?} is not a whole row: {rows:?}"
        );
    }
    anyhow::ensure!(
        !text.lines().any(|l| l.starts_with("next ")),
        "a newline in a name made a row of its own:\n{text}"
    );

    // JSON: every line parses; each name comes back exactly (bad bytes as U+FFFD).
    let lines: Vec<serde_json::Value> = BufReader::new(&json[..])
        .lines()
        .map(|l| -> Result<serde_json::Value> { Ok(serde_json::from_str(&l?)?) })
        .collect::<Result<_>>()
        .context("a JSON line does not parse")?;
    let expected: Vec<String> = NAMES
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    for name in &expected {
        anyhow::ensure!(
            lines.iter().any(|v| v["file_name"].as_str() == Some(name)),
            "no JSON record names {name:?}"
        );
    }

    // OTLP: the same names on the spans.
    let got = rx.collect_until(Duration::from_secs(15), |c| {
        expected.iter().all(|name| {
            c.spans
                .iter()
                .any(|(_, s)| str_attr(&s.attributes, "file.name").as_deref() == Some(name))
        })
    });
    for name in &expected {
        anyhow::ensure!(
            got.spans
                .iter()
                .any(|(_, s)| str_attr(&s.attributes, "file.name").as_deref() == Some(name)),
            "no span names {name:?} among {} spans",
            got.spans.len()
        );
    }
    Ok(())
}

fn hex(name: &&[u8]) -> String {
    name.iter().map(|b| format!("{b:02x}")).collect()
}
