// Autodiff wrapper for 2x2x2 max pooling.
import * as K from "../../kernels/pool.ts";
import { record, storageOf, Tensor } from "../tensor.ts";

/** PyTorch max_pool3d(x, 2) on [N,C,D,H,W] (sizes floored). Saves the argmax indices (u32) for the backward. */
export function maxPool2(x: Tensor): Tensor {
  const g = x.gpu;
  const shape = K.pooledShape(x.shape);
  const t = storageOf(x, "maxPool2");
  const y = Tensor.empty(g, shape, t), idx = Tensor.empty(g, shape, "u32");
  K.maxPool2Forward(g, x.buffer, y.buffer, idx.buffer, x.shape, t);
  record(y, [x], (dy) => {
    const dx = Tensor.empty(g, x.shape);
    K.maxPool2Backward(g, dy.buffer, idx.buffer, dx.buffer, x.shape);
    return [dx];
  }, [idx]);
  idx.release();
  return y;
}
