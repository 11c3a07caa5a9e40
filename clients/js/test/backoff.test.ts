// The reconnect policy as a pure function: full jitter bounds and distribution, and each
// close code's decision.
import test from "node:test";
import assert from "node:assert/strict";
import { CloseCodes, DEFAULT_BACKOFF, decideRetry, fullJitter } from "../src/shardcast.js";
import { rng } from "./helpers.js";

test("full jitter stays in [0, min(max, base*2^n)) and is uniform over it", () => {
  const r = rng(1);
  for (let attempt = 0; attempt < 12; attempt++) {
    const bound = Math.min(30_000, 500 * 2 ** attempt);
    const n = 20_000;
    const buckets = new Array<number>(10).fill(0);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const d = fullJitter(attempt, 500, 30_000, r);
      assert.ok(d >= 0 && d < bound, `attempt ${attempt}: ${d} outside [0, ${bound})`);
      buckets[Math.floor((d / bound) * 10)]!++;
      sum += d;
    }
    // Uniform: every tenth of the range holds 10% ± 1.5%, the mean is bound/2 ± 2%.
    for (const b of buckets) assert.ok(Math.abs(b / n - 0.1) < 0.015, `attempt ${attempt}: ${buckets.join(",")}`);
    assert.ok(Math.abs(sum / n / bound - 0.5) < 0.02);
  }
  // Deterministic with an injected RNG, and extremes map to the bounds.
  assert.equal(fullJitter(3, 100, 10_000, () => 0), 0);
  assert.equal(fullJitter(3, 100, 10_000, () => 0.5), 400);
  assert.equal(fullJitter(1000, 100, 10_000, () => 0.5), 5_000, "capped, no overflow");
});

test("close codes: going away prompt, 1013 long, 1008 never blind, others normal", () => {
  const b = DEFAULT_BACKOFF;
  const half = () => 0.5;
  // 1000/1001/1012 after a stable connection: uniform over the going-away window.
  for (const code of [CloseCodes.NORMAL, CloseCodes.GOING_AWAY, CloseCodes.RESTART]) {
    // The next failure's bound is the first exponential step at or above the window (8 s).
    assert.deepEqual(decideRetry(code, 0, 0, false, 3, b, half), { retry: true, delayMs: 2_500, nextAttempt: 4, refreshToken: false });
    // A server that keeps going away right after accepting: normal exponential backoff.
    assert.deepEqual(decideRetry(code, 4, 0, false, 3, b, half), { retry: true, delayMs: 4_000, nextAttempt: 5, refreshToken: false });
  }
  assert.equal(decideRetry(CloseCodes.GOING_AWAY, 0, 0, false, 3, { ...b, goingAwayWindowMs: 100 }, half).nextAttempt, 1);
  // 1013: at least overloadMinMs, plus jitter over a span that doubles.
  const d0 = decideRetry(CloseCodes.TRY_AGAIN_LATER, 0, 0, false, 3, b, half);
  assert.deepEqual(d0, { retry: true, delayMs: 5_000 + 2_500, nextAttempt: 1, refreshToken: false });
  assert.equal(decideRetry(CloseCodes.TRY_AGAIN_LATER, 2, 0, false, 3, b, half).delayMs, 5_000 + 10_000);
  assert.equal(decideRetry(CloseCodes.TRY_AGAIN_LATER, 9, 0, false, 3, b, () => 0.999).delayMs < 5_000 + 30_000, true);
  for (let a = 0; a < 10; a++) {
    assert.ok(decideRetry(CloseCodes.TRY_AGAIN_LATER, a, 0, false, 3, b, () => 0).delayMs >= 5_000);
    assert.ok(decideRetry(CloseCodes.TRY_AGAIN_LATER, a, 0, false, 3, b, half).delayMs > decideRetry(CloseCodes.ABNORMAL, a, 0, false, 3, b, half).delayMs);
  }
  // 1008: no retry without a way to get new credentials, nor after maxAuthRetries refusals.
  assert.equal(decideRetry(CloseCodes.POLICY, 0, 0, false, 3, b, half).retry, false);
  assert.deepEqual(decideRetry(CloseCodes.POLICY, 0, 0, true, 3, b, half), { retry: true, delayMs: 250, nextAttempt: 1, refreshToken: true });
  assert.equal(decideRetry(CloseCodes.POLICY, 2, 3, true, 3, b, half).retry, false);
  // 1006, 1011, a liveness drop, anything else: full jitter on the attempt.
  for (const code of [CloseCodes.ABNORMAL, CloseCodes.INTERNAL, CloseCodes.LIVENESS, 1002, 4999]) {
    assert.deepEqual(decideRetry(code, 3, 0, false, 3, b, half), { retry: true, delayMs: 2_000, nextAttempt: 4, refreshToken: false });
  }
});
