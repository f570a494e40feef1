// Autodiff wrapper for nearest-neighbour resizing.
import * as K from "../../kernels/resize.ts";
import { record, storageOf, Tensor } from "../tensor.ts";

/** PyTorch F.interpolate(x, size, mode="nearest") for [N,C,D,H,W] x and size [D', H', W']. */
export function resizeNearest(x: Tensor, size: [number, number, number]): Tensor {
  const g = x.gpu;
  K.checkResize(x.shape, size);
  const t = storageOf(x, "resizeNearest");
  const y = Tensor.empty(g, [x.shape[0], x.shape[1], ...size], t);
  K.resizeNearestForward(g, x.buffer, y.buffer, x.shape, size, t);
  record(y, [x], (dy) => {
    const dx = Tensor.empty(g, x.shape);
    K.resizeNearestBackward(g, dy.buffer, dx.buffer, x.shape, size);
    return [dx];
  }, []);
  return y;
}
