// The client against an in-memory server on a virtual clock: close codes, resume requests,
// dedupe across the switch, resync and gap events, the watchdog, in-band subscriptions.
import test from "node:test";
import assert from "node:assert/strict";
import { CloseCodes, ShardcastClient, parseBinary, sinceQuery } from "../src/shardcast.js";
import type { ClientOptions, Events } from "../src/shardcast.js";
import { E1, E2, FakeNet, FakeSocket, VirtualClock, data, notice } from "./helpers.js";

function setup(opts: Partial<ClientOptions> = {}, accept = true) {
  const clock = new VirtualClock();
  const net = new FakeNet(clock);
  if (accept) net.onConnect = (s) => clock.setTimeout(() => s.accept(), 1);
  const client = new ShardcastClient({
    url: "ws://feed.test/",
    topics: ["a", "b"],
    WebSocket: net.factory(),
    clock,
    random: () => 0.5,
    liveness: false,
    ...opts,
  });
  const events: Array<[keyof Events, unknown]> = [];
  for (const k of ["open", "message", "gap", "resync", "close", "reconnecting", "error"] as const) {
    client.on(k, (ev) => events.push([k, ev]));
  }
  const of = <K extends keyof Events>(k: K) => events.filter((e) => e[0] === k).map((e) => e[1] as Events[K]);
  return { clock, net, client, events, of };
}

test("connects to the combined stream with seq=1 and the token", async () => {
  const { clock, net, client, of } = setup({ token: "t/k n" });
  await clock.advance(10);
  assert.equal(net.sockets.length, 1);
  assert.equal(net.last().url, "ws://feed.test/stream?streams=a/b&seq=1&token=t%2Fk%20n");
  assert.equal(client.state, "open");
  assert.equal(of("open").length, 1);
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(net.last().closedByClient, { code: 1000, reason: "client closed" });
  await clock.advance(100_000);
  assert.equal(net.sockets.length, 1, "closed for good");
});

test("plain mode: no seq, Binance-style wrappers and unwrapped binary pass through", async () => {
  const { clock, net, of } = setup({ sequenced: false });
  await clock.advance(10);
  assert.equal(net.last().url, "ws://feed.test/stream?streams=a/b");
  net.last().push(JSON.stringify({ stream: "a", data: { p: 1 } }));
  net.last().push(new Uint8Array([1, 2, 3]));
  net.last().push('{"stream":"b","data":not json}');
  const m = of("message");
  assert.deepEqual(m[0], { topic: "a", seq: undefined, data: { p: 1 }, binary: false });
  assert.deepEqual([...(m[1]!.data as Uint8Array)], [1, 2, 3]);
  assert.equal(m[1]!.topic, undefined);
  assert.deepEqual(m[2], { topic: "b", seq: undefined, data: "not json", binary: false });
});

test("resume: the next connection carries since and epoch for every topic it has", async () => {
  const { clock, net, client, of } = setup();
  await clock.advance(10);
  const s = net.last();
  s.push(notice("a", E1, 10));
  s.push(notice("b", E2, 0));
  s.push(data("a", 11, 1));
  s.push(data("a", 12, 2));
  s.push(data("b", 1, "x"));
  assert.deepEqual(of("message").map((m) => [m.topic, m.seq]), [["a", 11], ["a", 12], ["b", 1]]);
  assert.deepEqual(client.position("a"), { epoch: E1, seq: 12 });
  s.serverClose(CloseCodes.ABNORMAL);
  await clock.advance(10_000);
  const q = net.last().query();
  assert.equal(net.sockets.length, 2);
  assert.equal(q.get("seq"), "1");
  // Tie between the two epochs: the first one seen is the shared one.
  assert.equal(q.get("since"), `a:12,b:1@${E2}`);
  assert.equal(q.get("epoch"), E1);
  assert.equal(sinceQuery([["x", { epoch: E2, seq: 5 }], ["y", { epoch: E1, seq: 6 }], ["z", { epoch: E1, seq: 7 }]]), `&since=x:5@${E2},y:6,z:7&epoch=${E1}`);
});

test("since given at start is resumed from, and entitles the client to resync events", async () => {
  const { clock, net, of } = setup({ topics: ["a"], since: { a: { epoch: E1, seq: 40 } } });
  await clock.advance(10);
  assert.equal(net.last().query().get("since"), "a:40");
  net.last().push(notice("a", E1, 45, "trimmed"));
  assert.deepEqual(of("resync"), [{ topic: "a", epoch: E1, reason: "trimmed", first: 46, lostFrom: 41 }]);
});

