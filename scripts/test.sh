#!/usr/bin/env bash
# Sets up this machine (idempotent) and runs every test: formatting, clippy on the
# userspace and eBPF crates, unit tests, and the root end-to-end tests against the real
# kernel, real ext4 loop filesystems and real OTLP listeners. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A test run builds once: incremental caches would only cost disk.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== clippy (userspace, tests)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== clippy (eBPF crate, bpf target)"
(cd exporter-ebpf && cargo +nightly clippy -Z build-std=core --target bpfel-unknown-none --release -- -D warnings)

echo "== tests"
# One test thread per binary keeps the root tests (loop devices, tracepoints, cgroups)
# from competing for the machine's two cores and skewing latency assertions.
cargo test --workspace -- --test-threads=1
