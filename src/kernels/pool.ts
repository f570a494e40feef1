// 3D max pooling, kernel 2 stride 2 (PyTorch max_pool3d(x, 2)): odd sizes are floored, trailing voxels dropped.
//
// Layouts: x, dx are NCDHW f32 [N,C,D,H,W]; y, dy are [N,C,D/2,H/2,W/2] (floor). The forward also writes idx
// (u32, y's shape): the in-plane flat index d*H*W + h*W + w of each window's max, as PyTorch's return_indices. Ties go
// to the first max in (d, h, w) scan order (a later value replaces the max only when strictly greater, as PyTorch's
// CPU kernel; NaN propagation is not reproduced). The backward saves nothing else and assigns dx: each input voxel
// gathers dy from its window when it is that window's argmax, 0 otherwise (no atomics, dropped voxels get 0).
//
// Threads: one per output (forward) or input (backward) voxel; grid x covers an (h, w) slice, y the depth, z the
// plane within a chunk of planes that fits one storage binding.

import { type Gpu, type Kernel } from "./device.ts";
import { planeWindows } from "./planes.ts";

const WG = 256;

const UNIFORMS = `struct U { D: u32, H: u32, W: u32, OD: u32, OH: u32, OW: u32, xshift: u32, yshift: u32 }`;

const FORWARD: Kernel = {
  name: "maxpool2_fwd",
  wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;
${UNIFORMS}
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x >= u.OH * u.OW) { return; }
  let oh = id.x / u.OW;
  let ow = id.x - oh * u.OW;
  let hw = u.H * u.W;
  let xb = u.xshift + id.z * u.D * hw;
  let first = 2u * (id.y * hw + oh * u.W + ow);
  var best = first;
  var m = x[xb + first];
  for (var dd = 0u; dd < 2u; dd++) {
    for (var hh = 0u; hh < 2u; hh++) {
      for (var ww = 0u; ww < 2u; ww++) {
        let j = first + dd * hw + hh * u.W + ww;
        let v = x[xb + j];
        if (v > m) { m = v; best = j; }
      }
    }
  }
  let o = u.yshift + id.z * u.OD * u.OH * u.OW + id.y * u.OH * u.OW + id.x;
  y[o] = m;
  idx[o] = best;
}`,
};

const BACKWARD: Kernel = {
  name: "maxpool2_bwd",
  wgsl: `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
${UNIFORMS}
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let hw = u.H * u.W;
  if (id.x >= hw) { return; }
  let h = id.x / u.W;
  let w = id.x - h * u.W;
  let d = id.y;
  var v = 0.0;
  if (d < 2u * u.OD && h < 2u * u.OH && w < 2u * u.OW) {
    let o = u.yshift + id.z * u.OD * u.OH * u.OW + ((d >> 1u) * u.OH + (h >> 1u)) * u.OW + (w >> 1u);
    if (idx[o] == d * hw + id.x) { v = dy[o]; }
  }
  dx[u.xshift + id.z * u.D * hw + d * hw + id.x] = v;
}`,
};

/** Checks a [N,C,D,H,W] shape with every spatial size >= 2; returns the pooled shape. */
export function pooledShape(shape: readonly number[]): number[] {
  if (shape.length !== 5 || shape.slice(2).some((s) => s < 2)) {
    throw new Error(`maxPool2: x [${shape}] must be [N,C,D,H,W] with D, H, W >= 2`);
  }
  const [N, C, D, H, W] = shape;
  return [N, C, D >> 1, H >> 1, W >> 1];
}

function run(g: Gpu, k: Kernel, bufs: GPUBuffer[], shape: readonly number[], forward: boolean) {
  const [N, C, D, H, W] = shape;
  const [, , OD, OH, OW] = pooledShape(shape);
  // Forward: x, y, idx; backward: dy, idx, dx. Window 0 spans input planes, window 1 output planes.
  const isIn = forward ? [true, false, false] : [false, false, true];
  for (const c of planeWindows(g, N * C, [D * H * W, OD * OH * OW])) {
    const [xw, yw] = c.win;
    const u = new Uint32Array([D, H, W, OD, OH, OW, xw.shift, yw.shift]);
    const binds = bufs.map((buffer, i) => ({
      buffer,
      offset: (isIn[i] ? xw : yw).offset,
      size: (isIn[i] ? xw : yw).size,
    }));
    const grid = forward ? [Math.ceil((OH * OW) / WG), OD, c.count] : [Math.ceil((H * W) / WG), D, c.count];
    g.dispatch(k, binds, u, grid as [number, number, number]);
  }
}

/** y = max over each 2x2x2 window of x; idx = its in-plane argmax. */
export function maxPool2Forward(g: Gpu, x: GPUBuffer, y: GPUBuffer, idx: GPUBuffer, shape: readonly number[]) {
  run(g, FORWARD, [x, y, idx], shape, true);
}

/** dx (x's shape) from dy and the forward's idx. */
export function maxPool2Backward(g: Gpu, dy: GPUBuffer, idx: GPUBuffer, dx: GPUBuffer, shape: readonly number[]) {
  run(g, BACKWARD, [dy, idx, dx], shape, false);
}

// CPU references.

export function maxPool2Ref(x: ArrayLike<number>, shape: readonly number[]): { y: Float64Array; idx: Uint32Array } {
  const [N, C, D, H, W] = shape;
  const [, , OD, OH, OW] = pooledShape(shape);
  const L = D * H * W, M = OD * OH * OW;
  const y = new Float64Array(N * C * M), idx = new Uint32Array(N * C * M);
  for (let p = 0; p < N * C; p++) {
    for (let od = 0; od < OD; od++) {
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          let best = (2 * od * H + 2 * oh) * W + 2 * ow, m = -Infinity; // as PyTorch's CPU kernel
          for (let d = 2 * od; d < 2 * od + 2; d++) {
            for (let h = 2 * oh; h < 2 * oh + 2; h++) {
              for (let w = 2 * ow; w < 2 * ow + 2; w++) {
                const j = (d * H + h) * W + w;
                if (x[p * L + j] > m) [m, best] = [x[p * L + j], j];
              }
            }
          }
          const o = p * M + (od * OH + oh) * OW + ow;
          y[o] = m;
          idx[o] = best;
        }
      }
    }
  }
  return { y, idx };
}

export function maxPool2BackwardRef(dy: ArrayLike<number>, idx: Uint32Array, shape: readonly number[]): Float64Array {
  const [N, C, D, H, W] = shape;
  const [, , OD, OH, OW] = pooledShape(shape);
  const L = D * H * W, M = OD * OH * OW;
  const dx = new Float64Array(N * C * L);
  for (let p = 0; p < N * C; p++) for (let o = 0; o < M; o++) dx[p * L + idx[p * M + o]] += dy[p * M + o];
  return dx;
}
