// 3D max pooling, kernel 2 stride 2 (PyTorch max_pool3d(x, 2)): odd sizes are floored, trailing voxels dropped.
//
// Layouts: x, dx are NCDHW f32 [N,C,D,H,W]; y, dy are [N,C,D/2,H/2,W/2] (floor). The forward also reads and writes
// f16 storage (x and y alike; inference). The forward also writes idx
// (u32, y's shape): the in-plane flat index d*H*W + h*W + w of each window's max, as PyTorch's return_indices. Ties go
// to the first max in (d, h, w) scan order (a later value replaces the max only when strictly greater, as PyTorch's
// CPU kernel; NaN propagation is not reproduced). The backward saves nothing else and assigns dx: each input voxel
// gathers dy from its window when it is that window's argmax, 0 otherwise (no atomics, dropped voxels get 0).
//
// Threads: one per output (forward) or input (backward) voxel; grid x covers an (h, w) slice, y the depth, z the
// plane within a chunk of planes that fits one storage binding.

import { enables, type Gpu, type Kernel, type Storage, STORAGE_BYTES } from "./device.ts";
import { planeWindows } from "./planes.ts";

const WG = 256;

// Shifts of the window over input planes, over output planes, and over idx (which differs from y's for f16 storage).
const UNIFORMS = `struct U {
  D: u32, H: u32, W: u32, OD: u32, OH: u32, OW: u32, xshift: u32, yshift: u32, ishift: u32, p0: u32, p1: u32, p2: u32 }`;

const forward = (t: Storage): Kernel => ({
  name: t === "f32" ? "maxpool2_fwd" : `maxpool2_fwd_${t}`,
  wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read_write> y: array<${t}>;
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
  var m = f32(x[xb + first]);
  for (var dd = 0u; dd < 2u; dd++) {
    for (var hh = 0u; hh < 2u; hh++) {
      for (var ww = 0u; ww < 2u; ww++) {
        let j = first + dd * hw + hh * u.W + ww;
        let v = f32(x[xb + j]);
        if (v > m) { m = v; best = j; }
      }
    }
  }
  let o = id.z * u.OD * u.OH * u.OW + id.y * u.OH * u.OW + id.x;
  y[u.yshift + o] = ${t}(m); // exact: the max of values already stored as t
  idx[u.ishift + o] = best;
}`,
});
const FORWARD = { f32: forward("f32"), f16: forward("f16") };

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
    let o = id.z * u.OD * u.OH * u.OW + ((d >> 1u) * u.OH + (h >> 1u)) * u.OW + (w >> 1u);
    if (idx[u.ishift + o] == d * hw + id.x) { v = dy[u.yshift + o]; }
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

/** Dispatches k over plane chunks; per buffer, whether it has input planes and its element size. */
function run(g: Gpu, k: Kernel, bufs: [GPUBuffer, boolean, number][], shape: readonly number[], forward: boolean) {
  const [N, C, D, H, W] = shape;
  const [, , OD, OH, OW] = pooledShape(shape);
  const planes = bufs.map(([, isIn]) => isIn ? D * H * W : OD * OH * OW);
  for (const c of planeWindows(g, N * C, planes, bufs.map(([, , eb]) => eb))) {
    const [xw, yw, iw] = forward ? c.win : [c.win[2], c.win[0], c.win[1]]; // input planes, output planes, idx
    const u = new Uint32Array([D, H, W, OD, OH, OW, xw.shift, yw.shift, iw.shift, 0, 0, 0]);
    const binds = bufs.map(([buffer], i) => ({ buffer, offset: c.win[i].offset, size: c.win[i].size }));
    const grid = forward ? [Math.ceil((OH * OW) / WG), OD, c.count] : [Math.ceil((H * W) / WG), D, c.count];
    g.dispatch(k, binds, u, grid as [number, number, number]);
  }
}

/** y = max over each 2x2x2 window of x (both stored as t); idx = its in-plane argmax. */
export function maxPool2Forward(
  g: Gpu,
  x: GPUBuffer,
  y: GPUBuffer,
  idx: GPUBuffer,
  shape: readonly number[],
  t: Storage = "f32",
) {
  const eb = STORAGE_BYTES[t];
  run(g, FORWARD[t], [[x, true, eb], [y, false, eb], [idx, false, 4]], shape, true);
}

/** dx (x's shape) from dy and the forward's idx. */
export function maxPool2Backward(g: Gpu, dy: GPUBuffer, idx: GPUBuffer, dx: GPUBuffer, shape: readonly number[]) {
  run(g, BACKWARD, [[dy, false, 4], [idx, false, 4], [dx, true, 4]], shape, false);
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
