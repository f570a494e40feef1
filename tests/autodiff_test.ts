// The autodiff engine's contract: no-grad mode, detach, accumulation and zeroing of leaf gradients, gradients only
// where needed, shape checks, scopes that free what they do not return, and the activation plan (release, saved
// tensors held until their backward ran, spent graphs).
import assert from "node:assert/strict";
import { add, affine, leakyRelu } from "../src/nn/ops/elementwise.ts";
import { sumAll } from "../src/nn/ops/loss.ts";
import { backward, noGrad, record, scope, Tensor } from "../src/nn/tensor.ts";
import { testGpu } from "./util.ts";

Deno.test("noGrad records no graph and detach cuts it", async () => {
  const g = await testGpu();
  await scope(async () => {
    const x = Tensor.from(g, [3], [1, -1, 2]);
    x.requiresGrad = true;
    const y = noGrad(() => affine(x, 2));
    assert.equal(y.node, null);
    assert.equal(y.requiresGrad, false);
    const d = leakyRelu(x, 0.1).detach();
    assert.equal(d.node, null);
    assert.deepEqual([...await d.toArray()], [1, -0.1, 2].map(Math.fround));
    assert.throws(() => backward(add(d, d)), /does not depend on anything that requires grad/);
  });
});

Deno.test("leaf gradients accumulate over backward calls until zeroGrad; inputs without requiresGrad get none", async () => {
  const g = await testGpu();
  await scope(async () => {
    const w = Tensor.from(g, [2], [3, -4]).asParameter("w");
    const c = Tensor.from(g, [2], [1, 1]);
    const ones = () => Tensor.from(g, [2], [1, 1]);
    backward(add(affine(w, 2), c), ones());
    backward(add(affine(w, 3), c), ones());
    assert.deepEqual([...await w.grad!.toArray()], [5, 5]);
    assert.equal(c.grad, null);
    w.zeroGrad();
    assert.equal(w.grad, null);
    backward(affine(w, -1), ones());
    assert.deepEqual([...await w.grad!.toArray()], [-1, -1]);
    w.zeroGrad();
    w.dispose();
  });
});

Deno.test("a backward closure returning a gradient of the wrong shape is an error naming both shapes", async () => {
  const g = await testGpu();
  await scope(() => {
    const x = Tensor.from(g, [2, 3], [1, 2, 3, 4, 5, 6]);
    x.requiresGrad = true;
    x.name = "x";
    const y = Tensor.from(g, [2, 3], [0, 0, 0, 0, 0, 0]);
    record(y, [x], () => [Tensor.zeros(g, [3, 2])], []);
    assert.throws(() => backward(y, Tensor.from(g, [2, 3], [1, 1, 1, 1, 1, 1])), /\[3,2\].*\[2,3\] x/);
  });
});

Deno.test("a scope frees the tensors it does not return, and a non-scalar root needs a seed", async () => {
  const g = await testGpu();
  const before = g.memory().live;
  const kept = scope(() => {
    const a = Tensor.from(g, [1000], new Float32Array(1000).fill(1));
    const b = affine(a, 2);
    const c = affine(b, 3);
    assert.throws(() => {
      a.requiresGrad = true;
      backward(affine(a, 1));
    }, /non-scalar root \[1000\] needs a seed/);
    return { c };
  });
  assert.equal(kept.c.disposed, false);
  assert.deepEqual((await kept.c.toArray()).slice(0, 2), new Float32Array([6, 6]));
  kept.c.dispose();
  assert.equal(g.memory().live, before);
});

Deno.test("backward frees every intermediate gradient, also where a tensor fans out to several consumers", async () => {
  const g = await testGpu();
  await scope(async () => {
    const w = Tensor.from(g, [1000], new Float32Array(1000).fill(1)).asParameter("w");
    const h = affine(w, 2);
    const loss = sumAll(add(leakyRelu(h, 0.1), affine(h, 3))); // h's gradient arrives twice
    const live = g.memory().live;
    backward(loss);
    // Only w.grad is left (4000 bytes in a 4096-byte pool bucket).
    assert.equal(g.memory().live - live, 4096);
    assert.deepEqual((await w.grad!.toArray()).slice(0, 2), new Float32Array([8, 8]));
    w.zeroGrad();
    w.dispose();
  });
});

Deno.test("release frees at once without a graph, and after the last backward that reads it with one", async () => {
  const g = await testGpu();
  await scope(async () => {
    const x = Tensor.from(g, [1000], new Float32Array(1000).fill(-1));
    const t = noGrad(() => affine(x, 2));
    t.release();
    assert.equal(t.disposed, true);

    const w = Tensor.from(g, [1000], new Float32Array(1000).fill(-1)).asParameter("w");
    const a = affine(w, 2); // saved by leakyRelu: held until its backward ran
    const y = leakyRelu(a, 0.1);
    a.release();
    assert.equal(a.disposed, false);
    const s = add(y, y); // add saves nothing: y may go now, and its node still carries the gradient through
    y.release();
    assert.equal(y.disposed, true);
    backward(sumAll(s));
    assert.equal(a.disposed, true);
    assert.deepEqual((await w.grad!.toArray()).slice(0, 2), new Float32Array([0.4, 0.4].map(Math.fround)));
    w.zeroGrad();
    w.dispose();
  });
});

Deno.test("a graph is backpropagated once; detach_ cuts a spent tensor loose for reuse", async () => {
  const g = await testGpu();
  await scope(async () => {
    const w = Tensor.from(g, [3], [1, -2, 3]).asParameter("w");
    w.name = "w";
    const h = leakyRelu(w, 0.1);
    h.name = "h";
    backward(sumAll(h));
    assert.throws(() => backward(sumAll(affine(h, 2))), /h belongs to a graph that was already backpropagated/);
    w.zeroGrad();
    h.detach_();
    assert.equal(h.requiresGrad, false);
    assert.throws(() => backward(sumAll(affine(h, 2))), /does not depend on anything that requires grad/);
    const v = Tensor.from(g, [3], [1, 1, 1]).asParameter("v");
    backward(sumAll(add(h, v)));
    assert.deepEqual([...await v.grad!.toArray()], [1, 1, 1]);
    assert.equal(w.grad, null);
    for (const p of [w, v]) {
      p.zeroGrad();
      p.dispose();
    }
  });
});
