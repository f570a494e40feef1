import assert from "node:assert/strict";
import * as K from "../../src/kernels/conv3d.ts";
import { conv3dForwardChannelsLast } from "../../src/kernels/conv3d_cl.ts";
import { convKernels, convVariant, setConvKernels, tuneConvs, tuneReps } from "../../src/kernels/conv_select.ts";
import type { Gpu } from "../../src/kernels/device.ts";
import { planGpu } from "../../src/kernels/null_device.ts";
import { conv3d } from "../../src/nn/ops/conv.ts";
import { backward, readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu } from "../util.ts";

/**
 * conv3d forward and input gradient (and with `dw`, the weight gradient) through the op (3x3x3, pad 1, bias), checked
 * against the CPU references; returns the forward's and the backward's dispatch counts (they tell the kernels apart:
 * channels-last reorders the weights and transposes around its GEMM, and runs the weight gradient as one GEMM).
 */
async function convOp(g: Gpu, xs: number[], cout: number, stride: 1 | 2 = 1, dw = false): Promise<[number, number]> {
  return await scope(async () => {
    const k = stride === 2 ? 4 : 3, ws = [cout, xs[1], k, k, k], s = K.conv3dShape(xs, ws, [cout], stride, 1);
    const xv = rand(xs.reduce((a, b) => a * b), 41), wv = rand(ws.reduce((a, b) => a * b), 42), bv = rand(cout, 43);
    const dyv = rand(s.n * cout * s.od * s.oh * s.ow, 44);
    const x = Tensor.from(g, xs, xv), w = Tensor.from(g, ws, wv);
    x.requiresGrad = true;
    w.requiresGrad = dw; // b takes no gradient
    const d0 = g.dispatches;
    const y = conv3d(x, w, Tensor.from(g, [cout], bv), stride, 1);
    const d1 = g.dispatches;
    backward(y, Tensor.from(g, y.shape, dyv));
    const d2 = g.dispatches;
    const [yg, dx] = await readAll([y, x.grad!]);
    const ref = K.conv3dBackwardRef(xv, wv, dyv, s);
    assertClose(yg, K.conv3dRef(xv, wv, bv, s), 1e-5, "forward");
    assertClose(dx, ref.dx, 1e-5, "dx");
    if (dw) assertClose((await readAll([w.grad!]))[0], ref.dw, 1e-5, "dw");
    for (const t of [x, w]) t.grad?.dispose();
    return [d1 - d0, d2 - d1 - 1] as [number, number]; // less the upload of dy
  });
}

const shape = (xs: number[], cout: number) => K.conv3dShape(xs, [cout, xs[1], 3, 3, 3], [cout], 1, 1);

Deno.test("conv kernels: auto (gather on a CPU adapter, channels-last on a GPU), channels-last where eligible, both exact", async () => {
  const g = await testGpu();
  const s = shape([2, 32, 5, 6, 7], 32), small = shape([1, 3, 5, 6, 7], 32);
  try {
    setConvKernels(g, "auto");
    assert.equal(convKernels(g), g.isFallback ? "gather" : "auto");
    assert.equal(convVariant(g, s, "forward"), g.isFallback ? "gather" : "channels-last");
    // On a GPU (the null device stands for an H100) auto runs channels-last but where more than half of the GEMM's
    // staged reduction would be padding: the teacher's first forward (4 of 16 channels in), or an input gradient
    // from 4 output channels. Both are eligible, and channels-last mode runs them.
    const p = planGpu(), first = shape([1, 4, 5, 6, 7], 32), last = shape([1, 32, 5, 6, 7], 4);
    assert.equal(convKernels(p), "auto");
    assert.deepEqual(
      [convVariant(p, s, "forward"), convVariant(p, s, "input_grad"), convVariant(p, first, "weight_grad")],
      ["channels-last", "channels-last", "channels-last"],
    );
    assert.deepEqual([convVariant(p, first, "forward"), convVariant(p, last, "input_grad")], ["gather", "gather"]);
    setConvKernels(p, "channels-last");
    assert.deepEqual([convVariant(p, first, "forward"), convVariant(p, last, "input_grad")], [
      "channels-last",
      "channels-last",
    ]);
    setConvKernels(g, "gather");
    assert.equal(convVariant(g, s, "forward"), "gather");
    setConvKernels(g, "channels-last");
    assert.equal(convVariant(g, s, "forward"), "channels-last");
    assert.equal(convVariant(g, s, "input_grad"), "channels-last");
    assert.equal(convVariant(g, small, "forward"), "gather"); // 3 channels in (of 16, padded): not eligible
    const cl = await convOp(g, [2, 32, 5, 6, 7], 32); // odd sizes, N = 2, through channels-last
    // Forward channels-last (6 of 16 channels in), input gradient (32 -> 6: 6 of 32 columns) gather.
    const mixed = await convOp(g, [1, 6, 5, 6, 7], 32);
    const cl2 = await convOp(g, [2, 4, 7, 6, 5], 32, 2); // 4x4x4 stride 2: both passes through space-to-depth GEMMs
    assert.equal(convVariant(g, small, "weight_grad"), "channels-last"); // the dw GEMM takes 3 channels in
    const clDw = await convOp(g, [2, 3, 5, 6, 7], 32, 1, true), clDw2 = await convOp(g, [2, 4, 7, 6, 5], 32, 2, true);
    setConvKernels(g, "gather");
    const gather = await convOp(g, [2, 32, 5, 6, 7], 32), gatherMixed = await convOp(g, [1, 6, 5, 6, 7], 32);
    const gather2 = await convOp(g, [2, 4, 7, 6, 5], 32, 2);
    const gatherDw = await convOp(g, [2, 3, 5, 6, 7], 32, 1, true);
    const gatherDw2 = await convOp(g, [2, 4, 7, 6, 5], 32, 2, true);
    // dx of 3 input channels runs the gather kernel in both modes, so the backward counts differ by dw's alone.
    assert.ok(clDw[1] !== gatherDw[1], `channels-last dw ran: ${clDw} vs gather ${gatherDw}`);
    assert.ok(clDw2[1] - cl2[1] !== gatherDw2[1] - gather2[1], `dw: ${clDw2}, ${cl2} vs ${gatherDw2}, ${gather2}`);
    assert.ok(cl[0] !== gather[0] && cl[1] !== gather[1], `channels-last ran: ${cl} vs gather ${gather}`);
    assert.ok(cl2[0] !== gather2[0] && cl2[1] !== gather2[1], `channels-last ran: ${cl2} vs gather ${gather2}`);
    assert.ok(mixed[0] > gatherMixed[0] && mixed[1] === gatherMixed[1], `${mixed} vs ${gatherMixed}`);
  } finally {
    setConvKernels(g, "auto");
  }
});

