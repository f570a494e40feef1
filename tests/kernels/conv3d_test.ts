import assert from "node:assert/strict";
import * as K from "../../src/kernels/conv3d.ts";
import { conv3d } from "../../src/nn/ops/conv.ts";
import { backward, readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, recordDispatches, testGpu } from "../util.ts";

// The four supported (k, stride, pad) variants, each with the bias setting the networks use.
const VARIANTS = [
  { k: 3, stride: 1 as const, pad: 1, bias: true },
  { k: 3, stride: 1 as const, pad: 1, bias: false },
  { k: 1, stride: 1 as const, pad: 0, bias: true },
  { k: 4, stride: 2 as const, pad: 1, bias: true },
  { k: 4, stride: 1 as const, pad: 1, bias: false },
];

const name = (v: typeof VARIANTS[0]) => `${v.k}x${v.k}x${v.k} stride ${v.stride} pad ${v.pad}${v.bias ? " bias" : ""}`;

for (const v of VARIANTS) {
  Deno.test(`conv3dBackwardRef matches finite differences (${name(v)})`, () => {
    const xs = [1, 2, 4, 3, 5], ws = [3, 2, v.k, v.k, v.k];
    const s = K.conv3dShape(xs, ws, v.bias ? [3] : null, v.stride, v.pad);
    const x = rand(xs.reduce((a, b) => a * b), 1), w = rand(ws.reduce((a, b) => a * b), 2), b = rand(3, 3);
    const dy = rand(s.n * s.cout * s.od * s.oh * s.ow, 4);
    const { dx, dw, db } = K.conv3dBackwardRef(x, w, dy, s);
    assertClose(dx, finiteDiff((xv) => K.conv3dRef(xv, w, b, s), x, dy), 1e-7, "dx");
    assertClose(dw, finiteDiff((wv) => K.conv3dRef(x, wv, b, s), w, dy), 1e-7, "dw");
    assertClose(db, finiteDiff((bv) => K.conv3dRef(x, w, bv, s), b, dy), 1e-7, "db");
  });
}

/** Runs conv3d forward and backward on the GPU (every input requiring grad) and compares with the CPU refs. */
async function checkGpu(
  xs: number[],
  cout: number,
  v: { k: number; stride: 1 | 2; pad: number; bias: boolean },
  tol = 1e-5,
) {
  const g = await testGpu();
  await scope(async () => {
    const ws = [cout, xs[1], v.k, v.k, v.k];
    const s = K.conv3dShape(xs, ws, v.bias ? [cout] : null, v.stride, v.pad);
    const xv = rand(xs.reduce((a, b) => a * b), 11), wv = rand(ws.reduce((a, b) => a * b), 12), bv = rand(cout, 13);
    const dyv = rand(s.n * s.cout * s.od * s.oh * s.ow, 14);
    const x = Tensor.from(g, xs, xv), w = Tensor.from(g, ws, wv), b = v.bias ? Tensor.from(g, [cout], bv) : null;
    for (const t of [x, w, b]) if (t) t.requiresGrad = true;
    const y = conv3d(x, w, b, v.stride, v.pad);
    assert.deepEqual(y.shape, [s.n, s.cout, s.od, s.oh, s.ow]);
    backward(y, Tensor.from(g, y.shape, dyv));
    const [yg, dx, dw, db] = await readAll([y, x.grad!, w.grad!, ...(b ? [b.grad!] : [])]);
    const ref = K.conv3dBackwardRef(xv, wv, dyv, s);
    assertClose(yg, K.conv3dRef(xv, wv, v.bias ? bv : null, s), tol, "forward");
    assertClose(dx, ref.dx, tol, "dx");
    assertClose(dw, ref.dw, tol, "dw");
    if (b) assertClose(db, ref.db, tol, "db");
    for (const t of [x, w, b]) t?.grad?.dispose();
  });
}

for (const v of VARIANTS) {
  Deno.test(`conv3d GPU forward and gradients match the CPU reference, N=2, 3->5, 5x7x6 (${name(v)})`, async () => {
    await checkGpu([2, 3, 5, 7, 6], 5, v);
  });
}

Deno.test("conv3d GPU: several channel blocks and staging chunks (10->9), odd sizes, stride 2 on odd sizes", async () => {
  await checkGpu([1, 10, 7, 5, 9], 9, VARIANTS[0]);
  await checkGpu([1, 10, 7, 5, 9], 9, VARIANTS[3]);
});

