// Elementwise kernels over flat arrays: add, in-place accumulate, scale, LeakyReLU and its backward, and a cast
// between storage types. Arithmetic is f32; add and cast also read or write f16 storage (inference).
//
// Layout: any; element i of each operand pairs with element i of the others. Dispatches are split into windows of at
// most one storage binding (`flatChunks` in device.ts), each starting 256-byte aligned. LeakyReLU's backward needs the forward input x (saved by the caller): dx = dy * (x > 0 ? 1 : slope).
// Nothing here accumulates unless named *Into (dst += src).

import {
  enables,
  flatChunks,
  type Gpu,
  grid1d,
  type Kernel,
  type Storage,
  STORAGE_BYTES,
  toStorage,
} from "./device.ts";

const WG = 256;

/** Kernel names carry their storage types unless all are f32. */
const typed = (name: string, ts: Storage[]) => ts.every((t) => t === "f32") ? name : `${name}_${ts.join("_")}`;

function unary(name: string, expr: string, tx: Storage = "f32", ty: Storage = "f32"): Kernel {
  return {
    name: typed(name, [tx, ty]),
    wgsl: `${enables(tx, ty)}
@group(0) @binding(0) var<storage, read> x: array<${tx}>;
@group(0) @binding(1) var<storage, read_write> y: array<${ty}>;
struct U { n: u32, gridx: u32, a: f32, b: f32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  let v = f32(x[i]);
  y[i] = ${toStorage(ty, expr)};
}`,
  };
}

function binary(name: string, expr: string, t: Storage = "f32"): Kernel {
  return {
    name: typed(name, [t]),
    wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read> z: array<${t}>;
@group(0) @binding(2) var<storage, read_write> y: array<${t}>;
struct U { n: u32, gridx: u32, a: f32, b: f32 }
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  let v = f32(x[i]);
  let w = f32(z[i]);
  y[i] = ${toStorage(t, expr)};
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
const ADD = { f32: binary("add", "v + w"), f16: binary("add", "v + w", "f16") };
const CAST = { f16: unary("cast", "v", "f32", "f16"), f32: unary("cast", "v", "f16", "f32") }; // by target
const LEAKY_RELU_BWD = binary("leaky_relu_bwd", "select(u.a * w, w, v > 0.0)"); // x = saved input, z = dy

/** Dispatches k over n elements; `types` are the operands' storage types (f32 unless given). */
function run(g: Gpu, k: Kernel, bufs: GPUBuffer[], n: number, a = 0, b = 0, types: Storage[] = []) {
  for (const c of flatChunks(g, n)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const u = new ArrayBuffer(16);
    new Uint32Array(u, 0, 2).set([c.count, grid[0]]);
    new Float32Array(u, 8, 2).set([a, b]);
    g.dispatch(k, bufs.map((buffer, i) => ({ buffer, ...c.window(STORAGE_BYTES[types[i] ?? "f32"]) })), u, grid);
  }
}

/** y = x + z over n elements, all stored as t (f32 arithmetic). */
export function add(g: Gpu, x: GPUBuffer, z: GPUBuffer, y: GPUBuffer, n: number, t: Storage = "f32") {
  run(g, ADD[t], [x, z, y], n, 0, 0, [t, t, t]);
}
/** y = x over n elements, converted from f32 to f16 storage (to a nearest f16) or back (exact). */
export function cast(g: Gpu, x: GPUBuffer, y: GPUBuffer, n: number, to: Storage) {
  if (to === "f32") run(g, CAST.f32, [x, y], n, 0, 0, ["f16", "f32"]);
  else run(g, CAST.f16, [x, y], n, 0, 0, ["f32", "f16"]);
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
