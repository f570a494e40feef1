// Adam and AdamW with PyTorch semantics (amsgrad=false, maximize=false). Moments live on the GPU beside each
// parameter; each parameter keeps its own step count and is skipped (count unchanged) while its grad is null.
import { type AdamHyper, adamStep } from "../kernels/optim.ts";
import { readAll, Tensor } from "./tensor.ts";

export interface AdamOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** Checkpointable optimiser state: per-parameter step counts and moments, in parameter order. */
export interface AdamState {
  step: Float32Array;
  expAvg: Float32Array[];
  expAvgSq: Float32Array[];
}

class AdamBase {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly params: readonly Tensor[];
  readonly #decoupled: boolean;
  readonly #m: Tensor[];
  readonly #v: Tensor[];
  readonly #steps: number[];

  constructor(params: Tensor[], opts: AdamOptions, decoupled: boolean, defaultWeightDecay: number) {
    const name = decoupled ? "AdamW" : "Adam";
    this.lr = opts.lr;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? defaultWeightDecay;
    if (!(this.lr >= 0) || !(this.eps >= 0) || !(this.weightDecay >= 0)) {
      throw new Error(`${name}: lr ${this.lr}, eps ${this.eps} and weightDecay ${this.weightDecay} must be >= 0`);
    }
    if (!this.betas.every((b) => b >= 0 && b < 1)) throw new Error(`${name}: betas [${this.betas}] must be in [0, 1)`);
    this.#decoupled = decoupled;
    this.params = [...params];
    this.#m = params.map((p) => Tensor.zeros(p.gpu, p.shape).keep());
    this.#v = params.map((p) => Tensor.zeros(p.gpu, p.shape).keep());
    this.#steps = params.map(() => 0);
  }

  /** Updates every parameter that has a gradient (records the dispatches; nothing is read back). */
  step() {
    const h: AdamHyper = {
      lr: this.lr,
      beta1: this.betas[0],
      beta2: this.betas[1],
      eps: this.eps,
      weightDecay: this.weightDecay,
      decoupled: this.#decoupled,
    };
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      if (p.grad.size !== p.size) {
        throw new Error(`optimiser: grad [${p.grad.shape}] does not match parameter ${p.name} [${p.shape}]`);
      }
      adamStep(p.gpu, p.buffer, p.grad.buffer, this.#m[i].buffer, this.#v[i].buffer, p.size, ++this.#steps[i], h);
    });
  }

  zeroGrad() {
    for (const p of this.params) p.zeroGrad();
  }

  /** Copies of the step counts and moments (one GPU round trip). */
  async state(): Promise<AdamState> {
    const all = await readAll([...this.#m, ...this.#v]);
    return {
      step: Float32Array.from(this.#steps),
      expAvg: all.slice(0, this.params.length),
      expAvgSq: all.slice(this.params.length),
    };
  }

  /** Restores a state saved by `state()` for the same parameter list. */
  loadState(st: AdamState) {
    const n = this.params.length;
    if (st.step.length !== n || st.expAvg.length !== n || st.expAvgSq.length !== n) {
      throw new Error(
        `loadState: ${st.step.length} steps, ${st.expAvg.length} exp_avg and ${st.expAvgSq.length} exp_avg_sq ` +
          `for ${n} parameters`,
      );
    }
    this.params.forEach((p, i) => {
      for (const [what, a] of [["exp_avg", st.expAvg[i]], ["exp_avg_sq", st.expAvgSq[i]]] as const) {
        if (a.length !== p.size) {
          throw new Error(`loadState: ${what} of ${a.length} values for parameter ${p.name} [${p.shape}]`);
        }
      }
      if (!(Number.isInteger(st.step[i]) && st.step[i] >= 0)) {
        throw new Error(`loadState: step ${st.step[i]} of parameter ${p.name} is not a count`);
      }
      if (p.size) {
        p.gpu.write(this.#m[i].buffer, st.expAvg[i]);
        p.gpu.write(this.#v[i].buffer, st.expAvgSq[i]);
      }
      this.#steps[i] = st.step[i];
    });
  }

  /** Frees the moment buffers (the optimiser is unusable afterwards). */
  dispose() {
    for (const t of [...this.#m, ...this.#v]) t.dispose();
  }
}

/** torch.optim.Adam: weight decay is L2 added to the gradient (default 0). */
export class Adam extends AdamBase {
  constructor(params: Tensor[], opts: AdamOptions) {
    super(params, opts, false, 0);
  }
}

/** torch.optim.AdamW: decoupled weight decay, p *= 1 - lr * wd before the update (default 1e-2). */
export class AdamW extends AdamBase {
  constructor(params: Tensor[], opts: AdamOptions) {
    super(params, opts, true, 1e-2);
  }
}
