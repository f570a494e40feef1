import * as assert from "node:assert/strict";
import * as K from "../../src/kernels/pool.ts";
import { maxPool2 } from "../../src/nn/ops/pool.ts";
import { backward, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

Deno.test("maxPool2BackwardRef matches finite differences (odd sizes)", () => {
  const shape = [1, 2, 3, 5, 4], n = size(shape);
  const x = rand(n, 1), dy = rand(size(K.pooledShape(shape)), 2);
  const fd = finiteDiff((v) => K.maxPool2Ref(v, shape).y, x, dy);
  assertClose(K.maxPool2BackwardRef(dy, K.maxPool2Ref(x, shape).idx, shape), fd, 1e-6);
});

Deno.test("maxPool2Ref resolves ties to the first max in d, h, w order", () => {
  // One 2x2x2 window per case: all equal -> 0; max at flat window positions 3 and 5 -> 3; -Infinity everywhere -> 0.
  const shape = [1, 3, 2, 2, 2];
  const x = [...Array(8).fill(1), 0, 0, 0, 2, 0, 2, 0, 0, ...Array(8).fill(-Infinity)];
  assert.deepEqual([...K.maxPool2Ref(x, shape).idx], [0, 3, 0]);
});

async function checkGpu(shape: number[], xs: Float32Array) {
  const g = await testGpu();
  await scope(async () => {
    const out = K.pooledShape(shape), dys = rand(size(out), 9);
    const x = Tensor.from(g, shape, xs);
    x.requiresGrad = true;
    const y = maxPool2(x);
    backward(y, Tensor.from(g, out, dys));
    const want = K.maxPool2Ref(xs, shape);
    assert.deepEqual(y.shape, out);
    assertClose(await y.toArray(), want.y, 0, "forward");
    assertClose(await x.grad!.toArray(), K.maxPool2BackwardRef(dys, want.idx, shape), 0, "backward");
    x.grad!.dispose();
  });
}

Deno.test("max pooling on the GPU matches the CPU reference (N=2, C=3, 5x7x9)", async () => {
  await checkGpu([2, 3, 5, 7, 9], rand(2 * 3 * 5 * 7 * 9, 3));
});

Deno.test("max pooling on the GPU resolves ties like PyTorch (values from {0, 1, 2}, C=5, 6x5x7)", async () => {
  const shape = [1, 5, 6, 5, 7];
  await checkGpu(shape, rand(size(shape), 4).map((v) => Math.floor((v + 1) * 1.5)));
});

Deno.test("max pooling splits over binding windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1536); // one 5x7x9 input plane (1260 bytes) per window
  try {
    await checkGpu([2, 3, 5, 7, 9], rand(2 * 3 * 5 * 7 * 9, 5));
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("maxPool2 rejects spatial sizes below 2", () => {
  assert.throws(() => K.pooledShape([1, 1, 1, 4, 4]), /x \[1,1,1,4,4\]/);
});
