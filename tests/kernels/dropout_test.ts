import * as assert from "node:assert/strict";
import * as K from "../../src/kernels/dropout.ts";
import { dropout3d } from "../../src/nn/ops/dropout.ts";
import { Rng } from "../../src/nn/rng.ts";
import { backward, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

Deno.test("scalePlanesRef as a backward matches finite differences", () => {
  const mask = K.dropoutMask(6, 0.5, new Rng(1)), x = rand(6 * 7, 2), dy = rand(6 * 7, 3);
  assertClose(K.scalePlanesRef(dy, mask, 7), finiteDiff((v) => K.scalePlanesRef(v, mask, 7), x, dy), 1e-6);
});

Deno.test("dropoutMask: one draw per plane, keep when u >= p, exact f32 scale, about p of the planes dropped", () => {
  const p = 0.3, rng = new Rng(5), mask = K.dropoutMask(20000, p, rng);
  const check = new Rng(5), scale = Math.fround(1 / Math.fround(1 - p));
  mask.forEach((m, i) => assert.equal(m, check.uniform() >= p ? scale : 0, `plane ${i}`));
  assert.equal(rng.uniform(), check.uniform()); // no extra draws
  const dropped = mask.filter((m) => m === 0).length / mask.length;
  assert.ok(Math.abs(dropped - p) < 0.015, `dropped fraction ${dropped}`); // 4.6 standard deviations
  assert.throws(() => K.dropoutMask(3, 1, rng), /p = 1 must be in \[0, 1\)/);
});

async function run(shape: number[], p: number, seed: number, xs: Float32Array, dys: Float32Array) {
  const g = await testGpu();
  return await scope(async () => {
    const x = Tensor.from(g, shape, xs);
    x.requiresGrad = true;
    const y = dropout3d(x, p, new Rng(seed));
    backward(y, Tensor.from(g, shape, dys));
    const out = [await y.toArray(), await x.grad!.toArray()];
    x.grad!.dispose();
    return out;
  });
}

async function checkGpu(shape: number[], p: number, seed: number) {
  const n = shape.reduce((a, b) => a * b, 1), L = n / (shape[0] * shape[1]);
  const xs = rand(n, seed), dys = rand(n, seed + 1);
  const mask = K.dropoutMask(shape[0] * shape[1], p, new Rng(seed));
  const [y, dx] = await run(shape, p, seed, xs, dys);
  // Exact: the f32 product of an f32 value and an f32 factor is the float64 product rounded once.
  assert.deepEqual(y, Float32Array.from(K.scalePlanesRef(xs, mask, L)), "forward");
  assert.deepEqual(dx, Float32Array.from(K.scalePlanesRef(dys, mask, L)), "backward");
  return { y, mask };
}

Deno.test("dropout3d on the GPU zeroes whole planes and scales survivors exactly (N=2, C=5, 3x5x7)", async () => {
  const { y, mask } = await checkGpu([2, 5, 3, 5, 7], 0.4, 7);
  assert.ok(mask.some((m) => m === 0) && mask.some((m) => m !== 0), `mask ${mask} mixes kept and dropped planes`);
  for (let pl = 0; pl < 10; pl++) {
    assert.equal(y.subarray(pl * 105, (pl + 1) * 105).every((v) => v === 0), mask[pl] === 0, `plane ${pl}`);
  }
});

Deno.test("dropout3d is reproducible for a seed and differs across seeds", async () => {
  const shape = [1, 64, 2, 2, 2], xs = rand(512, 8), dys = rand(512, 9);
  const [a] = await run(shape, 0.5, 11, xs, dys);
  const [b] = await run(shape, 0.5, 11, xs, dys);
  const [c] = await run(shape, 0.5, 12, xs, dys);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

Deno.test("dropout3d with p = 0 returns x itself and draws nothing", async () => {
  const g = await testGpu();
  scope(() => {
    const x = Tensor.from(g, [1, 2, 1, 1, 2], [1, 2, 3, 4]), rng = new Rng(3);
    assert.equal(dropout3d(x, 0, rng), x);
    assert.equal(rng.uniform(), new Rng(3).uniform());
  });
});

Deno.test("dropout3d splits over binding windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1536); // one 5x7x9 plane (1260 bytes) per window
  try {
    await checkGpu([2, 3, 5, 7, 9], 0.5, 13);
  } finally {
    g.setMaxBindingForTests(null);
  }
});
