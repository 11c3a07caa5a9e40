// The client against the real shardcast binary (SHARDCAST_BIN, set by scripts/test-js.sh after
// building it): resume by sequence after a cut connection with every message exactly once, and
// a bounded reconnect storm after a restart spread over the configured window.
import test from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { WebSocket } from "ws";
import { ShardcastClient } from "../src/shardcast.js";
import { post, start, stop, until } from "./real.js";

const BIN = process.env.SHARDCAST_BIN;

/** A loopback TCP proxy whose connections the test can cut (a network failure: no close frame). */
function proxy(target: string): Promise<{ url: string; cut: () => void; close: () => void }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const socks = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    const up = net.connect(port, host);
    socks.add(c).add(up);
    c.pipe(up).pipe(c);
    const end = () => (c.destroy(), up.destroy());
    c.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
  });
  return new Promise((r) =>
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address() as net.AddressInfo;
      r({
        url: `ws://127.0.0.1:${a.port}`,
        cut: () => {
          for (const s of socks) s.resetAndDestroy();
          socks.clear();
        },
        close: () => srv.close(),
      });
    }),
  );
}

test("real server: cut off twice mid-stream, every message exactly once, in order", { skip: !BIN && "SHARDCAST_BIN not set" }, async () => {
  const s = await start(["--topic-history", "a=messages=10000,bytes=8MiB"]);
  const p = await proxy(s.addr);
  const c = new ShardcastClient({ url: p.url, topics: ["a"], WebSocket, liveness: false, backoff: { baseMs: 20, maxMs: 100 } });
  const got: number[] = [];
  let resyncs = 0;
  c.on("message", (m) => got.push(m.data === m.seq ? m.seq! : -1));
  c.on("resync", () => resyncs++);
  try {
    await until(() => c.state === "open" && c.position("a") !== undefined);
    let n = 0;
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 100; i++) await post(s, "a", String(++n));
      await until(() => got.length >= n - 50);
      p.cut();
      for (let i = 0; i < 100; i++) await post(s, "a", String(++n)); // while it is away
    }
    await until(() => got.length >= n);
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i + 1));
    assert.equal(resyncs, 0);
    assert.equal(c.duplicates, 0);
  } finally {
    c.close();
    p.close();
    await stop(s);
  }
});

test("real server: 1,000 clients after a restart reconnect spread over the window", { skip: !BIN && "SHARDCAST_BIN not set" }, async () => {
  const N = 1000;
  const WINDOW = 3000;
  let s = await start([]);
  const clients: ShardcastClient[] = [];
  const opens: number[] = [];
  let restartedAt = Infinity;
  try {
    for (let i = 0; i < N; i++) {
      const c = new ShardcastClient({
        url: `ws://${s.addr}`,
        topics: ["storm"],
        WebSocket,
        liveness: false,
        backoff: { baseMs: 200, maxMs: 1000, goingAwayWindowMs: WINDOW, stableAfterMs: 0 },
      });
      c.on("open", () => {
        if (Date.now() >= restartedAt) opens.push(Date.now() - restartedAt);
      });
      clients.push(c);
    }
    await until(() => clients.every((c) => c.state === "open"));
    const addr = s.addr;
    restartedAt = Date.now();
    await stop(s); // 1001 to every client
    s = await start([], addr);
    // Spread is judged from when the server is back: attempts before that failed and backed
    // off with jitter (they must not come back as one burst either).
    const upAt = Date.now();
    const since = (t: number) => t + restartedAt - upAt;
    await until(() => opens.length >= N, WINDOW * 4);
    // Spread: no 10% slice of the window holds more than a third of the fleet.
    const slices = new Array(10).fill(0);
    for (const t of opens) slices[Math.max(0, Math.min(9, Math.floor((since(t) / WINDOW) * 10)))]++;
    console.log(`# storm: reconnects per ${WINDOW / 10} ms after the server is back: ${slices.join(" ")}`);
    assert.ok(Math.max(...slices) <= N / 3, `reconnects per ${WINDOW / 10} ms: ${slices}`);
    assert.ok(slices.filter((x) => x > 0).length >= 5, `reconnects per ${WINDOW / 10} ms: ${slices}`);
  } finally {
    for (const c of clients) c.close();
    await stop(s);
  }
});
