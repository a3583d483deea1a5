#!/usr/bin/env bash
# Sets up this machine (idempotent), builds iostall and runs it on this host. Arguments
# are passed to iostall (default: the ext4slower-style table of operations ≥ 10 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p iostall
exec ./target/release/iostall "$@"
