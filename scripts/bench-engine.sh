#!/usr/bin/env bash
# Engine benchmark: shardcast and the baselines under the same generator, same run.
# Server pinned to CPU 0, generator to CPU 1. Writes JSON to bench/results/<UTC date>-<sha>/ (git-ignored)
# and prints a markdown table. Env: SERVERS (default "shardcast tokio-tungstenite node-ws naive"), DURATION (s, 10),
# SERVER_CPU (0), GEN_CPU (1), NO_BUILD (set: skip cargo build), RESULTS_TAG (dir suffix),
# REPEAT (runs per scenario, 1; the table shows the run with the median headline number).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
SERVERS=${SERVERS:-"shardcast tokio-tungstenite node-ws naive"}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)${RESULTS_TAG:+-$RESULTS_TAG}"
mkdir -p "$OUT"

# idle holds 10,000 sockets in the server and as many in the generator (+ a few).
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
  echo "ulimit -n is $(ulimit -n): idle-10000 needs at least 10100 descriptors per process" >&2
  exit 1
fi
# NO_BUILD=1: use the binaries already in target/release.
[ -n "${NO_BUILD:-}" ] || timeout 1200 cargo build --release -p shardcast-bench >&2
if [[ " $SERVERS " == *" shardcast "* ]]; then
  if cargo metadata --no-deps --format-version 1 | grep -q '"name":"shardcast"'; then
    [ -n "${NO_BUILD:-}" ] || timeout 1200 cargo build --release -p shardcast >&2
  else
    echo "shardcast package not in this tree; skipping it" >&2
    SERVERS=${SERVERS//shardcast/}
  fi
fi
if [[ " $SERVERS " == *" tokio-tungstenite "* ]]; then
  # Its own Cargo workspace (tokio stays out of the main build); its own target dir.
  [ -n "${NO_BUILD:-}" ] || (cd bench/peers/tokio-tungstenite &&
    CARGO_TARGET_DIR="$ROOT/target/peers" timeout 1200 cargo build --release >&2)
fi
if [[ " $SERVERS " == *" node-ws "* ]]; then
  if [ ! -d bench/baselines/node-ws/node_modules ]; then
    (cd bench/baselines/node-ws && npm ci --silent >&2)
  fi
fi
GEN="$ROOT/target/release/shardcast-bench"

server_cmd() {
  case "$1" in
    shardcast) echo "$ROOT/target/release/shardcast --listen 127.0.0.1:0 --shards 1" ;;
    tokio-tungstenite) echo "$ROOT/target/peers/release/tokio-tungstenite-peer --listen 127.0.0.1:0" ;;
    node-ws) echo "node $ROOT/bench/baselines/node-ws/server.js --listen 127.0.0.1:0" ;;
    naive) echo "$GEN naive-server --listen 127.0.0.1:0" ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}

SPID=""
start_server() { # $1 = server name; sets ADDR and SPID
  local log="$OUT/$1.server.log"
  # A stale log from the previous server would hand out its (dead) address.
  rm -f "$log"
  # shellcheck disable=SC2046
  taskset -c "$SERVER_CPU" $(server_cmd "$1") >"$log" 2>&1 &
  SPID=$!
  for _ in $(seq 100); do
    ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" 2>/dev/null | head -1 | awk '{print $3}') || true
    [ -n "${ADDR:-}" ] && return 0
    sleep 0.1
  done
  echo "$1 did not start; log:" >&2; cat "$log" >&2; return 1
}
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
trap stop_server EXIT

LOADS="$OUT/load.txt"
REPEAT=${REPEAT:-1}
run() { # $1 server, $2 result name, rest: scenario and flags; REPEAT times (table: median)
  local server=$1 name=$2 r; shift 2
  for r in $(seq "$REPEAT"); do run_once "$server" "$name" "$r" "$@"; done
}
run_once() {
  local server=$1 name=$2 r=$3; shift 3
  local file="$OUT/$server.$name.json"
  [ "$r" = 1 ] || file="$OUT/$server.$name.r$r.json"
  start_server "$server"
  # Other processes on these CPUs skew every number: keep the load average with the results.
  echo "$server $name $r: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOADS"
  echo "== $server $name ($r/$REPEAT)" >&2
  taskset -c "$GEN_CPU" "$GEN" "$@" --url "ws://$ADDR" --cpus "$GEN_CPU" --server-pid "$SPID" \
    --topic "$name" --json "$file" || {
    # Kept for the record, but out of the table.
    echo "$server $name failed" >&2
    [ -f "$file" ] && mv "$file" "${file%.json}.failed.json"
  }
  stop_server
}

# Room runs should last a few seconds; shardcast batches so well that the baselines' message
# count takes it ~0.1 s (too short for /proc's 10 ms CPU ticks), so it gets ROOM_SCALE x more.
room_scale() { case "$1" in shardcast) echo "${ROOM_SCALE:-20}" ;; *) echo 1 ;; esac; }

for s in $SERVERS; do
  k=$(room_scale "$s")
  run "$s" fanout-max fanout --subscribers 1000 --size 64 --duration "$DURATION"
  run "$s" fanout-100hz fanout --subscribers 1000 --size 64 --rate 100 --duration "$DURATION"
  run "$s" room-100 room --clients 100 --messages $((100 * k)) --size 64
  run "$s" room-500 room --clients 500 --messages $((4 * k)) --size 64
  run "$s" room-1000 room --clients 1000 --messages $((1 * k)) --size 64
  run "$s" connect-5000 connect --connections 5000 --concurrency 100
  run "$s" idle-10000 idle --connections 10000
done

{
  echo "Results: $OUT"
  echo "Date: $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); server on CPU $SERVER_CPU, generator on CPU $GEN_CPU"
  echo "Load average (1/5/15 min) at the start of each run: $(awk -F': ' '{print $2}' "$LOADS" | sort -n | head -1) .. $(awk -F': ' '{print $2}' "$LOADS" | sort -n | tail -1)"
  echo
  # shellcheck disable=SC2086 # SERVERS is a space-separated list, split on purpose
  python3 "$ROOT/scripts/bench-table.py" "$OUT" $SERVERS
} | tee "$OUT/table.md"
