// A float64 CPU twin of the networks: the Backend interface over the kernels' CPU references, with a Wengert tape
// for reverse mode. It is slow and only meant for small volumes: the parity check runs it beside the GPU.
//
// LeakyReLU sites: every normAct/leakyRelu call is one site, numbered in network order. A site's derivative pattern
// (pre-activation > 0) is recorded in `masks`; when `forced` masks are given (e.g. the sign pattern of the GPU's
// outputs), the site uses them instead, in the forward and the backward. The network is piecewise linear in those
// patterns, so forcing the GPU's pattern makes this twin differentiate the same piece as the GPU: float32 rounding
// near a kink can then no longer make the two gradients differ.

import { conv3dBackwardRef, conv3dRef, conv3dShape } from "../kernels/conv3d.ts";
import { concatBackwardRef, concatRef } from "../kernels/concat.ts";
import { crossEntropyBackwardRef, crossEntropyRef, mseBackwardRef, mseRef } from "../kernels/loss.ts";
import { instanceNormBackwardRef, instanceNormRef } from "../kernels/norm.ts";
import { maxPool2BackwardRef, maxPool2Ref, pooledShape } from "../kernels/pool.ts";
import { resizeNearestBackwardRef, resizeNearestRef } from "../kernels/resize.ts";
import type { Backend } from "./backend.ts";
import type { Weights } from "./safetensors.ts";

export interface CpuTensor {
  shape: readonly number[];
  data: Float64Array;
  grad: Float64Array | null;
}

export class CpuBackend implements Backend<CpuTensor> {
  readonly params = new Map<string, CpuTensor>();
  readonly masks: Uint8Array[] = [];
  readonly #forced: Uint8Array[] | null;
  readonly #tape: (() => void)[] = [];

  constructor(weights: Weights, forced: Uint8Array[] | null = null) {
    for (const [name, t] of weights) this.params.set(name, tensor(t.shape, Float64Array.from(t.data)));
    this.#forced = forced;
  }

  param(name: string): CpuTensor {
    const p = this.params.get(name);
    if (!p) throw new Error(`CpuBackend: no parameter ${name}`);
    return p;
  }

  /** A leaf tensor (gradients accumulate into its `grad` when the tape is run). */
  input(shape: readonly number[], data: ArrayLike<number>): CpuTensor {
    return tensor(shape, Float64Array.from(data));
  }

  shape(x: CpuTensor): readonly number[] {
    return x.shape;
  }

