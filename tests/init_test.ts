import assert from "node:assert/strict";
import { defaultConvBias, fanIn, kaimingNormal, kaimingUniformDefaultConv } from "../src/nn/init.ts";
import { Rng } from "../src/nn/rng.ts";

function moments(x: Float32Array): { mean: number; std: number; min: number; max: number } {
  let s = 0, s2 = 0, min = Infinity, max = -Infinity;
  for (const v of x) {
    s += v;
    s2 += v * v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const mean = s / x.length;
  return { mean, std: Math.sqrt(s2 / x.length - mean * mean), min, max };
}

Deno.test("fanIn follows torch: shape[1] * prod(shape[2:])", () => {
  assert.equal(fanIn([32, 16, 3, 3, 3]), 16 * 27);
  assert.equal(fanIn([10, 7]), 7);
  assert.throws(() => fanIn([5]), /at least 2 dimensions, got \[5\]/);
});

// 256 * 20 * 27 = 138240 draws: 3 standard errors of the sample std are 0.57% (normal) and 0.36% (uniform).
const SHAPE = [256, 20, 3, 3, 3];

Deno.test("kaimingNormal: mean 0, std sqrt(2 / fan_in)", () => {
  const m = moments(kaimingNormal(new Rng(1), SHAPE));
  const std = Math.sqrt(2 / (20 * 27));
  assert.ok(Math.abs(m.std / std - 1) < 0.006, `std ${m.std} vs ${std}`);
  assert.ok(Math.abs(m.mean) < 3 * std / Math.sqrt(138240), `mean ${m.mean}`);
});

Deno.test("kaimingUniformDefaultConv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))", () => {
  const x = kaimingUniformDefaultConv(new Rng(2), SHAPE), b = 1 / Math.sqrt(20 * 27);
  const m = moments(x);
  assert.ok(m.min >= -b && m.max < b, `range [${m.min}, ${m.max}] vs bound ${b}`);
  assert.ok(m.min < -0.999 * b && m.max > 0.999 * b, "draws reach the bounds");
  assert.ok(Math.abs(m.std / (b / Math.sqrt(3)) - 1) < 0.006, `std ${m.std}`);
});

Deno.test("defaultConvBias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))", () => {
  const x = defaultConvBias(new Rng(3), 64, 100_000), m = moments(x);
  assert.equal(x.length, 100_000);
  assert.ok(m.min >= -0.125 && m.max < 0.125 && m.min < -0.124 && m.max > 0.124, `[${m.min}, ${m.max}]`);
  assert.ok(Math.abs(m.std / (0.125 / Math.sqrt(3)) - 1) < 0.006, `std ${m.std}`);
  assert.throws(() => defaultConvBias(new Rng(3), 0, 4), /fan_in 0/);
});

Deno.test("initialisers are reproducible for a seed and differ across seeds", () => {
  for (const f of [kaimingNormal, kaimingUniformDefaultConv]) {
    assert.deepEqual(f(new Rng(7), [4, 3, 2, 2, 2]), f(new Rng(7), [4, 3, 2, 2, 2]));
    assert.notDeepEqual(f(new Rng(7), [4, 3, 2, 2, 2]), f(new Rng(8), [4, 3, 2, 2, 2]));
  }
  assert.deepEqual(defaultConvBias(new Rng(9), 27, 5), defaultConvBias(new Rng(9), 27, 5));
});
