#!/usr/bin/env bash
# The long fuzz: every target of fuzz/ under libFuzzer for SECONDS each (default 600)
# or 5 million runs, whichever comes first, growing fuzz/corpus/<target>/. Installs cargo-fuzz if it is missing. A crash stops
# that target and leaves its input in fuzz/artifacts/<target>/: fix it, copy the input
# into fuzz/corpus/<target>/ (the test suite replays the corpus), and commit both.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${1:-600}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The eBPF object is not needed to decode bytes: skip its build.
export AYA_BUILD_SKIP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -runs=5000000 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 \
    -print_final_stats=1)
  (cd fuzz && cargo +nightly fuzz cmin "$t" "corpus/$t" >/dev/null 2>&1) || true
done
