//! As root, real kernel and ext4: a FIFO on ext4 is not the disk. Opening one waits for
//! its other end and reading one waits for data; the tracepoint mode sees those syscalls
//! on an ext4 superblock all the same, and used to report them as slow ext4 opens and
//! reads (containerd's stdio FIFOs showed as 19-second "opens"). Only regular files are
//! reported now, as in the fentry and kprobe modes; the same process's regular file in
//! the same directory is the control.
use std::{process::Command, time::Duration};

use iostall_tests::{
    iostall_proc::Iostall,
    slowfs::{SlowExt4, SlowExt4Options, ensure_kernel_mounts, require_root},
};

#[test]
fn fifo_waits_on_ext4_are_not_reported_and_regular_files_are() {
    require_root();
    ensure_kernel_mounts().expect("tracefs and bpffs");
    let fs = SlowExt4::create(SlowExt4Options::default()).expect("ext4 fixture");
    let dir = fs.mount_point();
    let fifo = dir.join("stdio-fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let control = dir.join("control-file");
    let iostall = Iostall::start(&[
        "--attach",
        "tracepoint",
        "-t",
        "0",
        "-c",
        "fifo-reader",
        "-o",
        "json",
        "--metrics-listen",
        "off",
        "--containerd-socket",
        "off",
        "--docker-socket",
        "off",
    ])
    .expect("iostall attaches");
    // The reader (comm `fifo-reader`) opens the FIFO, waits ~300 ms for a writer, reads
    // what it writes, then writes and fsyncs a regular file beside it.
    let script = format!(
        "import os, ctypes\n\
         ctypes.CDLL(None).prctl(15, b'fifo-reader', 0, 0, 0)\n\
         fd = os.open({fifo:?}, os.O_RDONLY)\n\
         assert os.read(fd, 16) == b'hello'\n\
         os.close(fd)\n\
         fd = os.open({control:?}, os.O_WRONLY | os.O_CREAT, 0o644)\n\
         os.write(fd, b'x' * 4096)\n\
         os.fsync(fd)\n\
         os.close(fd)\n",
        fifo = fifo.to_string_lossy(),
        control = control.to_string_lossy(),
    );
    let mut reader = Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&fifo, b"hello").expect("write the FIFO");
    let status = reader.wait().expect("reader");
    assert!(status.success(), "reader failed");
    let finished = iostall.stop().expect("iostall stops");
    assert!(finished.success, "{}", finished.stderr);
    let records = finished.json().expect("JSON lines");
    let names: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["type"] != "runtime")
        .filter_map(|r| Some((r["file_name"].as_str()?, r["op"].as_str()?)))
        .collect();
    for op in ["open", "write", "fsync"] {
        assert!(
            names.contains(&("control-file", op)),
            "the regular file's {op} is reported at -t 0: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|(name, _)| *name == "stdio-fifo"),
        "the FIFO's open and read are not disk IO: {names:?}"
    );
}
