#!/usr/bin/env bash
# Continuity deep history (docs/CONTINUITY.md, "Deep history"): time and bytes to resume N
# missed messages from JetStream on a second host, against the same resume from the local ring,
# in one run. Starts a `nats-server -js` (store in a temp dir) and two shardcast hosts joined
# through it with --nats-jetstream on, all pinned to SERVER_CPU: A keeps 20,000 messages of
# history per `resume*` topic, B keeps 10. Each round publishes N messages to a fresh topic on A
# and resumes from 0 (clients/js/bench/resume.mjs, pinned to GEN_CPU): on A (local ring), then
# on B (everything but the last 10 from JetStream, in replay chunks). Rounds are interleaved.
# Writes JSON lines to bench/results/<UTC date>-<sha>-deep/ (git-ignored) and prints them.
# Env: N (10000), SIZE (64), REPEAT (3), SERVER_CPU (0), GEN_CPU (1), NO_BUILD (set: use
# target/release as is), SRV (the server binary, default target/release/shardcast: to compare
# two builds). Needs `npm ci` in clients/js (the `ws` package).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-10000}
SIZE=${SIZE:-64}
REPEAT=${REPEAT:-3}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-deep"
mkdir -p "$OUT"

NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS_BIN" ] || { echo "nats-server is missing (Debian: apt-get install nats-server)" >&2; exit 1; }
[ -d clients/js/node_modules/ws ] || { echo "run npm ci in clients/js first" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || timeout 1800 cargo build --release -p shardcast >&2
SRV=${SRV:-$ROOT/target/release/shardcast}

STORE=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$STORE"
}
trap cleanup EXIT

# shellcheck source=scripts/benchlib.sh
source "$ROOT/scripts/benchlib.sh"
NATS_PORT=$(free_port)
MONITOR_PORT=$(free_port)
taskset -c "$SERVER_CPU" "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$MONITOR_PORT" -js -sd "$STORE" \
  >"$OUT/nats-server.log" 2>&1 &
PIDS+=($!)

NATS=(--nats-url "nats://127.0.0.1:$NATS_PORT" --nats-jetstream on)
start_host a "${NATS[@]}" --topic-history 'resume*=messages=20000,bytes=64MiB'; A_ADDR=$ADDR; A_ADMIN=$ADMIN
start_host b "${NATS[@]}" --topic-history 'resume*=messages=10'; B_ADDR=$ADDR; B_ADMIN=$ADMIN
ready() { curl -sf "http://$1/stats" | python3 -c 'import json,sys; b=json.load(sys.stdin)["bridge"]; sys.exit(not (b["state"] == "up" and b["deep_stream_ready"] == 1))'; }
for admin in "$A_ADMIN" "$B_ADMIN"; do
  for _ in $(seq 100); do ready "$admin" && break; sleep 0.1; done
  ready "$admin" || { echo "bridge at $admin never got its stream" >&2; exit 1; }
done

MON="http://127.0.0.1:$MONITOR_PORT"
for r in $(seq "$REPEAT"); do
  for where in ring jetstream; do
    url="ws://$A_ADDR"; [ "$where" = jetstream ] && url="ws://$B_ADDR"
    line=$(cd clients/js && taskset -c "$GEN_CPU" node bench/resume.mjs "$url" "$N" "$SIZE" "ws://$A_ADDR" "$MON")
    echo "{\"round\":$r,\"from\":\"$where\",\"result\":$line}" | tee -a "$OUT/results.jsonl"
  done
done
curl -sf "http://$A_ADMIN/stats" >"$OUT/a.stats.json"
curl -sf "http://$B_ADMIN/stats" >"$OUT/b.stats.json"
python3 - "$OUT/b.stats.json" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))["bridge"]
print("B bridge:", {k: v for k, v in b.items() if k.startswith("deep_")})
EOF
