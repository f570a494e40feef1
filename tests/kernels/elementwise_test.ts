import * as K from "../../src/kernels/elementwise.ts";
import { add, leakyRelu } from "../../src/nn/ops/elementwise.ts";
import { backward, scope, Tensor } from "../../src/nn/tensor.ts";
import { assertClose, finiteDiff, rand, testGpu } from "../util.ts";

Deno.test("leakyReluBackwardRef matches finite differences", () => {
  const x = rand(37, 3), w = rand(37, 4);
  const fd = finiteDiff((v) => K.leakyReluRef(v, 0.2), x, w);
  assertClose(K.leakyReluBackwardRef(x, w, 0.2), fd, 1e-6);
});

Deno.test("leaky relu forward and backward on the GPU match the CPU reference (odd size)", async () => {
  const g = await testGpu();
  await scope(async () => {
    const xs = rand(1001, 5), dys = rand(1001, 6);
    const x = Tensor.from(g, [7, 11, 13], xs);
    x.requiresGrad = true;
    const y = leakyRelu(x, 0.01);
    backward(y, Tensor.from(g, [7, 11, 13], dys));
    const [yv, gv] = [await y.toArray(), await x.grad!.toArray()];
    assertClose(yv, K.leakyReluRef(xs, 0.01), 1e-7, "forward");
    assertClose(gv, K.leakyReluBackwardRef(xs, dys, 0.01), 1e-7, "backward");
    x.grad!.dispose();
  });
});

Deno.test("add splits over binding windows when the binding limit is lowered", async () => {
  const g = await testGpu();
  g.setMaxBindingForTests(1024);
  try {
    await scope(async () => {
      const a = rand(3001, 1), b = rand(3001, 2);
      const y = add(Tensor.from(g, [3001], a), Tensor.from(g, [3001], b));
      assertClose(await y.toArray(), K.addRef(a, b), 0, "sum");
    });
  } finally {
    g.setMaxBindingForTests(null);
  }
});

Deno.test("gradients that meet are summed and leaves accumulate across backward calls", async () => {
  const g = await testGpu();
  await scope(async () => {
    const x = Tensor.from(g, [5], [1, -2, 3, -4, 5]);
    x.requiresGrad = true;
    backward(add(leakyRelu(x, 0.5), x), Tensor.from(g, [5], [1, 1, 1, 1, 1]));
    assertClose(await x.grad!.toArray(), [2, 1.5, 2, 1.5, 2], 0, "first backward");
    backward(add(x, x), Tensor.from(g, [5], [1, 1, 1, 1, 1]));
    assertClose(await x.grad!.toArray(), [4, 3.5, 4, 3.5, 4], 0, "accumulated");
    x.grad!.dispose();
  });
});
