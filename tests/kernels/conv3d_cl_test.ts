// The channels-last conv3d candidate against the float64 reference, forward and input gradient: odd sizes (V not a
// multiple of the 256-voxel tile), N=2, bias or none, 16 -> 32, 32 -> 64 and 16 -> 128 channels (the input gradient
// with them swapped); and its eligibility rule.
import assert from "node:assert/strict";
import * as K from "../../src/kernels/conv3d.ts";
import {
  channelsLastEligible,
  conv3dBackwardInputChannelsLast,
  conv3dForwardChannelsLast,
} from "../../src/kernels/conv3d_cl.ts";
import { readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu } from "../util.ts";

async function check(xs: number[], cout: number, bias: boolean) {
  const g = await testGpu();
  await scope(async () => {
    const ws = [cout, xs[1], 3, 3, 3];
    const s = K.conv3dShape(xs, ws, bias ? [cout] : null, 1, 1);
    assert.ok(channelsLastEligible(g, s));
    const xv = rand(xs.reduce((a, b) => a * b), 51), wv = rand(ws.reduce((a, b) => a * b), 52), bv = rand(cout, 53);
    const x = Tensor.from(g, xs, xv), w = Tensor.from(g, ws, wv), b = Tensor.from(g, [cout], bv);
    const y = Tensor.empty(g, [s.n, s.cout, s.od, s.oh, s.ow]);
    conv3dForwardChannelsLast(g, s, x.buffer, w.buffer, bias ? b.buffer : null, y.buffer);
    const [got] = await readAll([y]);
    assertClose(got, K.conv3dRef(xv, wv, bias ? bv : null, s), 1e-5, `channels-last [${xs}] -> ${cout}`);
  });
}

Deno.test("conv3d channels-last matches the reference: odd sizes, N=2, with and without bias", async () => {
  await check([2, 16, 5, 6, 7], 32, true);
  await check([1, 32, 7, 5, 9], 64, false);
  await check([1, 16, 3, 4, 5], 128, true);
});

async function checkDx(xs: number[], cout: number) {
  const g = await testGpu();
  await scope(async () => {
    const ws = [cout, xs[1], 3, 3, 3];
    const s = K.conv3dShape(xs, ws, null, 1, 1);
    const xv = rand(xs.reduce((a, b) => a * b), 61), wv = rand(ws.reduce((a, b) => a * b), 62);
    const dyv = rand(s.n * cout * s.od * s.oh * s.ow, 63);
    const dy = Tensor.from(g, [s.n, cout, s.od, s.oh, s.ow], dyv), w = Tensor.from(g, ws, wv);
    const dx = Tensor.empty(g, xs);
    conv3dBackwardInputChannelsLast(g, s, dy.buffer, w.buffer, dx.buffer);
    const [got] = await readAll([dx]);
    assertClose(got, K.conv3dBackwardRef(xv, wv, dyv, s).dx, 1e-5, `channels-last dx [${xs}] -> ${cout}`);
  });
}

Deno.test("conv3d channels-last input gradient matches the reference (Cin and Cout swapped in the GEMM)", async () => {
  await checkDx([2, 32, 5, 6, 7], 16);
  await checkDx([1, 64, 7, 5, 9], 32);
  await checkDx([1, 128, 3, 4, 5], 16);
  const g = await testGpu();
  const s = K.conv3dShape([1, 16, 8, 8, 8], [32, 16, 3, 3, 3], null, 1, 1); // dx: 32 in, 16 out: not eligible
  const b = g.alloc(4);
  assert.throws(() => conv3dBackwardInputChannelsLast(g, s, b, b, b), /input gradient: .*16 out a multiple of 32/);
  g.free(b);
});

Deno.test("conv3d channels-last in depth slabs (scratch bounded by a lowered binding): forward and dx", async () => {
  const g = await testGpu();
  // 64 KiB: slabs of 7 of the 9 output slices (6x7 each, 16 + 32 channels), so the slab boundary needs halo slices
  // on both sides and the last slab is shorter; the whole tensors and weights still fit one binding.
  g.setMaxBindingForTests(64 * 1024);
  try {
    await check([1, 16, 9, 6, 7], 32, true);
    await checkDx([1, 32, 9, 6, 7], 16);
    // 120 KiB: slabs of 4, 4 and 2 of 10 slices (9x10, 32 + 32 channels): the middle one has halos on both sides.
    g.setMaxBindingForTests(120 * 1024);
    await check([1, 32, 10, 9, 10], 32, false);
    await checkDx([1, 32, 10, 9, 10], 32);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("conv3d channels-last takes only 3x3x3 stride 1 with Cin % 16, Cout % 32 <= 128, and says why not", async () => {
  const g = await testGpu();
  const shape = (cin: number, cout: number, k = 3, stride = 1, pad = 1) =>
    K.conv3dShape([1, cin, 8, 8, 8], [cout, cin, k, k, k], null, stride, pad);
  assert.ok(channelsLastEligible(g, shape(32, 32)));
  for (const s of [shape(24, 32), shape(32, 48), shape(32, 256), shape(32, 32, 4, 2, 1), shape(32, 32, 1, 1, 0)]) {
    assert.equal(channelsLastEligible(g, s), false, `[${s.cin} -> ${s.cout}, k${s.k}]`);
  }
  const x = g.alloc(4), y = g.alloc(4);
  assert.throws(() => conv3dForwardChannelsLast(g, shape(24, 32), x, x, null, y), /\[1,24,8,8,8\] -> 32.*not eligible/);
  g.free(x);
  g.free(y);
});
