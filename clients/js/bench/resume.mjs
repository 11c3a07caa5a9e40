// Resume of N missed messages against a running server (docs/BENCHMARKS.md, "Continuity"):
// publish N messages to a fresh topic, then resume from 0 and time the replay until the Nth
// message arrives; reports time and bytes received. Needs `npm ci` (the `ws` package).
//   node bench/resume.mjs ws://127.0.0.1:8080 [N=10000] [SIZE=64]
import { WebSocket } from "ws";

const [url, n = "10000", size = "64"] = process.argv.slice(2);
const N = Number(n);
const topic = `resume${process.pid}`;
// A socket whose messages queue from the start (the notice can arrive with the 101).
const open = (path, onMessage) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url + path);
    ws.queue = [];
    ws.on("message", onMessage ?? ((d) => (ws.waiter ? ws.waiter(String(d)) : ws.queue.push(String(d)))));
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
const next = (ws) =>
  ws.queue.length ? Promise.resolve(ws.queue.shift()) : new Promise((r) => (ws.waiter = (d) => ((ws.waiter = undefined), r(d))));

const first = await open(`/ws/${topic}?seq=1`);
const { epoch } = JSON.parse(await next(first));
first.close();
const pub = await open(`/pub/${topic}`);
const body = JSON.stringify("x".repeat(Math.max(0, Number(size) - 2)));
for (let i = 0; i < N; i++) pub.send(body);
// The last one is in history once a fresh subscriber's notice says so.
for (;;) {
  const probe = await open(`/ws/${topic}?seq=1`);
  const head = JSON.parse(await next(probe)).seq;
  probe.close();
  if (head >= N) break;
  await new Promise((r) => setTimeout(r, 10));
}
const t0 = process.hrtime.bigint();
let bytes = 0;
let last = 0;
let resync;
let done;
const finished = new Promise((r) => (done = r));
const ws = await open(`/ws/${topic}?seq=1&since=${topic}:0&epoch=${epoch}`, (d) => {
  bytes += d.length;
  const m = JSON.parse(String(d));
  if (m.resync) resync = m.resync;
  if (m.data !== undefined) last = m.seq;
  if (last >= N) done();
});
await finished;
const ms = Number(process.hrtime.bigint() - t0) / 1e6;
console.log(JSON.stringify({ messages: N, size: Number(size), ms: +ms.toFixed(1), payload_bytes: bytes, resync: resync ?? null }));
ws.close();
pub.close();
