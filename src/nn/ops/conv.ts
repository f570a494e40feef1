// Autodiff wrapper for 3D convolution (PyTorch Conv3d semantics; see src/kernels/conv3d.ts). The forward, input
// gradient and weight gradient run the kernel chosen for their shape (src/kernels/conv_select.ts).
import * as K from "../../kernels/conv3d.ts";
import { convBackwardInput, convBackwardWeight, convForward } from "../../kernels/conv_select.ts";
import type { Storage } from "../../kernels/device.ts";
import { record, storageOf, Tensor } from "../tensor.ts";

/**
 * y = conv3d(x, w) + b for x [N,Cin,D,H,W], w [Cout,Cin,k,k,k], b [Cout] or null; y is stored as `out` (f16 only
 * without gradients: inference). Backward computes only the
 * gradients whose inputs require grad (new tensors, assigned), so it saves x only when w takes a gradient and w only
 * when x does (decided here, at the forward, as PyTorch does).
 */
export function conv3d(
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  stride: 1 | 2,
  pad: number,
  out: Storage = "f32",
): Tensor {
  const s = K.conv3dShape(x.shape, w.shape, b?.shape ?? null, stride, pad);
  const g = x.gpu;
  const y = Tensor.empty(g, [s.n, s.cout, s.od, s.oh, s.ow], out);
  convForward(g, s, x.buffer, w.buffer, b?.buffer ?? null, y.buffer, [storageOf(x, "conv3d"), out]);
  const [needDx, needDw, needDb] = [x.requiresGrad, w.requiresGrad, !!b?.requiresGrad];
  record(y, b ? [x, w, b] : [x, w], (dy) => {
    let dx: Tensor | null = null, dw: Tensor | null = null, db: Tensor | null = null;
    if (needDx) {
      dx = Tensor.empty(g, x.shape);
      convBackwardInput(g, s, dy.buffer, w.buffer, dx.buffer);
    }
    if (needDw) {
      dw = Tensor.empty(g, w.shape);
      convBackwardWeight(g, s, x.buffer, dy.buffer, dw.buffer);
    }
    if (b && needDb) {
      db = Tensor.empty(g, b.shape);
      K.conv3dBackwardBias(g, s, dy.buffer, db.buffer);
    }
    return [dx, dw, db];
  }, [...(needDw ? [x] : []), ...(needDx ? [w] : [])]);
  return y;
}
