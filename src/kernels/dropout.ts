// Channel dropout (PyTorch Dropout3d in training mode): each (n, c) plane is zeroed with probability p and the
// survivors are scaled by 1 / (1 - p).
//
// Layouts: x, y, dy, dx are NCDHW f32 [N,C,D,H,W]; mask is [N*C] f32 holding each plane's factor (0 or the scale),
// drawn on the CPU (one uniform per plane, n-major: keep when u >= p) and uploaded. Forward and backward are the
// same kernel, y = x * mask[plane]; the backward saves only the mask and assigns dx. The scale is
// f32(1 / f32(1 - p)), the float factor PyTorch's feature dropout multiplies by.

import { type Gpu, type Kernel } from "./device.ts";
import { type Rng } from "../nn/rng.ts";
import { planeWindows } from "./planes.ts";

const WG = 256;
const PART = WG * 8;

const SCALE_PLANES: Kernel = {
  name: "scale_planes",
  wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
struct U { len: u32, shift: u32, first: u32, pad: u32 }
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) t: u32) {
  let m = mask[u.first + wg.z];
  let base = u.shift + wg.z * u.len;
  let end = min(wg.x * ${PART}u + ${PART}u, u.len);
  for (var i = wg.x * ${PART}u + t; i < end; i += ${WG}u) { y[base + i] = x[base + i] * m; }
}`,
};

/** The per-plane factors for N*C planes, drawing one rng.uniform() per plane in n-major order. */
export function dropoutMask(planes: number, p: number, rng: Rng): Float32Array {
  if (!(p >= 0 && p < 1)) throw new Error(`dropout3d: p = ${p} must be in [0, 1)`);
  const scale = Math.fround(1 / Math.fround(1 - p));
  return Float32Array.from({ length: planes }, () => (rng.uniform() >= p ? scale : 0));
}

/** y = x * mask[plane] for `planes` planes of L values (dropout forward, and its backward with dy, dx). */
export function scalePlanes(g: Gpu, x: GPUBuffer, mask: GPUBuffer, y: GPUBuffer, planes: number, L: number) {
  for (const c of planeWindows(g, planes, [L])) {
    const { offset, size, shift } = c.win[0];
    g.dispatch(
      SCALE_PLANES,
      [{ buffer: x, offset, size }, { buffer: mask }, { buffer: y, offset, size }],
      new Uint32Array([L, shift, c.first, 0]),
      [Math.ceil(L / PART), 1, c.count],
    );
  }
}

/** CPU reference for both directions (float64; rounded to f32 it is exactly the kernel's correctly rounded product). */
export function scalePlanesRef(x: ArrayLike<number>, mask: ArrayLike<number>, L: number): Float64Array {
  return Float64Array.from(x, (v, i) => v * mask[Math.floor(i / L)]);
}
