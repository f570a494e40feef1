// Autodiff wrappers for instance normalisation (PyTorch InstanceNorm3d) and its fusion with LeakyReLU.
import * as K from "../../kernels/norm.ts";
import { record, storageOf, Tensor } from "../tensor.ts";

/**
 * act((x - mean) / sqrt(var + eps) * weight + bias) per (n, c) plane of an [N,C,D,H,W] x, act = LeakyReLU(slope)
 * (slope 1: none). weight and bias ([C] each) are both given (affine) or both null. Saves x and (mean, rstd) per plane.
 */
export function instanceNormLeakyRelu(x: Tensor, weight: Tensor | null, bias: Tensor | null, slope: number): Tensor {
  const g = x.gpu;
  if (!weight !== !bias) throw new Error(`instanceNorm: weight and bias must both be given or both be null`);
  const affine = weight && bias ? { weight, bias } : null;
  const { N, C } = K.normShape("instanceNorm", x.shape, affine && [affine.weight.size, affine.bias.size]);
  const bufs = affine && { weight: affine.weight.buffer, bias: affine.bias.buffer };
  const stats = Tensor.empty(g, [N * C, 2]);
  const t = storageOf(x, "instanceNorm");
  const y = Tensor.empty(g, x.shape, t);
  K.instanceNormForward(g, x.buffer, y.buffer, stats.buffer, bufs, x.shape, slope, t);
  record(y, affine ? [x, affine.weight, affine.bias] : [x], (dz) => {
    const dx = Tensor.empty(g, x.shape);
    const dw = affine && Tensor.empty(g, [C]), db = affine && Tensor.empty(g, [C]);
    const dbufs = dw && db && { weight: dw.buffer, bias: db.buffer };
    K.instanceNormBackward(g, x.buffer, dz.buffer, stats.buffer, bufs, dx.buffer, dbufs, x.shape, slope);
    return [dx, dw, db];
  }, affine ? [x, stats, affine.weight, affine.bias] : [x, stats]);
  stats.release();
  return y;
}

/** PyTorch InstanceNorm3d (eps 1e-5, biased variance); affine when weight and bias ([C]) are given. */
export function instanceNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null): Tensor {
  return instanceNormLeakyRelu(x, weight, bias, 1);
}
