// The channels-last weight-gradient GEMM against the float64 reference: odd sizes (output rows and planes not a
// multiple of the 16-voxel step, reduced by rows or by planes), N = 2, channel counts not a multiple of 4 (masked row
// and column tails), 3x3x3, 4x4x4 stride 2 and 1x1x1; one chunk (dw written directly) and split-K chunks summed; two
// row tiles and two column blocks; partials bounded by a lowered binding; and which shapes it declines (too big for a
// binding, or a mostly idle tile).
import assert from "node:assert/strict";
import * as K from "../../src/kernels/conv3d.ts";
import { conv3dBackwardWeightChannelsLast, DW_UNIT, dwGemmPlan, type DwPlan } from "../../src/kernels/conv3d_cl_dw.ts";
import { planGpu } from "../../src/kernels/null_device.ts";
import type { Gpu } from "../../src/kernels/device.ts";
import { readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu } from "../util.ts";

/**
 * Checks dw for x of shape xs, cout output channels, a k^3 kernel, reduced by the given unit (by default the plan's
 * choice); returns the plan it ran.
 */
async function check(
  xs: number[],
  cout: number,
  k: number,
  stride: 1 | 2,
  pad: number,
  unit: "rows" | "planes" | null = null,
): Promise<DwPlan> {
  const g = await testGpu();
  DW_UNIT.unit = unit;
  try {
    return await run(g, xs, cout, k, stride, pad);
  } finally {
    DW_UNIT.unit = null;
  }
}

function run(g: Gpu, xs: number[], cout: number, k: number, stride: 1 | 2, pad: number): Promise<DwPlan> {
  return scope(async () => {
    const ws = [cout, xs[1], k, k, k], s = K.conv3dShape(xs, ws, null, stride, pad);
    const plan = dwGemmPlan(g, s);
    assert.ok(plan, `[${xs}] -> ${cout}, k${k}: eligible`);
    const xv = rand(xs.reduce((a, b) => a * b), 61), wv = rand(ws.reduce((a, b) => a * b), 62);
    const dyv = rand(s.n * cout * s.od * s.oh * s.ow, 63);
    const x = Tensor.from(g, xs, xv), dy = Tensor.from(g, [s.n, cout, s.od, s.oh, s.ow], dyv);
    const dw = Tensor.from(g, ws, new Float32Array(wv.length).fill(Number.NaN)); // assigned: nothing of it is read
    conv3dBackwardWeightChannelsLast(g, s, x.buffer, dy.buffer, dw.buffer);
    const [got] = await readAll([dw]);
    assertClose(got, K.conv3dBackwardRef(xv, wv, dyv, s).dw, 1e-5, `channels-last dw [${xs}] -> ${cout}, k${k}`);
    return plan;
  });
}

Deno.test("conv3d channels-last dw matches the reference: 3x3x3, odd sizes, N = 2, channels not a multiple of 4", async () => {
  // By rows of OW voxels in steps of 16, the last one masked.
  const p = await check([2, 5, 7, 6, 14], 33, 3, 1, 1, "rows"); // 84 rows: split-K; 33 output channels: columns masked
  assert.ok(!p.planes && p.chunks > 1 && p.nb === 64 && p.blocks === 1, JSON.stringify(p));
  const partial = await check([1, 4, 7, 11, 16], 32, 3, 1, 1, "rows"); // 77 rows, at least 32 per chunk: 39 and 38
  assert.deepEqual([partial.units, partial.chunks, partial.unitsPer], [77, 2, 39]);
  await check([1, 4, 3, 5, 7], 32, 3, 1, 1, "rows"); // 15 rows of 7: one chunk, written into dw
  // By planes of OH x OW voxels.
  const one = await check([1, 4, 3, 5, 7], 32, 3, 1, 1, "planes"); // 3 planes of 35 voxels: one chunk
  assert.deepEqual([one.planes, one.units, one.chunks], [true, 3, 1]);
  const planes = await check([1, 4, 77, 3, 5], 32, 3, 1, 1, "planes"); // 77 planes of one step: chunks of 39 and 38
  assert.deepEqual([planes.units, planes.chunks, planes.unitsPer], [77, 2, 39]);
  const long = await check([2, 4, 20, 11, 13], 32, 3, 1, 1, "planes"); // planes of 143 voxels: 9 steps, 4 per chunk
  assert.deepEqual([long.units, long.chunks, long.unitsPer], [40, 10, 4]);
  await check([2, 5, 7, 6, 9], 33, 3, 1, 1, "planes"); // the last step masked, N = 2
  // R = 16 x 27 = 432 rows: two row tiles; 160 output channels: two column blocks of 96.
  for (const unit of ["rows", "planes"] as const) {
    const two = await check([2, 16, 5, 6, 20], 160, 3, 1, 1, unit);
    assert.deepEqual([two.rowTiles, two.blocks, two.nb], [2, 2, 96]);
  }
});

