import assert from "node:assert/strict";
import * as K from "../../src/kernels/loss.ts";
import { sumRef } from "../../src/kernels/reduce.ts";
import { voxelChunks } from "../../src/kernels/softmax.ts";
import { add, affine } from "../../src/nn/ops/elementwise.ts";
import { crossEntropy, mse, sumAll } from "../../src/nn/ops/loss.ts";
import { backward, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Labels in 0..C-1 that never use class `absent`. */
function labelsFor(shape: number[], absent: number, seed: number): Uint32Array {
  const C = shape[1];
  return Uint32Array.from(rand(size(shape) / C, seed), (v) => {
    const k = Math.min(C - 2, Math.floor((v + 1) / 2 * (C - 1)));
    return k >= absent ? k + 1 : k;
  });
}

Deno.test("crossEntropyRef: uniform logits give log C; weights follow PyTorch's weighted mean", () => {
  const shape = [1, 4, 1, 1, 3];
  assertClose([K.crossEntropyRef(new Float64Array(12), [0, 1, 3], [1, 2, 3, 4], shape)], [Math.log(4)], 1e-15);
  // Voxel nll values differ; the weighted mean is sum(w*nll)/sum(w).
  const x = [0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0];
  const nll = (xs: number[], y: number) => Math.log(xs.reduce((s, v) => s + Math.exp(v), 0)) - xs[y];
  const want = (1 * nll([0, 0, 0, 0], 0) + 2 * nll([1, 0, 0, 0], 1) + 4 * nll([0, 2, 0, 0], 3)) / 7;
  assertClose([K.crossEntropyRef(x, [0, 1, 3], [1, 2, 3, 4], shape)], [want], 1e-15);
  assert.throws(() => K.crossEntropyRef(x, [0, 4, 1], [1, 2, 3, 4], shape), /label 4 at voxel 1 is outside 0..3/);
});

Deno.test("crossEntropyBackwardRef matches finite differences (weights, a class absent from the labels)", () => {
  const shape = [2, 4, 2, 3, 1], weights = [0.3, 1.7, 2.5, 0.9];
  const x = rand(size(shape), 21).map((v) => 3 * v), labels = labelsFor(shape, 2, 22);
  const fd = finiteDiff((v) => [K.crossEntropyRef(v, labels, weights, shape)], x, [0.7]);
  assertClose(K.crossEntropyBackwardRef(x, labels, weights, shape, 0.7), fd, 1e-7);
});

Deno.test("mseBackwardRef matches finite differences for x and for the target", () => {
  const x = rand(29, 31), t = rand(29, 32);
  assertClose(K.mseBackwardRef(x, t, 1.3), finiteDiff((v) => [K.mseRef(v, t)], x, [1.3]), 1e-8, "dx");
  assertClose(K.mseBackwardRef(x, t, 1.3).map((v) => -v), finiteDiff((v) => [K.mseRef(x, v)], t, [1.3]), 1e-8, "dt");
  assertClose(K.mseBackwardRef(x, 0.25), finiteDiff((v) => [K.mseRef(v, 0.25)], x, [1]), 1e-8, "scalar target");
});

async function checkCrossEntropy(shape: number[], seed: number) {
  const g = await testGpu();
  const weights = [0.3, 1.7, 2.5, 0.9, 1.1].slice(0, shape[1]);
  await scope(async () => {
    const xs = rand(size(shape), seed).map((v) => 4 * v), ys = labelsFor(shape, 1, seed + 1);
    const x = Tensor.from(g, shape, xs);
    x.requiresGrad = true;
    const [N, , D, H, W] = shape;
    const loss = crossEntropy(x, Tensor.from(g, [N, D, H, W], ys), weights);
    assert.deepEqual(loss.shape, [1]);
    backward(affine(loss, 0.5));
    assertClose(await loss.toArray(), [K.crossEntropyRef(xs, ys, weights, shape)], 2e-6, "loss");
    assertClose(await x.grad!.toArray(), K.crossEntropyBackwardRef(xs, ys, weights, shape, 0.5), 2e-6, "grad");
    x.grad!.dispose();
  });
}

for (const shape of [[2, 4, 5, 7, 3], [1, 3, 9, 5, 7], [1, 5, 16, 16, 17]]) {
  Deno.test(`cross-entropy forward and backward on the GPU match the CPU reference [${shape}]`, async () => {
    await checkCrossEntropy(shape, shape[4]);
  });
}

Deno.test("cross-entropy splits voxel windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1536);
  try {
    assert.ok(voxelChunks(g, [2, 4, 5, 7, 3]).length > 10, "the split path is taken");
    await checkCrossEntropy([2, 4, 5, 7, 3], 5);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("cross-entropy on the GPU: an out-of-range label makes the loss and that voxel's gradient NaN", async () => {
  const g = await testGpu();
  await scope(async () => {
    const x = Tensor.from(g, [1, 3, 1, 1, 4], rand(12, 3));
    x.requiresGrad = true;
    const loss = crossEntropy(x, Tensor.from(g, [1, 1, 1, 4], new Uint32Array([0, 2, 3, 1])), [1, 1, 1]);
    backward(loss);
    assert.ok(Number.isNaN((await loss.toArray())[0]));
    const dx = await x.grad!.toArray();
    assert.deepEqual([0, 1, 2].map((c) => Number.isNaN(dx[c * 4 + 2])), [true, true, true]);
    assert.ok([0, 1, 3].every((s) => !Number.isNaN(dx[s])), "other voxels keep finite gradients");
    x.grad!.dispose();
    assert.throws(() => crossEntropy(x, Tensor.from(g, [1, 1, 1, 4], rand(4, 1)), [1, 1, 1]), /must be u32/);
    assert.throws(() => crossEntropy(x, Tensor.from(g, [1, 1, 1, 4], new Uint32Array(4)), [1, 1]), /2 weights/);
  });
});

async function checkMse(n: number, seed: number) {
  const g = await testGpu();
  await scope(async () => {
    const xs = rand(n, seed), ts = rand(n, seed + 1);
    const x = Tensor.from(g, [n], xs), t = Tensor.from(g, [n], ts);
    x.requiresGrad = t.requiresGrad = true;
    const l1 = mse(x, t), l2 = mse(x, 0.3);
    backward(add(l1, affine(l2, 2)));
    const [v1, v2, dx, dt] = await Promise.all([l1.toArray(), l2.toArray(), x.grad!.toArray(), t.grad!.toArray()]);
    assertClose(v1, [K.mseRef(xs, ts)], 2e-6, "mse(x, t)");
    assertClose(v2, [K.mseRef(xs, 0.3)], 2e-6, "mse(x, 0.3)");
    const a = K.mseBackwardRef(xs, ts), b = K.mseBackwardRef(xs, 0.3, 2);
    assertClose(dx, a.map((v, i) => v + b[i]), 1e-6, "dx");
    assertClose(dt, a.map((v) => -v), 1e-6, "dt");
    x.grad!.dispose();
    t.grad!.dispose();
  });
}

Deno.test("mse forward and backward on the GPU match the CPU reference (many partial sums)", async () => {
  await checkMse(100_003, 41);
});

Deno.test("mse and sumAll split flat windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1024);
  try {
    await checkMse(3001, 43);
    await scope(async () => {
      const xs = rand(3001, 44);
      assertClose(await sumAll(Tensor.from(g, [3001], xs)).toArray(), [sumRef(xs)], 1e-5);
    });
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("sumAll sums a large tensor in parallel and broadcasts its gradient", async () => {
  const g = await testGpu();
  await scope(async () => {
    const xs = rand(200_001, 51);
    const x = Tensor.from(g, [3, 66_667], xs);
    x.requiresGrad = true;
    const s = sumAll(x);
    backward(affine(s, 1.5));
    assertClose(await s.toArray(), [sumRef(xs)], 1e-5);
    assert.ok((await x.grad!.toArray()).every((v) => v === 1.5));
    x.grad!.dispose();
  });
});
