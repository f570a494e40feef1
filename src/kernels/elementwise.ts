// Elementwise kernels over flat f32 arrays: add, in-place accumulate, scale, LeakyReLU and its backward.
//
// Layout: any; element i of each operand pairs with element i of the others. Dispatches are split into windows of at
// most one storage binding (`flatChunks` in device.ts), each starting at a multiple of 64 elements (256 bytes) so that windows stay
// aligned. LeakyReLU's backward needs the forward input x (saved by the caller): dx = dy * (x > 0 ? 1 : slope).
// Nothing here accumulates unless named *Into (dst += src).

import { type Binding, flatChunks, type Gpu, grid1d, type Kernel } from "./device.ts";

const WG = 256;

function unary(name: string, expr: string): Kernel {
  return {
    name,
    wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
struct U { n: u32, gridx: u32, a: f32, b: f32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  let v = x[i];
  y[i] = ${expr};
}`,
  };
}

function binary(name: string, expr: string): Kernel {
  return {
    name,
    wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
struct U { n: u32, gridx: u32, a: f32, b: f32 }
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  let v = x[i];
  let w = z[i];
  y[i] = ${expr};
}`,
  };
}

const ACCUMULATE: Kernel = {
  name: "add_into",
  wgsl: `
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
struct U { n: u32, gridx: u32, a: f32, b: f32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  y[i] = y[i] + u.a * x[i];
}`,
};

const SCALE = unary("scale", "u.a * v + u.b");
const LEAKY_RELU = unary("leaky_relu_fwd", "select(u.a * v, v, v > 0.0)");
const ADD = binary("add", "v + w");
const LEAKY_RELU_BWD = binary("leaky_relu_bwd", "select(u.a * w, w, v > 0.0)"); // x = saved input, z = dy

function run(g: Gpu, k: Kernel, bufs: GPUBuffer[], n: number, a = 0, b = 0) {
  for (const c of flatChunks(g, n)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const u = new ArrayBuffer(16);
    new Uint32Array(u, 0, 2).set([c.count, grid[0]]);
    new Float32Array(u, 8, 2).set([a, b]);
    const binds: Binding[] = bufs.map((buffer) => ({ buffer, offset: c.offset, size: c.size }));
    g.dispatch(k, binds, u, grid);
  }
}

/** y = x + z over n elements. */
export function add(g: Gpu, x: GPUBuffer, z: GPUBuffer, y: GPUBuffer, n: number) {
  run(g, ADD, [x, z, y], n);
}
/** y += alpha * x over n elements. */
export function addInto(g: Gpu, y: GPUBuffer, x: GPUBuffer, n: number, alpha = 1) {
  run(g, ACCUMULATE, [y, x], n, alpha);
}
/** y = a * x + b over n elements. */
export function scale(g: Gpu, x: GPUBuffer, y: GPUBuffer, n: number, a: number, b = 0) {
  run(g, SCALE, [x, y], n, a, b);
}
/** y = x > 0 ? x : slope * x. */
export function leakyRelu(g: Gpu, x: GPUBuffer, y: GPUBuffer, n: number, slope: number) {
  run(g, LEAKY_RELU, [x, y], n, slope);
}
/** dx = dy * (x > 0 ? 1 : slope), from the forward input x. */
export function leakyReluBackward(g: Gpu, x: GPUBuffer, dy: GPUBuffer, dx: GPUBuffer, n: number, slope: number) {
  run(g, LEAKY_RELU_BWD, [x, dy, dx], n, slope);
}

// CPU references.
export function addRef(x: Float32Array, z: Float32Array): Float32Array {
  return x.map((v, i) => v + z[i]);
}
export function leakyReluRef(x: ArrayLike<number>, slope: number): Float64Array {
  return Float64Array.from(x, (v) => v > 0 ? v : slope * v);
}
export function leakyReluBackwardRef(x: ArrayLike<number>, dy: ArrayLike<number>, slope: number): Float64Array {
  return Float64Array.from(x, (v, i) => v > 0 ? dy[i] : slope * dy[i]);
}
