// f16 activation storage (inference): every forward kernel that reads or writes f16 against its float64 CPU
// reference on the same f16-rounded inputs, on odd shapes, channel counts not a multiple of 4, the split-K path and
// lowered binding limits (f16 windows start at other offsets than f32 ones). A stored result may differ from the
// correctly rounded reference by one f16 unit in the last place plus the f32 accumulation's own error, bounded by
// n * 2^-24 * sum |terms| for a sum of n terms (Higham's gamma_n), which matters where terms cancel. These tests need the adapter's shader-f16 (lavapipe has it) and fail without it.
import assert from "node:assert/strict";
import * as C from "../../src/kernels/conv3d.ts";
import { instanceNormRef } from "../../src/kernels/norm.ts";
import { maxPool2Ref } from "../../src/kernels/pool.ts";
import { resizeNearestRef } from "../../src/kernels/resize.ts";
import type { Gpu, Storage } from "../../src/kernels/device.ts";
import { conv3d } from "../../src/nn/ops/conv.ts";
import { add, cast, leakyRelu } from "../../src/nn/ops/elementwise.ts";
import { softmax } from "../../src/nn/ops/loss.ts";
import { instanceNormLeakyRelu } from "../../src/nn/ops/norm.ts";
import { maxPool2 } from "../../src/nn/ops/pool.ts";
import { resizeNearest } from "../../src/nn/ops/resize.ts";
import { noGrad, readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { dispatchedWith, rand, testGpuF16, withSplit } from "../util.ts";

const h = (a: ArrayLike<number>) => Float32Array.from(a, Math.f16round);

/** One f16 unit in the last place at |v| (subnormals: 2^-24). */
const ulp16 = (v: number) => v === 0 ? 2 ** -24 : Math.max(2 ** (Math.floor(Math.log2(Math.abs(v))) - 10), 2 ** -24);

/**
 * got is ref rounded to `to` give or take one f16 unit in the last place (none for f32), plus the f32 accumulation
 * bound n * 2^-24 * abs[i] when a sum of n terms with sum |terms| = abs[i] made ref[i].
 */
function assertRounded(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  what: string,
  to: Storage = "f16",
  acc?: { n: number; abs: ArrayLike<number> },
) {
  assert.equal(got.length, ref.length, `${what}: length`);
  for (let i = 0; i < ref.length; i++) {
    const r = to === "f16" ? Math.f16round(ref[i]) : ref[i];
    const tol = (to === "f16" ? ulp16(r) : 0) + (acc ? acc.n * 2 ** -24 * acc.abs[i] : 0);
    if (!(Math.abs(got[i] - r) <= tol)) assert.fail(`${what}[${i}]: ${got[i]} vs ${ref[i]} (rounded ${r}, tol ${tol})`);
  }
}

/** An f16 tensor holding v rounded to f16 (uploaded as f32, then cast on the GPU). */
const f16Tensor = (g: Gpu, shape: number[], v: Float32Array) => cast(Tensor.from(g, shape, v), "f16");

async function convCase(xs: number[], cout: number, k: number, stride: 1 | 2, pad: number, types: [Storage, Storage]) {
  const g = await testGpuF16();
  await scope(async () => {
    const ws = [cout, xs[1], k, k, k];
    const s = C.conv3dShape(xs, ws, [cout], stride, pad);
    const xv = h(rand(xs.reduce((a, b) => a * b), 21)), wv = rand(ws.reduce((a, b) => a * b), 22), bv = rand(cout, 23);
    const x = types[0] === "f16" ? f16Tensor(g, xs, xv) : Tensor.from(g, xs, xv);
    const y = noGrad(() => conv3d(x, Tensor.from(g, ws, wv), Tensor.from(g, [cout], bv), stride, pad, types[1]));
    assert.equal(y.dtype, types[1]);
    const [got] = await readAll([y]);
    const abs = (a: Float32Array) => a.map(Math.abs);
    const acc = { n: xs[1] * k ** 3 + 1, abs: C.conv3dRef(abs(xv), abs(wv), abs(bv), s) };
    const what = `conv3d ${types.join("->")} [${xs}] -> ${cout}, k${k} s${stride}`;
    assertRounded(got, C.conv3dRef(xv, wv, bv, s), what, types[1], acc);
  });
}

Deno.test("f16 conv3d forward: f32 -> f16, f16 -> f16 and f16 -> f32 (the U-Net's first, inner and last layers)", async () => {
  await convCase([1, 3, 7, 5, 9], 5, 3, 1, 1, ["f32", "f16"]);
  await convCase([2, 5, 6, 7, 5], 6, 3, 1, 1, ["f16", "f16"]);
  await convCase([1, 6, 7, 5, 9], 4, 1, 1, 0, ["f16", "f32"]);
  await convCase([1, 5, 8, 6, 10], 7, 4, 2, 1, ["f16", "f16"]);
});

Deno.test("f16 conv3d forward through the channels-last GEMM: f32 -> f16, f16 -> f16, stride 2, split taps", async () => {
  const g = await testGpuF16();
  const names = await dispatchedWith(g, "channels-last", async () => {
    await convCase([1, 4, 7, 5, 9], 32, 3, 1, 1, ["f32", "f16"]); // the teacher's first layer: K = 4 of 16
    await convCase([2, 16, 9, 6, 7], 48, 3, 1, 1, ["f16", "f16"]); // N = 48 of 64; 378 voxels, two tiles
    await convCase([1, 16, 3, 4, 5], 160, 3, 1, 1, ["f16", "f16"]); // few voxels: blocks of 128 and 32 in one dispatch
    await convCase([1, 7, 8, 6, 10], 32, 4, 2, 1, ["f16", "f16"]); // stride 2 from x's space-to-depth, K = 56 of 64
    await convCase([1, 16, 12, 10, 8], 64, 4, 2, 1, ["f16", "f16"]);
    // Taps split (splits of 16 channels x 1 tap allowed): f32 partials summed into f16 (or f32) at the odd offsets of a
    // second sample and a second dispatch of columns.
    await withSplit(async () => {
      await convCase([2, 16, 3, 3, 5], 161, 3, 1, 1, ["f16", "f16"]); // blocks of 128 and 64, 27 splits
      await convCase([2, 16, 3, 3, 5], 33, 3, 1, 1, ["f32", "f16"]);
      await convCase([2, 16, 3, 3, 5], 33, 3, 1, 1, ["f16", "f32"]);
      await convCase([2, 5, 6, 4, 6], 33, 4, 2, 1, ["f16", "f16"]); // stride 2: 8 splits
    }, [{ workgroups: 64, minK: 16 }]);
    // Past f16's range the stored value saturates at 65504 (both directions), never an infinity: with the taps split
    // (these 60 voxels make one tile) and without.
    for (const wk of [1, 32]) {
      await scope(async () => {
        const xs = [1, 16, 3, 4, 5], ws = [32, 16, 3, 3, 3], n = ws.reduce((a, b) => a * b);
        const x = f16Tensor(g, xs, new Float32Array(960).fill(1));
        const w = Tensor.from(g, ws, Float32Array.from({ length: n }, (_, i) => (i < n / 2 ? 3000 : -3000)));
        await withSplit(async () => {
          const [y] = await readAll([noGrad(() => conv3d(x, w, null, 1, 1, "f16"))]);
          assert.ok(y.every((v) => Math.abs(v) === 65504), `saturated (${wk} workgroups wanted): ${y.slice(0, 4)}`);
        }, [{ workgroups: wk, minK: 16 }]);
      });
    }
  });
  // The GEMMs ran, storing f16 (directly, or through f32 partials summed into f16), and no gather kernel did.
  assert.ok(names.some((n) => n.startsWith("conv3d_cl_gemm") && n.endsWith("_f16")), names.join(" "));
  assert.ok(names.includes("conv3d_sum_parts_f16"), names.join(" "));
  assert.ok(!names.some((n) => n.startsWith("conv3d_gather")), names.join(" "));
});

Deno.test("f16 conv3d forward: split-K on small planes, and windows of a lowered binding limit", async () => {
  await convCase([2, 18, 5, 3, 7], 17, 3, 1, 1, ["f16", "f16"]); // split-K: f32 partials summed into f16
  const g = await testGpuF16();
  try {
    g.setMaxBindingForTests(2048); // f16 planes of 5x6x7 (420 bytes): windows of 4 planes at unaligned starts
    await convCase([2, 9, 5, 6, 7], 6, 3, 1, 1, ["f16", "f16"]);
    await convCase([1, 9, 5, 6, 7], 5, 3, 1, 1, ["f32", "f16"]);
    // 4x4x4 stride 2: a space-to-depth chunk (8 x 5x4x6 f16 = 1920 bytes) per input channel, summed in f32
    g.setMaxBindingForTests(2304);
    await convCase([1, 5, 8, 6, 10], 3, 4, 2, 1, ["f16", "f16"]);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("f16 instance norm + LeakyReLU, max-pool, nearest resize and add, on odd shapes and lowered limits", async () => {
  const g = await testGpuF16();
  // 1536 bytes: chunks of 3 f16 planes of 5x7x6 (420 bytes each), so windows start at unaligned planes.
  for (const limit of [null, 1536]) {
    g.setMaxBindingForTests(limit);
    try {
      await scope(async () => {
        const shape = [2, 3, 5, 7, 6], n = 2 * 3 * 5 * 7 * 6;
        const xv = h(rand(n, 31)), zv = h(rand(n, 32)), wv = rand(3, 33), bv = rand(3, 34);
        const x = f16Tensor(g, shape, xv);
        const outs = noGrad(() => [
          instanceNormLeakyRelu(x, Tensor.from(g, [3], wv), Tensor.from(g, [3], bv), 0.01),
          maxPool2(x),
          resizeNearest(x, [7, 4, 9]),
          add(x, f16Tensor(g, shape, zv)),
        ]);
        for (const o of outs) assert.equal(o.dtype, "f16");
        const [norm, pool, resized, sum] = await readAll(outs);
        const tag = `(limit ${limit})`;
        assertRounded(norm, instanceNormRef(xv, shape, { weight: wv, bias: bv }, 0.01).y, `instance norm ${tag}`);
        assert.deepEqual(pool, Float32Array.from(maxPool2Ref(xv, shape).y), `max-pool ${tag}`); // exact
        assert.deepEqual(resized, Float32Array.from(resizeNearestRef(xv, shape, [7, 4, 9])), `resize ${tag}`);
        assertRounded(sum, xv.map((v, i) => v + zv[i]), `add ${tag}`);
        assert.deepEqual(await cast(x, "f32").toArray(), xv, `cast back ${tag}`);
        const big = cast(Tensor.from(g, [3], [1e6, -1e6, 70000]), "f16"); // saturates: no infinities, so no NaN
        assert.deepEqual(await big.toArray(), new Float32Array([65504, -65504, 65504]), `f16 saturation ${tag}`);
        const odd = h(rand(27, 35)); // 54 bytes: copies and reads round up to whole 4-byte words
        assert.deepEqual(await f16Tensor(g, [1, 1, 3, 3, 3], odd).detach().toArray(), odd, `odd-sized copy ${tag}`);
      });
    } finally {
      g.setMaxBindingForTests(null);
    }
  }
});

Deno.test("f16 storage refuses gradients and the ops without f16 kernels, naming them", async () => {
  const g = await testGpuF16();
  scope(() => {
    const x = f16Tensor(g, [1, 2, 3, 3, 3], rand(54, 41));
    const w = Tensor.from(g, [2, 2, 3, 3, 3], rand(108, 42)).asParameter("w");
    assert.throws(() => conv3d(x, w, null, 1, 1, "f16"), /f16 storage is for inference: run the forward under noGrad/);
    assert.throws(() => noGrad(() => add(x, Tensor.zeros(g, [1, 2, 3, 3, 3]))), /add: \[1,2,3,3,3\] is f16/);
    assert.throws(() => noGrad(() => leakyRelu(x, 0.2)), /leakyRelu: \[1,2,3,3,3\] is stored as f16/);
    assert.throws(() => noGrad(() => softmax(x)), /softmax: \[1,2,3,3,3\] is stored as f16/);
    assert.throws(() => noGrad(() => maxPool2(Tensor.zeros(g, [1, 2, 4, 4, 4], "u32"))), /maxPool2: .* u32/);
    w.dispose();
  });
});