test("dedupe across the switch: an overlapping replay is dropped, order kept", async () => {
  const { clock, net, client, of } = setup({ topics: ["a"] });
  await clock.advance(10);
  net.last().push(notice("a", E1, 0));
  for (let i = 1; i <= 5; i++) net.last().push(data("a", i, i));
  net.last().serverClose(CloseCodes.GOING_AWAY);
  await clock.advance(10_000);
  assert.equal(net.last().query().get("since"), "a:5");
  // A server that places us earlier and replays from there: 3..5 are duplicates.
  const s = net.last();
  s.push(notice("a", E1, 2));
  for (let i = 3; i <= 8; i++) s.push(data("a", i, i));
  s.push(data("a", 8, 8));
  assert.deepEqual(of("message").map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(client.duplicates, 4);
  assert.equal(of("gap").length + of("resync").length, 0);
});

test("resync and gap are surfaced with what was lost", async () => {
  const { clock, net, client, of } = setup();
  await clock.advance(10);
  const s = net.last();
  s.push(notice("a", E1, 0));
  s.push(notice("b", E1, 0, "trimmed"));
  assert.equal(of("resync").length, 0, "a fresh subscriber lost nothing it was promised");
  s.push(data("a", 1, 0));
  s.push(data("a", 2, 0));
  s.push(data("a", 5, 0));
  assert.deepEqual(of("gap"), [{ topic: "a", epoch: E1, from: 3, to: 4 }]);
  s.push(notice("a", E1, 9, "lost"));
  s.push(data("a", 10, 0));
  s.push(notice("a", E2, 0, "epoch"));
  s.push(data("a", 1, 0));
  assert.deepEqual(of("resync"), [
    { topic: "a", epoch: E1, reason: "lost", first: 10, lostFrom: 6 },
    { topic: "a", epoch: E2, reason: "epoch", first: 1, lostFrom: undefined },
  ]);
  assert.deepEqual(of("message").map((m) => m.seq), [1, 2, 5, 10, 1]);
  assert.deepEqual(client.position("a"), { epoch: E2, seq: 1 });
  // A notice placing us beyond our position without a reason is a gap too.
  s.push(notice("a", E2, 4));
  assert.deepEqual(of("gap").at(-1), { topic: "a", epoch: E2, from: 2, to: 4 });
});

test("binary sequenced messages are parsed (version, seq, topic, payload)", async () => {
  const { clock, net, of } = setup({ topics: ["ab"] });
  await clock.advance(10);
  const msg = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0, 7, 2, 97, 98, 0xff, 0]);
  assert.deepEqual(parseBinary(msg), { seq: 7, topic: "ab", payload: msg.subarray(12) });
  assert.equal(parseBinary(new Uint8Array([2, 0, 0, 0, 0, 0, 0, 0, 7, 1, 97])), undefined);
  assert.equal(parseBinary(new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0, 7, 5, 97])), undefined);
  net.last().push(notice("ab", E1, 6));
  net.last().push(msg);
  const m = of("message")[0]!;
  assert.deepEqual([m.topic, m.seq, m.binary, [...(m.data as Uint8Array)]], ["ab", 7, true, [0xff, 0]]);
});

test("1001 from a stable connection: prompt reconnect within the going-away window", async () => {
  const { clock, net, of } = setup({ random: () => 0.3 });
  await clock.advance(60_000);
  net.last().serverClose(CloseCodes.GOING_AWAY, "shutdown");
  const t0 = clock.now();
  await clock.advance(10_000);
  assert.equal(net.sockets.length, 2);
  assert.equal(net.last().at - t0, 1_500, "0.3 x 5000 ms");
  assert.deepEqual(of("close")[0], { code: 1001, reason: "shutdown", willRetry: true, delayMs: 1_500 });
});

test("1006 repeatedly: exponential backoff with full jitter, reset after a stable connection", async () => {
  const { clock, net, client } = setup({ random: () => 0.999 }, false);
  net.onConnect = (s) => clock.setTimeout(() => s.serverClose(CloseCodes.ABNORMAL), 1);
  await clock.advance(200_000);
  const gaps = net.sockets.slice(1).map((s, i) => s.at - net.sockets[i]!.at - 1);
  // attempt n waits 0.999 * min(30000, 500 * 2^n) after the previous failure.
  const want = gaps.map((_, n) => Math.floor(0.999 * Math.min(30_000, 500 * 2 ** n)));
  assert.deepEqual(gaps.map(Math.floor), want);
  assert.ok(gaps.length >= 8);
  // Once a connection stays up 10 s, the next failure starts over from the base.
  net.onConnect = (s) => clock.setTimeout(() => s.accept(), 1);
  await clock.advance(31_000);
  assert.equal(client.state, "open");
  await clock.advance(11_000);
  net.onConnect = () => {};
  const before = net.sockets.length;
  net.last().serverClose(CloseCodes.ABNORMAL);
  const t = clock.now();
  await clock.advance(1_000);
  assert.equal(net.sockets.length, before + 1);
  assert.equal(Math.floor(net.last().at - t), Math.floor(0.999 * 500));
});

