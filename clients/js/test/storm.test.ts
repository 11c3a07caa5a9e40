// Reconnect storms: 1,000 clients on one virtual clock whose server goes away (1001, a
// graceful restart) or dies (1006, down for 10 s). Measured from the attempt timestamps: the
// reconnects spread over the configured window instead of arriving in one burst.
import test from "node:test";
import assert from "node:assert/strict";
import { CloseCodes, ShardcastClient } from "../src/shardcast.js";
import { FakeNet, FakeSocket, VirtualClock, rng } from "./helpers.js";

const N = 1_000;

/** Counts per bucket of `width` ms over [from, to). */
function histogram(times: number[], from: number, to: number, width: number): number[] {
  const h = new Array<number>(Math.ceil((to - from) / width)).fill(0);
  for (const t of times) if (t >= from && t < to) h[Math.floor((t - from) / width)]!++;
  return h;
}

async function fleet() {
  const clock = new VirtualClock();
  const net = new FakeNet(clock);
  let downUntil = 0;
  const opened: number[] = [];
  const live = new Set<FakeSocket>();
  net.onConnect = (s) =>
    clock.setTimeout(() => {
      if (clock.now() < downUntil) return s.serverClose(CloseCodes.ABNORMAL); // refused
      s.accept();
      live.add(s);
      opened.push(clock.now());
    }, 1);
  const clients = Array.from(
    { length: N },
    (_, i) =>
      new ShardcastClient({
        url: "ws://feed.test",
        topics: ["prices"],
        WebSocket: net.factory(),
        clock,
        random: rng(i + 1),
        liveness: false,
      }),
  );
  await clock.advance(30_000);
  assert.equal(live.size, N);
  assert.ok(clients.every((c) => c.state === "open"));
  return {
    clock,
    net,
    opened,
    /** The server goes away with `code` and stays down for `downMs`. */
    async outage(code: number, downMs: number) {
      const t0 = clock.now();
      downUntil = t0 + downMs;
      const before = net.sockets.length;
      opened.length = 0;
      for (const s of live) s.serverClose(code, "restart");
      live.clear();
      return { t0, attemptsSince: () => net.sockets.slice(before).map((s) => s.at) };
    },
  };
}

test("graceful restart (1001): reconnects spread uniformly over the going-away window", async (t) => {
  const f = await fleet();
  const { t0, attemptsSince } = await f.outage(CloseCodes.GOING_AWAY, 0);
  await f.clock.advance(20_000);
  const attempts = attemptsSince();
  assert.equal(attempts.length, N, "one attempt each: the server was back at once");
  assert.ok(attempts.every((a) => a >= t0 && a < t0 + 5_000), "all within the 5 s window");
  const h = histogram(attempts, t0, t0 + 5_000, 250);
  t.diagnostic(`1001 reconnect attempts per 250 ms: ${h.join(" ")}`);
  // Uniform over 20 buckets: 50 each on average; no bucket holds more than twice that.
  assert.ok(Math.max(...h) <= 100, `burst: ${Math.max(...h)}`);
  assert.ok(Math.min(...h) >= 15, `hole: ${Math.min(...h)}`);
  assert.equal(f.opened.length, N);
});

test("graceful restart with 2 s of downtime: failed attempts back off, still no burst", async (t) => {
  const f = await fleet();
  const { t0, attemptsSince } = await f.outage(CloseCodes.GOING_AWAY, 2_000);
  await f.clock.advance(60_000);
  assert.equal(f.opened.length, N, "everyone is back");
  const h = histogram(f.opened, t0, t0 + 10_000, 250);
  t.diagnostic(`opens per 250 ms after t0: ${h.join(" ")}`);
  // The first attempts alone would be 50 per 250 ms; those that failed retry over 8 s.
  assert.ok(Math.max(...h) <= 100, `burst of ${Math.max(...h)} opens in 250 ms`);
  assert.ok(attemptsSince().length < 2.5 * N, "bounded retries");
});

test("crash (1006), server down 10 s: full jitter keeps the comeback rate flat", async (t) => {
  const f = await fleet();
  const { t0, attemptsSince } = await f.outage(CloseCodes.ABNORMAL, 10_000);
  await f.clock.advance(120_000);
  assert.equal(f.opened.length, N);
  const attempts = attemptsSince();
  // During the outage each client tried about log2(10 s / 0.5 s) + 1 times, not 20 times.
  const during = attempts.filter((a) => a < t0 + 10_000).length;
  t.diagnostic(`attempts while down: ${during} (${(during / N).toFixed(1)} per client)`);
  assert.ok(during < 7 * N && during > 3 * N, `${during}`);
  // After the server is back: opens per 100 ms stay far from a burst of N.
  const back = histogram(f.opened, t0 + 10_000, t0 + 40_000, 100);
  const peak = Math.max(...back);
  t.diagnostic(`opens per 100 ms after the comeback (first 3 s): ${back.slice(0, 30).join(" ")}; peak ${peak}`);
  assert.ok(peak <= 50, `peak ${peak} per 100 ms`);
  // Half the fleet is back within ~8 s of the comeback, all within the 30 s cap window.
  assert.ok(f.opened.every((o) => o < t0 + 10_000 + 30_000));
});
