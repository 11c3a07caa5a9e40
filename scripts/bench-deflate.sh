#!/usr/bin/env bash
# permessage-deflate, measured (docs/BENCHMARKS.md, "Compression"): a JSON market-data feed
# (`shardcast-bench feed`) from one publisher to SUBS subscribers at RATE msg/s for DUR s, every
# subscriber offering permessage-deflate as browsers do. Same run, interleaved rounds:
#   shardcast-off   --compression off (nobody gets compressed frames)
#   shardcast-on    the defaults (compressed once per message, level 6)
#   shardcast-l1    --compression-level 1
#   node-ws         Node.js + ws, no compression
#   node-ws-deflate Node.js + ws with perMessageDeflate (compressed per connection), at
#                   NODE_DEFLATE_RATE msg/s: it cannot keep up with RATE at SUBS subscribers
#                   (CPU per delivery is what is compared, and the run says how far it got)
# Server on CPU 0 (one shard), generator on CPU 1; medians over ROUNDS. Then, noise-free, a
# callgrind run of shardcast-on with CG_SUBS subscribers: the share of the server's user-space
# instructions spent compressing. Then the idle cost: IDLE_CONNS subscribers (after 500 held
# warm-up ones) that offer permessage-deflate or not, against the default server, interleaved
# rounds: RSS per connection (`shardcast-bench idle --deflate`). FEED=0 / CALLGRIND=0 /
# IDLE_CONNS=0 skip a part.
#   scripts/bench-deflate.sh                  # SUBS=1000 RATE=100 DUR=10 ROUNDS=3
#   ROUNDS=1 DUR=3 scripts/bench-deflate.sh   # quick look
# Results (JSON per run, table.md) go to target/bench-deflate/<UTC time>-<commit>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS="${SUBS:-1000}"
RATE="${RATE:-100}"
DUR="${DUR:-10}"
ROUNDS="${ROUNDS:-3}"
NODE_DEFLATE_RATE="${NODE_DEFLATE_RATE:-10}"
CG_SUBS="${CG_SUBS:-100}"
CALLGRIND="${CALLGRIND:-1}"
FEED="${FEED:-1}"
IDLE_CONNS="${IDLE_CONNS:-10000}"

cargo build --release -p shardcast -p shardcast-bench >&2
if [ ! -d bench/baselines/node-ws/node_modules/ws ]; then
    (cd bench/baselines/node-ws && npm ci --no-audit --no-fund >&2)
fi
stamp="$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)"
out="target/bench-deflate/$stamp"
mkdir -p "$out"
BENCH=target/release/shardcast-bench

# start NAME CMD... : runs the server on CPU 0, sets ADDR and PID once it listens.
start() {
    local name="$1"
    shift
    local log="$out/$name.server.log"
    taskset -c 0 "$@" >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        ADDR="$(sed -n 's/.* listening on \([0-9.:]*\).*/\1/p' "$log" | head -1)"
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "error: $name did not start (see $log)" >&2
    exit 1
}

