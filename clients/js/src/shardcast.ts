/**
 * shardcast client: one ES module, no runtime dependencies, for browsers and Node ≥ 20.
 *
 * Contract (docs/CONTINUITY.md in the shardcast repository is the server's side):
 * - One WebSocket to `<url>/stream?streams=a/b&seq=1[&since=…&epoch=…][&token=…]`; topics added
 *   or removed later go in-band (SUBSCRIBE / UNSUBSCRIBE). With `sequenced: false` the
 *   connection is a plain Binance-style combined stream (no resume).
 * - Every topic has a position (epoch, last sequence number). Notices set it; data messages
 *   advance it. A message at or below the position is a duplicate and is dropped; one beyond
 *   position + 1 is reported as a `gap` (the server never does that without a notice). A
 *   notice with `resync` is reported as a `resync` event when the client was entitled to the
 *   messages it will not get (it had a position from before, or had received data).
 * - Reconnects use exponential backoff with full jitter (delay uniform in [0, min(max, base·2^n)]),
 *   and the close code: 1000/1001/1012 (server going away) reconnect promptly, spread over
 *   `goingAwayWindowMs`; 1013 (try again later) waits at least `overloadMinMs` more; 1008
 *   (policy) never retries with the same credentials: with a token function it asks for a
 *   fresh token (at most `maxAuthRetries` times in a row), else the client fails. Everything
 *   else (1006, 1011, refused connections, timeouts) uses the normal backoff. The attempt
 *   counter resets once a connection stayed up `stableAfterMs`.
 * - Liveness: after `probeAfterMs` without any inbound message the client sends a cheap
 *   request (LIST_SUBSCRIPTIONS); without an answer (or any message) within `timeoutMs` it drops
 *   the connection and reconnects. Browsers hide WebSocket pings, so the probe is in-band.
 * - Bounded: topics (`maxTopics`), pending requests (`maxPendingRequests`: the oldest is
 *   forgotten), URL length (`maxUrlLength`: the rest subscribes in-band, in requests of at most
 *   `maxRequestBytes`). Messages are dispatched synchronously, never buffered.
 * - Time, randomness and the WebSocket class are injectable (tests run on a virtual clock).
 */

/** A sequence position: the last message the client has of `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/** A delivered message. */
export interface Message {
  /** The topic (undefined for a binary message on a plain connection: it carries none). */
  topic: string | undefined;
  /** Its sequence number (sequenced connections). */
  seq: number | undefined;
  /** Text payload: the parsed JSON, or the raw text if it is not JSON. Binary: the bytes. */
  data: unknown;
  /** True for binary messages. */
  binary: boolean;
}

/** Events and their payloads. */
export interface Events {
  open: { attempt: number; url: string };
  message: Message;
  /** Messages `from..=to` of `topic` never arrived and no notice explained it. */
  gap: { topic: string; epoch: string; from: number; to: number };
  /**
   * The server cannot give every message after the client's position. `first` is the first
   * sequence number it can have; `lostFrom` the first it lost (undefined after an epoch change:
   * the old numbering cannot be compared with the new one).
   */
  resync: { topic: string; epoch: string; reason: string; first: number; lostFrom: number | undefined };
  close: { code: number; reason: string; willRetry: boolean; delayMs: number };
  reconnecting: { attempt: number; delayMs: number; code: number };
  /** A request failed, a credential was refused, or the client gave up (`fatal`). */
  error: { message: string; code: number | undefined; fatal: boolean };
}

/** Timers and time (milliseconds). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The subset of the standard WebSocket the client uses. */
export interface SocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/**
 * A WebSocket constructor: the browser's, `WebSocket` from the `ws` package in Node 20, or a
 * fake. Its instances must behave as {@link SocketLike} (typed loosely so that both the DOM's
 * and `ws`'s declarations are accepted without a cast).
 */
export type SocketFactory = new (url: string) => unknown;

/** Supplies the token for each connection; `refresh` is true after the server refused one. */
export type TokenProvider = (ctx: { refresh: boolean }) => string | Promise<string>;

