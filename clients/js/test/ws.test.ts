// The client over real WebSockets (Node's `ws`) against a small server written here that
// follows the continuity contract: notices, replay from history, live, resync. Counts every
// message across dropped connections, evictions, restarts and token refreshes.
import test from "node:test";
import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { WebSocket, WebSocketServer } from "ws";
import { CloseCodes, ShardcastClient } from "../src/shardcast.js";
import type { ClientOptions, Events } from "../src/shardcast.js";
import { E1, E2, data, notice } from "./helpers.js";

/** A continuity-speaking feed: per topic a log of every message, history of the last `keep`. */
class Feed {
  readonly wss: WebSocketServer;
  epoch = E1;
  keep = 1_000;
  token: string | undefined;
  readonly logs = new Map<string, unknown[]>();
  readonly conns = new Set<{ ws: WebSocket; topics: Set<string> }>();
  readonly urls: string[] = [];
  probes = 0;

  constructor() {
    this.wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    this.wss.on("connection", (ws, req) => this.accept(ws, req));
  }

  /** A feed listening on an ephemeral loopback port. */
  static async start(): Promise<Feed> {
    const f = new Feed();
    await new Promise<void>((r) => f.wss.once("listening", () => r()));
    return f;
  }

  url(): string {
    const a = this.wss.address();
    if (!a || typeof a === "string") throw new Error("not listening on a port");
    return `ws://127.0.0.1:${a.port}`;
  }

  head(topic: string): number {
    return this.logs.get(topic)?.length ?? 0;
  }

  publish(topic: string, payload: unknown): void {
    const log = this.logs.get(topic) ?? [];
    this.logs.set(topic, log);
    log.push(payload);
    for (const c of this.conns) if (c.topics.has(topic)) c.ws.send(data(topic, log.length, payload));
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    this.urls.push(req.url ?? "");
    if (this.token !== undefined && q.get("token") !== this.token) return ws.close(CloseCodes.POLICY, "bad token");
    const conn = { ws, topics: new Set<string>() };
    this.conns.add(conn);
    ws.on("close", () => this.conns.delete(conn));
    const since = new Map<string, [number, string]>();
    for (const e of (q.get("since") ?? "").split(",").filter(Boolean)) {
      const i = e.lastIndexOf(":");
      const [seq, epoch] = e.slice(i + 1).split("@");
      since.set(e.slice(0, i), [Number(seq), epoch ?? q.get("epoch") ?? ""]);
    }
    for (const t of (q.get("streams") ?? "").split("/")) this.subscribe(conn, t, since.get(t));
    ws.on("message", (raw) => {
      const m = JSON.parse(String(raw)) as { method: string; params: string[]; id: number };
      if (m.method === "LIST_SUBSCRIPTIONS") this.probes++;
      if (m.method === "LIST_SUBSCRIPTIONS") return ws.send(JSON.stringify({ result: [...conn.topics], id: m.id }));
      for (const t of m.params) if (m.method === "SUBSCRIBE") this.subscribe(conn, t, undefined);
      ws.send(JSON.stringify({ result: null, id: m.id }));
    });
  }

  /** The contract: a notice, the replay of (since, head], then live. */
  private subscribe(conn: { ws: WebSocket; topics: Set<string> }, t: string, since: [number, string] | undefined): void {
    const log = this.logs.get(t) ?? [];
    const head = log.length;
    const first = Math.max(1, head - this.keep + 1);
    let from = head + 1;
    if (since && since[1] === this.epoch && since[0] <= head && since[0] + 1 >= first) {
      conn.ws.send(notice(t, this.epoch, since[0]));
      from = since[0] + 1;
    } else if (since) {
      const reason = since[1] !== this.epoch ? "epoch" : since[0] > head ? "ahead" : "trimmed";
      conn.ws.send(notice(t, this.epoch, first - 1, reason));
      from = first;
    } else {
      conn.ws.send(notice(t, this.epoch, head));
    }
    for (let s = from; s <= head; s++) conn.ws.send(data(t, s, log[s - 1]));
    conn.topics.add(t);
  }

  /** Close every connection: `terminate` (1006 on the client) or with a code. */
  drop(code?: number): void {
    for (const c of this.conns) (code === undefined ? c.ws.terminate() : c.ws.close(code, "bye"));
    this.conns.clear();
  }

  /** A new process: history and numbering gone, a new epoch. */
  restart(): void {
    this.drop(CloseCodes.GOING_AWAY);
    this.logs.clear();
    this.epoch = E2;
  }

