import * as assert from "node:assert/strict";
import * as K from "../../src/kernels/resize.ts";
import { resizeNearest } from "../../src/nn/ops/resize.ts";
import { backward, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

Deno.test("nearestIndex follows PyTorch's float32 formula min(floor(f32(o * f32(in / out))), in - 1)", () => {
  assert.deepEqual([...K.nearestIndex(3, 7)], [0, 0, 0, 1, 1, 2, 2]);
  assert.deepEqual([...K.nearestIndex(7, 3)], [0, 2, 4]);
  assert.deepEqual([...K.nearestIndex(2, 4)], [0, 0, 1, 1]);
  assert.deepEqual([...K.nearestIndex(5, 5)], [0, 1, 2, 3, 4]);
  // f32(2 / 82) is below 1/41, so output 41 of 2 -> 82 reads input 0 where exact arithmetic gives 1.
  assert.equal(K.nearestIndex(2, 82)[41], 0);
});

for (const [shape, out] of [[[1, 2, 3, 2, 3], [7, 3, 2]], [[1, 1, 7, 3, 2], [3, 7, 4]]] as [number[], number[]][]) {
  Deno.test(`resizeNearestBackwardRef matches finite differences ([${shape}] -> [${out}])`, () => {
    const x = rand(size(shape), 1), dy = rand(shape[0] * shape[1] * size(out), 2);
    const fd = finiteDiff((v) => K.resizeNearestRef(v, shape, out), x, dy);
    assertClose(K.resizeNearestBackwardRef(dy, shape, out), fd, 1e-6);
  });
}

async function checkGpu(shape: number[], out: [number, number, number], seed: number) {
  const g = await testGpu();
  await scope(async () => {
    const xs = rand(size(shape), seed), dys = rand(shape[0] * shape[1] * size(out), seed + 1);
    const x = Tensor.from(g, shape, xs);
    x.requiresGrad = true;
    const y = resizeNearest(x, out);
    backward(y, Tensor.from(g, y.shape, dys));
    assert.deepEqual(y.shape, [shape[0], shape[1], ...out]);
    assertClose(await y.toArray(), K.resizeNearestRef(xs, shape, out), 0, "forward");
    assertClose(await x.grad!.toArray(), K.resizeNearestBackwardRef(dys, shape, out), 1e-6, "backward");
    x.grad!.dispose();
  });
}

const cases: [number[], [number, number, number]][] = [
  [[2, 3, 3, 7, 2], [7, 3, 4]], // up, down and x2 on different axes, N=2, C=3
  [[1, 5, 2, 3, 2], [4, 6, 4]], // x2 everywhere, C=5
  [[1, 3, 5, 7, 9], [3, 11, 9]], // down, up, same
];
for (const [shape, out] of cases) {
  Deno.test(`nearest resizing on the GPU matches the CPU reference ([${shape}] -> [${out}])`, async () => {
    await checkGpu(shape, out, 10);
  });
}

Deno.test("nearest resizing splits over binding windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1536); // one 5x7x9 input plane (1260 bytes) or 3x11x9 output plane per window
  try {
    await checkGpu([2, 3, 5, 7, 9], [3, 11, 9], 20);
    await checkGpu([2, 3, 3, 11, 9], [5, 7, 9], 30);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("resizeNearest rejects bad sizes, naming the shapes", () => {
  assert.throws(() => K.checkResize([1, 1, 2, 2, 2], [0, 2, 2]), /x \[1,1,2,2,2\].*size \[0,2,2\]/);
});