/** Reconnect settings (milliseconds). */
export interface BackoffOptions {
  /** First retry's upper bound. Default 500. */
  baseMs?: number;
  /** Cap of the exponential bound. Default 30000. */
  maxMs?: number;
  /** After 1013: at least this long, plus full jitter over the same span. Default 5000. */
  overloadMinMs?: number;
  /** After 1000/1001/1012 from a stable connection: uniform over this window. Default 5000. */
  goingAwayWindowMs?: number;
  /** A connection up this long resets the attempt counter. Default 10000. */
  stableAfterMs?: number;
  /** A connection that does not open within this long is abandoned. Default 10000. */
  connectTimeoutMs?: number;
}

/** Liveness watchdog settings (milliseconds). */
export interface LivenessOptions {
  /** Silence after which a probe is sent. Default 20000. */
  probeAfterMs?: number;
  /** Further silence after the probe before reconnecting. Default 10000. */
  timeoutMs?: number;
}

/** Client options. */
export interface ClientOptions {
  /** Server base URL, e.g. `wss://feed.example.com` (the client appends `/stream?…`). */
  url: string;
  /** Topics to subscribe at start. */
  topics?: string[];
  /** Sequenced connection with resume (default true). */
  sequenced?: boolean;
  /** Positions to resume from at start (e.g. kept in sessionStorage across page loads). */
  since?: Record<string, Position>;
  /** Sent as `?token=`. A function is called before every connection. */
  token?: string | TokenProvider;
  /** WebSocket class; default `globalThis.WebSocket` (Node 20: pass `WebSocket` from `ws`). */
  WebSocket?: SocketFactory;
  backoff?: BackoffOptions;
  /** `false` turns the watchdog off. */
  liveness?: LivenessOptions | false;
  /** Most topics (default 1024, the server's default limit). */
  maxTopics?: number;
  /** Longest connection URL (default 4000); the rest subscribes in-band. */
  maxUrlLength?: number;
  /** Longest in-band request (default 3500; the server's control limit is 4096). */
  maxRequestBytes?: number;
  /** Requests awaiting an answer (default 64). */
  maxPendingRequests?: number;
  /** Consecutive 1008 closes tolerated with refreshed tokens (default 3). */
  maxAuthRetries?: number;
  clock?: Clock;
  /** Called with what a listener threw (default: rethrown in a microtask, like an event handler). */
  onListenerError?: (e: unknown) => void;
  /** Uniform in [0, 1) (default Math.random). */
  random?: () => number;
}

/** Client state. */
export type State = "connecting" | "open" | "waiting" | "closed" | "failed";

/** Close codes with a meaning for reconnects. */
export const CloseCodes = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  INTERNAL: 1011,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  /** Used by this client when the watchdog or the connect timeout drops a connection. */
  LIVENESS: 4000,
} as const;

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof globalThis.setTimeout>),
};

/** Full jitter: uniform in [0, min(maxMs, baseMs · 2^attempt)). */
export function fullJitter(attempt: number, baseMs: number, maxMs: number, random: () => number): number {
  const bound = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 52));
  return random() * bound;
}

/** The reconnect decision for a close. */
export interface RetryDecision {
  retry: boolean;
  delayMs: number;
  /** The attempt counter to use for the next decision. */
  nextAttempt: number;
  /** Ask the token provider for a fresh token. */
  refreshToken: boolean;
}

/** Resolved backoff settings. */
export type Backoff = Required<BackoffOptions>;

/** Defaults of {@link BackoffOptions}. */
export const DEFAULT_BACKOFF: Backoff = {
  baseMs: 500,
  maxMs: 30_000,
  overloadMinMs: 5_000,
  goingAwayWindowMs: 5_000,
  stableAfterMs: 10_000,
  connectTimeoutMs: 10_000,
};

/**
 * What to do after a connection closed with `code`. `attempt` counts consecutive failures
 * (0 after a stable connection), `authFailures` consecutive 1008 closes, `canRefresh` whether a
 * token function exists. Pure: the client and the tests share it.
 */