Deno.test("conv3d channels-last dw: 4x4x4 stride 2 (pad 1) and 1x1x1", async () => {
  for (const unit of ["rows", "planes"] as const) {
    await check([1, 3, 8, 7, 9], 16, 4, 2, 1, unit); // odd sizes: the last row and column read padding
    await check([2, 7, 9, 10, 11], 36, 4, 2, 1, unit);
    await check([1, 80, 4, 5, 6], 30, 1, 1, 0, unit); // 80 rows x 30 columns of a 256 x 32 tile: 29% busy
  }
});

Deno.test("conv3d channels-last dw: rows or planes by the useful share of steps x the workgroups a GPU can run", () => {
  const g = planGpu(); // an H100's limits
  const unit = (xs: number[], cout: number, k = 3, stride = 1) => {
    const s = K.conv3dShape(xs, [cout, xs[1], k, k, k], null, stride, 1);
    return dwGemmPlan(g, s)!.planes ? "planes" : "rows";
  };
  // 160x192x160, k=32: level 0 (OW = 160: no waste either way, so the cheaper rows); level 1 (80); level 2 (OW = 40,
  // 5/6 useful by rows, 280+ workgroups either way: planes); level 3 (OW = 20); disc_4 (1024 channels, OW = 10).
  assert.equal(unit([1, 32, 160, 192, 160], 32), "rows");
  assert.equal(unit([1, 64, 80, 96, 80], 64), "rows");
  assert.equal(unit([1, 128, 40, 48, 40], 128), "planes");
  assert.equal(unit([1, 256, 20, 24, 20], 256), "planes");
  assert.equal(unit([1, 1024, 20, 24, 20], 1024, 4, 2), "planes");
  // Small volumes (no GPU filled either way): the less wasteful; at 64^3, k=8, disc_3 (OW = 8) by planes, level 2
  // (OW = 16) by rows.
  assert.equal(unit([1, 128, 16, 16, 16], 128, 4, 2), "planes");
  assert.equal(unit([1, 32, 16, 16, 16], 32), "rows");
});

Deno.test("conv3d channels-last dw: partials bounded by the binding (fewer chunks), and what it declines", async () => {
  const g = await testGpu();
  // dw of 32 x 32 x 27 floats = 108 KiB: 256 KiB of binding (still holding x and dy whole) holds the partials of 2
  // chunks, not the 4 it would use (128 rows of one 16-voxel step, at least 32 per chunk).
  const xs = [1, 32, 8, 16, 16], s = K.conv3dShape(xs, [32, 32, 3, 3, 3], null, 1, 1);
  assert.equal(dwGemmPlan(g, s)?.chunks, 4);
  g.setMaxBindingForTests(256 * 1024);
  try {
    assert.equal(dwGemmPlan(g, s)?.chunks, 2);
    assert.equal((await check(xs, 32, 3, 1, 1)).chunks, 2);
  } finally {
    g.setMaxBindingForTests(null);
  }
  // Too little of the tile busy: a 1x1x1 convolution to 4 channels, or to 1 (the discriminator's last).
  for (const [cin, cout, k] of [[32, 4, 1], [64, 1, 4], [7, 6, 1]]) {
    assert.equal(dwGemmPlan(g, K.conv3dShape([1, cin, 4, 4, 4], [cout, cin, k, k, k], null, 1, k === 4 ? 1 : 0)), null);
  }
  assert.ok(dwGemmPlan(g, K.conv3dShape([1, 10, 4, 4, 4], [16, 10, 3, 3, 3], null, 1, 1))); // 270 rows: 53% x 50%
  g.setMaxBindingForTests(256 * 1024);
  try {
    // A weight over one binding: declined, with the reason in the error.
    const big = K.conv3dShape([1, 64, 2, 2, 2], [64, 64, 3, 3, 3], null, 1, 1); // 432 KiB of weights
    assert.equal(dwGemmPlan(g, big), null);
    const b = g.alloc(4);
    assert.throws(
      () => conv3dBackwardWeightChannelsLast(g, big, b, b, b),
      /weight gradient: \[1,64,2,2,2\] -> 64, kernel 3 stride 1 is not eligible \(x, dy and the weight/,
    );
    g.free(b);
  } finally {
    g.setMaxBindingForTests(null);
  }
});
