// Softmax and argmax over the channels of NCDHW logits (one thread per voxel, looping over C channel planes).
//
// Layouts: logits and probabilities f32 [N, C, S] (S = D*H*W); argmax u32 [N, S]. Softmax is max-shifted (stable);
// argmax returns the first maximal channel, as torch.argmax. Neither op has a backward (inference and metrics only).
// Large tensors: `voxelChunks` splits each batch item into voxel ranges whose window, spanning all C planes of the
// range, fits one storage binding; the kernels read channel c of voxel v at shift + c * S + v.

import { bindingWindow, type Gpu, grid1d, type Kernel } from "./device.ts";
import { WG } from "./reduce.ts";

export interface VoxelChunk {
  /** Batch item and its first voxel; count voxels from there. */
  n: number;
  s0: number;
  count: number;
  /** Window over the [N, C, S] tensor (bytes) and the element shift of (c=0, s0) inside it. */
  offset: number;
  size: number;
  shift: number;
  /** Window over an [N, S] tensor (labels, argmax) and the element shift of s0 inside it. */
  vOffset: number;
  vSize: number;
  vShift: number;
}

/** Splits the voxels of [N, C, S] into ranges whose all-channel window fits one binding. */
export function voxelChunks(g: Gpu, shape: readonly number[]): VoxelChunk[] {
  const [N, C] = shape;
  const S = shape.slice(2).reduce((a, b) => a * b, 1);
  const usable = (g.maxBinding - g.offsetAlign) / 4; // elements, leaving room for the alignment shift
  const per = Math.min(S, usable - (C - 1) * S);
  if (per < 1) {
    throw new Error(
      `[${shape}]: ${C} channel planes of ${S} voxels do not fit one storage binding (${g.maxBinding} B)`,
    );
  }
  const window = (start: number, elems: number) => bindingWindow(g, start, elems);
  const out: VoxelChunk[] = [];
  for (let n = 0; n < N; n++) {
    for (let s0 = 0; s0 < S; s0 += per) {
      const count = Math.min(per, S - s0);
      const w = window(n * C * S + s0, (C - 1) * S + count), v = window(n * S + s0, count);
      out.push({ n, s0, count, ...w, vOffset: v.offset, vSize: v.size, vShift: v.shift });
    }
  }
  return out;
}

/** Checks a [N, C, D, H, W] logits shape and returns S = D*H*W. */
export function channelShape(op: string, shape: readonly number[]): number {
  if (shape.length !== 5 || shape[1] < 1) throw new Error(`${op}: logits [${shape}] must be [N, C, D, H, W], C >= 1`);
  return shape[2] * shape[3] * shape[4];
}

/** WGSL: the uniform block shared by the per-voxel channel kernels (extra fields appended by each kernel). */
export const VOXEL_UNIFORMS = "S: u32, C: u32, count: u32, shift: u32, vshift: u32, gridx: u32, base: u32, pad: u32";

/** Packs the VOXEL_UNIFORMS header (32 bytes) of a chunk into a uniform buffer of `bytes`. */
export function voxelUniforms(c: VoxelChunk, S: number, C: number, gridx: number, base = 0, bytes = 32): ArrayBuffer {
  const u = new ArrayBuffer(bytes);
  new Uint32Array(u, 0, 8).set([S, C, c.count, c.shift, c.vShift, gridx, base, 0]);
  return u;
}

/** One thread per voxel v of a chunk: `body` reads x at b + c * S (b = the voxel's channel 0) and writes y. */
function voxelKernel(name: string, yType: "f32" | "u32", body: string): Kernel {
  return {
    name,
    wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<${yType}>;
struct U { ${VOXEL_UNIFORMS} }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let v = (wg.x + wg.y * u.gridx) * ${WG}u + lid;
  if (v >= u.count) { return; }
  let b = u.shift + v;
${body}
}`,
  };
}

const SOFTMAX = voxelKernel(
  "softmax_channels",
  "f32",
  `  var m = x[b];
  for (var c = 1u; c < u.C; c++) { m = max(m, x[b + c * u.S]); }
  var s = 0.0;
  for (var c = 0u; c < u.C; c++) { s += exp(x[b + c * u.S] - m); }
  let inv = 1.0 / s;
  for (var c = 0u; c < u.C; c++) { y[b + c * u.S] = exp(x[b + c * u.S] - m) * inv; }`,
);

const ARGMAX = voxelKernel(
  "argmax_channels",
  "u32",
  `  var m = x[b];
  var k = 0u;
  for (var c = 1u; c < u.C; c++) {
    let xc = x[b + c * u.S];
    if (xc > m) { m = xc; k = c; }
  }
  y[u.vshift + v] = k;`,
);

/** y = softmax over channels of x, both [N, C, D, H, W]. */
export function softmax(g: Gpu, x: GPUBuffer, y: GPUBuffer, shape: readonly number[]) {
  const S = channelShape("softmax", shape);
  for (const c of voxelChunks(g, shape)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const w = { offset: c.offset, size: c.size };
    g.dispatch(SOFTMAX, [{ buffer: x, ...w }, { buffer: y, ...w }], voxelUniforms(c, S, shape[1], grid[0]), grid);
  }
}

/** y (u32 [N, D, H, W]) = index of the first largest channel of x ([N, C, D, H, W]). */
export function argmax(g: Gpu, x: GPUBuffer, y: GPUBuffer, shape: readonly number[]) {
  const S = channelShape("argmax", shape);
  for (const c of voxelChunks(g, shape)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const binds = [{ buffer: x, offset: c.offset, size: c.size }, { buffer: y, offset: c.vOffset, size: c.vSize }];
    g.dispatch(ARGMAX, binds, voxelUniforms(c, S, shape[1], grid[0]), grid);
  }
}

// CPU references (float64).
export function softmaxRef(x: ArrayLike<number>, shape: readonly number[]): Float64Array {
  const [N, C] = shape, S = channelShape("softmaxRef", shape);
  const y = new Float64Array(x.length);
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      const b = n * C * S + s;
      let m = -Infinity, z = 0;
      for (let c = 0; c < C; c++) m = Math.max(m, x[b + c * S]);
      for (let c = 0; c < C; c++) z += Math.exp(x[b + c * S] - m);
      for (let c = 0; c < C; c++) y[b + c * S] = Math.exp(x[b + c * S] - m) / z;
    }
  }
  return y;
}

export function argmaxRef(x: ArrayLike<number>, shape: readonly number[]): Uint32Array {
  const [N, C] = shape, S = channelShape("argmaxRef", shape);
  const y = new Uint32Array(N * S);
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      const b = n * C * S + s;
      let k = 0;
      for (let c = 1; c < C; c++) if (x[b + c * S] > x[b + k * S]) k = c;
      y[n * S + s] = k;
    }
  }
  return y;
}