export function decideRetry(
  code: number,
  attempt: number,
  authFailures: number,
  canRefresh: boolean,
  maxAuthRetries: number,
  b: Backoff,
  random: () => number,
): RetryDecision {
  switch (code) {
    case CloseCodes.NORMAL:
    case CloseCodes.GOING_AWAY:
    case CloseCodes.RESTART:
      if (attempt === 0) {
        // The whole fleet hears this at once: spread the reconnects over the window, and if
        // the server is not back yet, retry no faster than the window (the exponential bound
        // continues from the first step at or above it).
        const next = Math.max(1, Math.ceil(Math.log2(b.goingAwayWindowMs / b.baseMs)));
        return { retry: true, delayMs: random() * b.goingAwayWindowMs, nextAttempt: next, refreshToken: false };
      }
      break;
    case CloseCodes.TRY_AGAIN_LATER: {
      const span = Math.min(b.maxMs, b.overloadMinMs * 2 ** Math.min(attempt, 52));
      return { retry: true, delayMs: b.overloadMinMs + random() * span, nextAttempt: attempt + 1, refreshToken: false };
    }
    case CloseCodes.POLICY:
      if (!canRefresh || authFailures >= maxAuthRetries) {
        return { retry: false, delayMs: 0, nextAttempt: attempt, refreshToken: false };
      }
      return {
        retry: true,
        delayMs: fullJitter(attempt, b.baseMs, b.maxMs, random),
        nextAttempt: attempt + 1,
        refreshToken: true,
      };
  }
  return { retry: true, delayMs: fullJitter(attempt, b.baseMs, b.maxMs, random), nextAttempt: attempt + 1, refreshToken: false };
}

/** Parse a sequenced binary message: version 1, seq (u64 BE), topic length, topic, payload. */
export function parseBinary(buf: Uint8Array): { seq: number; topic: string; payload: Uint8Array } | undefined {
  if (buf.length < 10 || buf[0] !== 1) return undefined;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const seq = Number(view.getBigUint64(1));
  const len = buf[9]!;
  if (len === 0 || buf.length < 10 + len) return undefined;
  let topic = "";
  for (let i = 10; i < 10 + len; i++) topic += String.fromCharCode(buf[i]!);
  return { seq, topic, payload: buf.subarray(10 + len) };
}

const TOPIC = /^[A-Za-z0-9._:@-]{1,128}$/;
const WRAPPED = /^\{"stream":"([A-Za-z0-9._:@-]+)",(?:"seq":(\d+),)?"data":([\s\S]*)\}$/;

/** Build the since/epoch query: the most common epoch goes in `epoch=`, others per entry. */
export function sinceQuery(positions: Array<[string, Position]>): string {
  if (positions.length === 0) return "";
  const count = new Map<string, number>();
  for (const [, p] of positions) count.set(p.epoch, (count.get(p.epoch) ?? 0) + 1);
  let common = "";
  let best = 0;
  for (const [e, n] of count) if (n > best) [common, best] = [e, n];
  const entries = positions.map(([t, p]) => (p.epoch === common ? `${t}:${p.seq}` : `${t}:${p.seq}@${p.epoch}`));
  return `&since=${entries.join(",")}&epoch=${common}`;
}

interface TopicState {
  epoch: string | undefined;
  last: number;
  /** Lost messages would be this client's loss: it had a position or received data. */
  entitled: boolean;
}

interface Pending {
  method: string;
  topics: string[];
}

type Listener<K extends keyof Events> = (ev: Events[K]) => void;