Deno.test("conv3d GPU: rows wider than one workgroup tile and one dy segment (W=70), single channels", async () => {
  await checkGpu([1, 1, 3, 2, 70], 1, VARIANTS[0]);
  await checkGpu([1, 2, 3, 4, 70], 1, VARIANTS[4]);
});

Deno.test("conv3d GPU: several output rows per thread (2 and 4 rows, 4 and 8 channels, stride-2 gradient)", async () => {
  await checkGpu([1, 2, 3, 20, 6], 3, VARIANTS[0]); // 4 rows per thread, forward and dx
  await checkGpu([1, 3, 2, 14, 5], 6, VARIANTS[1]); // 2 rows x 8 channels forward, 2 rows x 4 channels dx
  await checkGpu([1, 2, 3, 34, 5], 3, VARIANTS[3]); // dx parity classes of 17 rows: 4 rows per thread
});

Deno.test("conv3d splits channel planes over binding windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  // One 8x9x10 plane is 2880 bytes: windows hold two channel planes (3 = 2+1, 5 = 2+2+1, at unaligned starts);
  // the 4x4x4 weight-gradient partials (2 x 3840 bytes) still fit one binding.
  g.setMaxBindingForTests(8192);
  try {
    await checkGpu([2, 3, 8, 9, 10], 5, VARIANTS[0]);
    await checkGpu([2, 3, 8, 9, 10], 5, VARIANTS[3]);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("conv3d GPU 1x1x1 weight gradient with few workgroups per chunk: one chunk per row (153 > 64 rows)", async () => {
  const g = await testGpu();
  const dispatched = await recordDispatches(g, () => checkGpu([1, 3, 9, 17, 5], 4, VARIANTS[2]));
  const chunks = dispatched.filter((d) => d.name.startsWith("conv3d_dw")).map((d) => d.grid[2]); // grid z: row chunks
  assert.deepEqual(chunks, [153]); // one workgroup of 3 x 4 weights per chunk: DW_CHUNKS (64) would leave GPUs idle
});

Deno.test("conv3d bias gradient sums planes in chunks: N=2, three chunks (the last short), windows of channels", async () => {
  const g = await testGpu();
  // A 17x23x21 plane (8211 values) is two whole DB_MIN_LEN chunks and a short one.
  const s = K.conv3dShape([2, 1, 17, 23, 21], [5, 1, 1, 1, 1], [5], 1, 0);
  const plane = s.od * s.oh * s.ow;
  assert.equal(Math.ceil(plane / Math.max(K.DB_MIN_LEN, Math.ceil(plane / K.DB_CHUNKS))), 3);
  const dyv = rand(s.n * s.cout * plane, 21);
  const want = Array.from({ length: s.cout }, (_, c) => {
    let sum = 0;
    for (let n = 0; n < s.n; n++) for (let i = 0; i < plane; i++) sum += dyv[(n * s.cout + c) * plane + i];
    return sum;
  });
  // Whole planes, then windows of two planes (5 = 2 + 2 + 1 per item, at unaligned starts).
  for (const binding of [null, 256 * Math.ceil((2 * plane * 4 + 256) / 256)]) {
    g.setMaxBindingForTests(binding);
    try {
      await scope(async () => {
        const dy = Tensor.from(g, [s.n, s.cout, s.od, s.oh, s.ow], dyv), db = Tensor.empty(g, [s.cout]);
        K.conv3dBackwardBias(g, s, dy.buffer, db.buffer);
        const [got] = await readAll([db]);
        assertClose(got, want, 1e-5, `db (binding ${binding ?? "whole"})`);
      });
    } finally {
      g.setMaxBindingForTests(null);
    }
  }
});

// Split-K path: output slices of at most 32 thread positions with at least 16 source channels.
Deno.test("conv3d GPU split-K on small planes: odd planes, Cin not a multiple of 4, stride 2, N=2", async () => {
  await checkGpu([2, 18, 5, 3, 7], 17, VARIANTS[0]); // forward and dx split, 3x3x3, lanes over staged channels
  await checkGpu([2, 18, 5, 3, 7], 17, VARIANTS[3]); // stride 2: dx parity classes of unequal sizes share partials
  await checkGpu([1, 21, 3, 3, 3], 19, VARIANTS[2]); // 1x1x1
});

Deno.test("conv3d GPU split-K: several channel chunks across workgroups (one output channel, 40 inputs)", async () => {
  await checkGpu([1, 40, 3, 3, 3], 1, VARIANTS[4]); // disc_5-like: 4x4x4 stride 1, 2x2x2 output, 5 chunks
  await checkGpu([2, 37, 4, 4, 4], 1, VARIANTS[3]); // disc_4-like with an odd channel count
});

Deno.test("conv3d GPU split-K with the binding limit lowered: windowed channels accumulate, partials limit lanes", async () => {
  const g = await testGpu();
  try {
    // Weights and the N=2 weight-gradient partials are bound whole, so they stay under the limit. 16 x planes of
    // 2880 bytes span windows of two planes; each window's reduce pass accumulates into y.
    g.setMaxBindingForTests(8192);
    await checkGpu([2, 16, 8, 9, 10], 1, VARIANTS[3]);
    // 1x1x1, 16 -> 17: x, y and dx planes of 240 bytes in windows of at most 9; the dx partials fit one part.
    g.setMaxBindingForTests(2304);
    await checkGpu([2, 16, 5, 4, 3], 17, VARIANTS[2]);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("conv3d binds weights larger than one binding in windows of whole channels (the disc at k=32)", async () => {
  const g = await testGpu();
  try {
    // 3x3x3, 20 -> 12: the weight (25920 bytes) spans windows of 3 output channels (2160 bytes each) for the forward,
    // of 3 dy channels for the input gradient (accumulated over windows); one output channel's N=2 gradient partials
    // (4320 bytes) fit, so dw runs channel by channel into its slices of dw, at unaligned offsets.
    g.setMaxBindingForTests(8192);
    await checkGpu([2, 20, 5, 6, 7], 12, VARIANTS[0]);
    // 4x4x4 stride 2, 9 -> 6: 2304 bytes per output channel; dx parity classes read windowed weights; dw in two
    // groups of three channels.
    await checkGpu([1, 9, 8, 6, 10], 6, VARIANTS[3]);
    // split-K (small planes, many channels): 37 -> 5 at 4x4x4 stride 2 (9472 bytes per output channel).
    g.setMaxBindingForTests(10240);
    await checkGpu([1, 37, 4, 4, 4], 5, VARIANTS[3]);
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("conv3d backward computes only the gradients that are needed", async () => {
  const g = await testGpu();
  await scope(async () => {
    const xv = rand(54, 1), wv = rand(108, 2), dyv = rand(54, 3);
    const x = Tensor.from(g, [1, 2, 3, 3, 3], xv);
    const w = Tensor.from(g, [2, 2, 3, 3, 3], wv);
    const b = Tensor.from(g, [2], [0.5, -0.5]);
    w.requiresGrad = true;
    const y = conv3d(x, w, b, 1, 1);
    let grads: (Tensor | null)[] = [];
    const inner = y.node!.backward;
    y.node!.backward = (dy) => grads = inner(dy);
    backward(y, Tensor.from(g, y.shape, dyv));
    assert.equal(grads[0], null);
    assert.ok(grads[1] instanceof Tensor);
    assert.equal(grads[2], null);
    const s = K.conv3dShape(x.shape, w.shape, b.shape, 1, 1);
    assertClose(await w.grad!.toArray(), K.conv3dBackwardRef(xv, wv, dyv, s).dw, 1e-5, "dw");
    w.grad!.dispose();
  });
});

Deno.test("conv3dShape rejects unsupported combinations and mismatched shapes, naming the shapes", () => {
  assert.throws(
    () => K.conv3dShape([1, 2, 8, 8, 8], [4, 2, 3, 3, 3], null, 2, 1),
    /x \[1,2,8,8,8\], weight \[4,2,3,3,3\].*unsupported \(kernel 3, stride 2, pad 1\)/,
  );
  assert.throws(
    () => K.conv3dShape([1, 2, 8, 8, 8], [4, 3, 3, 3, 3], null, 1, 1),
    /weight \[4,3,3,3,3\].*3 input channels, x has 2/,
  );
  assert.throws(() => K.conv3dShape([1, 2, 8, 8, 8], [4, 2, 3, 3, 3], [3], 1, 1), /bias \[3\].*bias must be \[4\]/);
  assert.throws(() => K.conv3dShape([2, 8, 8, 8], [4, 2, 3, 3, 3], null, 1, 1), /x \[2,8,8,8\].*5-D/);
  assert.throws(() => K.conv3dShape([1, 2, 8, 8, 8], [4, 2, 3, 3, 2], null, 1, 1), /cubic/);
  assert.throws(
    () => K.conv3dShape([1, 2, 1, 8, 8], [4, 2, 4, 4, 4], null, 1, 1),
    /empty input or output \[1,4,0,7,7\]/,
  );
});
