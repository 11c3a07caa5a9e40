#!/usr/bin/env bash
# Observability cost: fan-out max rate with latency recording on and off, alternating, REPEAT
# times each (default 3), server on CPU 0 and generator on CPU 1; prints one line per run and the
# medians. Results for docs/BENCHMARKS.md ("Observability: cost of recording").
# `--latency-recording off` switches off every histogram: handshake, ring transit, broadcast
# latency (one sample per delivery, the one on the fan-out path), eviction stall and the queue
# depth sampling. Each run reads the broadcast sample count from /stats after the load (the admin
# listener is polled only then), so a run shows that recording was on (count = deliveries) or off (0).
#   scripts/bench-obs.sh                       # SHARDS=2 DURATION=10 SUBSCRIBERS=1000 REPEAT=3
#   RATE=2000 scripts/bench-obs.sh             # fixed rate: compare server CPU µs per delivery
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-2} DURATION=${DURATION:-10} SUBSCRIBERS=${SUBSCRIBERS:-1000} REPEAT=${REPEAT:-3}
OUT=${OUT:-"bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-obs"}
mkdir -p "$OUT"
[ -n "${NO_BUILD:-}" ] || timeout 1500 cargo build --release -p shardcast -p shardcast-bench >&2
SRV=target/release/shardcast GEN=target/release/shardcast-bench

run_once() { # $1 = on|off, $2 = run number
  local log="$OUT/server.$1.$2.log" json="$OUT/fanout.$1.$2.json" addr="" pid
  taskset -c 0 "$SRV" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --shards "$SHARDS" \
    --latency-recording "$1" --log warn >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" | head -1 | awk '{print $3}') || true
    [ -n "$addr" ] && break
    sleep 0.1
  done
  taskset -c 1 "$GEN" fanout --url "ws://$addr" --cpus 1 --server-pid "$pid" \
    --subscribers "$SUBSCRIBERS" --size 64 --duration "$DURATION" --topic obs --json "$json" \
    ${RATE:+--rate "$RATE"} 2>/dev/null
  admin=$(grep -o '(admin [0-9.]*:[0-9]*' "$log" | head -1 | awk '{print $2}')
  sleep 0.3 # histograms reach /stats on the shards' next 100 ms tick
  samples=$(python3 -c "import json,urllib.request as u; s=json.load(u.urlopen('http://$admin/stats')); print(sum(x['latency_us']['broadcast']['count'] for x in s['shards']))")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "import json,sys; j=json.load(open('$json')); print('$1', $2, round(j['deliveries_per_s']), j['lost'], 'load', open('/proc/loadavg').read().split()[0], 'cpu_us_per_delivery', j.get('server_cpu_us_per_delivery'), 'broadcast_samples', $samples)"
}

for r in $(seq "$REPEAT"); do
  run_once on "$r"
  run_once off "$r"
done | tee "$OUT/runs.txt"
python3 - "$OUT/runs.txt" <<'PY'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
med = {m: statistics.median(int(r[2]) for r in runs if r[0] == m) for m in ("on", "off")}
print(f"median deliveries/s: on {med['on']:,.0f}  off {med['off']:,.0f}  "
      f"cost of recording {100 * (med['off'] - med['on']) / med['off']:+.1f}% of throughput")
cpu = {m: [float(r[7]) for r in runs if r[0] == m and r[7] != "None"] for m in ("on", "off")}
if cpu["on"] and cpu["off"]:
    print(f"median server CPU µs/delivery: on {statistics.median(cpu['on']):.3f}  "
          f"off {statistics.median(cpu['off']):.3f}")
PY
