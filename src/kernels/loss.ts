// Losses to a scalar: class-weighted cross-entropy over NCDHW logits and mean squared error.
//
// Cross-entropy (torch.nn.CrossEntropyLoss(weight=w), mean reduction): logits f32 [N, C, S], labels u32 [N, S].
// Forward: one thread per voxel computes w[y] * (logsumexp(x) - x[y]) and w[y]; workgroups reduce them (with a count
// of invalid labels) to vec4 partials and the final pass writes loss = sum(w*nll) / sum(w) and saves sum(w) (a
// one-element buffer) for backward. Backward recomputes the softmax from the saved logits:
// dx[c] = g * w[y] * (softmax(x)[c] - [c == y]) / sum(w) (assigned). Class weights travel in the uniform block
// (C <= 32). Labels >= C cannot be thrown on the GPU: they make the loss NaN and that voxel's gradients NaN (both
// stored as NaN bits, not computed, so no finite-math assumption can drop them); the CPU references throw. If every
// label has weight 0 the loss is 0/0: NaN in PyTorch, indeterminate in WGSL.
//
// MSE: mean((x - t)^2) over n elements, t a scalar or an f32 array of x's size. Forward: a flat reduction
// (reduce.ts). Backward: dx = g * (2/n) * (x - t) (assigned); dt = -dx.

import { type Binding, flatChunks, type Gpu, grid1d, type Kernel } from "./device.ts";
import { finishRatio, flatSum, flatSumKernel, WG, wgSum } from "./reduce.ts";
import { channelShape, VOXEL_UNIFORMS, type VoxelChunk, voxelChunks, voxelUniforms } from "./softmax.ts";

export const MAX_CLASSES = 32;

// Shared per-voxel prologue: m = max over channels, lse = logsumexp, lbl = label (bad = label out of range).
const CE_COMMON = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<u32>;
struct U { ${VOXEL_UNIFORMS}, w: array<vec4f, ${MAX_CLASSES / 4}> }
fn weight(c: u32) -> f32 { return u.w[c / 4u][c % 4u]; }
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn max_channel(b: u32) -> f32 {
  var m = x[b];
  for (var c = 1u; c < u.C; c++) { m = max(m, x[b + c * u.S]); }
  return m;
}
fn sum_exp(b: u32, m: f32) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < u.C; c++) { s += exp(x[b + c * u.S] - m); }
  return s;
}`;

const CE_FWD: Kernel = {
  name: "cross_entropy_fwd",
  wgsl: `${CE_COMMON}
