#!/usr/bin/env bash
# Run each cargo-fuzz target for a bounded time: the parsers of shardcast-proto
# (proto/fuzz: HTTP request, frame decoding, unmasking, inflation) and the shard core's whole
# input path (engine/fuzz: shard_input, a script of driver events against the sans-IO core).
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
#   default: 30 s, every target in proto/fuzz/fuzz_targets/ and engine/fuzz/fuzz_targets/.
# Exits non-zero if any target crashes (the crashing input lands in <crate>/fuzz/artifacts/).
# Only stable Rust is installed, so RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz needs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
crates=(proto engine)
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

# Every target as crate/name.
all=()
for c in "${crates[@]}"; do
    for f in "$root/$c"/fuzz/fuzz_targets/*.rs; do
        all+=("$c/$(basename "$f" .rs)")
    done
done
targets=()
if [ "$#" -eq 0 ]; then
    targets=("${all[@]}")
else
    for want in "$@"; do
        found=""
        for t in "${all[@]}"; do
            if [ "${t#*/}" = "$want" ]; then found="$t"; fi
        done
        if [ -z "$found" ]; then
            echo "no fuzz target named $want (have: ${all[*]#*/})" >&2
            exit 2
        fi
        targets+=("$found")
    done
fi

failed=()
for ct in "${targets[@]}"; do
    c="${ct%%/*}" t="${ct#*/}"
    fuzz_dir="$root/$c/fuzz"
    # New inputs go to a local (git-ignored) corpus; the tracked seed corpus is only read.
    work_corpus="$fuzz_dir/target/corpus/$t"
    mkdir -p "$work_corpus" "$fuzz_dir/corpus/$t"
    echo "== fuzzing $c/$t for ${secs}s" >&2
    if ! (cd "$root/$c" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" \
        "$work_corpus" "$fuzz_dir/corpus/$t" -- -max_total_time="$secs"); then
        failed+=("$ct")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz targets failed: ${failed[*]}" >&2
    exit 1
fi
echo "all fuzz targets ran ${secs}s without a crash: ${targets[*]}" >&2
