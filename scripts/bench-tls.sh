#!/usr/bin/env bash
# wss:// against ws:// on the release binary, in one run: interleaved rounds (plain, then TLS, for
# each scenario, ROUNDS times), a fresh server per run pinned to SERVER_CPU, the generator
# (shardcast-bench, rustls client) to GEN_CPU, server CPU per operation from /proc utime+stime.
# A test CA and server certificate (ECDSA P-256, IP 127.0.0.1) are generated per run with openssl
# in a temporary directory and deleted at exit: no key material is kept. Prints a markdown table of
# medians (all rounds alongside); JSON and logs per run in OUT.
#
#   scripts/bench-tls.sh
#   BEFORE=/tmp/old/shardcast-bench scripts/bench-tls.sh   # also: ws:// fan-out with that generator
#
# BEFORE (optional): a shardcast-bench built before wss:// support; its ws:// fan-out runs join
# the rounds (kind "before"), so the plain path's generator cost is compared in the same run.
# Env: ROUNDS (3), DURATION (s, 10), SERVER_CPU (0), GEN_CPU (1), NO_BUILD (set: skip cargo build),
# SCENARIOS (default all: "idle fanout100 fanoutmax connect connect_resumed"), OUT (results dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} SERVER_CPU=${SERVER_CPU:-0} GEN_CPU=${GEN_CPU:-1}
SCENARIOS=${SCENARIOS:-"idle fanout100 fanoutmax connect connect_resumed"}
OUT=${OUT:-"$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$(git rev-parse --short HEAD)-tls"}
mkdir -p "$OUT"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10600 ]; then
  echo "ulimit -n is $(ulimit -n): idle and connect need at least 10600 descriptors" >&2
  exit 1
fi
[ -n "${NO_BUILD:-}" ] || timeout 1800 cargo build --release -p shardcast -p shardcast-bench >&2
GEN="$ROOT/target/release/shardcast-bench"
SRV="$ROOT/target/release/shardcast"

PKI=$(mktemp -d)
SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
cleanup() { stop_server; rm -rf "$PKI"; }
trap cleanup EXIT

# The test PKI: a CA, and a leaf for 127.0.0.1 signed by it (what the generator's --ca trusts).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=shardcast bench CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$PKI/server.key" -out "$PKI/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$PKI/leaf.ext"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/leaf.ext" -out "$PKI/server.pem" 2>/dev/null

gen_args() { # $1 = scenario
  case "$1" in
    idle) echo "idle --connections 10000 --warmup 500" ;;
    fanout100) echo "fanout --subscribers 1000 --size 64 --rate 100 --duration $DURATION" ;;
    fanoutmax) echo "fanout --subscribers 1000 --size 64 --duration $DURATION" ;;
    connect) echo "connect --connections 10000 --concurrency 256" ;;
    connect_resumed) echo "connect --connections 10000 --concurrency 256 --resume" ;;
  esac
}

run_one() { # $1 = plain | tls | before, $2 scenario, $3 round
  local log="$OUT/$1.$2.r$3.log" json="$OUT/$1.$2.r$3.json" addr="" scheme=ws tls_args="" ca_args="" gen="$GEN"
  [ "$1" = before ] && gen="$BEFORE"
  if [ "$1" = tls ]; then
    scheme=wss tls_args="--tls-cert $PKI/server.pem --tls-key $PKI/server.key" ca_args="--ca $PKI/ca.pem"
  fi
  # A resumed handshake only exists with TLS; the old generator is compared on fan-out only.
  case "$1.$2" in plain.connect_resumed | before.idle | before.connect*) return 0 ;; esac
  # shellcheck disable=SC2086
  taskset -c "$SERVER_CPU" "$SRV" --listen 127.0.0.1:0 --admin-listen off --shards 1 $tls_args >"$log" 2>&1 &
  SPID=$!
  for _ in $(seq 100); do
    addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" 2>/dev/null | head -1 | awk '{print $3}') || true
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "$1 did not start" >&2; cat "$log" >&2; return 1; }
  echo "== $1 $2 round $3 (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/load.txt" >&2
  # shellcheck disable=SC2046,SC2086
  timeout 300 taskset -c "$GEN_CPU" "$gen" $(gen_args "$2") --url "$scheme://$addr" $ca_args \
    --cpus "$GEN_CPU" --server-pid "$SPID" --topic "$2" --json "$json" >/dev/null 2>>"$log" \
    || echo "$1 $2 round $3 failed (see $log)" >&2
  stop_server
}

for r in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    for kind in ${BEFORE:+before} plain tls; do
      run_one "$kind" "$s" "$r"
    done
  done
