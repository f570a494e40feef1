// Adam / AdamW update (torch.optim.Adam / AdamW, amsgrad=false, maximize=false): one dispatch per parameter window
// updates the parameter and both moment buffers in place, reading the gradient.
//
// Layout: flat f32 arrays of the parameter's size (param, grad, exp_avg, exp_avg_sq), split into binding windows by
// flatChunks (device.ts). Per element, in PyTorch's order:
//   AdamW: p *= 1 - lr * wd                    Adam: g += wd * p (L2)
//   m = lerp(m, g, 1 - beta1)                  v = v * beta2 + (1 - beta2) * g * g
//   p += -step_size * m / (sqrt(v) / sqrt(bc2) + eps),   step_size = lr / bc1, bc_k = 1 - beta_k^step
// The scalars (bias corrections, step size, decay factor) are computed on the CPU in float64 per step, as PyTorch
// does in Python, and passed as f32 uniforms. Everything is assigned in place; nothing is accumulated elsewhere.

import { flatChunks, type Gpu, grid1d, type Kernel } from "./device.ts";

const WG = 256;

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** AdamW (decoupled weight decay) when true, Adam (L2 added to the gradient) when false. */
  decoupled: boolean;
}

const ADAM: Kernel = {
  name: "adam_step",
  wgsl: `
@group(0) @binding(0) var<storage, read_write> p: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
struct U { n: u32, gridx: u32, omb1: f32, b2: f32, omb2: f32, l2: f32, decay: f32, neg_step: f32, bc2s: f32, eps: f32 }
@group(0) @binding(4) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  let p0 = p[i];
  let gr = g[i] + u.l2 * p0;
  let mi = m[i] + u.omb1 * (gr - m[i]);
  let vi = v[i] * u.b2 + u.omb2 * gr * gr;
  m[i] = mi;
  v[i] = vi;
  p[i] = p0 * u.decay + u.neg_step * (mi / (sqrt(vi) / u.bc2s + u.eps));
}`,
};

/** The step's scalars, in float64 as PyTorch computes them. step: the parameter's count after incrementing. */
function scalars(h: AdamHyper, step: number) {
  const bc1 = 1 - h.beta1 ** step, bc2 = 1 - h.beta2 ** step;
  return {
    l2: h.decoupled ? 0 : h.weightDecay,
    decay: h.decoupled ? 1 - h.lr * h.weightDecay : 1,
    negStep: -(h.lr / bc1),
    bc2s: Math.sqrt(bc2),
  };
}

/** One Adam/AdamW step on a parameter of n elements (all four buffers hold n f32). */
export function adamStep(
  g: Gpu,
  p: GPUBuffer,
  grad: GPUBuffer,
  m: GPUBuffer,
  v: GPUBuffer,
  n: number,
  step: number,
  h: AdamHyper,
) {
  const s = scalars(h, step);
  for (const c of flatChunks(g, n)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const u = new ArrayBuffer(48);
    new Uint32Array(u, 0, 2).set([c.count, grid[0]]);
    new Float32Array(u, 8, 8).set([1 - h.beta1, h.beta2, 1 - h.beta2, s.l2, s.decay, s.negStep, s.bc2s, h.eps]);
    const w = { offset: c.offset, size: c.size };
    g.dispatch(ADAM, [p, grad, m, v].map((buffer) => ({ buffer, ...w })), u, grid);
  }
}

/** CPU reference (float64, in place): PyTorch's single-tensor Adam/AdamW step. step: the count after incrementing. */
export function adamStepRef(
  p: Float64Array,
  grad: ArrayLike<number>,
  m: Float64Array,
  v: Float64Array,
  step: number,
  h: AdamHyper,
) {
  // Transcribed from torch/optim/adam.py (_single_tensor_adam), independently of the kernel's scalars().
  const biasCorrection1 = 1 - h.beta1 ** step;
  const biasCorrection2 = 1 - h.beta2 ** step;
  const stepSize = h.lr / biasCorrection1;
  const biasCorrection2Sqrt = Math.sqrt(biasCorrection2);
  for (let i = 0; i < p.length; i++) {
    if (h.decoupled) p[i] *= 1 - h.lr * h.weightDecay;
    const gr = h.decoupled ? grad[i] : grad[i] + h.weightDecay * p[i];
    m[i] += (1 - h.beta1) * (gr - m[i]);
    v[i] = v[i] * h.beta2 + (1 - h.beta2) * gr * gr;
    const denom = Math.sqrt(v[i]) / biasCorrection2Sqrt + h.eps;
    p[i] += -stepSize * (m[i] / denom);
  }
}
