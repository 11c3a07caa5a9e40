#!/usr/bin/env bash
# Two target checks of docs/BENCHMARKS.md that the suite's storm/max-rate runs cannot answer:
#  1. handshake latency at a sustained ~10-20k upgrades/s (few in flight, so it is service time,
#     not queueing): `connect` with 4, 8 and 16 handshakes in flight; server-side latency from /stats;
#  2. per-connection queue depth at 50% of the maximum fan-out rate: `fanout --rate RATE` with
#     /stats polled every 250 ms (p95/p99/max queue depth, broadcast latency);
#  3. server CPU per delivery at a fixed 100k deliveries/s (1 -> 1000, 100 msg/s, 10 s), shardcast
#     against the bare send() loop (`shardcast-bench naive-server`), ROUNDS interleaved rounds (3),
#     because one 10 s run of each varies by more than their difference.
# Server on SERVER_CPU (0), generator on GEN_CPU (1); release binaries must be built.
# Env: RATE (msg/s to 1000 subscribers; default 3150 = half of 6.3 M deliveries/s), ROUNDS (3), PORT (18080),
# ADMIN_PORT (19090). Writes JSON to bench/results/<UTC date>-<sha>-targets/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-3150} ROUNDS=${ROUNDS:-3} PORT=${PORT:-18080} ADMIN_PORT=${ADMIN_PORT:-19090}
SERVER_CPU=${SERVER_CPU:-0} GEN_CPU=${GEN_CPU:-1}
S=target/release/shardcast G=target/release/shardcast-bench
OUT="bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-targets"
mkdir -p "$OUT"
P=""
trap '[ -n "$P" ] && kill "$P" 2>/dev/null; true' EXIT
start() {
  taskset -c "$SERVER_CPU" "$S" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --shards 1 >"$OUT/server.log" 2>&1 &
  P=$!
  for _ in $(seq 1 50); do curl -sf "127.0.0.1:$ADMIN_PORT/health" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { kill "$P"; wait "$P" 2>/dev/null || true; P=""; }
for conc in 4 8 16; do
  start
  timeout 120 taskset -c "$GEN_CPU" "$G" connect --connections 5000 --concurrency "$conc" \
    --url "ws://127.0.0.1:$PORT" --cpus "$GEN_CPU" --server-pid "$P" --json "$OUT/connect-$conc.json"
  curl -s "127.0.0.1:$ADMIN_PORT/stats" >"$OUT/connect-$conc.stats.json"
  stop
done
start
( for i in $(seq 1 60); do sleep 0.25; curl -s "127.0.0.1:$ADMIN_PORT/stats" >"$OUT/depth-$i.stats.json" || true; done ) &
W=$!
timeout 120 taskset -c "$GEN_CPU" "$G" fanout --subscribers 1000 --size 64 --rate "$RATE" --duration 10 \
  --url "ws://127.0.0.1:$PORT" --cpus "$GEN_CPU" --server-pid "$P" --json "$OUT/fanout-$RATE.json"
wait "$W"
stop
for round in $(seq 1 "$ROUNDS"); do
  for srv in shardcast naive; do
    if [ "$srv" = shardcast ]; then
      start
    else
      taskset -c "$SERVER_CPU" "$G" naive-server --listen "127.0.0.1:$PORT" >"$OUT/naive.log" 2>&1 &
      P=$!
      sleep 0.5
    fi
    timeout 120 taskset -c "$GEN_CPU" "$G" fanout --subscribers 1000 --size 64 --rate 100 --duration 10 \
      --url "ws://127.0.0.1:$PORT" --cpus "$GEN_CPU" --server-pid "$P" --json "$OUT/cpu-$srv-$round.json"
    stop
  done
done
python3 - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
for c in (4, 8, 16):
    r = json.load(open(f"{out}/connect-{c}.json"))
    h = json.load(open(f"{out}/connect-{c}.stats.json"))["shards"][0]["latency_us"]["handshake"]
    l = r["handshake_latency"]
    print(f"connect, {c} in flight: {r['handshakes_per_s']:,.0f} upgrades/s; server p50 {h['p50']} us p99 {h['p99']} us "
          f"p99.9 {h['p999']} us; client p50 {l['p50_us']:.0f} us p99 {l['p99_us']:.0f} us")
for f in sorted(glob.glob(f"{out}/depth-*.stats.json"), key=lambda p: int(p.split("-")[-1].split(".")[0])):
    try:
        t = json.load(open(f))["totals"]
    except ValueError:
        continue
    if t["queue_depth_connections"]:
        print(f"depth sample over {t['queue_depth_connections']} conns: p95 {t['p95_queue_depth']} p99 {t['p99_queue_depth']} "
              f"max {t['max_queue_depth']} msgs; broadcast p50 {t['broadcast_latency_p50_us']} us p99 {t['broadcast_latency_p99_us']} us")
for srv in ("shardcast", "naive"):
    per = []
    for f in sorted(glob.glob(f"{out}/cpu-{srv}-*.json")):
        r = json.load(open(f))
        per.append(round(r["server_cpu_us_per_delivery"], 2))
    print(f"CPU per delivery at 100k/s, {srv}: {per} us")
PY
