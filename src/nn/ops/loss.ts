// Softmax/argmax over channels, losses and sums to a scalar, with autodiff. Results stay on the GPU: nothing here
// reads back (the caller reads losses in batches).
import * as E from "../../kernels/elementwise.ts";
import * as K from "../../kernels/loss.ts";
import * as R from "../../kernels/reduce.ts";
import * as S from "../../kernels/softmax.ts";
import { f32Only, record, Tensor } from "../tensor.ts";

/** Softmax over the channels of [N, C, D, H, W] logits (no gradient). */
export function softmax(logits: Tensor): Tensor {
  f32Only("softmax", logits);
  const y = Tensor.empty(logits.gpu, logits.shape);
  S.softmax(logits.gpu, logits.buffer, y.buffer, logits.shape);
  return y;
}

/** First index of the largest channel: u32 [N, D, H, W] from [N, C, D, H, W] logits. */
export function argmax(logits: Tensor): Tensor {
  f32Only("argmax", logits);
  S.channelShape("argmax", logits.shape);
  const [N, , D, H, W] = logits.shape;
  const y = Tensor.empty(logits.gpu, [N, D, H, W], "u32");
  S.argmax(logits.gpu, logits.buffer, y.buffer, logits.shape);
  return y;
}

/**
 * torch.nn.CrossEntropyLoss(weight=weights) with mean reduction: sum_v w[y_v] * -log_softmax(x_v)[y_v] / sum_v w[y_v].
 * logits [N, C, D, H, W] f32, labels [N, D, H, W] u32 in 0..C-1. Returns a scalar [1]. The labels live on the GPU,
 * so an out-of-range label is not thrown here: it makes the loss NaN (and the logits' gradient at that voxel).
 */
export function crossEntropy(logits: Tensor, labels: Tensor, weights: number[]): Tensor {
  f32Only("crossEntropy", logits);
  const g = logits.gpu;
  S.channelShape("crossEntropy", logits.shape);
  const [N, , D, H, W] = logits.shape, want = [N, D, H, W];
  if (labels.dtype !== "u32" || labels.shape.join() !== want.join()) {
    throw new Error(
      `crossEntropy: labels [${labels.shape}] ${labels.dtype} must be u32 [${want}] for logits [${logits.shape}]`,
    );
  }
  const loss = Tensor.empty(g, [1]);
  const wsum = Tensor.empty(g, [1]);
  K.crossEntropy(g, logits.buffer, labels.buffer, loss.buffer, wsum.buffer, logits.shape, labels.size, weights);
  record(loss, [logits], (gy) => {
    const dx = Tensor.empty(g, logits.shape);
    K.crossEntropyBackward(
      g,
      logits.buffer,
      labels.buffer,
      gy.buffer,
      wsum.buffer,
      dx.buffer,
      logits.shape,
      labels.size,
      weights,
    );
    return [dx];
  }, [logits, labels, wsum]);
  wsum.release();
  return loss;
}

/** mean((x - target)^2) as a scalar [1]; gradients to x and to a target tensor that requires grad. */
export function mse(x: Tensor, target: number | Tensor): Tensor {
  f32Only("mse", x);
  const g = x.gpu;
  if (typeof target !== "number" && target.shape.join() !== x.shape.join()) {
    throw new Error(`mse: target [${target.shape}] does not match x [${x.shape}]`);
  }
  // The target's buffer is read at each use: one disposed before the backward then fails loudly.
  const t = () => typeof target === "number" ? target : target.buffer;
  const loss = Tensor.empty(g, [1]);
  K.mse(g, x.buffer, t(), x.size, loss.buffer);
  const inputs = typeof target === "number" ? [x] : [x, target];
  record(loss, inputs, (gy) => {
    const dx = Tensor.empty(g, x.shape);
    K.mseBackward(g, x.buffer, t(), gy.buffer, dx.buffer, x.size);
    if (typeof target === "number" || !target.requiresGrad) return [dx, null];
    const dt = Tensor.empty(g, x.shape);
    E.scale(g, dx.buffer, dt.buffer, x.size, -1);
    return [dx, dt];
  }, typeof target === "number" ? [x] : [x, target]);
  return loss;
}

/** Sum of all elements as a scalar [1]; the gradient broadcasts the upstream scalar. */
export function sumAll(x: Tensor): Tensor {
  f32Only("sumAll", x);
  const g = x.gpu;
  const y = Tensor.empty(g, [1]);
  R.sum(g, x.buffer, x.size, y.buffer);
  record(y, [x], (gy) => {
    const dx = Tensor.empty(g, x.shape);
    R.broadcast(g, gy.buffer, dx.buffer, x.size);
    return [dx];
  }, []);
  return y;
}
