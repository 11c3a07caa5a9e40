// The real shardcast binary for the client's tests: SHARDCAST_BIN (scripts/test-js.sh builds
// it), started on an ephemeral loopback port.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { request } from "node:http";
import { createInterface } from "node:readline";

const BIN = process.env.SHARDCAST_BIN;

export interface Server {
  proc: ChildProcess;
  addr: string;
}

/** Start the server; resolves once it prints its address. */
export async function start(args: string[], listen = "127.0.0.1:0"): Promise<Server> {
  const proc = spawn(BIN!, ["--listen", listen, "--admin-listen", "off", "--shards", "2", "--log", "error", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! });
    rl.once("line", resolve);
    proc.once("exit", (c) => reject(new Error(`shardcast exited with ${c}`)));
  });
  const addr = line.replace(/^shardcast listening on /, "").split(" ")[0]!;
  return { proc, addr };
}

export async function stop(s: Server): Promise<void> {
  if (s.proc.exitCode !== null) return;
  const exited = new Promise((r) => s.proc.once("exit", r));
  s.proc.kill("SIGTERM");
  await exited;
}

/** HTTP publish as a local feed handler does: a plain loopback request (trusted without a
 * credential). Not `fetch`: it adds `Sec-Fetch-Mode`, which marks a request as a browser's and
 * so untrusted (README, "Security model"). */
export async function post(s: Server, topic: string, body: string): Promise<void> {
  const [host, port] = [s.addr.slice(0, s.addr.lastIndexOf(":")), Number(s.addr.slice(s.addr.lastIndexOf(":") + 1))];
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(
      { host, port, method: "POST", path: `/publish/${topic}`, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
  assert.equal(status, 204);
}

export async function until(pred: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}