@group(0) @binding(2) var<storage, read_write> parts: array<vec4f>;
@group(0) @binding(3) var<uniform> u: U;
${wgSum("vec4f")}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * u.gridx;
  let v = wid * ${WG}u + lid;
  var r = vec4f(0.0);
  if (v < u.count) {
    let b = u.shift + v;
    let m = max_channel(b);
    let lbl = y[u.vshift + v];
    if (lbl < u.C) {
      let w = weight(lbl);
      r = vec4f(w * (m + log(sum_exp(b, m)) - x[b + lbl * u.S]), w, 0.0, 0.0);
    } else {
      r = vec4f(0.0, 0.0, 1.0, 0.0);
    }
  }
  let t = wg_sum(lid, r);
  if (lid == 0u) { parts[u.base + wid] = t; }
}`,
};

const CE_BWD: Kernel = {
  name: "cross_entropy_bwd",
  wgsl: `${CE_COMMON}
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read> wsum: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let v = (wg.x + wg.y * u.gridx) * ${WG}u + lid;
  if (v >= u.count) { return; }
  let b = u.shift + v;
  let lbl = y[u.vshift + v];
  if (lbl >= u.C) {
    for (var c = 0u; c < u.C; c++) { dx[b + c * u.S] = nan(); }
    return;
  }
  let m = max_channel(b);
  let inv = 1.0 / sum_exp(b, m);
  let k = gy[0] * weight(lbl) / wsum[0];
  for (var c = 0u; c < u.C; c++) {
    dx[b + c * u.S] = k * (exp(x[b + c * u.S] - m) * inv - select(0.0, 1.0, c == lbl));
  }
}`,
};

function ceUniforms(c: VoxelChunk, S: number, weights: number[], gridx: number, base = 0): ArrayBuffer {
  const u = voxelUniforms(c, S, weights.length, gridx, base, 32 + MAX_CLASSES * 4);
  new Float32Array(u, 32, weights.length).set(weights);
  return u;
}

function ceCheck(shape: readonly number[], labelsSize: number, weights: number[]): number {
  const S = channelShape("crossEntropy", shape);
  if (labelsSize !== shape[0] * S) {
    throw new Error(`crossEntropy: labels of ${labelsSize} values do not match logits [${shape}] (N*D*H*W)`);
  }
  if (weights.length !== shape[1] || shape[1] > MAX_CLASSES) {
    throw new Error(`crossEntropy: ${weights.length} weights for logits [${shape}] (need C <= ${MAX_CLASSES})`);
  }
  return S;
}

/** loss[0] = weighted mean cross-entropy; wsum[0] = sum of w[y] (saved for backward). */
export function crossEntropy(
  g: Gpu,
  x: GPUBuffer,
  labels: GPUBuffer,
  loss: GPUBuffer,
  wsum: GPUBuffer,
  shape: readonly number[],
  labelsSize: number,
  weights: number[],
) {
  const S = ceCheck(shape, labelsSize, weights);
  const chunks = voxelChunks(g, shape).map((c) => ({ ...c, grid: grid1d(g, Math.ceil(c.count / WG)) }));
  const nParts = Math.max(1, chunks.reduce((s, c) => s + c.grid[0] * c.grid[1], 0));
  const parts = g.alloc(nParts * 16);
  if (!chunks.length) g.zero(parts, 0, 16);
  let base = 0;
  for (const c of chunks) {
    const binds: Binding[] = [
      { buffer: x, offset: c.offset, size: c.size },
      { buffer: labels, offset: c.vOffset, size: c.vSize },
      { buffer: parts, size: nParts * 16 },
    ];
    g.dispatch(CE_FWD, binds, ceUniforms(c, S, weights, c.grid[0], base), c.grid);
    base += c.grid[0] * c.grid[1];
  }
  finishRatio(g, parts, nParts, loss, wsum);
  g.free(parts);
}

/** dx = d(loss)/d(logits) given the upstream scalar gradient gy[0] and the forward's wsum[0]. */
export function crossEntropyBackward(
  g: Gpu,
  x: GPUBuffer,
  labels: GPUBuffer,
  gy: GPUBuffer,
  wsum: GPUBuffer,
  dx: GPUBuffer,
  shape: readonly number[],
  labelsSize: number,
  weights: number[],
) {
  const S = ceCheck(shape, labelsSize, weights);
  for (const c of voxelChunks(g, shape)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const binds: Binding[] = [
      { buffer: x, offset: c.offset, size: c.size },
      { buffer: labels, offset: c.vOffset, size: c.vSize },
      { buffer: gy, size: 4 },
      { buffer: wsum, size: 4 },
      { buffer: dx, offset: c.offset, size: c.size },
    ];
    g.dispatch(CE_BWD, binds, ceUniforms(c, S, weights, grid[0]), grid);
  }
}

const MSE_SCALAR = flatSumKernel("mse_scalar_partials", "(v - u.t) * (v - u.t)", false);
const MSE_TENSOR = flatSumKernel("mse_tensor_partials", "(v - w) * (v - w)", true);

/** loss[0] = mean((x - t)^2) over n elements; t is a number or a buffer of n values. */
export function mse(g: Gpu, x: GPUBuffer, t: number | GPUBuffer, n: number, loss: GPUBuffer) {
  if (typeof t === "number") flatSum(g, MSE_SCALAR, [x], n, loss, 1 / n, t);
  else flatSum(g, MSE_TENSOR, [x, t], n, loss, 1 / n);
}

function mseBackwardKernel(tensorTarget: boolean): Kernel {
  const z = tensorTarget ? 1 : 0;
  return {
    name: `mse_bwd_${tensorTarget ? "tensor" : "scalar"}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
