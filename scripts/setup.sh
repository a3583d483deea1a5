#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine (as root) for building, running and
# testing iostall: apt packages, the nightly toolchain with rust-src, bpf-linker linked
# against the nightly toolchain's own LLVM, the third-party OTLP peers the tests run
# (rotel, Arize Phoenix) in a Python virtual environment, and the tracefs/bpffs mounts.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh must run as root (it installs packages and mounts tracefs/bpffs)" >&2
    exit 1
fi

# --- apt packages ------------------------------------------------------------------
# containerd + runc and docker.io: the real runtimes the tests drive (their services are
# not enabled: the tests start their own instances); busybox-static: the binary the
# tests' locally built images are made of (no registry is reachable); iproute2: `ip netns`
# for the private network namespace of the rotel/Phoenix test; musl-tools + binutils:
# musl-gcc, strip and readelf for the image's static binary (deploy/image/build.sh);
# bpftrace: the peer bench-syscalls measures iostall's cost against; xfsprogs and
# btrfs-progs: mkfs.xfs and mkfs.btrfs for the xfs and btrfs slow-disk fixtures;
# fonts-dejavu-core: the text of soak-outage's RSS plot.
APT_PACKAGES=(e2fsprogs util-linux mount pkg-config protobuf-compiler ca-certificates
              containerd runc docker.io busybox-static python3 python3-venv iproute2
              musl-tools binutils bpftrace xfsprogs btrfs-progs fonts-dejavu-core)
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

if ! rustup target list --installed | grep -qx 'x86_64-unknown-linux-musl'; then
    log "adding the x86_64-unknown-linux-musl target (the static binary of the image)"
    rustup target add x86_64-unknown-linux-musl
fi

# --- kubectl ---------------------------------------------------------------------------
# Its built-in kustomize renders deploy/'s overlays (tests/tests/deploy_kustomize.rs and
# the image test). No API server is needed. The overlays use kustomize v3+ syntax
# (inline `patches`, `envs`): Debian 12's own kubernetes-client (1.20, kustomize v2.0.3)
# cannot render them, so only a `kubectl` package will do.
if ! command -v kubectl >/dev/null 2>&1; then
    if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        log "installing kubectl"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl
    else
        echo "kubectl not found, and no apt source here provides a package named kubectl:" \
             "install kubectl >= 1.27 (kustomize v5), e.g. the kubectl package of" \
             "Kubernetes' apt repository; Debian 12's kubernetes-client is too old" >&2
        exit 1
    fi
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

# --- third-party OTLP peers: rotel (collector) and Arize Phoenix (trace backend) --------
# Into a virtual environment of their own, every package pinned by
# scripts/peers-requirements.txt; reused while the pins are unchanged (a marker holding
# the requirements' hash is written last, so an interrupted install is redone). A fresh
# install takes about 2 minutes and 0.9 GiB.
PEERS_VENV="${IOSTALL_PEERS_VENV:-$HOME/.cache/iostall/peers-venv}"
peers_req="$(cd "$(dirname "$0")" && pwd)/peers-requirements.txt"
peers_hash=$(sha256sum "$peers_req" | cut -d' ' -f1)
if [ "$(cat "$PEERS_VENV/.iostall-requirements" 2>/dev/null)" != "$peers_hash" ]; then
    log "installing rotel and arize-phoenix into $PEERS_VENV"
    rm -rf "$PEERS_VENV"
    mkdir -p "$(dirname "$PEERS_VENV")"
    /usr/bin/python3 -m venv "$PEERS_VENV"
    "$PEERS_VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        -r "$peers_req"
    echo "$peers_hash" > "$PEERS_VENV/.iostall-requirements"
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
