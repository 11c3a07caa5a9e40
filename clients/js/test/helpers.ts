// Test doubles: a virtual clock, an in-memory WebSocket and a seeded RNG.
import type { Clock, SocketFactory, SocketLike } from "../src/shardcast.js";

interface Timer {
  id: number;
  due: number;
  fn: () => void;
}

/** Timers fire only when the test advances time; microtasks run after each timer. */
export class VirtualClock implements Clock {
  private t = 0;
  private seq = 0;
  private timers: Timer[] = [];

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const timer = { id: ++this.seq, due: this.t + Math.max(0, ms), fn };
    this.timers.push(timer);
    return timer.id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== handle);
  }

  pending(): number {
    return this.timers.length;
  }

  /** Run every timer due within `ms`, in due order, flushing promises after each. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await flush();
    for (;;) {
      let next: Timer | undefined;
      for (const x of this.timers) if (x.due <= end && (!next || x.due < next.due || (x.due === next.due && x.id < next.id))) next = x;
      if (!next) break;
      this.timers = this.timers.filter((x) => x !== next);
      this.t = next.due;
      next.fn();
      await flush();
    }
    this.t = end;
  }
}

/** Let pending promise callbacks run. */
export function flush(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** A seeded uniform RNG in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An in-memory WebSocket whose server side the test drives. */
export class FakeSocket implements SocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  readonly sent: string[] = [];
  closedByClient: { code: number | undefined; reason: string | undefined } | undefined;

  constructor(
    readonly url: string,
    readonly at: number,
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // The server's side.
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  push(data: string | Uint8Array): void {
    this.onmessage?.({ data: typeof data === "string" ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The request messages the client sent, parsed. */
  requests(): Array<Record<string, unknown>> {
    return this.sent.map((s) => JSON.parse(s) as Record<string, unknown>);
  }

  query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
}

/** Every socket the clients created, in order, with a hook to answer each connect. */
export class FakeNet {
  readonly sockets: FakeSocket[] = [];
  onConnect: (s: FakeSocket) => void = () => {};

  constructor(readonly clock: VirtualClock) {}

  factory(): SocketFactory {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const net = this;
    return class extends FakeSocket {
      constructor(url: string) {
        super(url, net.clock.now());
        net.sockets.push(this);
        net.onConnect(this);
      }
    };
  }

  last(): FakeSocket {
    const s = this.sockets[this.sockets.length - 1];
    if (!s) throw new Error("no socket yet");
    return s;
  }
}

/** A notice and data messages as the server writes them. */
export const notice = (stream: string, epoch: string, seq: number, resync?: string): string =>
  JSON.stringify(resync === undefined ? { stream, epoch, seq } : { stream, epoch, seq, resync });
export const data = (stream: string, seq: number, payload: unknown): string => JSON.stringify({ stream, seq, data: payload });

export const E1 = "3f9c2a17b4e6d801";
export const E2 = "00000000000000ff";
