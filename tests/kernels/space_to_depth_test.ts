import assert from "node:assert/strict";
import * as K from "../../src/kernels/space_to_depth.ts";
import { readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { rand, testGpu } from "../util.ts";

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

Deno.test("spaceToDepth2Ref puts each stride-2 tap on one parity channel (hand-checked 1-D case)", () => {
  // x = [1..5] along W, pad 1: parity 0 reads x[2m - 1], parity 1 reads x[2m]; MW = 3.
  const out = K.spaceToDepth2Ref([1, 2, 3, 4, 5], [1, 1, 1, 1, 5], [1, 1, 3], 1);
  // With D = H = 1, parity 0 along D or H reads index -1 (zero): only channels 4rd + 2rh + rw = 6, 7 hold values.
  assert.deepEqual([...out.slice(6 * 3, 8 * 3)], [0, 2, 4, 1, 3, 5]);
  assert.equal(out.slice(0, 6 * 3).reduce((a, b) => a + Math.abs(b), 0), 0);
});

/** GPU against the reference for x's planes [first, first + c) of a larger tensor, depth slices [md0, md0 + m[0]). */
async function check(shape: number[], m: number[], pad: number, first = 0, md0 = 0) {
  const g = await testGpu();
  await scope(async () => {
    const all = [1, first + shape[0] * shape[1], ...shape.slice(2)];
    const xv = rand(size(all), 7);
    const x = Tensor.from(g, all, xv);
    const xs = Tensor.empty(g, [shape[0], 8 * shape[1], ...m]);
    K.spaceToDepth2(g, x.buffer, xs.buffer, shape, m, pad, "f32", first, md0);
    const [got] = await readAll([xs]);
    const planes = xv.subarray(first * size(shape.slice(2)));
    const full = K.spaceToDepth2Ref(planes, shape, [md0 + m[0], m[1], m[2]], pad);
    const slab = m[1] * m[2], want = new Float64Array(got.length); // each channel's slices md0 and up
    for (let c = 0; c < shape[0] * shape[1] * 8; c++) {
      want.set(full.subarray((c * (md0 + m[0]) + md0) * slab, (c + 1) * (md0 + m[0]) * slab), c * m[0] * slab);
    }
    assert.deepEqual(got, Float32Array.from(want), `[${shape}] -> [${m}] from slice ${md0}`);
  });
}

Deno.test("spaceToDepth2 GPU matches the reference: odd sizes, pad 1 and 0, planes from an offset", async () => {
  await check([2, 3, 7, 5, 9], [5, 4, 6], 1); // the 4x4x4 stride-2 layer's source: MD = OD + 1
  await check([1, 5, 6, 7, 4], [3, 4, 2], 0);
  await check([1, 3, 5, 4, 3], [3, 3, 2], 1, 2); // a chunk of channels starting at plane 2
  await check([2, 3, 9, 4, 5], [2, 3, 3], 1, 1, 3); // a slab of slices 3 and 4 (of MD = 5), channels from plane 1
});

Deno.test("spaceToDepth2 GPU with the binding limit lowered: windows of planes at unaligned starts", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(2048); // 1152 bytes of xs and 1260 of x per channel: windows of one channel
  try {
    await check([1, 5, 7, 5, 9], [3, 3, 4], 1, 1);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("spaceToDepth2 rejects bad shapes, naming them", () => {
  assert.throws(() => K.spaceToDepth2Ref([], [1, 1, 0, 2, 2], [1, 1, 1], 1), /x \[1,1,0,2,2\].*size \[1,1,1\].*pad 1/);
  assert.throws(() => K.spaceToDepth2Ref([], [1, 1, 2, 2], [1, 1, 1], 1), /x \[1,1,2,2\]/);
});