done

{
  echo "Results: $OUT"
  echo "Date: $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); server CPU $SERVER_CPU, generator CPU $GEN_CPU; $ROUNDS rounds, medians; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
def vals(kind, scen, key, scale=1.0):
    got = []
    for f in sorted(glob.glob(f"{out}/{kind}.{scen}.r*.json")):
        try:
            v = json.load(open(f))
        except ValueError:
            continue
        for k in key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            got.append(v * scale)
    return got
rows = [
    # name, plain scenario, TLS scenario, JSON key, scale, format
    ("idle 10k: B per subscribed connection", "idle", "idle", "bytes_per_subscribed_connection", 1, "{:,.0f}"),
    ("fan-out 100 msg/s x 1000, 64 B: server µs per delivery", "fanout100", "fanout100", "server_cpu_us_per_delivery", 1, "{:.3f}"),
    ("fan-out 100 msg/s x 1000: p99 ms", "fanout100", "fanout100", "latency.p99_us", 1e-3, "{:.2f}"),
    ("fan-out max rate x 1000, 64 B: deliveries/s", "fanoutmax", "fanoutmax", "deliveries_per_s", 1, "{:,.0f}"),
    ("fan-out max rate: server µs per delivery", "fanoutmax", "fanoutmax", "server_cpu_us_per_delivery", 1, "{:.3f}"),
    ("connect 10k, 256 in flight, full handshakes: handshakes/s", "connect", "connect", "handshakes_per_s", 1, "{:,.0f}"),
    ("connect, full: server µs per handshake", "connect", "connect", "server_cpu_us_per_handshake", 1, "{:.1f}"),
    ("connect 10k, resumed (--resume): handshakes/s", "connect", "connect_resumed", "handshakes_per_s", 1, "{:,.0f}"),
    ("connect, resumed: server µs per handshake", "connect", "connect_resumed", "server_cpu_us_per_handshake", 1, "{:.1f}"),
    ("connect, resumed: handshakes that resumed", "connect", "connect_resumed", "tls_resumed", 1, "{:,.0f}"),
]
def gen_us(kind, scen):
    got = []
    for f in sorted(glob.glob(f"{out}/{kind}.{scen}.r*.json")):
        try:
            v = json.load(open(f))
            g = v["window_measured"]["generator_cpu"]
            got.append((g["user_us"] + g["sys_us"]) / v["deliveries"])
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
    return got
def row(name, a, b, fmt):
    # Medians of a and b, b / a, and every round.
    ma = statistics.median(a) if a else None
    mb = statistics.median(b) if b else None
    f = lambda x: fmt.format(x) if x is not None else "-"
    ratio = f"{mb / ma:.2f}x" if ma and mb is not None else "-"
    rounds = ", ".join(fmt.format(x) for x in a) + "; " + ", ".join(fmt.format(x) for x in b)
    print(f"| {name} | {f(ma)} | {f(mb)} | {ratio} | {rounds} |")
print("| metric | ws:// | wss:// | wss / ws | rounds ws; wss |")
print("|---|---:|---:|---:|---|")
for name, sp, st, key, scale, fmt in rows:
    row(name, vals("plain", sp, key, scale), vals("tls", st, key, scale), fmt)
row("fan-out 100 msg/s: generator µs per delivery", gen_us("plain", "fanout100"), gen_us("tls", "fanout100"), "{:.3f}")
if glob.glob(f"{out}/before.*.json"):
    print()
    print("The plain path before and after wss:// support (same server, same rounds):")
    print()
    print("| ws:// fan-out x 1000, 64 B | generator before | generator now | now / before | rounds before; now |")
    print("|---|---:|---:|---:|---|")
    for name, get, fmt in [
        ("100 msg/s: generator µs per delivery", lambda k: gen_us(k, "fanout100"), "{:.3f}"),
        ("100 msg/s: server µs per delivery", lambda k: vals(k, "fanout100", "server_cpu_us_per_delivery"), "{:.3f}"),
        ("max rate: deliveries/s", lambda k: vals(k, "fanoutmax", "deliveries_per_s"), "{:,.0f}"),
        ("max rate: generator µs per delivery", lambda k: gen_us(k, "fanoutmax"), "{:.3f}"),
    ]:
        row(name, get("before"), get("plain"), fmt)
cb = [f for f in sorted(glob.glob(f"{out}/*.json")) if json.load(open(f)).get("client_bound")]
print()
print("client-bound runs (generator core > 90% busy): " + (", ".join(c.split("/")[-1] for c in cb) or "none"))
PY
} | tee "$OUT/table.md"