Deno.test("conv kernels tuned: eligible shapes seen are timed once, the faster kept; the rest stay gather", async () => {
  const g = await testGpu();
  const s = shape([1, 6, 4, 5, 6], 32);
  try {
    setConvKernels(g, "tuned");
    assert.deepEqual(await tuneConvs(g, 1), []); // nothing seen yet
    await convOp(g, [1, 6, 4, 5, 6], 32); // forward eligible (6 of 16 channels in), input gradient not (6 of 32 out)
    await convOp(g, [1, 3, 4, 5, 6], 8); // not eligible at all
    assert.equal(convVariant(g, s, "forward"), "gather"); // until timed
    // Each kernel's dispatches for one forward of that shape: tuning runs each twice (untimed, then timed to choose how
    // many calls a sample makes), then its one sample of that many calls.
    const per = (f: typeof K.conv3dForward) => {
      const [x, w, y] = [6 * 120, 32 * 6 * 27, 32 * 120].map((n) => g.alloc(n * 4)), d0 = g.dispatches;
      f(g, s, x, w, null, y);
      for (const b of [x, w, y]) g.free(b);
      return g.dispatches - d0;
    };
    const [gather, cl] = [per(K.conv3dForward), per(conv3dForwardChannelsLast)], d0 = g.dispatches;
    const choices = await tuneConvs(g, 1);
    const reps = choices[0].reps;
    assert.ok(reps >= 1 && reps <= 16, `${reps}`);
    assert.equal(g.dispatches - d0, (2 + reps) * (gather + cl)); // both kernels ran
    assert.deepEqual(choices.map((c) => c.conv), ["forward [1,6,4,5,6] -> 32, k3 s1 p1"]);
    const [c] = choices;
    assert.ok(c.gather_ms > 0 && c.channels_last_ms > 0);
    assert.equal(c.variant, c.channels_last_ms < c.gather_ms ? "channels-last" : "gather");
    assert.equal(convVariant(g, s, "forward"), c.variant);
    await convOp(g, [1, 6, 4, 5, 6], 32); // exact with whichever was kept
    assert.deepEqual(await tuneConvs(g, 1), []); // timed once
    await convOp(g, [1, 3, 4, 5, 6], 32, 1, true); // the weight gradient: eligible with 3 channels in
    const [d] = await tuneConvs(g, 1);
    assert.equal(d.conv, "weight_grad [1,3,4,5,6] -> 32, k3 s1 p1");
    assert.equal(convVariant(g, shape([1, 3, 4, 5, 6], 32), "weight_grad"), d.variant);
    await convOp(g, [1, 3, 4, 5, 6], 32, 1, true);
    await convOp(g, [1, 16, 3, 5, 6], 32); // seen in tuned mode, then the mode changes: nothing left to time
    setConvKernels(g, "gather");
    assert.deepEqual(await tuneConvs(g, 1), []);
  } finally {
    setConvKernels(g, "auto");
  }
});

Deno.test("tuning samples run enough calls before their sync to span about 20 ms, 1 to 16", () => {
  assert.deepEqual([25, 20, 5, 3, 1, 0.5, 0, -2].map(tuneReps), [1, 1, 4, 7, 16, 16, 16, 16]);
});