  close(): Promise<void> {
    this.drop();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

/** Poll until `pred` holds; fails after `ms`. */
async function until(pred: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error("timed out waiting for a condition");
    await new Promise((r) => setTimeout(r, 5));
  }
}

function client(feed: Feed, opts: Partial<ClientOptions> = {}) {
  const c = new ShardcastClient({
    url: feed.url(),
    topics: ["a", "b"],
    WebSocket,
    backoff: { baseMs: 20, maxMs: 200, goingAwayWindowMs: 50, overloadMinMs: 100 },
    liveness: false,
    ...opts,
  });
  const got = new Map<string, number[]>();
  const events: Array<[string, unknown]> = [];
  c.on("message", (m) => {
    const l = got.get(m.topic!) ?? [];
    got.set(m.topic!, l);
    l.push(m.seq!);
  });
  for (const k of ["gap", "resync", "error", "close", "open"] as const) c.on(k, (e: Events[typeof k]) => events.push([k, e]));
  return { c, got, events, count: (k: string) => events.filter((e) => e[0] === k).length };
}

const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("cut off mid-stream three times: every message exactly once, in order", async () => {
  const feed = await Feed.start();
  const { c, got, count } = client(feed);
  try {
    await until(() => c.state === "open");
    let n = 0;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 50; i++, n++) {
        feed.publish("a", { i: n });
        feed.publish("b", `text ${n}`);
      }
      await until(() => (got.get("a")?.length ?? 0) >= n);
      feed.drop(); // connection lost (1006)
      for (let i = 0; i < 30; i++, n++) {
        feed.publish("a", { i: n }); // published while the client is away
        feed.publish("b", `text ${n}`);
      }
      await until(() => c.state === "open" && feed.conns.size === 1);
    }
    await until(() => got.get("a")?.length === n && got.get("b")?.length === n);
    assert.deepEqual(got.get("a"), range(1, n));
    assert.deepEqual(got.get("b"), range(1, n));
    assert.equal(count("gap") + count("resync"), 0);
    assert.equal(c.duplicates, 0);
    assert.match(feed.urls.at(-1)!, new RegExp(`since=a:${n - 30},b:${n - 30}&epoch=${E1}`));
  } finally {
    c.close();
    await feed.close();
  }
});

test("evicted with 1013: waits the overload minimum, then resumes without loss", async () => {
  const feed = await Feed.start();
  const { c, got, events } = client(feed, { topics: ["a"] });
  try {
    await until(() => c.state === "open");
    for (let i = 0; i < 10; i++) feed.publish("a", i);
    await until(() => got.get("a")?.length === 10);
    const t0 = Date.now();
    feed.drop(CloseCodes.TRY_AGAIN_LATER);
    for (let i = 10; i < 20; i++) feed.publish("a", i);
    await until(() => got.get("a")?.length === 20);
    assert.ok(Date.now() - t0 >= 100, "waited at least overloadMinMs");
    assert.deepEqual(got.get("a"), range(1, 20));
    const close = events.find((e) => e[0] === "close")![1] as Events["close"];
    assert.equal(close.code, 1013);
    assert.ok(close.delayMs >= 100);
  } finally {
    c.close();
    await feed.close();
  }
});

test("history too short: resync names the first message the client can have", async () => {
  const feed = await Feed.start();
  feed.keep = 5;
  const { c, got, events } = client(feed, { topics: ["a"] });
  try {
    await until(() => c.state === "open");
    feed.publish("a", 0);
    await until(() => got.get("a")?.length === 1);
    feed.drop();
    for (let i = 1; i < 20; i++) feed.publish("a", i);
    await until(() => got.get("a")?.length === 6);
    assert.deepEqual(got.get("a"), [1, ...range(16, 20)]);
    const resync = events.find((e) => e[0] === "resync")![1];
    assert.deepEqual(resync, { topic: "a", epoch: E1, reason: "trimmed", first: 16, lostFrom: 2 });
  } finally {
    c.close();
    await feed.close();
  }
});

test("server restart (new epoch): a resync, then the new numbering", async () => {
  const feed = await Feed.start();
  const { c, got, events } = client(feed, { topics: ["a"] });
  try {
    await until(() => c.state === "open");
    for (let i = 0; i < 5; i++) feed.publish("a", i);
    await until(() => got.get("a")?.length === 5);
    feed.restart();
    await until(() => c.state === "open" && feed.conns.size === 1);
    for (let i = 0; i < 3; i++) feed.publish("a", i);
    await until(() => got.get("a")?.length === 8);
    assert.deepEqual(got.get("a"), [1, 2, 3, 4, 5, 1, 2, 3]);
    assert.deepEqual(events.find((e) => e[0] === "resync")![1], { topic: "a", epoch: E2, reason: "epoch", first: 1, lostFrom: undefined });
    assert.deepEqual(c.position("a"), { epoch: E2, seq: 3 });
  } finally {
    c.close();
    await feed.close();
  }
});

test("token refresh: refused with 1008, a fresh token from the provider, then streaming", async () => {
  const feed = await Feed.start();
  feed.token = "good";
  const asked: boolean[] = [];
  const { c, count } = client(feed, { token: ({ refresh }) => (asked.push(refresh), refresh ? "good" : "stale") });
  try {
    // The stale connection opens too (the feed refuses it with 1008 after the upgrade, as
    // shardcast does on an expired token): wait for the refreshed one.
    await until(() => asked.length === 2 && c.state === "open");
    assert.deepEqual(asked, [false, true]);
    assert.equal(count("error"), 1);
    assert.match(feed.urls[0]!, /token=stale/);
    assert.match(feed.urls[1]!, /token=good/);
  } finally {
    c.close();
    await feed.close();
  }
});

test("watchdog over a real socket: the probe is answered, the connection stays", async () => {
  const feed = await Feed.start();
  const { c, count } = client(feed, { topics: ["a"], liveness: { probeAfterMs: 30, timeoutMs: 2_000 } });
  try {
    await until(() => c.state === "open");
    // Several probe rounds pass (each after 30 ms of silence); every probe is answered.
    await until(() => feed.probes >= 4);
    assert.equal(count("close"), 0);
    assert.equal(feed.urls.length, 1);
  } finally {
    c.close();
    await feed.close();
  }
});
