// The client in headless Chromium (Debian's `chromium`; scripts/test.sh installs it) against
// the real server (SHARDCAST_BIN): a page subscribes with `seq=1`, publishes through `/pub`,
// closes, publishes more, and resumes from its position with a second client: every message
// exactly once, no resync. The page is the built ES module inlined with the test script.
import test from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { start, stop } from "./real.js";

const BIN = process.env.SHARDCAST_BIN;
const CHROMIUM = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => p && existsSync(p));

const PAGE = (addr: string) => `
const url = "ws://${addr}";
const until = async (pred) => { const end = Date.now() + 15000; while (!pred()) { if (Date.now() > end) throw new Error("timed out"); await new Promise((r) => setTimeout(r, 5)); } };
const pub = new WebSocket(url + "/pub/b");
await new Promise((r) => (pub.onopen = r));
const got = [];
let resyncs = 0;
const listen = (c) => { c.on("message", (m) => got.push(m.data === m.seq ? m.seq : -1)); c.on("resync", () => resyncs++); };
const a = new ShardcastClient({ url, topics: ["b"], liveness: false });
listen(a);
await until(() => a.state === "open" && a.position("b") !== undefined);
for (let i = 1; i <= 50; i++) pub.send(String(i));
await until(() => got.length === 50);
const at = a.position("b");
a.close();
for (let i = 51; i <= 80; i++) pub.send(String(i)); // while no client is connected
const b = new ShardcastClient({ url, topics: ["b"], liveness: false, since: { b: at } });
listen(b);
await until(() => got.length >= 80);
const ok = got.every((s, i) => s === i + 1) && got.length === 80 && resyncs === 0;
document.body.textContent = (ok ? "PASS " : "FAIL ") + JSON.stringify({ got: got.length, resyncs, at });
`;

test("headless Chromium: the client resumes against the real server with nothing lost", { skip: (!BIN && "SHARDCAST_BIN not set") || (!CHROMIUM && "no chromium") }, async () => {
  const s = await start(["--topic-history", "b=messages=1000"]);
  const dir = mkdtempSync(join(tmpdir(), "shardcast-browser-"));
  try {
    const lib = readFileSync(fileURLToPath(new URL("../src/shardcast.js", import.meta.url)), "utf8");
    const html = join(dir, "page.html");
    writeFileSync(html, `<!doctype html><html><body>RUNNING</body><script type="module">\n${lib}\n${PAGE(s.addr)}\n</script></html>`);
    const args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", `--user-data-dir=${join(dir, "profile")}`, "--virtual-time-budget=20000", "--dump-dom", `file://${html}`];
    const dom = await new Promise<string>((resolve, reject) =>
      execFile(CHROMIUM!, args, { timeout: 60_000 }, (e, out) => (e ? reject(e) : resolve(out))),
    );
    assert.match(dom, /PASS/, dom);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await stop(s);
  }
});