  conv(x: CpuTensor, weight: string, bias: string | null, stride: 1 | 2, pad: number): CpuTensor {
    const w = this.param(weight), b = bias ? this.param(bias) : null;
    const s = conv3dShape(x.shape, w.shape, b ? b.shape : null, stride, pad);
    const y = tensor([s.n, s.cout, s.od, s.oh, s.ow], conv3dRef(x.data, w.data, b ? b.data : null, s));
    this.#tape.push(() => {
      if (!y.grad) return;
      const g = conv3dBackwardRef(x.data, w.data, y.grad, s);
      accumulate(x, g.dx);
      accumulate(w, g.dw);
      if (b) accumulate(b, g.db);
    });
    return y;
  }

  normAct(x: CpuTensor, weight: string | null, bias: string | null, slope: number): CpuTensor {
    const affine = weight && bias ? { weight: this.param(weight).data, bias: this.param(bias).data } : null;
    const pre = instanceNormRef(x.data, x.shape, affine, 1).y;
    const { y, mask } = this.#act(pre, x.shape, slope);
    this.#tape.push(() => {
      if (!y.grad) return;
      const gpre = y.grad.map((g, i) => mask[i] ? g : slope * g);
      const g = instanceNormBackwardRef(x.data, gpre, x.shape, affine, 1);
      accumulate(x, g.dx);
      if (weight && bias) {
        accumulate(this.param(weight), g.dweight);
        accumulate(this.param(bias), g.dbias);
      }
    });
    return y;
  }

  leakyRelu(x: CpuTensor, slope: number): CpuTensor {
    const { y, mask } = this.#act(x.data, x.shape, slope);
    this.#tape.push(() => {
      if (y.grad) accumulate(x, y.grad.map((g, i) => mask[i] ? g : slope * g));
    });
    return y;
  }

  maxPool2(x: CpuTensor): CpuTensor {
    const r = maxPool2Ref(x.data, x.shape);
    const y = tensor(pooledShape(x.shape), r.y);
    this.#tape.push(() => {
      if (y.grad) accumulate(x, maxPool2BackwardRef(y.grad, r.idx, x.shape));
    });
    return y;
  }

  resize(x: CpuTensor, size: [number, number, number]): CpuTensor {
    const y = tensor([x.shape[0], x.shape[1], ...size], resizeNearestRef(x.data, x.shape, size));
    this.#tape.push(() => {
      if (y.grad) accumulate(x, resizeNearestBackwardRef(y.grad, x.shape, size));
    });
    return y;
  }

  add(a: CpuTensor, b: CpuTensor): CpuTensor {
    const y = tensor(a.shape, a.data.map((v, i) => v + b.data[i]));
    this.#tape.push(() => {
      if (!y.grad) return;
      accumulate(a, y.grad);
      accumulate(b, y.grad);
    });
    return y;
  }

  concat(xs: CpuTensor[]): CpuTensor {
    const shapes = xs.map((x) => x.shape);
    const c = shapes.reduce((n, s) => n + s[1], 0);
    const y = tensor([xs[0].shape[0], c, ...xs[0].shape.slice(2)], concatRef(xs.map((x) => x.data), shapes));
    this.#tape.push(() => {
      if (y.grad) concatBackwardRef(y.grad, shapes).forEach((g, i) => accumulate(xs[i], g));
    });
    return y;
  }

  /** The float64 twin keeps every value: its tape reads them, and its arrays are garbage-collected. */
  release() {}

  /** The twin evaluates networks in eval mode, where Dropout3d is the identity. */
  dropout(x: CpuTensor): CpuTensor {
    return x;
  }

  /** PyTorch's weighted cross-entropy (mean over the weights of the targets), as a scalar tensor. */
  crossEntropy(logits: CpuTensor, labels: ArrayLike<number>, weights: number[]): CpuTensor {
    const y = tensor([1], [crossEntropyRef(logits.data, labels, weights, logits.shape)]);
    this.#tape.push(() => {
      if (y.grad) accumulate(logits, crossEntropyBackwardRef(logits.data, labels, weights, logits.shape, y.grad[0]));
    });
    return y;
  }

  /** Mean squared difference from a constant target, as a scalar tensor. */
  mse(x: CpuTensor, target: number): CpuTensor {
    const y = tensor([1], [mseRef(x.data, target)]);
    this.#tape.push(() => {
      if (y.grad) accumulate(x, mseBackwardRef(x.data, target, y.grad[0]));
    });
    return y;
  }

  /** a + alpha * b for scalars. */
  axpy(a: CpuTensor, b: CpuTensor, alpha: number): CpuTensor {
    const y = tensor([1], [a.data[0] + alpha * b.data[0]]);
    this.#tape.push(() => {
      if (!y.grad) return;
      accumulate(a, y.grad);
      accumulate(b, y.grad.map((g) => alpha * g));
    });
    return y;
  }

  /** Runs the tape backwards from a scalar; gradients land in every tensor's (and parameter's) `grad`. */
  backward(root: CpuTensor) {
    if (root.data.length !== 1) throw new Error(`CpuBackend.backward: root [${root.shape}] is not a scalar`);
    root.grad = new Float64Array([1]);
    for (let i = this.#tape.length - 1; i >= 0; i--) this.#tape[i]();
    this.#tape.length = 0;
  }

  #act(pre: Float64Array, shape: readonly number[], slope: number): { y: CpuTensor; mask: Uint8Array } {
    const site = this.masks.length;
    const forced = this.#forced?.[site];
    if (this.#forced && !forced) throw new Error(`CpuBackend: no forced mask for LeakyReLU site ${site}`);
    if (forced && forced.length !== pre.length) {
      throw new Error(`CpuBackend: forced mask ${site} has ${forced.length} values, the site ${pre.length}`);
    }
    const mask = forced ?? Uint8Array.from(pre, (v) => v > 0 ? 1 : 0);
    this.masks.push(mask);
    return { y: tensor(shape, pre.map((v, i) => mask[i] ? v : slope * v)), mask };
  }
}

function tensor(shape: readonly number[], data: ArrayLike<number>): CpuTensor {
  return { shape: [...shape], data: data instanceof Float64Array ? data : Float64Array.from(data), grad: null };
}

function accumulate(t: CpuTensor, g: ArrayLike<number>) {
  if (!t.grad) t.grad = new Float64Array(t.data.length);
  for (let i = 0; i < g.length; i++) t.grad[i] += g[i];
}
