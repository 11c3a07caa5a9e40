// Resume of N missed messages against a running server (docs/BENCHMARKS.md, "Continuity"):
// publish N messages to a fresh topic, then resume from 0 and time the replay until the Nth
// message arrives; reports time and bytes received. Needs `npm ci` (the `ws` package).
//   node bench/resume.mjs ws://127.0.0.1:8080 [N=10000] [SIZE=64] [ws://PUBLISH_HOST] [http://NATS_MONITOR]
// With PUBLISH_HOST (another shardcast host on the same NATS), the messages are published
// there and the resume runs on the first URL's host: with its ring smaller than N and
// `--nats-jetstream on`, the replay comes from JetStream (deep history). NATS_MONITOR adds the
// NATS server's bytes out and messages in during the resume (`/varz`): what the fetches cost on
// the wire, and how many requests they took (a count the machine's load does not change).
import { WebSocket } from "ws";

const [url, n = "10000", size = "64", pubUrl = url, monitor] = process.argv.slice(2);
const N = Number(n);
const topic = `resume${process.pid}`;
// A socket whose messages queue from the start (the notice can arrive with the 101).
const open = (base, path, onMessage) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(base + path);
    ws.queue = [];
    ws.on("message", onMessage ?? ((d) => (ws.waiter ? ws.waiter(String(d)) : ws.queue.push(String(d)))));
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
const next = (ws) =>
  ws.queue.length ? Promise.resolve(ws.queue.shift()) : new Promise((r) => (ws.waiter = (d) => ((ws.waiter = undefined), r(d))));
const within = (ws, ms) => Promise.race([next(ws), new Promise((r) => setTimeout(() => r(null), ms))]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const pub = await open(pubUrl, `/pub/${topic}`);
const body = JSON.stringify("x".repeat(Math.max(0, Number(size) - 2)));
let sent = 0;
if (pubUrl !== url) {
  // The resuming host must be receiving the topic (it adopts the publisher's numbering): a
  // subscriber there, and messages until one arrives (they count towards N).
  const keeper = await open(url, `/ws/${topic}?seq=1`);
  await next(keeper);
  for (;;) {
    pub.send(body);
    sent++;
    const m = await within(keeper, 50);
    if (m && JSON.parse(m).data !== undefined) break;
    if (sent >= N) throw new Error("the resuming host never received the topic");
  }
}
while (sent < N) {
  pub.send(body);
  sent++;
}
// The last one is in history once a fresh subscriber's notice on the resuming host says so.
let epoch;
for (;;) {
  const probe = await open(url, `/ws/${topic}?seq=1`);
  const notice = JSON.parse(await next(probe));
  probe.close();
  epoch = notice.epoch;
  if (notice.seq >= N) break;
  await sleep(10);
}
const varz = async () => (monitor ? await (await fetch(`${monitor}/varz`)).json() : { out_bytes: 0, in_msgs: 0 });
const v0 = await varz();
const t0 = process.hrtime.bigint();
let bytes = 0;
let last = 0;
let resync;
let done;
const finished = new Promise((r) => (done = r));
const ws = await open(url, `/ws/${topic}?seq=1&since=${topic}:0&epoch=${epoch}`, (d) => {
  bytes += d.length;
  const m = JSON.parse(String(d));
  if (m.resync) resync = m.resync;
  if (m.data !== undefined) {
    if (m.seq !== last + 1) throw new Error(`gap or duplicate: ${m.seq} after ${last}`);
    last = m.seq;
  }
  if (last >= N) done();
});
await finished;
const ms = Number(process.hrtime.bigint() - t0) / 1e6;
const v1 = await varz();
const nats_out_bytes = monitor ? v1.out_bytes - v0.out_bytes : null;
const nats_in_msgs = monitor ? v1.in_msgs - v0.in_msgs : null;
console.log(
  JSON.stringify({
    messages: N,
    size: Number(size),
    ms: +ms.toFixed(1),
    payload_bytes: bytes,
    nats_out_bytes,
    nats_in_msgs,
    resync: resync ?? null,
  }),
);
ws.close();
pub.close();
process.exit(0);
