#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine (as root) for building, running and
# testing iostall: apt packages, the nightly toolchain with rust-src, bpf-linker linked
# against the nightly toolchain's own LLVM, and the tracefs/bpffs mounts.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh must run as root (it installs packages and mounts tracefs/bpffs)" >&2
    exit 1
fi

# --- apt packages ------------------------------------------------------------------
# containerd + runc and docker.io: the real runtimes the tests drive (their services are
# not enabled: the tests start their own instances); busybox-static: the binary the
# tests' locally built images are made of (no registry is reachable); bpftrace: the peer
# bench-syscalls measures iostall's cost against.
APT_PACKAGES=(e2fsprogs util-linux mount pkg-config protobuf-compiler ca-certificates
              containerd runc docker.io busybox-static python3 bpftrace)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services (containerd, docker) from starting: the tests run
    # private instances, and a system dockerd would also touch iptables.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Rust toolchains -----------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is required (the machine's Rust toolchain); none found on PATH" >&2
    exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

# --- bpf-linker against the nightly toolchain's LLVM ----------------------------------
# Debian 12 has no LLVM matching nightly's, so link bpf-linker against the libLLVM that
# ships inside the nightly toolchain itself.
if ! command -v bpf-linker >/dev/null 2>&1; then
    sysroot=$(rustc +nightly --print sysroot)
    llvm_major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    libllvm=$(ls "$sysroot"/lib/libLLVM.so."$llvm_major".* 2>/dev/null | head -n1 || true)
    if [ -z "$libllvm" ]; then
        libllvm=$(ls "$sysroot"/lib/libLLVM-"$llvm_major"*.so 2>/dev/null | head -n1 || true)
    fi
    if [ -z "$libllvm" ]; then
        echo "no libLLVM found in $sysroot/lib for LLVM $llvm_major" >&2
        exit 1
    fi
    prefix="$HOME/.cache/iostall/llvm-prefix"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
    log "building bpf-linker against $libllvm (LLVM $llvm_major)"
    LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
        cargo install --locked bpf-linker --no-default-features --features "llvm-$llvm_major"
fi

# --- kernel interfaces ------------------------------------------------------------------
if ! mountpoint -q /sys/kernel/tracing; then
    log "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
log "ready"
