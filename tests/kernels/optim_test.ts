import assert from "node:assert/strict";
import { type AdamHyper, adamStepRef } from "../../src/kernels/optim.ts";
import { Adam, AdamW } from "../../src/nn/optim.ts";
import { scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, rand, testGpu } from "../util.ts";
import type { Gpu } from "../../src/kernels/device.ts";

const hyper = (h: Partial<AdamHyper>): AdamHyper => ({
  lr: 1e-3,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0,
  decoupled: false,
  ...h,
});

function refSteps(p0: ArrayLike<number>, grads: ArrayLike<number>[], h: AdamHyper, lrs?: number[]): Float64Array {
  const p = Float64Array.from(p0), m = new Float64Array(p.length), v = new Float64Array(p.length);
  grads.forEach((g, k) => adamStepRef(p, g, m, v, k + 1, { ...h, lr: lrs?.[k] ?? h.lr }));
  return p;
}

Deno.test("adamStepRef reproduces PyTorch's first step: Adam p=1, g=0.5, lr=0.1 -> 0.9; AdamW wd=0.01 -> 0.899", () => {
  // Step 1: m / (sqrt(v) / sqrt(bc2) + eps) = g / (|g| + eps), so the move is lr * sign(g) up to eps.
  assertClose(refSteps([1], [[0.5]], hyper({ lr: 0.1 })), [1 - 0.1 * 0.5 / (0.5 + 1e-8)], 1e-15);
  assertClose(refSteps([1], [[0.5]], hyper({ lr: 0.1 })), [0.9], 3e-9, "0.9 up to eps");
  const w = refSteps([1], [[0.5]], hyper({ lr: 0.1, weightDecay: 0.01, decoupled: true }));
  assertClose(w, [1 - 0.1 * 0.01 - 0.1 * 0.5 / (0.5 + 1e-8)], 1e-15);
  assertClose(w, [0.899], 3e-9, "0.899 up to eps");
  // Adam's L2 enters the gradient: g' = 0.5 + 0.5 * 1 = 1.
  assertClose(refSteps([1], [[0.5]], hyper({ lr: 0.1, weightDecay: 0.5 })), [1 - 0.1 / (1 + 1e-8)], 1e-15);
});

function param(g: Gpu, shape: number[], data: ArrayLike<number>, name: string): Tensor {
  return Tensor.from(g, shape, Float32Array.from(data)).asParameter(name);
}
function setGrad(p: Tensor, data: Float32Array) {
  p.zeroGrad();
  p.grad = Tensor.from(p.gpu, p.shape, data).keep();
}

Deno.test("Adam and AdamW on the GPU give PyTorch's first-step numbers", async () => {
  const g = await testGpu();
  await scope(async () => {
    for (const [opt, want] of [[Adam, 0.9], [AdamW, 0.899]] as const) {
      const p = param(g, [1], [1], "p");
      const o = new opt([p], { lr: 0.1, weightDecay: opt === AdamW ? 0.01 : 0 });
      setGrad(p, new Float32Array([0.5]));
      o.step();
      assertClose(await p.toArray(), [want], 1e-7, opt.name);
      o.zeroGrad();
      assert.equal(p.grad, null);
      o.dispose();
      p.dispose();
    }
  });
});

for (const decoupled of [false, true]) {
  const name = decoupled ? "AdamW" : "Adam";
  Deno.test(`${name} over 3 steps matches the reference (weight decay, bias correction, lr change, skipped param)`, async () => {
    const g = await testGpu();
    await scope(async () => {
      const shapeA = [3, 5, 7], shapeB = [2, 3], nA = 105, nB = 6;
      const a0 = rand(nA, 1), b0 = rand(nB, 2);
      const gradsA = [3, 4, 5].map((s) => rand(nA, s)), gradsB = [6, 7].map((s) => rand(nB, s).map((v) => 0.01 * v));
      const a = param(g, shapeA, a0, "a"), b = param(g, shapeB, b0, "b");
      const opts = { lr: 0.01, betas: [0.8, 0.95] as [number, number], eps: 1e-6, weightDecay: 0.1 };
      const o = decoupled ? new AdamW([a, b], opts) : new Adam([a, b], opts);
      const lrs = [0.01, 0.01, 0.003];
      for (let k = 0; k < 3; k++) {
        o.lr = lrs[k];
        setGrad(a, gradsA[k]);
        if (k === 1) b.zeroGrad(); // b has no grad at step 2: skipped, its count stays at 1
        else setGrad(b, gradsB[k === 0 ? 0 : 1]);
        o.step();
      }
      const h = hyper({ beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1, decoupled });
      assertClose(await a.toArray(), refSteps(a0, gradsA, h, lrs), 1e-6, "a");
      assertClose(await b.toArray(), refSteps(b0, gradsB, h, [0.01, 0.003]), 1e-6, "b");
      const st = await o.state();
      assert.deepEqual([...st.step], [3, 2]);
      o.zeroGrad();
      o.dispose();
      a.dispose();
      b.dispose();
    });
  });
}

Deno.test("state() and loadState() resume an AdamW run exactly", async () => {
  const g = await testGpu();
  await scope(async () => {
    const n = 77, grads = [11, 12, 13].map((s) => rand(n, s));
    const p = param(g, [7, 11], rand(n, 10), "p");
    const o = new AdamW([p], { lr: 0.05 });
    for (const gr of grads.slice(0, 2)) {
      setGrad(p, gr);
      o.step();
    }
    const saved = await o.state(), pSaved = await p.toArray();
    setGrad(p, grads[2]);
    o.step();
    const want = await p.toArray();

    const q = param(g, [7, 11], pSaved, "p");
    const o2 = new AdamW([q], { lr: 0.05 });
    o2.loadState(saved);
    assert.deepEqual([...(await o2.state()).step], [2]);
    setGrad(q, grads[2]);
    o2.step();
    assert.deepEqual(await q.toArray(), want);
    assert.throws(() => o2.loadState({ ...saved, expAvg: [new Float32Array(3)] }), /exp_avg of 3 values/);
    for (const t of [p, q]) t.zeroGrad(), t.dispose();
    o.dispose();
    o2.dispose();
  });
});

Deno.test("Adam splits flat windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1024);
  try {
    await scope(async () => {
      const n = 3001, p0 = rand(n, 20), grads = [21, 22].map((s) => rand(n, s));
      const p = param(g, [n], p0, "p");
      const o = new Adam([p], { lr: 0.02, weightDecay: 0.01 });
      for (const gr of grads) {
        setGrad(p, gr);
        o.step();
      }
      assertClose(await p.toArray(), refSteps(p0, grads, hyper({ lr: 0.02, weightDecay: 0.01 })), 1e-6);
      p.zeroGrad();
      p.dispose();
      o.dispose();
    });
  } finally {
    g.setMaxBindingForTests(null);
  }
});