test("1013: waits at least the overload minimum, longer each time", async () => {
  const { clock, net } = setup({ random: () => 0 }, false);
  net.onConnect = (s) =>
    clock.setTimeout(() => {
      s.accept();
      s.serverClose(CloseCodes.TRY_AGAIN_LATER, "slow consumer");
    }, 1);
  await clock.advance(60_000);
  const gaps = net.sockets.slice(1).map((s, i) => s.at - net.sockets[i]!.at - 1);
  assert.ok(gaps.length >= 3);
  for (const g of gaps) assert.equal(g, 5_000, "random 0: exactly the minimum");
  const r = setup({ random: () => 0.5 }, false);
  r.net.onConnect = (s) =>
    r.clock.setTimeout(() => {
      s.accept();
      s.serverClose(CloseCodes.TRY_AGAIN_LATER);
    }, 1);
  await r.clock.advance(120_000);
  const g2 = r.net.sockets.slice(1).map((s, i) => s.at - r.net.sockets[i]!.at - 1);
  assert.deepEqual(g2.slice(0, 3), [7_500, 10_000, 15_000]);
});

test("1008 with a fixed token: no blind retry, a fatal error", async () => {
  const { clock, net, client, of } = setup({ token: "old" });
  await clock.advance(10);
  net.last().serverClose(CloseCodes.POLICY, "token expired");
  await clock.advance(600_000);
  assert.equal(net.sockets.length, 1);
  assert.equal(client.state, "failed");
  assert.deepEqual(of("error"), [{ message: "refused by policy: token expired", code: 1008, fatal: true }]);
  assert.equal(of("close")[0]!.willRetry, false);
});

test("1008 with a token function: refreshed token, bounded retries", async () => {
  const calls: boolean[] = [];
  let n = 0;
  const { clock, net, client, of } = setup({ token: ({ refresh }) => (calls.push(refresh), Promise.resolve(`tok${++n}`)) });
  await clock.advance(10);
  assert.equal(net.last().query().get("token"), "tok1");
  net.last().serverClose(CloseCodes.POLICY);
  await clock.advance(10_000);
  assert.equal(net.last().query().get("token"), "tok2");
  assert.deepEqual(calls, [false, true]);
  assert.equal(client.state, "open");
  // The server keeps refusing: after maxAuthRetries (3) refusals in a row, give up.
  net.onConnect = (s) => clock.setTimeout(() => s.serverClose(CloseCodes.POLICY), 1);
  net.last().serverClose(CloseCodes.POLICY);
  await clock.advance(600_000);
  assert.equal(client.state, "failed");
  assert.equal(net.sockets.length, 4);
  assert.equal(of("error").filter((e) => e.fatal).length, 1);
  // A provider that fails is fatal too.
  const f = setup({ token: () => Promise.reject(new Error("no session")) });
  await f.clock.advance(10);
  assert.equal(f.client.state, "failed");
  assert.equal(f.net.sockets.length, 0);
  assert.match(f.of("error")[0]!.message, /no session/);
});

test("watchdog: probe after silence, reconnect when the probe is not answered", async () => {
  const { clock, net, client, of } = setup({ liveness: { probeAfterMs: 20_000, timeoutMs: 10_000 } });
  await clock.advance(10);
  const s = net.last();
  await clock.advance(15_000);
  s.push(data("a", 1, 0)); // activity postpones the probe
  await clock.advance(19_000);
  assert.equal(s.sent.length, 0);
  await clock.advance(1_100);
  assert.equal(s.requests()[0]!.method, "LIST_SUBSCRIPTIONS");
  // Answered: the connection lives on, and the next probe is 20 s after the answer.
  s.push(JSON.stringify({ result: ["a", "b"], id: s.requests()[0]!.id }));
  await clock.advance(19_900);
  assert.equal(net.sockets.length, 1);
  assert.equal(s.sent.length, 1);
  await clock.advance(200);
  assert.equal(s.sent.length, 2);
  // Not answered: dropped 10 s after the probe.
  await clock.advance(9_700);
  assert.equal(client.state, "open");
  await clock.advance(400);
  assert.deepEqual(s.closedByClient, { code: 4000, reason: "liveness timeout" });
  assert.equal(of("close").at(-1)!.code, CloseCodes.LIVENESS);
  await clock.advance(1_000);
  assert.equal(net.sockets.length, 2, "reconnected with the normal backoff");
});

