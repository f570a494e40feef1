import assert from "node:assert/strict";
import * as K from "../../src/kernels/softmax.ts";
import { argmax, softmax } from "../../src/nn/ops/loss.ts";
import { scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu } from "../util.ts";

const SHAPES = [[2, 4, 5, 7, 3], [1, 3, 9, 5, 7]];
const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Logits on a coarse grid (many exact ties) with a few large values (stability). */
function tiedLogits(n: number, seed: number): Float32Array {
  return rand(n, seed).map((v, i) => i % 17 === 0 ? 80 * v : Math.round(v * 2));
}

Deno.test("softmaxRef: stable for large logits and rows sum to 1", () => {
  // Voxel 0 has channels (1000, 1001, -1000), voxel 1 has (0, 0, 0).
  const y = K.softmaxRef([1000, 0, 1001, 0, -1000, 0], [1, 3, 1, 1, 2]);
  assertClose(y, [1 / (1 + Math.E), 1 / 3, Math.E / (1 + Math.E), 1 / 3, 0, 1 / 3], 1e-12);
});

Deno.test("argmaxRef takes the first of tied maxima", () => {
  // [1, 3, 1, 1, 2]: voxel 0 channels (2, 2, 1) -> 0; voxel 1 channels (0, 5, 5) -> 1.
  assert.deepEqual([...K.argmaxRef([2, 0, 2, 5, 1, 5], [1, 3, 1, 1, 2])], [0, 1]);
});

for (const shape of SHAPES) {
  Deno.test(`softmax and argmax on the GPU match the CPU references [${shape}]`, async () => {
    const g = await testGpu();
    await scope(async () => {
      const xs = tiedLogits(size(shape), 11);
      const x = Tensor.from(g, shape, xs);
      const p = await softmax(x).toArray();
      const want = K.softmaxRef(xs, shape);
      assertClose(p, want, 1e-6, "softmax");
      const [N, C] = shape, S = size(shape.slice(2));
      for (let n = 0; n < N; n++) {
        for (let s = 0; s < S; s++) {
          let z = 0;
          for (let c = 0; c < C; c++) z += p[n * C * S + c * S + s];
          assert.ok(Math.abs(z - 1) < 1e-6, `row (${n}, ${s}) sums to ${z}`);
        }
      }
      const am = await argmax(x).toU32();
      assert.deepEqual([...am], [...K.argmaxRef(xs, shape)]);
    });
  });
}

Deno.test("softmax and argmax split voxel windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  const shape = [2, 4, 5, 7, 3];
  g.setMaxBindingForTests(1536);
  try {
    assert.ok(K.voxelChunks(g, shape).length > 10, "the split path is taken");
    await scope(async () => {
      const xs = tiedLogits(size(shape), 12);
      const x = Tensor.from(g, shape, xs);
      assertClose(await softmax(x).toArray(), K.softmaxRef(xs, shape), 1e-6, "softmax");
      assert.deepEqual([...await argmax(x).toU32()], [...K.argmaxRef(xs, shape)]);
    });
    assert.throws(() => K.voxelChunks(g, [1, 5, 5, 7, 3]), /do not fit one storage binding/);
  } finally {
    g.setMaxBindingForTests(null);
  }
});
