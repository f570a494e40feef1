// The channels-last conv3d against the float64 reference, forward and input gradient: odd sizes (V not a multiple of
// the 256-voxel tile), N=2, bias or none, 16 -> 32, 32 -> 64, 16 -> 96, 16 -> 128, 16 -> 160 (two output blocks of 128 and 32)
// and 16 -> 256 channels (two blocks of 128 in one dispatch; the input gradient with them swapped), the 4x4x4 stride-2
// forward read from x as its space-to-depth and its input gradient stored into dx; each with the taps split (these
// volumes make few workgroups) and without; channel counts padded to multiples of 16 in and 32 out; every output
// element written; and its eligibility rule.
import assert from "node:assert/strict";
import * as K from "../../src/kernels/conv3d.ts";
import {
  channelsLastPlan,
  channelsLastTakes,
  CL_SPLIT,
  conv3dBackwardInputChannelsLast,
  conv3dForwardChannelsLast,
} from "../../src/kernels/conv3d_cl.ts";
import { planGpu } from "../../src/kernels/null_device.ts";
import { readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu, withSplit } from "../util.ts";

/** A tensor of NaN: the result's every element must be written (a GEMM's output is assigned, not accumulated). */
function nans(g: Awaited<ReturnType<typeof testGpu>>, shape: number[]) {
  return Tensor.from(g, shape, new Float32Array(shape.reduce((a, b) => a * b)).fill(NaN));
}

async function check(xs: number[], cout: number, bias: boolean, stride: 1 | 2 = 1, settings?: typeof CL_SPLIT[]) {
  const g = await testGpu();
  await withSplit(() =>
    scope(async () => {
      const k = stride === 2 ? 4 : 3, ws = [cout, xs[1], k, k, k];
      const s = K.conv3dShape(xs, ws, bias ? [cout] : null, stride, 1);
      assert.ok(channelsLastTakes(g, s, "forward"));
      const xv = rand(xs.reduce((a, b) => a * b), 51), wv = rand(ws.reduce((a, b) => a * b), 52), bv = rand(cout, 53);
      const x = Tensor.from(g, xs, xv), w = Tensor.from(g, ws, wv), b = Tensor.from(g, [cout], bv);
      const y = nans(g, [s.n, s.cout, s.od, s.oh, s.ow]);
      conv3dForwardChannelsLast(g, s, x.buffer, w.buffer, bias ? b.buffer : null, y.buffer);
      const [got] = await readAll([y]);
      const p = channelsLastPlan(g, s, "forward")!, plan = `${p.bpd} blocks per dispatch, taps in ${p.splits} splits`;
      assertClose(got, K.conv3dRef(xv, wv, bias ? bv : null, s), 1e-5, `[${xs}] -> ${cout} /${stride}, ${plan}`);
    }), settings);
}

Deno.test("conv3d channels-last matches the reference: odd sizes, N=2, with and without bias", async () => {
  await check([2, 16, 5, 6, 7], 32, true);
  await check([1, 32, 7, 5, 9], 64, false);
  await check([1, 16, 3, 4, 5], 128, true);
  await check([1, 16, 5, 6, 7], 96, true); // one block of 96: its result leaves in chunks of 32 voxels
  await check([1, 16, 3, 4, 5], 160, true); // output blocks of 128 and 32 channels
  await check([2, 16, 3, 4, 5], 256, true); // two blocks of 128 in one dispatch
});

