#!/usr/bin/env bash
# Builds the iostall container image with the local docker daemon, without any registry:
# a static (musl) release build of `iostall` on this machine, then `docker build` of
# deploy/image/Dockerfile (FROM scratch) with a context holding only that binary and the
# CA bundle.
#
#   bash deploy/image/build.sh [TAG]      # default iostall:<workspace version>
#
# DOCKER_HOST selects the daemon (the image test points it at its private dockerd),
# DOCKER the client (default: docker on PATH).
# Needs: the musl target (scripts/setup.sh adds it) and musl-gcc (Debian's musl-tools,
# also from setup.sh) for ring's C code, plus what the normal build needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-iostall:$version}
target_dir=${CARGO_TARGET_DIR:-target}
docker=${DOCKER:-docker}

for tool in musl-gcc "$docker" strip readelf; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build.sh: $tool not found (run scripts/setup.sh: musl-tools, docker.io, binutils)" >&2
        exit 1
    }
done
if [ ! -r /etc/ssl/certs/ca-certificates.crt ]; then
    echo "build.sh: /etc/ssl/certs/ca-certificates.crt missing (apt-get install ca-certificates)" >&2
    exit 1
fi

CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc} \
    cargo build --release --locked --target "$target" -p iostall

binary="$target_dir/$target/release/iostall"
# A dynamically linked binary would not start in a scratch image: refuse it here.
if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
    echo "build.sh: $binary is dynamically linked" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# Symbols only: the embedded eBPF object is data and stays.
strip -o "$context/iostall" "$binary"
cp /etc/ssl/certs/ca-certificates.crt "$context/"
cp deploy/image/Dockerfile "$context/Dockerfile"
# The classic builder: it needs nothing from outside for FROM scratch.
DOCKER_BUILDKIT=0 "$docker" build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag"
