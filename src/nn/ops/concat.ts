// Autodiff wrappers for channel concatenation and channel slicing.
import * as K from "../../kernels/concat.ts";
import { f32Only, record, Tensor } from "../tensor.ts";

/** Concatenates [N,C_i,D,H,W] tensors along channels (dim 1). */
export function concat(xs: Tensor[]): Tensor {
  f32Only("concat", ...xs);
  const { N, L } = K.checkChannels("concat", xs.map((x) => x.shape));
  const g = xs[0].gpu;
  const C = xs.reduce((a, x) => a + x.shape[1], 0);
  const [, , D, H, W] = xs[0].shape;
  const y = Tensor.empty(g, [N, C, D, H, W]);
  const starts: number[] = [];
  for (let i = 0, off = 0; i < xs.length; off += xs[i++].shape[1]) {
    K.copyChannels(g, xs[i].buffer, xs[i].shape[1], 0, y.buffer, C, off, xs[i].shape[1], N, L);
    starts.push(off);
  }
  record(y, xs, (dy) =>
    xs.map((x, i) => {
      if (!x.requiresGrad) return null;
      const dx = Tensor.empty(g, x.shape);
      K.copyChannels(g, dy.buffer, C, starts[i], dx.buffer, x.shape[1], 0, x.shape[1], N, L);
      return dx;
    }), []);
  return y;
}

/** Channels [start, start + count) of an [N,C,D,H,W] tensor. */
export function sliceChannels(x: Tensor, start: number, count: number): Tensor {
  f32Only("sliceChannels", x);
  const { N, L } = K.checkChannels("sliceChannels", [x.shape]);
  const [, C, D, H, W] = x.shape;
  if (!(Number.isInteger(start) && Number.isInteger(count) && start >= 0 && count >= 0 && start + count <= C)) {
    throw new Error(`sliceChannels: channels ${start}..${start + count} are outside x [${x.shape}]`);
  }
  const g = x.gpu;
  const y = Tensor.empty(g, [N, count, D, H, W]);
  K.copyChannels(g, x.buffer, C, start, y.buffer, count, 0, count, N, L);
  record(y, [x], (dy) => {
    const dx = Tensor.zeros(g, x.shape);
    K.copyChannels(g, dy.buffer, count, 0, dx.buffer, C, start, count, N, L);
    return [dx];
  }, []);
  return y;
}