/** A shardcast connection that keeps itself alive and in sequence. */
export class ShardcastClient {
  private readonly opts: ClientOptions;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly backoff: Backoff;
  private readonly liveness: Required<LivenessOptions> | undefined;
  private readonly Socket: SocketFactory;
  private readonly listeners = new Map<keyof Events, Set<(ev: never) => void>>();
  private readonly topics = new Map<string, TopicState>();
  private readonly pending = new Map<number, Pending>();
  private socket: SocketLike | undefined;
  /** Bumped per socket, so late events of an abandoned socket are ignored. */
  private generation = 0;
  private timer: unknown;
  private watchdog: unknown;
  private attempt = 0;
  private authFailures = 0;
  private refreshNext = false;
  private openedAt = 0;
  private lastRx = 0;
  private probeSentAt: number | undefined;
  private nextId = 1;
  private batch: { sub: Set<string>; unsub: Set<string> } | undefined;
  private _state: State = "connecting";
  /** Duplicates dropped (a resumed replay overlapping what was already delivered). */
  duplicates = 0;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.backoff = { ...DEFAULT_BACKOFF, ...(opts.backoff ?? {}) };
    this.liveness = opts.liveness === false ? undefined : { probeAfterMs: 20_000, timeoutMs: 10_000, ...(opts.liveness ?? {}) };
    const Socket = opts.WebSocket ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
    if (!Socket) throw new TypeError("no WebSocket class: pass options.WebSocket (Node 20: from the ws package)");
    this.Socket = Socket;
    for (const t of opts.topics ?? []) this.addTopic(t);
    for (const [t, p] of Object.entries(opts.since ?? {})) {
      const st = this.topics.get(t);
      if (st) Object.assign(st, { epoch: p.epoch, last: p.seq, entitled: true });
    }
    // Connect after the caller had a chance to attach listeners.
    this.schedule(0);
  }

  /** The current state. */
  get state(): State {
    return this._state;
  }

  /** Subscribed topics. */
  subscriptions(): string[] {
    return [...this.topics.keys()];
  }

  /** A topic's position (what a later `since` would resume from). */
  position(topic: string): Position | undefined {
    const st = this.topics.get(topic);
    return st?.epoch === undefined ? undefined : { epoch: st.epoch, seq: st.last };
  }

  /** Listen to an event; returns the function that removes the listener. */
  on<K extends keyof Events>(event: K, fn: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as (ev: never) => void);
    return () => this.off(event, fn);
  }

  /** Remove a listener. */
  off<K extends keyof Events>(event: K, fn: Listener<K>): void {
    this.listeners.get(event)?.delete(fn as (ev: never) => void);
  }

  /** Add topics (sent in-band when connected, batched per tick). */
  subscribe(...topics: string[]): void {
    for (const t of topics) {
      if (this.topics.has(t)) continue;
      this.addTopic(t);
      this.queueOp("sub", t);
    }
    if (this._state === "waiting" && this.socket === undefined && this.timer === undefined) this.schedule(0);
  }

  /** Remove topics (their positions are forgotten). */
  unsubscribe(...topics: string[]): void {
    for (const t of topics) {
      if (!this.topics.delete(t)) continue;
      this.queueOp("unsub", t);
    }
  }

  /** Close for good. */
  close(): void {
    if (this._state === "closed") return;
    this._state = "closed";
    this.clearTimers();
    this.dropSocket(CloseCodes.NORMAL, "client closed");
  }

  private addTopic(t: string): void {
    if (!TOPIC.test(t)) throw new RangeError(`invalid topic ${JSON.stringify(t)}`);
    if (this.topics.size >= (this.opts.maxTopics ?? 1024)) throw new RangeError("too many topics");
    this.topics.set(t, { epoch: undefined, last: 0, entitled: false });
  }

  private emit<K extends keyof Events>(event: K, ev: Events[K]): void {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        (fn as Listener<K>)(ev);
      } catch (e) {
        // A throwing listener must not break the connection: report it out of band.
        const report =
          this.opts.onListenerError ??
          ((x: unknown) =>
            queueMicrotask(() => {
              throw x;
            }));
        report(e);
      }
    }
  }

  private clearTimers(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    if (this.watchdog !== undefined) this.clock.clearTimeout(this.watchdog);
    this.timer = this.watchdog = undefined;
  }

  private schedule(delayMs: number): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.connect();
    }, delayMs);
  }

  private connect(): void {
    if (this._state === "closed" || this._state === "failed") return;
    if (this.topics.size === 0) {
      // Nothing to stream: wait for a subscribe().
      this._state = "waiting";
      return;
    }
    this._state = "connecting";
    const token = this.opts.token;
    if (typeof token === "function") {
      const refresh = this.refreshNext;
      this.refreshNext = false;
      const gen = ++this.generation;
      Promise.resolve()
        .then(() => token({ refresh }))
        .then(
          (t) => {
            if (gen !== this.generation || this._state !== "connecting") return;
            if (!t) return this.fail("the token provider returned no token", CloseCodes.POLICY);
            this.open(t);
          },
          (e: unknown) => {
            if (gen === this.generation) this.fail(`the token provider failed: ${String(e)}`, CloseCodes.POLICY);
          },
        );
    } else {
      this.open(token);
    }
  }

  private fail(message: string, code: number | undefined): void {
    this._state = "failed";
    this.clearTimers();
    this.dropSocket(CloseCodes.NORMAL, "client failed");
    this.emit("error", { message, code, fatal: true });
  }

  /** The connection URL and the topics that did not fit in it. */
  private buildUrl(token: string | undefined): { url: string; rest: string[] } {
    const sequenced = this.opts.sequenced ?? true;
    const max = this.opts.maxUrlLength ?? 4000;
    const base = this.opts.url.replace(/\/+$/, "");
    const tail = (sequenced ? "&seq=1" : "") + (token ? `&token=${encodeURIComponent(token)}` : "");
    const all = [...this.topics.keys()];
    const build = (n: number): string => {
      const some = all.slice(0, n);
      const since = sequenced
        ? sinceQuery(some.flatMap((t) => (this.position(t) ? [[t, this.position(t)!] as [string, Position]] : [])))
        : "";
      return `${base}/stream?streams=${some.join("/")}${tail}${since}`;
    };
    // The longest prefix of the topics that fits (at least one).
    let n = all.length;
    let url = build(n);
    while (url.length > max && n > 1) url = build(--n);
    return { url, rest: all.slice(n) };
  }

  private open(token: string | undefined): void {
    const { url, rest } = this.buildUrl(token);
    const requested = new Set(this.topics.keys());
    const gen = ++this.generation;
    let sock: SocketLike;
    try {
      sock = new this.Socket(url) as SocketLike;
    } catch (e) {
      this.handleClosed(CloseCodes.ABNORMAL, `connect failed: ${String(e)}`);
      return;
    }
    this.socket = sock;
    sock.binaryType = "arraybuffer";
    // The URL (and `rest`) carry the topic set: earlier batches are obsolete.
    this.batch = undefined;
    this.pending.clear();
    const connectTimer = this.clock.setTimeout(() => {
      if (gen === this.generation && this._state === "connecting") {
        this.dropSocket(CloseCodes.LIVENESS, "connect timeout");
        this.handleClosed(CloseCodes.LIVENESS, "connect timeout");
      }
    }, this.backoff.connectTimeoutMs);
    sock.onopen = () => {
      this.clock.clearTimeout(connectTimer);
      if (gen !== this.generation) return;
      this._state = "open";
      this.openedAt = this.lastRx = this.clock.now();
      this.probeSentAt = undefined;
      this.armWatchdog(gen);
      // Topics added or removed while connecting go in-band now.
      const gone = [...requested].filter((t) => !this.topics.has(t));
      if (gone.length) this.request("UNSUBSCRIBE", gone, undefined);
      const more = rest.concat([...this.topics.keys()].filter((t) => !requested.has(t)));
      if (more.length) this.sendSubscribe(more);
      this.emit("open", { attempt: this.attempt, url });
    };
    sock.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.lastRx = this.clock.now();
      if (this.probeSentAt !== undefined) {
        // Alive: the next check is a full probe interval from now, not the probe's deadline.
        this.probeSentAt = undefined;
        if (this.watchdog !== undefined) this.clock.clearTimeout(this.watchdog);
        this.armWatchdog(gen);
      }
      this.onData(ev.data);
    };
    sock.onerror = () => {};
    sock.onclose = (ev) => {
      this.clock.clearTimeout(connectTimer);
      if (gen !== this.generation) return;
      this.socket = undefined;
      this.generation++;
      this.handleClosed(ev.code, ev.reason);
    };
  }

  /** Forget the current socket (its late events are ignored) and close it. */
  private dropSocket(code: number, reason: string): void {
    const s = this.socket;
    this.socket = undefined;
    this.generation++;
    if (!s) return;
    s.onopen = s.onmessage = s.onclose = null;
    try {
      s.close(code, reason);
    } catch {
      // Already closed, or closing before open: nothing to do.
    }
  }

  /** The connection is gone (closed by the server, refused, or dropped by us): decide. */
  private handleClosed(code: number, reason: string): void {
    if (this.watchdog !== undefined) this.clock.clearTimeout(this.watchdog);
    this.watchdog = undefined;
    if (this._state === "closed" || this._state === "failed") return;
    const stable = this.openedAt > 0 && this.clock.now() - this.openedAt >= this.backoff.stableAfterMs;
    this.openedAt = 0;
    if (stable) {
      this.attempt = 0;
      this.authFailures = 0;
    }
    const canRefresh = typeof this.opts.token === "function";
    const d = decideRetry(code, this.attempt, this.authFailures, canRefresh, this.opts.maxAuthRetries ?? 3, this.backoff, this.random);
    if (code === CloseCodes.POLICY) {
      this.authFailures++;
      this.emit("error", { message: `refused by policy: ${reason || "1008"}`, code, fatal: !d.retry });
    } else {
      this.authFailures = 0;
    }
    this.emit("close", { code, reason, willRetry: d.retry, delayMs: d.delayMs });
    if (!d.retry) {
      this._state = "failed";
      this.clearTimers();
      return;
    }
    this.attempt = d.nextAttempt;
    this.refreshNext = d.refreshToken;
    this._state = "connecting";
    this.emit("reconnecting", { attempt: this.attempt, delayMs: d.delayMs, code });
    this.schedule(d.delayMs);
  }

  private armWatchdog(gen: number): void {
    const l = this.liveness;
    if (!l) return;
    const due = this.probeSentAt === undefined ? this.lastRx + l.probeAfterMs : this.probeSentAt + l.timeoutMs;
    this.watchdog = this.clock.setTimeout(() => {
      this.watchdog = undefined;
      if (gen !== this.generation || this._state !== "open") return;
      const now = this.clock.now();
      if (this.probeSentAt !== undefined && now - this.probeSentAt >= l.timeoutMs) {
        this.dropSocket(CloseCodes.LIVENESS, "liveness timeout");
        this.handleClosed(CloseCodes.LIVENESS, "liveness timeout");
        return;
      }
      if (this.probeSentAt === undefined && now - this.lastRx >= l.probeAfterMs) {
        this.probeSentAt = now;
        this.request("LIST_SUBSCRIPTIONS", [], undefined);
      }
      this.armWatchdog(gen);
    }, Math.max(0, due - this.clock.now()));
  }

  private queueOp(kind: "sub" | "unsub", t: string): void {
    if (this._state !== "open") return; // the next connection's URL carries the set
    if (!this.batch) {
      const batch = (this.batch = { sub: new Set<string>(), unsub: new Set<string>() });
      queueMicrotask(() => {
        if (this.batch !== batch || this._state !== "open") return;
        this.batch = undefined;
        if (batch.unsub.size) this.request("UNSUBSCRIBE", [...batch.unsub], undefined);
        const subs = [...batch.sub].filter((x) => this.topics.has(x));
        if (subs.length) this.sendSubscribe(subs);
      });
    }
    const [add, del] = kind === "sub" ? [this.batch.sub, this.batch.unsub] : [this.batch.unsub, this.batch.sub];
    del.delete(t);
    add.add(t);
  }

  /** SUBSCRIBE `topics` with their positions, in requests of at most maxRequestBytes. */
  private sendSubscribe(topics: string[]): void {
    const max = this.opts.maxRequestBytes ?? 3500;
    let chunk: string[] = [];
    const flush = () => {
      if (chunk.length) this.request("SUBSCRIBE", chunk, this.sinceOf(chunk));
      chunk = [];
    };
    for (const t of topics) {
      chunk.push(t);
      if (chunk.length > 1 && this.encode("SUBSCRIBE", chunk, this.sinceOf(chunk), 0).length > max) {
        chunk.pop();
        flush();
        chunk.push(t);
      }
    }
    flush();
  }

  private sinceOf(topics: string[]): { since: string; epoch: string } | undefined {
    if (!(this.opts.sequenced ?? true)) return undefined;
    const q = sinceQuery(topics.flatMap((t) => (this.position(t) ? [[t, this.position(t)!] as [string, Position]] : [])));
    const m = /^&since=([^&]*)&epoch=(.*)$/.exec(q);
    return m ? { since: m[1]!, epoch: m[2]! } : undefined;
  }

  private encode(method: string, params: string[], since: { since: string; epoch: string } | undefined, id: number): string {
    return JSON.stringify({ method, params, ...(since ?? {}), id });
  }

  private request(method: string, params: string[], since: { since: string; epoch: string } | undefined): void {
    const s = this.socket;
    if (!s || this._state !== "open") return;
    const id = this.nextId++;
    this.pending.set(id, { method, topics: params });
    const max = this.opts.maxPendingRequests ?? 64;
    while (this.pending.size > max) this.pending.delete(this.pending.keys().next().value!);
    s.send(this.encode(method, params, since, id));
  }

  private onData(raw: unknown): void {
    if (typeof raw === "string") return this.onText(raw);
    const bytes = raw instanceof ArrayBuffer ? new Uint8Array(raw) : ArrayBuffer.isView(raw) ? new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
    if (!bytes) return;
    if (this.opts.sequenced ?? true) {
      const m = parseBinary(bytes);
      if (m) return this.onSequenced(m.topic, m.seq, m.payload, true);
    }
    this.emit("message", { topic: undefined, seq: undefined, data: bytes, binary: true });
  }

  private onText(text: string): void {
    let obj: Record<string, unknown> | undefined;
    try {
      const v: unknown = JSON.parse(text);
      if (v !== null && typeof v === "object" && !Array.isArray(v)) obj = v as Record<string, unknown>;
    } catch {
      // A wrapper around a payload that is not JSON: take the payload as text.
      const m = WRAPPED.exec(text);
      if (m) return this.onWrapped(m[1]!, m[2] === undefined ? undefined : Number(m[2]), m[3]!);
    }
    if (!obj) return this.emit("message", { topic: undefined, seq: undefined, data: text, binary: false });
    if (typeof obj.stream === "string" && "data" in obj) {
      return typeof obj.seq === "number"
        ? this.onSequenced(obj.stream, obj.seq, obj.data, false)
        : this.emit("message", { topic: obj.stream, seq: undefined, data: obj.data, binary: false });
    }
    if (typeof obj.stream === "string" && typeof obj.epoch === "string" && typeof obj.seq === "number") {
      return this.onNotice(obj.stream, obj.epoch, obj.seq, typeof obj.resync === "string" ? obj.resync : undefined);
    }
    if ("id" in obj && ("result" in obj || "error" in obj)) return this.onReply(obj);
    this.emit("message", { topic: undefined, seq: undefined, data: obj, binary: false });
  }

  private onWrapped(topic: string, seq: number | undefined, payload: string): void {
    if (seq === undefined) this.emit("message", { topic, seq, data: payload, binary: false });
    else this.onSequenced(topic, seq, payload, false);
  }

  private onReply(obj: Record<string, unknown>): void {
    const id = typeof obj.id === "number" ? obj.id : undefined;
    const req = id === undefined ? undefined : this.pending.get(id);
    if (id !== undefined) this.pending.delete(id);
    const err = obj.error as { code?: number; msg?: string } | undefined;
    if (err && typeof err === "object") {
      this.emit("error", {
        message: `${req?.method ?? "request"} ${JSON.stringify(req?.topics ?? [])} failed: ${err.msg ?? "error"}`,
        code: err.code,
        fatal: false,
      });
    }
  }

  private onNotice(topic: string, epoch: string, seq: number, resync: string | undefined): void {
    const st = this.topics.get(topic);
    if (!st) return;
    const same = st.epoch === epoch;
    // Placed at or before what we have: nothing lost; keep ours so what follows is deduped.
    if (same && st.last >= seq) return;
    if (st.entitled && st.epoch !== undefined) {
      if (resync !== undefined || !same) {
        this.emit("resync", { topic, epoch, reason: resync ?? "epoch", first: seq + 1, lostFrom: same ? st.last + 1 : undefined });
      } else {
        // Placed beyond what we have without a reason: report it as a gap.
        this.emit("gap", { topic, epoch, from: st.last + 1, to: seq });
      }
    }
    st.epoch = epoch;
    st.last = seq;
  }

  private onSequenced(topic: string, seq: number, data: unknown, binary: boolean): void {
    const st = this.topics.get(topic);
    if (!st) return; // unsubscribed meanwhile
    if (st.epoch !== undefined) {
      if (seq <= st.last) {
        this.duplicates++;
        return;
      }
      if (seq > st.last + 1) this.emit("gap", { topic, epoch: st.epoch, from: st.last + 1, to: seq - 1 });
    }
    st.last = seq;
    st.entitled = true;
    this.emit("message", { topic, seq, data, binary });
  }
}