run() {
    local name="$1" round="$2" rate="$3"
    shift 3
    start "$name" "$@"
    taskset -c 1 "$BENCH" feed --url "ws://$ADDR" --cpus 1 --server-pid "$PID" \
        --subscribers "$SUBS" --rate "$rate" --duration "$DUR" --deflate \
        --topic feed --json "$out/$name.r$round.json" || echo "warning: $name round $round failed" >&2
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

SC=(target/release/shardcast --listen 127.0.0.1:0 --admin-listen off --shards 1 --log warn)
NODE=(node bench/baselines/node-ws/server.js --listen 127.0.0.1:0)
for round in $(seq "$ROUNDS"); do
    [ "$FEED" = 1 ] || break
    run shardcast-off "$round" "$RATE" "${SC[@]}" --compression off
    run shardcast-on "$round" "$RATE" "${SC[@]}"
    run shardcast-l1 "$round" "$RATE" "${SC[@]}" --compression-level 1
    run node-ws "$round" "$RATE" "${NODE[@]}"
    run node-ws-deflate "$round" "$NODE_DEFLATE_RATE" "${NODE[@]}" --deflate
done

if [ "$CALLGRIND" = 1 ] && command -v valgrind >/dev/null; then
    for mode in off on; do
        log="$out/callgrind-$mode.server.log"
        taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$mode.out" \
            "${SC[@]}" --compression "$mode" >"$log" 2>&1 &
        PID=$!
        ADDR=""
        for _ in $(seq 300); do
            ADDR="$(sed -n 's/.* listening on \([0-9.:]*\).*/\1/p' "$log" | head -1)"
            [ -n "$ADDR" ] && break
            sleep 0.1
        done
        taskset -c 1 "$BENCH" feed --url "ws://$ADDR" --cpus 1 --subscribers "$CG_SUBS" \
            --rate 50 --duration 10 --deflate --topic feed --json "$out/callgrind-$mode.json" \
            || echo "warning: callgrind $mode run failed" >&2
        kill -INT "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        callgrind_annotate --inclusive=yes "$out/callgrind-$mode.out" >"$out/callgrind-$mode.txt" 2>/dev/null || true
    done
fi

if [ "$IDLE_CONNS" -gt 0 ]; then
    for round in $(seq "$ROUNDS"); do
        for mode in plain deflate; do
            start "idle-$mode" "${SC[@]}"
            offer=()
            [ "$mode" = deflate ] && offer=(--deflate)
            taskset -c 1 "$BENCH" idle --url "ws://$ADDR" --cpus 1 --server-pid "$PID" \
                --connections "$IDLE_CONNS" --warmup 500 "${offer[@]}" --topic idle \
                --json "$out/idle-$mode.r$round.json" || echo "warning: idle $mode round $round failed" >&2
            kill "$PID" 2>/dev/null || true
            wait "$PID" 2>/dev/null || true
        done
    done
fi

python3 - "$out" "$SUBS" "$RATE" "$DUR" "$NODE_DEFLATE_RATE" <<'EOF' | tee "$out/table.md"
import glob, json, os, re, statistics, sys
out, subs, rate, dur, node_rate = sys.argv[1:]
names = ["shardcast-off", "shardcast-on", "shardcast-l1", "node-ws", "node-ws-deflate"]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
rows = {}
for n in names:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{n}.r*.json"))]
    if runs:
        rows[n] = runs
if rows:
    print(f"feed: 1 publisher -> {subs} subscribers, mixed JSON market data, {rate} msg/s "
          f"(node-ws-deflate: {node_rate} msg/s), {dur} s; medians of {max(len(r) for r in rows.values())} interleaved rounds\n")
    print("| server | negotiated | wire B/delivery | wire / payload | compressed deliveries | server CPU µs/delivery (user / sys) | vs shardcast-off | deliveries / expected | generator cores |")
    print("|---|---|---|---|---|---|---|---|---|")
base = med([r["server_cpu_us_per_delivery"] for r in rows.get("shardcast-off", [])])
for n, runs in rows.items():
    g = lambda k: med([r.get(k) for r in runs])
    cpu = g("server_cpu_us_per_delivery")
    neg = runs[0].get("negotiated") or "none"
    neg = neg.replace("permessage-deflate", "pmd")
    ratio = f"{cpu / base:.2f}x" if cpu and base else "-"
    bound = " CLIENT-BOUND" if any(r.get("client_bound") for r in runs) else ""
    print(f"| {n} | {neg} | {g('wire_bytes_per_delivery'):.1f} | {g('wire_vs_payload'):.3f} | "
          f"{g('compressed_deliveries'):.0f} | {cpu:.2f} ({g('server_user_us_per_delivery'):.2f} / {g('server_sys_us_per_delivery'):.2f}) | {ratio} | "
          f"{g('deliveries'):.0f} / {g('expected_deliveries'):.0f} | "
          f"{med([r['window_measured']['generator_cpu']['cores_busy'] for r in runs]):.2f}{bound} |")
for mode in ["off", "on"]:
    path = f"{out}/callgrind-{mode}.txt"
    if not os.path.exists(path):
        continue
    text = open(path).read()
    total = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    comp = re.search(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+\S*:shardcast::deflate::ShardDeflate::compress\b", text, re.M)
    j = json.load(open(f"{out}/callgrind-{mode}.json")) if os.path.exists(f"{out}/callgrind-{mode}.json") else {}
    d = j.get("deliveries") or 1
    t = int(total.group(1).replace(",", "")) if total else 0
    line = f"\ncallgrind, compression {mode}: {t:,} instructions for {d:,} deliveries ({t / d:,.0f} per delivery, whole process, start-up included)"
    if comp:
        c = int(comp.group(1).replace(",", ""))
        msgs = j.get("messages_sent") or 1
        line += (f"; compressing {c:,} ({comp.group(2)}%, {c / msgs:,.0f} per published message); "
                 f"the rest {(t - c) / d:,.0f} per delivery")
    print(line)
for mode in ["plain", "deflate"]:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/idle-{mode}.r*.json"))]
    if runs:
        per = [round(r["bytes_per_subscribed_connection"]) for r in runs]
        print(f"\nidle, subscribers {'offering permessage-deflate' if mode == 'deflate' else 'plain'}: "
              f"{med(per):,.0f} B RSS per connection (median; rounds {per}), "
              f"negotiated {[r.get('deflate_negotiated') for r in runs]} of {[r['connected'] for r in runs]}")
EOF
echo "results in $out" >&2
