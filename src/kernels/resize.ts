// Nearest-neighbour resizing of NCDHW volumes to a given [D', H', W'] (PyTorch F.interpolate(size=..., mode="nearest")).
//
// Per axis, output index o reads input index min(floor(f32(o * f32(in / out))), in - 1), the float arithmetic of
// PyTorch's CPU kernel (its 1x and 2x special cases agree with this formula). The indices are computed once per
// (input, output) size on the CPU (`nearestIndex`, shared with the reference) and kept on the GPU in a cached table,
// with, per input index, the contiguous range [lo, hi) of output indices that read it (the mapping is monotone).
//
// Layouts: x, dx are [N,C,D,H,W]; y, dy are [N,C,D',H',W'] (the forward also on f16 storage, for inference). The backward saves nothing; it assigns dx by gathering:
// each input voxel sums dy over the box of outputs that read it (no atomics; voxels no output reads get 0).
// Threads: one per output (forward) or input (backward) voxel; grid x covers an (h, w) slice, y the depth, z the
// plane within a chunk of planes that fits one storage binding.

import { enables, type Gpu, type Kernel, type Storage, STORAGE_BYTES } from "./device.ts";
import { planeWindows } from "./planes.ts";

const WG = 256;

// Table layout (u32): source index per output index for D, H, W (OD + OH + OW entries), then (lo, hi) per input
// index for D, H, W (2 * (D + H + W) entries).
const HEADER = `
struct U { D: u32, H: u32, W: u32, OD: u32, OH: u32, OW: u32, xshift: u32, yshift: u32 }
@group(0) @binding(3) var<uniform> u: U;`;

const forward = (t: Storage): Kernel => ({
  name: t === "f32" ? "resize_nearest_fwd" : `resize_nearest_fwd_${t}`,
  wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<${t}>;
${HEADER}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x >= u.OH * u.OW) { return; }
  let oh = id.x / u.OW;
  let ow = id.x - oh * u.OW;
  let s = (table[id.y] * u.H + table[u.OD + oh]) * u.W + table[u.OD + u.OH + ow];
  y[u.yshift + (id.z * u.OD + id.y) * u.OH * u.OW + id.x] = x[u.xshift + id.z * u.D * u.H * u.W + s];
}`,
});
const FORWARD = { f32: forward("f32"), f16: forward("f16") };

const BACKWARD: Kernel = {
  name: "resize_nearest_bwd",
  wgsl: `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
