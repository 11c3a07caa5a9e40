#!/usr/bin/env bash
# Cross-host fan-out through the NATS bridge against same-host delivery, in one run.
# Starts a nats-server and two shardcast hosts (A, B) joined through it, plus a host C without
# the bridge, all pinned to SERVER_CPU; the generator (shardcast-bench fanout) runs on GEN_CPU.
# Subscribers connect to B; the publisher connects to B (same-host) or to A (cross-host:
# A -> NATS -> B). C (same-host, no --nats-url) shows what the bridge costs the local path.
# Each scenario runs in both modes back to back: max rate (window of WINDOW messages not yet
# received by every subscriber) and a fixed RATE with per-delivery latency (the payload carries
# the send time on CLOCK_MONOTONIC; one machine, so A -> B latency is exact).
# Writes JSON to bench/results/<UTC date>-<sha>-nats/ (git-ignored) and prints a markdown table.
# Env: DURATION (s, 10), SUBSCRIBERS (100), SIZE (64), WINDOW (1024), RATE (1000),
# SERVER_CPU (0), GEN_CPU (1), REPEAT (rounds of all six runs, interleaved, 1; the table shows
# each row's median run by its headline number, max rate: msgs/s, fixed rate: p50, and the
# range over the rounds), NO_BUILD (set: use target/release as is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
SUBSCRIBERS=${SUBSCRIBERS:-100}
SIZE=${SIZE:-64}
WINDOW=${WINDOW:-1024}
RATE=${RATE:-1000}
REPEAT=${REPEAT:-1}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-nats"
mkdir -p "$OUT"

NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
if [ ! -x "$NATS_BIN" ]; then
  echo "nats-server is missing (Debian: apt-get install nats-server)" >&2
  exit 1
fi
[ -n "${NO_BUILD:-}" ] || timeout 1800 cargo build --release -p shardcast -p shardcast-bench >&2
SRV="$ROOT/target/release/shardcast"
GEN="$ROOT/target/release/shardcast-bench"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=scripts/benchlib.sh
source "$ROOT/scripts/benchlib.sh"
NATS_PORT=$(free_port)
taskset -c "$SERVER_CPU" "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats-server.log" 2>&1 &
PIDS+=($!)

NATS_URL="nats://127.0.0.1:$NATS_PORT"
start_host a --nats-url "$NATS_URL"; A_ADDR=$ADDR; A_ADMIN=$ADMIN
start_host b --nats-url "$NATS_URL"; B_ADDR=$ADDR; B_ADMIN=$ADMIN; B_PID=$HPID
start_host c; C_ADDR=$ADDR; C_PID=$HPID
bridge_up() { curl -sf "http://$1/stats" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["bridge"]["state"] != "up")'; }
for admin in "$A_ADMIN" "$B_ADMIN"; do
  for _ in $(seq 100); do bridge_up "$admin" && break; sleep 0.1; done
  bridge_up "$admin" || { echo "bridge at $admin never came up" >&2; exit 1; }
done

run() { # $1 = result name, $2 subscribers' address, $3 its pid, rest: extra fanout flags
  local name=$1 addr=$2 pid=$3; shift 3
  taskset -c "$GEN_CPU" "$GEN" fanout --url "ws://$addr" --cpus "$GEN_CPU" --server-pid "$pid" \
    --subscribers "$SUBSCRIBERS" --size "$SIZE" --duration "$DURATION" --settle-ms 1000 \
    --topic "bench-$name" --json "$OUT/$name.json" "$@"
}
for r in $(seq "$REPEAT"); do
  run "local-max.r$r" "$C_ADDR" "$C_PID" --window "$WINDOW"
  run "same-max.r$r" "$B_ADDR" "$B_PID" --window "$WINDOW"
  run "cross-max.r$r" "$B_ADDR" "$B_PID" --window "$WINDOW" --publish-url "ws://$A_ADDR"
  run "local-rate.r$r" "$C_ADDR" "$C_PID" --rate "$RATE"
  run "same-rate.r$r" "$B_ADDR" "$B_PID" --rate "$RATE"
  run "cross-rate.r$r" "$B_ADDR" "$B_PID" --rate "$RATE" --publish-url "ws://$A_ADDR"
done
curl -sf "http://$A_ADMIN/stats" >"$OUT/a.stats.json"
curl -sf "http://$B_ADMIN/stats" >"$OUT/b.stats.json"

python3 - "$OUT" "$REPEAT" <<'EOF'
import json, sys, os
out, repeat = sys.argv[1], int(sys.argv[2])
def runs(n): return [json.load(open(os.path.join(out, f"{n}.r{r}.json"))) for r in range(1, repeat + 1)]
def headline(r): return r["messages_per_s"] if r["rate"] is None else r["latency"]["p50_us"]
def load(n):
    rs = sorted(runs(n), key=headline)
    return rs[len(rs) // 2], [headline(r) for r in rs]
print(f"median of {repeat} interleaved round(s); range = min–max of the headline over the rounds\n")
print("| path | mode | msgs/s | deliveries/s | p50 µs | p99 µs | p99.9 µs | max µs | lost | dup | reordered | range |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
labels = {
    "local": "same host, no bridge (C → C)",
    "same": "same host, bridge on (B → B)",
    "cross": "cross host (A → NATS → B)",
}
for mode in ("max", "rate"):
    for path in ("local", "same", "cross"):
        r, heads = load(f"{path}-{mode}")
        l = r["latency"]
        lost = sum(x["lost"] for x in runs(f"{path}-{mode}"))
        dup = sum(x["duplicated"] for x in runs(f"{path}-{mode}"))
        reord = sum(x["reordered"] for x in runs(f"{path}-{mode}"))
        unit = "msgs/s" if mode == "max" else "µs p50"
        span = f"{min(heads):,.0f}–{max(heads):,.0f} {unit}"
        label = labels[path]
        m = "max rate" if mode == "max" else f'{r["rate"]:.0f} msg/s'
        print(f'| {label} | {m} | {r["messages_per_s"]:,.0f} | {r["deliveries_per_s"]:,.0f} | '
              f'{l["p50_us"]:.0f} | {l["p99_us"]:.0f} | {l["p999_us"]:.0f} | {l["max_us"]:.0f} | '
              f'{lost} | {dup} | {reord} | {span} |')
for h in ("a", "b"):
    st = json.load(open(os.path.join(out, f"{h}.stats.json")))
    b = st["bridge"]
    ring = sum(s["bridge_dropped"] for s in st["shards"])
    print(f'\nhost {h.upper()} bridge: out {b["messages_out"]}, in {b["messages_in"]}, '
          f'not handed to the bridge (bridge_dropped) {ring}, out_dropped {b["out_dropped"]}, '
          f'slow_consumer_drops {b["slow_consumer_drops"]}, in_stalls {b["in_stalls"]}', end="")
print(f"\n\nresults: {out}")
EOF
