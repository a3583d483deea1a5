//! Builds the eBPF object (exporter-ebpf, bpf target, nightly) into OUT_DIR, where the
//! binary embeds it. With `AYA_BUILD_SKIP=1` an empty placeholder is written instead, for
//! a fast userspace-only loop; loading it then fails with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("exporter has no parent directory"))?
        .join("exporter-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    let package = Package {
        name: "exporter-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context("building the eBPF object")?;

    let object = PathBuf::from(env::var("OUT_DIR")?).join("iostall-ebpf");
    if !object.exists() {
        fs::write(&object, []).context("writing the placeholder eBPF object")?;
    }
    Ok(())
}