test("connect timeout abandons a socket that never opens", async () => {
  const { clock, net, of } = setup({ backoff: { connectTimeoutMs: 3_000 } }, false);
  await clock.advance(3_100);
  assert.deepEqual(net.sockets[0]!.closedByClient, { code: 4000, reason: "connect timeout" });
  assert.equal(of("close")[0]!.reason, "connect timeout");
  await clock.advance(1_000);
  assert.equal(net.sockets.length, 2);
});

test("subscribe and unsubscribe go in-band, batched, with positions", async () => {
  const { clock, net, client, of } = setup({ topics: ["a"] });
  await clock.advance(10);
  const s = net.last();
  client.subscribe("b", "c");
  client.subscribe("d");
  client.unsubscribe("c");
  await clock.advance(0);
  assert.deepEqual(s.requests().map((r) => [r.method, r.params]), [
    ["UNSUBSCRIBE", ["c"]],
    ["SUBSCRIBE", ["b", "d"]],
  ]);
  s.push(JSON.stringify({ error: { code: 4, msg: "too many subscriptions" }, id: s.requests()[1]!.id }));
  assert.match(of("error")[0]!.message, /SUBSCRIBE \["b","d"\] failed: too many subscriptions/);
  assert.deepEqual(client.subscriptions(), ["a", "b", "d"]);
  assert.throws(() => client.subscribe("bad/topic"), RangeError);
  // A topic dropped and re-added while offline is not in a batch: the URL carries the set.
  s.push(notice("b", E1, 3));
  s.serverClose(CloseCodes.ABNORMAL);
  client.unsubscribe("a");
  await clock.advance(10_000);
  assert.equal(net.last().url, `ws://feed.test/stream?streams=b/d&seq=1&since=b:3&epoch=${E1}`);
  // Added while connecting: subscribed in-band right after the open.
  net.onConnect = (x) => clock.setTimeout(() => x.accept(), 50);
  net.last().serverClose(CloseCodes.ABNORMAL);
  await clock.advance(520); // the socket exists (at 500 ms) but is not open yet (550 ms)
  assert.equal(client.state, "connecting");
  client.subscribe("late");
  client.unsubscribe("d");
  await clock.advance(10_000);
  assert.deepEqual(net.last().requests().map((r) => [r.method, r.params]), [
    ["UNSUBSCRIBE", ["d"]],
    ["SUBSCRIBE", ["late"]],
  ]);
});

test("a URL too long subscribes the rest in-band, in bounded requests", async () => {
  const topics = Array.from({ length: 300 }, (_, i) => `symbol${i}@depth`);
  const { clock, net } = setup({ topics, maxUrlLength: 1000, maxRequestBytes: 600 });
  await clock.advance(10);
  const s = net.last();
  assert.ok(s.url.length <= 1000);
  const inUrl = s.query().get("streams")!.split("/");
  const inBand = s.requests().flatMap((r) => r.params as string[]);
  assert.deepEqual([...inUrl, ...inBand], topics);
  for (const raw of s.sent) assert.ok(raw.length <= 600, `${raw.length}`);
});

test("pending requests are bounded", async () => {
  const { clock, net, client } = setup({ topics: ["a"], maxPendingRequests: 4 });
  await clock.advance(10);
  for (let i = 0; i < 20; i++) {
    client.subscribe(`t${i}`);
    await clock.advance(0);
  }
  const internal = client as unknown as { pending: Map<number, unknown> };
  assert.equal(internal.pending.size, 4);
  assert.equal(net.last().sent.length, 20);
});

test("no topics: waits for a subscribe before connecting", async () => {
  const { clock, net, client } = setup({ topics: [] });
  await clock.advance(1_000);
  assert.equal(net.sockets.length, 0);
  assert.equal(client.state, "waiting");
  client.subscribe("a");
  await clock.advance(10);
  assert.equal(net.sockets.length, 1);
  assert.equal(client.state, "open");
});

test("a throwing listener does not break the stream", async () => {
  const errors: unknown[] = [];
  const { clock, net, of, client } = setup({ topics: ["a"], onListenerError: (e) => errors.push(e) });
  await clock.advance(10);
  client.on("message", () => {
    throw new Error("listener bug");
  });
  net.last().push(notice("a", E1, 0));
  net.last().push(data("a", 1, 0));
  net.last().push(data("a", 2, 0));
  await clock.advance(0);
  assert.equal(of("message").length, 2);
  assert.equal(errors.length, 2);
});

test("FakeSocket sanity: sending before open throws", () => {
  const s = new FakeSocket("ws://x/", 0);
  assert.throws(() => s.send("x"));
});
