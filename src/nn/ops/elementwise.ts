// Autodiff wrappers for the elementwise kernels.
import * as K from "../../kernels/elementwise.ts";
import type { Storage } from "../../kernels/device.ts";
import { f32Only, record, storageOf, Tensor } from "../tensor.ts";

function sameShape(op: string, a: Tensor, b: Tensor) {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`${op}: shapes [${a.shape}] and [${b.shape}] differ`);
  }
}

export function add(a: Tensor, b: Tensor): Tensor {
  sameShape("add", a, b);
  const t = storageOf(a, "add");
  if (b.dtype !== t) throw new Error(`add: [${a.shape}] is ${a.dtype} but the other is ${b.dtype}`);
  const y = Tensor.empty(a.gpu, a.shape, t);
  K.add(a.gpu, a.buffer, b.buffer, y.buffer, a.size, t);
  record(y, [a, b], (g) => [g, g], []);
  return y;
}

/** y = a * x + b (scalars). */
export function affine(x: Tensor, a: number, b = 0): Tensor {
  f32Only("affine", x);
  const y = Tensor.empty(x.gpu, x.shape);
  K.scale(x.gpu, x.buffer, y.buffer, x.size, a, b);
  record(y, [x], (g) => {
    const dx = Tensor.empty(x.gpu, x.shape);
    K.scale(x.gpu, g.buffer, dx.buffer, x.size, a);
    return [dx];
  }, []);
  return y;
}

/** x converted to `to` storage (f32 <-> f16; the same tensor when it already is). No gradient: f16 is inference. */
export function cast(x: Tensor, to: Storage): Tensor {
  if (storageOf(x, "cast") === to) return x;
  const y = Tensor.empty(x.gpu, x.shape, to);
  K.cast(x.gpu, x.buffer, y.buffer, x.size, to);
  record(y, [x], () => [null], []); // refuses f16 with gradients on
  return y;
}

export function leakyRelu(x: Tensor, slope: number): Tensor {
  f32Only("leakyRelu", x);
  const y = Tensor.empty(x.gpu, x.shape);
  K.leakyRelu(x.gpu, x.buffer, y.buffer, x.size, slope);
  record(y, [x], (g) => {
    const dx = Tensor.empty(x.gpu, x.shape);
    K.leakyReluBackward(x.gpu, x.buffer, g.buffer, dx.buffer, x.size, slope);
    return [dx];
  }, [x]);
  return y;
}
