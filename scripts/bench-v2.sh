#!/usr/bin/env bash
# Engine v2 against the engine before it and the bare epoll loop, in one run: interleaved
# rounds (base, v2, naive for each scenario, ROUNDS times), a fresh server per run pinned to
# SERVER_CPU, the generator to GEN_CPU, server CPU per operation from /proc utime+stime (so a
# client-bound run still tells). Prints a markdown table of medians; JSON per run in OUT.
#
#   BASE=/path/to/old/shardcast scripts/bench-v2.sh        # BASE: the baseline's binary
#
# Env: BASE (required: a release build of the baseline commit), BEFORE (optional: a third
# server interleaved in every round, e.g. main before a change; its columns join the table),
# ROUNDS (3), DURATION (s, 10),
# SERVER_CPU (0), GEN_CPU (1), NO_BUILD (set: skip cargo build), SCENARIOS (default all:
# "idle fanout100 echo connect room100 room1000 fanoutmax"), OUT (results directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
: "${BASE:?BASE must name the baseline shardcast binary (release build of the commit to compare with)}"
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} SERVER_CPU=${SERVER_CPU:-0} GEN_CPU=${GEN_CPU:-1}
SCENARIOS=${SCENARIOS:-"idle fanout100 echo connect room100 room1000 fanoutmax"}
OUT=${OUT:-"$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-v2"}
mkdir -p "$OUT"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10600 ]; then
  echo "ulimit -n is $(ulimit -n): idle and connect need at least 10600 descriptors" >&2
  exit 1
fi
[ -n "${NO_BUILD:-}" ] || timeout 1800 cargo build --release -p shardcast -p shardcast-bench >&2
GEN="$ROOT/target/release/shardcast-bench"
V2="$ROOT/target/release/shardcast"

server_cmd() { # $1 = base | v2 | naive, $2 = scenario
  local extra=""
  # Room runs burst N*M frames into every queue at once: raise the mark so they are not
  # (correctly) evicted, as scripts/bench does.
  case "$2" in room*) extra="--high-water-bytes 256MiB" ;; esac
  case "$1" in
    base) echo "$BASE --listen 127.0.0.1:0 --admin-listen off --shards 1 $extra" ;;
    before) echo "$BEFORE --listen 127.0.0.1:0 --admin-listen off --shards 1 $extra" ;;
    v2) echo "$V2 --listen 127.0.0.1:0 --admin-listen off --shards 1 $extra" ;;
    naive) echo "$GEN naive-server --listen 127.0.0.1:0" ;;
  esac
}

gen_args() { # $1 = scenario
  case "$1" in
    idle) echo "idle --connections 10000 --warmup 500" ;;
    fanout100) echo "fanout --subscribers 1000 --size 64 --rate 100 --duration $DURATION" ;;
    echo) echo "echo --connections 100 --in-flight 1 --size 20 --duration $DURATION" ;;
    connect) echo "connect --connections 10000 --concurrency 256" ;;
    room100) echo "room --clients 100 --messages 2000 --size 64" ;;
    room1000) echo "room --clients 1000 --messages 20 --size 64" ;;
    fanoutmax) echo "fanout --subscribers 1000 --size 64 --duration $DURATION" ;;
  esac
}

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
trap stop_server EXIT
run_one() { # $1 server, $2 scenario, $3 round
  local log="$OUT/$1.$2.r$3.log" json="$OUT/$1.$2.r$3.json" addr=""
  # shellcheck disable=SC2046
  taskset -c "$SERVER_CPU" $(server_cmd "$1" "$2") >"$log" 2>&1 &
  SPID=$!
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" 2>/dev/null | head -1 | awk '{print $3}') || true
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "$1 did not start" >&2; cat "$log" >&2; return 1; }
  echo "== $1 $2 round $3 (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  # shellcheck disable=SC2046
  timeout 300 taskset -c "$GEN_CPU" "$GEN" $(gen_args "$2") --url "ws://$addr" --cpus "$GEN_CPU" \
    --server-pid "$SPID" --topic "$2" --json "$json" >/dev/null || echo "$1 $2 round $3 failed" >&2
  stop_server
}

for r in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    for srv in base ${BEFORE:+before} v2 naive; do
      # Rooms are compared with the engine before v2 only (the goal is "no lower than
      # today"); at the bare loop's ~0.4 M deliveries/s the same run would take minutes.
      case "$srv.$s" in naive.room*) continue ;; esac
      run_one "$srv" "$s" "$r"
    done
  done
done

{
  echo "Results: $OUT"
  echo "Date: $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); baseline $BASE${BEFORE:+; before $BEFORE}; server CPU $SERVER_CPU, generator CPU $GEN_CPU; $ROUNDS rounds, medians"
  echo
  python3 - "$OUT" "${BEFORE:+before}" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
before = len(sys.argv) > 2 and sys.argv[2] == "before"
def med(srv, scen, key, scale=1.0):
    vals = []
    for f in glob.glob(f"{out}/{srv}.{scen}.r*.json"):
        try:
            v = json.load(open(f))
        except ValueError:
            continue
        for k in key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(v * scale)
    return statistics.median(vals) if vals else None
rows = [
    ("idle 10k: B per subscribed connection", "idle", "bytes_per_subscribed_connection", 1, "{:,.0f}"),
    ("fan-out 100 msg/s x 1000: server µs per delivery", "fanout100", "server_cpu_us_per_delivery", 1, "{:.2f}"),
    ("fan-out 100 msg/s x 1000: p99 ms", "fanout100", "latency.p99_us", 1e-3, "{:.1f}"),
    ("echo 100 x 1 in flight, 20 B: echoes/s", "echo", "echoes_per_s", 1, "{:,.0f}"),
    ("echo: server µs per echo", "echo", "server_cpu_us_per_echo", 1, "{:.2f}"),
    ("connect 10k, 256 in flight: upgrades/s", "connect", "handshakes_per_s", 1, "{:,.0f}"),
    ("connect: server µs per upgrade", "connect", "server_cpu_us_per_handshake", 1, "{:.1f}"),
    ("room N=100: deliveries/s", "room100", "deliveries_per_s", 1, "{:,.0f}"),
    ("room N=1000: deliveries/s", "room1000", "deliveries_per_s", 1, "{:,.0f}"),
    ("fan-out max rate x 1000: deliveries/s", "fanoutmax", "deliveries_per_s", 1, "{:,.0f}"),
]
if before:
    print("| metric | base | before | v2 | bare epoll loop | before / base | v2 / base | v2 / bare |")
    print("|---|---|---|---|---|---|---|---|")
else:
    print("| metric | base | v2 | bare epoll loop | v2 / base | v2 / bare |")
    print("|---|---|---|---|---|---|")
for name, scen, key, scale, fmt in rows:
    b, p, v, n = (med(s, scen, key, scale) for s in ("base", "before", "v2", "naive"))
    if b is None and v is None:
        continue  # scenario not run
    f = lambda x: fmt.format(x) if x is not None else "-"
    r = lambda x, y: f"{x / y:.2f}x" if x is not None and y else "-"
    if before:
        print(f"| {name} | {f(b)} | {f(p)} | {f(v)} | {f(n)} | {r(p, b)} | {r(v, b)} | {r(v, n)} |")
    else:
        print(f"| {name} | {f(b)} | {f(v)} | {f(n)} | {r(v, b)} | {r(v, n)} |")
PY
} | tee "$OUT/table.md"
