// Autodiff wrappers for the elementwise kernels.
import * as K from "../../kernels/elementwise.ts";
import { record, Tensor } from "../tensor.ts";

function sameShape(op: string, a: Tensor, b: Tensor) {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`${op}: shapes [${a.shape}] and [${b.shape}] differ`);
  }
}

export function add(a: Tensor, b: Tensor): Tensor {
  sameShape("add", a, b);
  const y = Tensor.empty(a.gpu, a.shape);
  K.add(a.gpu, a.buffer, b.buffer, y.buffer, a.size);
  record(y, [a, b], (g) => [g, g], []);
  return y;
}

/** y = a * x + b (scalars). */
export function affine(x: Tensor, a: number, b = 0): Tensor {
  const y = Tensor.empty(x.gpu, x.shape);
  K.scale(x.gpu, x.buffer, y.buffer, x.size, a, b);
  record(y, [x], (g) => {
    const dx = Tensor.empty(x.gpu, x.shape);
    K.scale(x.gpu, g.buffer, dx.buffer, x.size, a);
    return [dx];
  }, []);
  return y;
}

export function leakyRelu(x: Tensor, slope: number): Tensor {
  const y = Tensor.empty(x.gpu, x.shape);
  K.leakyRelu(x.gpu, x.buffer, y.buffer, x.size, slope);
  record(y, [x], (g) => {
    const dx = Tensor.empty(x.gpu, x.shape);
    K.leakyReluBackward(x.gpu, x.buffer, g.buffer, dx.buffer, x.size, slope);
    return [dx];
  }, [x]);
  return y;
}