${HEADER}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x >= u.H * u.W) { return; }
  let h = id.x / u.W;
  let w = id.x - h * u.W;
  let r = u.OD + u.OH + u.OW;
  let rd = 2u * id.y + r;
  let rh = 2u * (u.D + h) + r;
  let rw = 2u * (u.D + u.H + w) + r;
  let yb = u.yshift + id.z * u.OD * u.OH * u.OW;
  var s = 0.0;
  for (var od = table[rd]; od < table[rd + 1u]; od++) {
    for (var oh = table[rh]; oh < table[rh + 1u]; oh++) {
      for (var ow = table[rw]; ow < table[rw + 1u]; ow++) {
        s += dy[yb + (od * u.OH + oh) * u.OW + ow];
      }
    }
  }
  dx[u.xshift + (id.z * u.D + id.y) * u.H * u.W + id.x] = s;
}`,
};

/** Per output index, the input index it reads (PyTorch's nearest, float32 arithmetic). */
export function nearestIndex(inSize: number, outSize: number): Uint32Array {
  const scale = Math.fround(inSize / outSize); // equals float32 division: double has over 2 * 24 + 2 bits
  return Uint32Array.from({ length: outSize }, (_, o) => Math.min(Math.floor(Math.fround(o * scale)), inSize - 1));
}

/** Checks x's [N,C,D,H,W] shape and the [D',H',W'] size. */
export function checkResize(shape: readonly number[], size: readonly number[]) {
  if (shape.length !== 5 || size.length !== 3 || [...shape.slice(2), ...size].some((s) => !(s >= 1))) {
    throw new Error(`resizeNearest: x [${shape}] must be a non-empty [N,C,D,H,W] and size [${size}] positive [D,H,W]`);
  }
}

const tables = new WeakMap<Gpu, Map<string, GPUBuffer>>();

/** The cached index table for resizing spatial size `from` to `to` (uploaded once, kept for the process). */
function table(g: Gpu, from: readonly number[], to: readonly number[]): GPUBuffer {
  const cache = tables.get(g) ?? new Map<string, GPUBuffer>();
  tables.set(g, cache);
  const key = `${from}>${to}`;
  let buf = cache.get(key);
  if (!buf) {
    const src = from.map((n, a) => nearestIndex(n, to[a]));
    const ranges = from.map((n, a) => {
      const r = new Uint32Array(2 * n);
      for (let i = 0; i < n; i++) {
        r[2 * i] = src[a].findIndex((s) => s >= i) >>> 0; // -1 (no output reads i or later) -> never < hi
        r[2 * i + 1] = src[a].findLastIndex((s) => s <= i) + 1;
      }
      return r;
    });
    const data = new Uint32Array([...src.flatMap((t) => [...t]), ...ranges.flatMap((t) => [...t])]);
    buf = g.alloc(data.byteLength);
    g.write(buf, data);
    cache.set(key, buf);
  }
  return buf;
}

function run(
  g: Gpu,
  k: Kernel,
  a: GPUBuffer,
  b: GPUBuffer,
  shape: readonly number[],
  size: readonly number[],
  forward: boolean,
  eb = 4,
) {
  checkResize(shape, size);
  const [N, C, D, H, W] = shape;
  const [OD, OH, OW] = size;
  const t = { buffer: table(g, [D, H, W], size) };
  for (const c of planeWindows(g, N * C, [D * H * W, OD * OH * OW], [eb, eb])) {
    const [xw, yw] = c.win;
    const u = new Uint32Array([D, H, W, OD, OH, OW, xw.shift, yw.shift]);
    const [aw, bw] = forward ? [xw, yw] : [yw, xw];
    const binds = [{ buffer: a, offset: aw.offset, size: aw.size }, t, { buffer: b, offset: bw.offset, size: bw.size }];
    g.dispatch(k, binds, u, forward ? [Math.ceil((OH * OW) / WG), OD, c.count] : [Math.ceil((H * W) / WG), D, c.count]);
  }
}

/** y [N,C,...size] = x [N,C,D,H,W] resized (nearest), both stored as t. */
export function resizeNearestForward(
  g: Gpu,
  x: GPUBuffer,
  y: GPUBuffer,
  shape: readonly number[],
  size: number[],
  t: Storage = "f32",
) {
  run(g, FORWARD[t], x, y, shape, size, true, STORAGE_BYTES[t]);
}

/** dx (x's shape `shape`) from dy ([N,C,...size]). */
export function resizeNearestBackward(g: Gpu, dy: GPUBuffer, dx: GPUBuffer, shape: readonly number[], size: number[]) {
  run(g, BACKWARD, dy, dx, shape, size, false);
}

// CPU references.

export function resizeNearestRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  size: readonly number[],
): Float64Array {
  return mapRef(shape, size, (xi, yi, y) => {
    y[yi] = x[xi];
  });
}

export function resizeNearestBackwardRef(
  dy: ArrayLike<number>,
  shape: readonly number[],
  size: readonly number[],
): Float64Array {
  return mapRef(shape, size, (xi, yi, dx) => {
    dx[xi] += dy[yi];
  }, true);
}

/** Visits every (input index, output index) pair of the mapping; `out` has the output's size, or x's when `toInput`. */
function mapRef(
  shape: readonly number[],
  size: readonly number[],
  visit: (xi: number, yi: number, out: Float64Array) => void,
  toInput = false,
): Float64Array {
  checkResize(shape, size);
  const [N, C, D, H, W] = shape;
  const [OD, OH, OW] = size;
  const [sd, sh, sw] = [nearestIndex(D, OD), nearestIndex(H, OH), nearestIndex(W, OW)];
  const out = new Float64Array(N * C * (toInput ? D * H * W : OD * OH * OW));
  for (let p = 0; p < N * C; p++) {
    for (let d = 0; d < OD; d++) {
      for (let h = 0; h < OH; h++) {
        for (let w = 0; w < OW; w++) {
          visit(((p * D + sd[d]) * H + sh[h]) * W + sw[w], ((p * OD + d) * OH + h) * OW + w, out);
        }
      }
    }
  }
  return out;
}