${tensorTarget ? "@group(0) @binding(1) var<storage, read> t: array<f32>;" : ""}
@group(0) @binding(${1 + z}) var<storage, read> gy: array<f32>;
@group(0) @binding(${2 + z}) var<storage, read_write> dx: array<f32>;
struct U { n: u32, gridx: u32, a: f32, t: f32 }
@group(0) @binding(${3 + z}) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  dx[i] = u.a * gy[0] * (x[i] - ${tensorTarget ? "t[i]" : "u.t"});
}`,
  };
}
const MSE_BWD_SCALAR = mseBackwardKernel(false);
const MSE_BWD_TENSOR = mseBackwardKernel(true);

/** dx = gy[0] * (2/n) * (x - t). */
export function mseBackward(g: Gpu, x: GPUBuffer, t: number | GPUBuffer, gy: GPUBuffer, dx: GPUBuffer, n: number) {
  const k = typeof t === "number" ? MSE_BWD_SCALAR : MSE_BWD_TENSOR;
  for (const c of flatChunks(g, n)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const u = new ArrayBuffer(16);
    new Uint32Array(u, 0, 2).set([c.count, grid[0]]);
    new Float32Array(u, 8, 2).set([2 / n, typeof t === "number" ? t : 0]);
    const w = { offset: c.offset, size: c.size };
    const binds: Binding[] = [{ buffer: x, ...w }];
    if (typeof t !== "number") binds.push({ buffer: t, ...w });
    binds.push({ buffer: gy, size: 4 }, { buffer: dx, ...w });
    g.dispatch(k, binds, u, grid);
  }
}

// CPU references (float64). Labels must be in 0..C-1 (an out-of-range label throws).
function checkLabel(op: string, lbl: number, C: number, at: number) {
  if (!(Number.isInteger(lbl) && lbl >= 0 && lbl < C)) {
    throw new Error(`${op}: label ${lbl} at voxel ${at} is outside 0..${C - 1}`);
  }
}

export function crossEntropyRef(
  x: ArrayLike<number>,
  labels: ArrayLike<number>,
  weights: number[],
  shape: readonly number[],
): number {
  const [N, C] = shape, S = ceCheck(shape, labels.length, weights);
  let num = 0, den = 0;
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      const b = n * C * S + s, lbl = labels[n * S + s];
      checkLabel("crossEntropyRef", lbl, C, n * S + s);
      let m = -Infinity, z = 0;
      for (let c = 0; c < C; c++) m = Math.max(m, x[b + c * S]);
      for (let c = 0; c < C; c++) z += Math.exp(x[b + c * S] - m);
      num += weights[lbl] * (m + Math.log(z) - x[b + lbl * S]);
      den += weights[lbl];
    }
  }
  return num / den;
}

/** d(crossEntropyRef)/dx times the upstream scalar gy. */
export function crossEntropyBackwardRef(
  x: ArrayLike<number>,
  labels: ArrayLike<number>,
  weights: number[],
  shape: readonly number[],
  gy = 1,
): Float64Array {
  const [N, C] = shape, S = ceCheck(shape, labels.length, weights);
  let den = 0;
  for (let i = 0; i < labels.length; i++) {
    checkLabel("crossEntropyBackwardRef", labels[i], C, i);
    den += weights[labels[i]];
  }
  const dx = new Float64Array(x.length);
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      const b = n * C * S + s, lbl = labels[n * S + s], k = gy * weights[lbl] / den;
      let m = -Infinity, z = 0;
      for (let c = 0; c < C; c++) m = Math.max(m, x[b + c * S]);
      for (let c = 0; c < C; c++) z += Math.exp(x[b + c * S] - m);
      for (let c = 0; c < C; c++) dx[b + c * S] = k * (Math.exp(x[b + c * S] - m) / z - (c === lbl ? 1 : 0));
    }
  }
  return dx;
}

export function mseRef(x: ArrayLike<number>, t: number | ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    const d = x[i] - (typeof t === "number" ? t : t[i]);
    s += d * d;
  }
  return s / x.length;
}

/** d(mseRef)/dx times gy (d/dt is its negation). */
export function mseBackwardRef(x: ArrayLike<number>, t: number | ArrayLike<number>, gy = 1): Float64Array {
  return Float64Array.from(x, (v, i) => gy * (2 / x.length) * (v - (typeof t === "number" ? t : t[i])));
}
