#!/usr/bin/env bash
# Reproduces examples/phoenix-startup-trace.png: runs the rotel -> Arize Phoenix end-to-end
# test (tests/tests/rotel_phoenix.rs) with IOSTALL_PHOENIX_SCREENSHOT set, so that headless
# Chromium (Debian's chromium, installed if missing), inside the test's network namespace,
# takes a picture of Phoenix's view of the pod startup trace the test made. As root, after
# scripts/setup.sh. A one-off artifact: CI does not run this.
#   bash scripts/phoenix-screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
export PATH="$HOME/.cargo/bin:$PATH" CARGO_INCREMENTAL=0
out=$(realpath -m "${1:-examples/phoenix-startup-trace.png}")
IOSTALL_PHOENIX_SCREENSHOT="$out" cargo test --workspace --test rotel_phoenix -- \
    --test-threads=1 --nocapture iostall_through_rotel_into_phoenix
echo "wrote $out"
