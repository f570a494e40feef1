// Autodiff wrapper for channel dropout.
import * as K from "../../kernels/dropout.ts";
import { type Rng } from "../rng.ts";
import { f32Only, record, Tensor } from "../tensor.ts";

/**
 * PyTorch Dropout3d in training mode on [N,C,D,H,W] x: whole (n, c) planes zeroed with probability p (one
 * rng.uniform() per plane, n-major, kept when >= p), survivors scaled by 1 / (1 - p). p = 0 returns x itself.
 */
export function dropout3d(x: Tensor, p: number, rng: Rng): Tensor {
  if (x.shape.length !== 5) throw new Error(`dropout3d: x [${x.shape}] must be [N,C,D,H,W]`);
  const [N, C, D, H, W] = x.shape;
  if (p === 0) return x; // as PyTorch: no draw, no copy
  f32Only("dropout3d", x);
  const g = x.gpu;
  const mask = Tensor.from(g, [N * C], K.dropoutMask(N * C, p, rng));
  const y = Tensor.empty(g, x.shape);
  K.scalePlanes(g, x.buffer, mask.buffer, y.buffer, N * C, D * H * W);
  record(y, [x], (dy) => {
    const dx = Tensor.empty(g, x.shape);
    K.scalePlanes(g, dy.buffer, mask.buffer, dx.buffer, N * C, D * H * W);
    return [dx];
  }, [mask]);
  mask.release();
  return y;
}