Deno.test("conv3d channels-last: few voxels take several blocks per dispatch and split the taps, within budget", async () => {
  const g = await testGpu();
  const plan = (xs: number[], cout: number, stride: 1 | 2, pass: "forward" | "input_grad" = "forward") => {
    const k = stride === 2 ? 4 : 3;
    const p = channelsLastPlan(g, K.conv3dShape(xs, [cout, xs[1], k, k, k], null, stride, 1), pass)!;
    return [p.bpd, p.splits];
  };
  // As shipped: 512 workgroups wanted per dispatch, splits of at least 256 channels x taps.
  assert.deepEqual(plan([1, 256, 3, 4, 5], 256, 1), [2, 27]); // 1 voxel group: both blocks, one tap per split
  assert.deepEqual(plan([1, 16, 3, 4, 5], 256, 1), [2, 1]); // 16 channels: 16 taps per split at least, so no split
  assert.deepEqual(plan([1, 32, 3, 4, 5], 32, 1), [1, 3]); // 32 channels: 8 taps at least, so 3 splits of 9
  assert.deepEqual(plan([1, 32, 5, 4, 6], 32, 2), [1, 8]); // stride 2, 8 x 32 channels: 8 splits of one tap
  assert.deepEqual(plan([1, 256, 32, 32, 32], 32, 1), [1, 4]); // 128 groups: 4 splits of 6, 7, 7 and 7 taps
  assert.deepEqual(plan([1, 32, 64, 64, 64], 32, 1), [1, 1]); // 1024 groups: no split
  await check([1, 32, 5, 4, 6], 32, true, 2, [{ ...CL_SPLIT }]);
  await check([1, 256, 3, 4, 5], 256, true, 1, [{ ...CL_SPLIT }]);
  // 16 voxel groups, splits of at least 8 taps x 64 channels: 3 splits of 9 taps.
  const long = { workgroups: 512, minK: 512 };
  await withSplit(() => assert.deepEqual(plan([1, 64, 16, 16, 16], 32, 1), [1, 3]), [long]);
  await check([1, 64, 16, 16, 16], 32, false, 1, [long]);
  // 2 wanted: 384 channels in blocks of 2 and then 1, no split (1 voxel group x 2 blocks).
  const two = { workgroups: 2, minK: 16 };
  await withSplit(() => {
    assert.deepEqual(plan([1, 16, 3, 4, 5], 384, 1), [2, 1]);
    // 3 weight reorders and 2 GEMMs: the GEMMs read x and write y where they are, with no transposes around them.
    const s = K.conv3dShape([1, 16, 3, 4, 5], [384, 16, 3, 3, 3], null, 1, 1);
    const [xw, y] = [g.alloc(384 * 16 * 27 * 4), g.alloc(384 * 60 * 4)], d0 = g.dispatches;
    conv3dForwardChannelsLast(g, s, xw, xw, null, y); // one buffer as x and w: only the dispatches count here
    assert.equal(g.dispatches - d0, 5);
    g.free(xw);
    g.free(y);
  }, [two]);
  await check([1, 16, 3, 4, 5], 384, true, 1, [two]);
  await checkDx([1, 48, 3, 4, 5], 16, 2, [two]); // 384 GEMM outputs (8 x 48) of the stride-2 input gradient
  // The splits' partials must fit one binding. With 56 KiB of it (the 54 KiB weight still fits one), 3x4x5 voxels,
  // 16 -> 32 channels, splits down to one tap: 7.5 KiB per split leave room for 7 splits (of 3 or 4 taps).
  g.setMaxBindingForTests(56 * 1024);
  try {
    await withSplit(() => assert.deepEqual(plan([1, 16, 3, 4, 5], 32, 1), [1, 7]), [{
      workgroups: 512,
      minK: 16,
    }]);
    await check([1, 16, 3, 4, 5], 32, true);
    // Two blocks per dispatch double each split's partials: 60 KiB of them for 16 -> 256 (two blocks of 128), so
    // 448 KiB of binding (the reordered weights take 432) leave room for 7 splits, not 14.
    g.setMaxBindingForTests(448 * 1024);
    await withSplit(() => assert.deepEqual(plan([1, 16, 3, 4, 5], 256, 1), [2, 7]), [{ workgroups: 512, minK: 16 }]);
    await check([1, 16, 3, 4, 5], 256, true, 1, [{ workgroups: 512, minK: 16 }]);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("conv3d channels-last 4x4x4 stride-2 forward: a 2x2x2 GEMM over x's space-to-depth", async () => {
  await check([1, 2, 7, 6, 9], 32, true, 2); // K = 16: odd sizes, the last output row and column read padding
  await check([2, 4, 8, 5, 7], 64, false, 2);
  await check([1, 2, 5, 4, 6], 160, true, 2); // two output blocks
});

Deno.test("conv3d channels-last 4x4x4 stride-2 input gradient: the transposed 2x2x2 GEMM, stored into dx", async () => {
  await checkDx([1, 4, 7, 6, 9], 16, 2); // odd sizes: dx's last slice, row and column come from parity 0 only
  await checkDx([2, 4, 8, 5, 7], 32, 2);
  await checkDx([1, 20, 5, 4, 6], 16, 2); // 160 GEMM outputs (8 x 20): blocks of 16 and 4 channels of x
  await checkDx([1, 32, 6, 5, 7], 16, 2); // 256 GEMM outputs: two blocks of 16 channels of x in one dispatch
});

async function checkDx(xs: number[], cout: number, stride: 1 | 2 = 1, settings?: typeof CL_SPLIT[]) {
  const g = await testGpu();
  await withSplit(() =>
    scope(async () => {
      const k = stride === 2 ? 4 : 3, ws = [cout, xs[1], k, k, k];
      const s = K.conv3dShape(xs, ws, null, stride, 1);
      assert.ok(channelsLastTakes(g, s, "input_grad"));
      const xv = rand(xs.reduce((a, b) => a * b), 61), wv = rand(ws.reduce((a, b) => a * b), 62);
      const dyv = rand(s.n * cout * s.od * s.oh * s.ow, 63);
      const dy = Tensor.from(g, [s.n, cout, s.od, s.oh, s.ow], dyv), w = Tensor.from(g, ws, wv);
      const dx = nans(g, xs);
      conv3dBackwardInputChannelsLast(g, s, dy.buffer, w.buffer, dx.buffer);
      const [got] = await readAll([dx]);
      const p = channelsLastPlan(g, s, "input_grad")!;
      const plan = `${p.bpd} blocks per dispatch, taps in ${p.splits} splits`;
      assertClose(got, K.conv3dBackwardRef(xv, wv, dyv, s).dx, 1e-5, `dx [${xs}] -> ${cout} /${stride}, ${plan}`);
    }), settings);
}

Deno.test("conv3d channels-last input gradient matches the reference (Cin and Cout swapped in the GEMM)", async () => {
  await checkDx([2, 32, 5, 6, 7], 16);
  await checkDx([1, 64, 7, 5, 9], 32);
  await checkDx([1, 128, 3, 4, 5], 16);
  await checkDx([1, 160, 3, 4, 5], 16); // 160 GEMM outputs: two blocks
  await checkDx([2, 256, 3, 4, 5], 16); // 256 GEMM outputs: two blocks in one dispatch
  const g = await testGpu();
  const s = K.conv3dShape([1, 3, 8, 8, 8], [32, 3, 3, 3, 3], null, 1, 1); // dx: 3 of 32 output columns: declined
  const b = g.alloc(4);
  assert.throws(
    () => conv3dBackwardInputChannelsLast(g, s, b, b, b),
    /input gradient: \[1,3,8,8,8\] -> 32.*not eligible/,
  );
  g.free(b);
});

Deno.test("conv3d channels-last pads channel counts: zero input channels to 16, output columns to 32", async () => {
  await check([2, 5, 5, 6, 7], 32, true); // K = 5 of 16: the padding channels add nothing in either sample
  await check([2, 24, 4, 5, 6], 48, false); // K = 24 of 32, N = 48 of 64
  await check([1, 20, 3, 4, 5], 136, true); // N = 136: blocks of 128 and 8 of 32
  await checkDx([1, 16, 5, 6, 7], 32); // N = 16 of 32
  await checkDx([2, 20, 4, 5, 6], 24); // K = 24 of 32, N = 20 of 32
  await check([2, 7, 8, 6, 10], 32, true, 2); // stride 2 (disc_1's 7 channels): K = 8 x 7 = 56 of 64
  await checkDx([1, 7, 8, 6, 10], 16, 2); // its input gradient: N = 56 of 64
  await checkDx([2, 5, 7, 6, 9], 16, 2); // N = 40 of 64
  await check([1, 16, 3, 4, 5], 240, true); // N = 240 of 256: the padded block is the second of its dispatch
  await checkDx([1, 30, 6, 4, 6], 16, 2); // N = 8 x 30 = 240 of 256, likewise
});

Deno.test("conv3d channels-last over several voxel tiles, each crossing rows and planes: forward and dx", async () => {
  await check([1, 16, 9, 6, 7], 32, true); // 378 voxels: a full tile and a partial one
  await checkDx([1, 32, 9, 6, 7], 16);
  await check([1, 32, 10, 9, 10], 32, false); // 900 voxels: 4 tiles
  await checkDx([1, 32, 10, 9, 10], 32);
  await check([1, 2, 20, 18, 14], 32, true, 2); // stride 2: 10x9x7 outputs, 3 tiles
  await checkDx([1, 4, 20, 18, 14], 16, 2); // its input gradient: 11x10x8 space-to-depth voxels, 4 tiles
  await check([1, 16, 12, 6, 8], 32, true, 2, [{ workgroups: 512, minK: 16 }]); // taps in splits
  // More tiles than one grid dimension holds (11 here): a 2D grid, its spare workgroups past the last tile idle; past
  // 11 x 11 tiles the shape is declined. Blocks x splits (grid z) stay within 11 too. No splits in the runs, and few
  // channels: summing partials, or reordering many weights, would need grids of more than 11 x 11 workgroups.
  const g = await testGpu(), one = [{ workgroups: 1, minK: 16 }];
  g.setMaxWorkgroupsPerDimForTests(11);
  try {
    await check([2, 16, 16, 16, 17], 32, true, 1, one); // 17 tiles: 11 x 2
    await checkDx([2, 32, 16, 16, 17], 16, 1, one);
    await check([1, 4, 32, 32, 34], 32, true, 2, one); // 16x16x17 outputs: 17 tiles
    await checkDx([1, 4, 30, 32, 34], 32, 2, one); // 16x17x18 space-to-depth voxels: 20 tiles
    const big = K.conv3dShape([1, 32, 32, 32, 31], [32, 32, 3, 3, 3], null, 1, 1); // 124 tiles
    assert.equal(channelsLastTakes(g, big, "forward"), false);
    await withSplit(() => {
      const p = channelsLastPlan(g, K.conv3dShape([1, 256, 3, 4, 5], [256, 256, 3, 3, 3], null, 1, 1), "forward")!;
      assert.deepEqual([p.bpd, p.splits], [2, 5]); // 27 splits wanted; 2 x 5 of 11 along z
    }, [{ workgroups: 512, minK: 16 }]);
  } finally {
    g.setMaxWorkgroupsPerDimForTests(null);
  }
});

Deno.test("conv3d channels-last: an infinite input gives infinite outputs beside padding channels, not NaN", async () => {
  // Padding channels (K past the real channels) read nothing: a read of the last real channel's infinity times their
  // zero weights would be NaN.
  const g = await testGpu();
  for (const [xs, stride] of [[[1, 5, 4, 5, 6], 1], [[1, 7, 8, 6, 10], 2]] as [number[], 1 | 2][]) {
    await scope(async () => {
      const k = stride === 2 ? 4 : 3, ws = [32, xs[1], k, k, k], s = K.conv3dShape(xs, ws, null, stride, 1);
      const xv = rand(xs.reduce((a, b) => a * b), 81), wv = rand(ws.reduce((a, b) => a * b), 82);
      const plane = xs[2] * xs[3] * xs[4];
      xv[(xs[1] - 1) * plane + plane - 20] = Infinity; // the last channel, inside the volume
      const x = Tensor.from(g, xs, xv), w = Tensor.from(g, ws, wv), y = nans(g, [1, 32, s.od, s.oh, s.ow]);
      conv3dForwardChannelsLast(g, s, x.buffer, w.buffer, null, y.buffer);
      const [got] = await readAll([y]), want = K.conv3dRef(xv, wv, null, s);
      const inf = [...want.keys()].filter((i) => !Number.isFinite(want[i]));
      assert.ok(inf.length > 0 && inf.every((i) => got[i] === want[i]), `[${xs}] /${stride}: ${inf.length} infinite`);
      const fin = [...want.keys()].filter((i) => Number.isFinite(want[i]));
      assertClose(fin.map((i) => got[i]), fin.map((i) => want[i]), 1e-5, `[${xs}] /${stride}, finite outputs`);
    });
  }
});

Deno.test("conv3d channels-last: which passes it takes (3x3x3, 4x4x4 stride 2; a quarter real channels), and why not", async () => {
  const g = await testGpu();
  const shape = (cin: number, cout: number, k = 3, stride = 1, pad = 1) =>
    K.conv3dShape([1, cin, 8, 8, 8], [cout, cin, k, k, k], null, stride, pad);
  const takes = [shape(32, 32), shape(32, 256), shape(32, 32, 4, 2, 1), shape(2, 32, 4, 2, 1), shape(24, 32)];
  takes.push(shape(4, 32), shape(32, 48), shape(3, 32, 4, 2, 1)); // K = 4 of 16: a quarter; 48 of 64; 24 of 32
  for (const s of takes) assert.ok(channelsLastTakes(g, s, "forward"), `[${s.cin} -> ${s.cout}, k${s.k}]`);
  assert.ok(channelsLastTakes(g, shape(32, 32), "input_grad"));
  assert.ok(channelsLastTakes(g, shape(4, 16, 4, 2, 1), "input_grad")); // K = 16, N = 8 x 4
  assert.ok(channelsLastTakes(g, shape(2, 16, 4, 2, 1), "input_grad")); // N = 8 x 2 = 16 of 32
  assert.ok(channelsLastTakes(g, shape(1, 16, 4, 2, 1), "input_grad")); // N = 8 of 32: a quarter
  assert.equal(channelsLastTakes(g, shape(32, 3), "input_grad"), false); // K = 3 of 16
  assert.equal(channelsLastTakes(g, shape(7, 16), "forward"), false); // 7 of 16 in x 16 of 32 out: 22%
  // Too much padding (3 of 16 channels in, 1 of 32 out), or a kernel it does not take (1x1x1, 4x4x4 stride 1).
  for (const s of [shape(3, 32), shape(32, 1), shape(32, 32, 1, 1, 0), shape(32, 32, 4, 1, 1)]) {
    assert.equal(channelsLastTakes(g, s, "forward"), false, `[${s.cin} -> ${s.cout}, k${s.k}]`);
  }
  // Every tensor is bound whole: 16 -> 32 at 8^3 has a 64 KiB result (its source, weights and reordered weights
  // 32 to 55 KiB), taken with 64 KiB of binding and declined with 60.
  for (const [kib, takes] of [[64, true], [60, false]] as const) {
    g.setMaxBindingForTests(kib * 1024);
    try {
      assert.equal(channelsLastTakes(g, shape(16, 32), "forward"), takes, `${kib} KiB`);
    } finally {
      g.setMaxBindingForTests(null);
    }
  }
  // At 160x192x160, k=32 on an H100's limits the volume goes whole through each dispatch: level 0's 32 -> 32 in
  // 19200 tiles, one block, no split; the discriminator's forwards at levels 1-3 (300, 38 and 5 tiles) take 2, 4 and
  // 8 blocks per dispatch and split the taps in 1, 4 and 8.
  const h100 = planGpu();
  const full = (c: number, dims: number[], k: number, stride: number) => {
    const p = channelsLastPlan(h100, K.conv3dShape([1, c, ...dims], [c, c, k, k, k], null, stride, 1), "forward");
    return [p?.bpd, p?.splits];
  };
  assert.deepEqual(full(32, [160, 192, 160], 3, 1), [1, 1]);
  assert.deepEqual(full(256, [80, 96, 80], 4, 2), [2, 1]);
  assert.deepEqual(full(512, [40, 48, 40], 4, 2), [4, 4]);
  assert.deepEqual(full(1024, [20, 24, 20], 4, 2), [8, 8]);
  const x = g.alloc(4), y = g.alloc(4);
  assert.throws(() => conv3dForwardChannelsLast(g, shape(3, 32), x, x, null, y), /\[1,3,8,8,8\] -> 32.*not eligible/);
  g.free(x);
  g.free(y);
});
