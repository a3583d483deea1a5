//! A minimal container image built on this machine, without any registry.
//!
//! [`build_busybox_archive`] writes a docker-archive tar (the `docker save` layout:
//! `manifest.json`, one config JSON per image, one layer tar) of a single layer holding
//! Debian's static `/bin/busybox` (package `busybox-static`) and its applet symlinks.
//! Two images share that layer:
//!
//! - [`BUSYBOX_IMAGE`]: `Cmd ["sh"]`, `PATH=/bin`: the test containers.
//! - [`PAUSE_IMAGE`]: entrypoint `sleep 2147483647`: the CRI sandbox ("pause") image.
//!
//! The archive imports into containerd with `ctr images import` and into docker with
//! `docker load`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Tag of the image the test containers run.
pub const BUSYBOX_IMAGE: &str = "iostall.test/busybox:1";

/// Tag of the sandbox (pause) image; containerd's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "iostall.test/pause:1";

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The applets linked in `/bin` of the image.
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "dd", "sync", "echo", "cat", "true", "false", "ls", "mkdir", "rm", "touch",
    "env", "head", "tail", "grep", "wc", "id", "ps", "kill",
];

/// Fails with an install hint unless a static busybox is at [`BUSYBOX_PATH`].
pub fn require_static_busybox() -> Result<Vec<u8>> {
    let bytes = fs::read(BUSYBOX_PATH).with_context(|| {
        format!(
            "failed to read {BUSYBOX_PATH}: install it with `apt-get install -y busybox-static`"
        )
    })?;
    ensure!(
        bytes.starts_with(b"\x7fELF"),
        "{BUSYBOX_PATH} is not an ELF binary"
    );
    // A dynamically linked busybox (Debian's `busybox` package) names its interpreter.
    ensure!(
        !bytes.windows(11).any(|w| w == b"/lib64/ld-l"),
        "{BUSYBOX_PATH} is dynamically linked; install `busybox-static` instead of `busybox`"
    );
    Ok(bytes)
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_path(path)
        .with_context(|| format!("tar: bad path {path}"))?;
    Ok(h)
}

/// The layer tar: `/bin/busybox`, applet symlinks, and a few empty directories.
pub fn build_layer(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in [
        "bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "data/", "root/",
    ] {
        let mut h = header(dir, tar::EntryType::Directory, 0o755, 0)?;
        h.set_cksum();
        b.append(&h, std::io::empty()).context("tar: directory")?;
    }
    for (name, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let mut h = header(name, tar::EntryType::Regular, 0o644, text.len() as u64)?;
        h.set_cksum();
        b.append(&h, text.as_bytes()).context("tar: file")?;
    }
    let mut h = header(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        busybox.len() as u64,
    )?;
    h.set_cksum();
    b.append(&h, busybox).context("tar: busybox")?;
    let mut seen = std::collections::HashSet::new();
    for applet in APPLETS.iter().filter(|a| seen.insert(**a)) {
        let mut h = header(&format!("bin/{applet}"), tar::EntryType::Symlink, 0o777, 0)?;
        h.set_link_name("busybox").context("tar: link name")?;
        h.set_cksum();
        b.append(&h, std::io::empty()).context("tar: symlink")?;
    }
    b.into_inner().context("tar: finish layer")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the docker-archive of [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`] to `out`.
pub fn build_busybox_archive(out: &Path) -> Result<()> {
    let busybox = require_static_busybox()?;
    let layer = build_layer(&busybox)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let layer_name = format!("{}/layer.tar", sha256_hex(&layer));
    let config = |extra: serde_json::Value| {
        let mut config = json!({
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        })
        .to_string()
        .into_bytes()
    };
    let busybox_config = config(json!({ "Cmd": ["sh"] }));
    let pause_config = config(json!({ "Entrypoint": ["sleep", "2147483647"] }));
    let busybox_config_name = format!("{}.json", sha256_hex(&busybox_config));
    let pause_config_name = format!("{}.json", sha256_hex(&pause_config));
    let manifest = json!([
        { "Config": busybox_config_name, "RepoTags": [BUSYBOX_IMAGE], "Layers": [layer_name] },
        { "Config": pause_config_name, "RepoTags": [PAUSE_IMAGE], "Layers": [layer_name] },
    ])
    .to_string();

    let mut b = tar::Builder::new(Vec::new());
    let dir = layer_name.trim_end_matches("/layer.tar");
    let mut h = header(&format!("{dir}/"), tar::EntryType::Directory, 0o755, 0)?;
    h.set_cksum();
    b.append(&h, std::io::empty()).context("tar: layer dir")?;
    for (name, data) in [
        (layer_name.as_str(), layer.as_slice()),
        (busybox_config_name.as_str(), busybox_config.as_slice()),
        (pause_config_name.as_str(), pause_config.as_slice()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = header(name, tar::EntryType::Regular, 0o644, data.len() as u64)?;
        h.set_cksum();
        b.append(&h, data)
            .with_context(|| format!("tar: append {name}"))?;
    }
    let archive = b.into_inner().context("tar: finish archive")?;
    let mut f =
        fs::File::create(out).with_context(|| format!("failed to create {}", out.display()))?;
    f.write_all(&archive)
        .with_context(|| format!("failed to write {}", out.display()))?;
    Ok(())
}

/// Imports a docker-archive into containerd (`ctr -n <namespace> images import`).
pub fn import_into_containerd(address: &Path, namespace: &str, archive: &Path) -> Result<()> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args(["-n", namespace, "images", "import"])
        .arg(archive)
        .output()
        .context("failed to run `ctr` (package containerd)")?;
    if !out.status.success() {
        bail!(
            "ctr images import {} failed ({}): {}",
            archive.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds the archive under `dir` and returns its path.
pub fn busybox_archive_in(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("iostall-busybox.tar");
    build_busybox_archive(&path)?;
    Ok(path)
}
