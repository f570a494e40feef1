import * as assert from "node:assert/strict";
import * as K from "../../src/kernels/concat.ts";
import { concat, sliceChannels } from "../../src/nn/ops/concat.ts";
import { backward, readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const shapes = [[2, 3, 3, 5, 7], [2, 1, 3, 5, 7], [2, 5, 3, 5, 7]];

Deno.test("concatBackwardRef matches finite differences", () => {
  const xs = shapes.map((s, i) => rand(size(s), i + 1));
  const dy = rand(2 * 9 * 105, 9);
  const got = K.concatBackwardRef(dy, shapes);
  xs.forEach((x, i) => {
    const f = (v: ArrayLike<number>) => K.concatRef(xs.map((o, j) => (j === i ? v : o)), shapes);
    assertClose(got[i], finiteDiff(f, x, dy), 1e-6, `input ${i}`);
  });
});

Deno.test("sliceChannelsBackwardRef matches finite differences", () => {
  const shape = [2, 5, 2, 3, 1], x = rand(size(shape), 3), dy = rand(2 * 2 * 6, 4);
  const fd = finiteDiff((v) => K.sliceChannelsRef(v, shape, 1, 2), x, dy);
  assertClose(K.sliceChannelsBackwardRef(dy, shape, 1), fd, 1e-6);
});

Deno.test("concat and its backward on the GPU match the CPU reference (N=2, C = 3 + 1 + 5, 3x5x7)", async () => {
  const g = await testGpu();
  await scope(async () => {
    const data = shapes.map((s, i) => rand(size(s), i + 10));
    const xs = shapes.map((s, i) => Tensor.from(g, s, data[i]));
    xs[0].requiresGrad = xs[2].requiresGrad = true; // xs[1] needs no gradient
    const y = concat(xs);
    assert.deepEqual(y.shape, [2, 9, 3, 5, 7]);
    const dys = rand(y.size, 20);
    backward(y, Tensor.from(g, y.shape, dys));
    const want = K.concatBackwardRef(dys, shapes);
    const [yv, d0, d2] = await readAll([y, xs[0].grad!, xs[2].grad!]);
    assertClose(yv, K.concatRef(data, shapes), 0, "forward");
    assertClose(d0, want[0], 0, "grad 0");
    assertClose(d2, want[2], 0, "grad 2");
    assert.equal(xs[1].grad, null);
    xs[0].grad!.dispose();
    xs[2].grad!.dispose();
  });
});

Deno.test("sliceChannels and its backward on the GPU match the CPU reference (N=2, C=5, 3x5x7)", async () => {
  const g = await testGpu();
  await scope(async () => {
    const shape = [2, 5, 3, 5, 7], xs = rand(size(shape), 30), dys = rand(2 * 3 * 105, 31);
    const x = Tensor.from(g, shape, xs);
    x.requiresGrad = true;
    const y = sliceChannels(x, 2, 3);
    backward(y, Tensor.from(g, y.shape, dys));
    assertClose(await y.toArray(), K.sliceChannelsRef(xs, shape, 2, 3), 0, "forward");
    assertClose(await x.grad!.toArray(), K.sliceChannelsBackwardRef(dys, shape, 2), 0, "backward");
    x.grad!.dispose();
  });
});

Deno.test("concat and sliceChannels reject mismatched shapes, naming them", async () => {
  const g = await testGpu();
  scope(() => {
    const a = Tensor.empty(g, [1, 2, 3, 3, 3]), b = Tensor.empty(g, [1, 2, 3, 4, 3]);
    assert.throws(() => concat([a, b]), /\[1,2,3,3,3\], \[1,2,3,4,3\]/);
    assert.throws(() => sliceChannels(a, 1, 2), /channels 1\.\.3 are outside x \[1,2,3,3,3\]/);
  });
});

Deno.test("concat works on tensors larger than the (lowered) storage binding limit: copies bind nothing", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(256);
  try {
    await scope(async () => {
      const data = shapes.map((s, i) => rand(size(s), i + 40));
      const y = concat(shapes.map((s, i) => Tensor.from(g, s, data[i])));
      assertClose(
        await sliceChannels(y, 1, 6).toArray(),
        K.sliceChannelsRef(K.concatRef(data, shapes), y.shape, 1, 6),
        0,
      );
    });
  } finally {
    g.setMaxBindingForTests(null);
  }
});
