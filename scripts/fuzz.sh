#!/usr/bin/env bash
# Run each cargo-fuzz target of shardcast-proto for a bounded time.
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
#   default: 30 s, every target in proto/fuzz/fuzz_targets/.
# Exits non-zero if any target crashes (the crashing input lands in proto/fuzz/artifacts/).
# Only stable Rust is installed, so RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz needs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz_dir="$root/proto/fuzz"
secs="${1:-30}"
shift || true

if ! [[ "$secs" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    for f in "$fuzz_dir"/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

failed=()
for t in "${targets[@]}"; do
    # New inputs go to a local (git-ignored) corpus; the tracked seed corpus is only read.
    work_corpus="$fuzz_dir/target/corpus/$t"
    mkdir -p "$work_corpus" "$fuzz_dir/corpus/$t"
    echo "== fuzzing $t for ${secs}s" >&2
    if ! (cd "$root/proto" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" \
        "$work_corpus" "$fuzz_dir/corpus/$t" -- -max_total_time="$secs"); then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz targets failed: ${failed[*]}" >&2
    exit 1
fi
echo "all fuzz targets ran ${secs}s without a crash: ${targets[*]}" >&2
