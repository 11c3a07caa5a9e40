#!/usr/bin/env bash
# Instruction counts (callgrind) per server-side handshake and per sealed record, for ring and
# aws-lc-rs: stable on a shared host where the wall-clock table of `main.rs` is not.
#   bench/tls-provider/callgrind.sh            # prints a markdown table
# A handshake's count is the server's part only (server_new + server_step), as
# (runs of N+1 - runs of 1) / N: first-use set-up and, for resumption, the full handshake that
# issues the ticket cancel out.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../../target/tls-provider}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/shardcast-tls-provider-bench"
count() { # provider case n toggles...
    local p=$1 case=$2 n=$3; shift 3
    local args=()
    for t in "$@"; do args+=("--toggle-collect=$t"); done
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "${args[@]}" \
        "$bin" --only "$p" --case "$case" --count "$n" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| instructions (callgrind) | ring | aws-lc-rs |"
echo "|---|---:|---:|"
for case in full-ecdsa resumed-ecdsa full-rsa resumed-rsa; do
    row="| $case handshake, server side |"
    for p in ring aws-lc-rs; do
        n=20
        more=$(count "$p" "$case" $((n + 1)) '*server_new*' '*server_step*')
        one=$(count "$p" "$case" 1 '*server_new*' '*server_step*')
        row+=" $(((more - one) / n)) |"
    done
    echo "$row"
done
for suite in aes chacha; do
    for len in 64 1024 16384; do
        row="| seal one $len B record, $suite |"
        for p in ring aws-lc-rs; do
            n=2000
            more=$(count "$p" "seal-$suite-$len" $((n + 1)) '*seal_one*')
            one=$(count "$p" "seal-$suite-$len" 1 '*seal_one*')
            row+=" $(((more - one) / n)) |"
        done
        echo "$row"
    done
done
