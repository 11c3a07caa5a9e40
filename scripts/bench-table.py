#!/usr/bin/env python3
"""Markdown table from a bench/results/<run>/ directory: one row per scenario, one column per
server; each cell has the headline number, then server CPU (user/sys s) and generator cores.
With both shardcast and tokio-tungstenite among the servers, a last column gives the ratio of
their headline numbers (shardcast / tokio-tungstenite)."""
import json
import os
import sys

run_dir, servers = sys.argv[1], sys.argv[2:]


# Headlines where smaller is better (CPU per delivery, memory per connection).
LOWER_IS_BETTER = {"fanout-100hz", "idle-10000", "slow"}

HEADLINE = {
    "fanout-max": "deliveries_per_s",
    "fanout-100hz": "server_cpu_us_per_delivery",
    "room-100": "deliveries_per_s",
    "room-500": "deliveries_per_s",
    "room-1000": "deliveries_per_s",
    "connect-5000": "handshakes_per_s",
    "idle-10000": "bytes_per_connection",
    "slow": ("fast", "latency", "p99_us"),
}


def headline(r, name):
    """The headline number of result `r` (a key, or a path of keys into nested objects)."""
    key = HEADLINE[name]
    for k in key if isinstance(key, tuple) else (key,):
        r = r.get(k) if isinstance(r, dict) else None
    return r


def load(server, name):
    """The run with the median headline number among the repeats (REPEAT in the script)."""
    runs = []
    for fname in sorted(os.listdir(run_dir)):
        if ".failed" in fname:
            continue
        if fname == f"{server}.{name}.json" or (
            fname.startswith(f"{server}.{name}.r") and fname.endswith(".json")
        ):
            try:
                with open(os.path.join(run_dir, fname)) as f:
                    runs.append(json.load(f))
            except (OSError, ValueError):
                pass
    if not runs:
        return None
    runs.sort(key=lambda r: headline(r, name) or 0)
    r = runs[(len(runs) - 1) // 2]
    r["_runs"] = len(runs)
    return r


def cpu(r):
    w = r.get("window_measured") or {}
    if not w:
        return ""
    s = w.get("server_cpu")
    srv = f"srv {s['user_us']/1e6:.2f}u/{s['sys_us']/1e6:.2f}s" if s else "srv ?"
    flag = " **CLIENT-BOUND**" if r.get("client_bound") else ""
    runs = f" (median of {r['_runs']})" if r["_runs"] > 1 else ""
    return f"{srv}, gen {w['generator_cpu']['cores_busy']:.2f} cores{flag}{runs}"


def bad(r, key="lost"):
    n = r.get(key, 0) + r.get("duplicated", 0) + r.get("reordered", 0)
    return f" ⚠ lost/dup/reord {r.get(key,0)}/{r.get('duplicated',0)}/{r.get('reordered',0)}" if n else ""


def fanout_max(r):
    return f"{r['deliveries_per_s']:,.0f} deliv/s; p99 {r['latency']['p99_us']/1000:.1f} ms{bad(r)}"


def fanout_rate(r):
    l = r["latency"]
    per = r.get("server_cpu_us_per_delivery")
    per = f"{per:.2f} µs/deliv (u {r['server_user_us_per_delivery']:.2f}, s {r['server_sys_us_per_delivery']:.2f})" if per is not None else "?"
    return (f"{per}; p50 {l['p50_us']:.0f} µs, p99 {l['p99_us']:.0f} µs, "
            f"p99.9 {l['p999_us']:.0f} µs, max {l['max_us']:.0f} µs{bad(r)}")


def room(r):
    per = r.get("server_cpu_us_per_delivery")
    per = f"{per:.2f} µs/deliv; " if per is not None else ""
    return (f"{r['deliveries_per_s']:,.0f} deliv/s; {per}M={r['messages_per_client']}: "
            f"{r['deliveries']:,}/{r['expected_deliveries']:,} in {r['total_time_s']:.2f} s{bad(r)}")


def connect(r):
    l = r["handshake_latency"]
    return (f"{r['handshakes_per_s']:,.0f} hs/s, p50 {l['p50_us']/1000:.1f} ms, "
            f"p99 {l['p99_us']/1000:.1f} ms, ok {r['success_rate']*100:.1f}%")


def idle(r):
    return (f"{r['bytes_per_connection']:,.0f} B/conn RSS ({r['anon_bytes_per_connection']:,.0f} anon), "
            f"{r['connected']} conns")


def slow(r):
    f, sl, rss = r["fast"], r["slow"], r.get("server_rss") or {}
    mib = lambda b: f"{b / 1048576:.1f}" if b is not None else "?"
    outcomes = ", ".join(f"{k}: {v}" for k, v in sl["outcomes"].items()) or "none"
    lost = f" ⚠ fast lost {f['lost']}" if f["lost"] else ""
    return (f"fast p99 {f['latency']['p99_us']/1000:.1f} ms (p50 {f['latency']['p50_us']/1000:.1f}), "
            f"lost {f['lost']}{lost}; {r['slow_clients']} slow: {outcomes}; "
            f"RSS max {mib(rss.get('max'))} / final {mib(rss.get('final'))} MiB")


rows = [
    ("fanout 1→1000, 64 B, max rate", "fanout-max", fanout_max),
    ("fanout 1→1000, 64 B, 100 msg/s (100k deliv/s)", "fanout-100hz", fanout_rate),
    ("room N=100", "room-100", room),
    ("room N=500", "room-500", room),
    ("room N=1000", "room-1000", room),
    ("connect 5,000 (100 at a time)", "connect-5000", connect),
    ("idle 10,000", "idle-10000", idle),
    ("slow: 1000 subscribers, 1% never read, 64 KiB, 10 msg/s", "slow", slow),
]


def ratio(name):
    """shardcast's headline / tokio-tungstenite's, with which direction is better."""
    a, b = load("shardcast", name), load("tokio-tungstenite", name)
    x, y = (headline(a, name), headline(b, name)) if a and b else (None, None)
    if not x or not y:
        return "—"
    note = " (lower is better)" if name in LOWER_IS_BETTER else ""
    return f"{x / y:.2f}x{note}"


with_ratio = "shardcast" in servers and "tokio-tungstenite" in servers
extra = " shardcast / tokio-tungstenite |" if with_ratio else ""
print("| scenario | " + " | ".join(servers) + " |" + extra)
print("|---|" + "---|" * (len(servers) + with_ratio))
for title, name, fmt in rows:
    cells = []
    for s in servers:
        r = load(s, name)
        cells.append("—" if r is None else f"{fmt(r)}<br>{cpu(r)}")
    if with_ratio:
        cells.append(ratio(name))
    print(f"| {title} | " + " | ".join(cells) + " |")
