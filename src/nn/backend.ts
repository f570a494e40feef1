// The few layer operations the networks are written in, so that one description of the U-Net and the discriminator
// runs on two backends: the GPU (autodiff tensors, what hadnet trains and infers with) and a float64 CPU tape built
// from the kernels' CPU references (src/nn/cpu_backend.ts), which the parity check uses as a float64 twin.
// Parameters are referred to by their PyTorch state-dict names; each backend resolves them.

import type { Storage } from "../kernels/device.ts";
import type { Params } from "./module.ts";
import { concat } from "./ops/concat.ts";
import { conv3d } from "./ops/conv.ts";
import { dropout3d } from "./ops/dropout.ts";
import { add, leakyRelu } from "./ops/elementwise.ts";
import { instanceNormLeakyRelu } from "./ops/norm.ts";
import { maxPool2 } from "./ops/pool.ts";
import { resizeNearest } from "./ops/resize.ts";
import type { Rng } from "./rng.ts";
import type { Tensor } from "./tensor.ts";

export interface Backend<T> {
  shape(x: T): readonly number[];
  /** Conv3d with a kernel size taken from the weight; bias null for none. */
  conv(x: T, weight: string, bias: string | null, stride: 1 | 2, pad: number): T;
  /** Instance norm (affine when weight/bias are named) followed by LeakyReLU(slope). */
  normAct(x: T, weight: string | null, bias: string | null, slope: number): T;
  leakyRelu(x: T, slope: number): T;
  maxPool2(x: T): T;
  resize(x: T, size: [number, number, number]): T;
  add(a: T, b: T): T;
  /** Concatenation along channels. */
  concat(xs: T[]): T;
  /** Dropout3d with probability p in training mode; identity otherwise (and for p = 0). */
  dropout(x: T, p: number): T;
  /**
   * The network reads these values no more (the activation plan). A backend may free what it created in this
   * forward once no backward reads it; the caller's inputs and traced outputs are never freed.
   */
  release(...xs: T[]): void;
}

export interface ForwardMode {
  training: boolean;
  /** Dropout stream; required in training mode when dropout > 0. */
  rng?: Rng;
  /** When given, every LeakyReLU output is appended in network order (the parity check reads its sign pattern). */
  trace?: Tensor[];
  /**
   * "f16": convolutions write their outputs as f16, so every activation after the input is stored in half the
   * memory (arithmetic stays f32). Inference only: it needs noGrad, eval mode and the adapter's shader-f16.
   */
  storage?: Storage;
}

/**
 * The GPU backend over a network's parameters. `release` frees (via Tensor.release) only tensors this backend made
 * in this forward and did not trace, so the caller's inputs and the parity check's traces stay.
 */
export function gpuBackend(params: Params, mode: ForwardMode): Backend<Tensor> {
  const p = (n: string) => params.get(n);
  const made = new Set<Tensor>();
  const own = (y: Tensor) => {
    made.add(y);
    return y;
  };
  const act = (y: Tensor) => {
    if (!mode.trace) return own(y);
    mode.trace.push(y);
    return y;
  };
  return {
    shape: (x) => x.shape,
    conv: (x, w, b, stride, pad) => own(conv3d(x, p(w), b ? p(b) : null, stride, pad, mode.storage)),
    normAct: (x, w, b, slope) => act(instanceNormLeakyRelu(x, w ? p(w) : null, b ? p(b) : null, slope)),
    leakyRelu: (x, slope) => act(leakyRelu(x, slope)),
    maxPool2: (x) => own(maxPool2(x)),
    resize: (x, size) => own(resizeNearest(x, size)),
    add: (a, b) => own(add(a, b)),
    concat: (xs) => own(concat(xs)),
    dropout: (x, prob) => {
      if (!mode.training || prob === 0) return x;
      if (!mode.rng) throw new Error("training mode with dropout needs a random stream");
      return own(dropout3d(x, prob, mode.rng));
    },
    release: (...xs) => {
      for (const x of xs) if (made.delete(x)) x.release();
    },
  };
}
