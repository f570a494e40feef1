// Parallel reductions to a scalar: every workgroup of WG threads tree-reduces its elements in workgroup memory into
// one partial sum, then one workgroup of WG threads sums the partials (`finish`). Used by the losses and sumAll.
//
// Layout: flat f32 arrays, split into binding windows by `flatChunks` (each chunk's workgroups write partials at their
// own base, so one partials buffer serves every chunk). Outputs are assigned, never accumulated. sumAll's backward
// broadcasts the upstream scalar gradient: dx[i] = a * g[0] (assigned).

import { type Binding, flatChunks, type Gpu, grid1d, type Kernel } from "./device.ts";

export const WG = 256;

/** WGSL: `wg_sum(lid, v)` sums v over the workgroup (result valid in every thread); call from uniform control flow. */
export function wgSum(type: "f32" | "vec4f"): string {
  return `
var<workgroup> red: array<${type}, ${WG}>;
fn wg_sum(lid: u32, v: ${type}) -> ${type} {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  return red[0];
}`;
}

// Final pass. "scale": out[0] = a * sum. "ratio" (vec4 partials): out[0] = sum.x / sum.y, or NaN (stored as bits, so
// it survives implementations that assume finite math) when sum.z > 0 flags invalid inputs; aux[0] = sum.y.
function finishKernel(mode: "scale" | "ratio"): Kernel {
  const type = mode === "scale" ? "f32" : "vec4f";
  const write = mode === "scale"
    ? "out[0] = u.a * s;"
    : "out[0] = select(s.x / s.y, bitcast<f32>(0x7fc00000u), s.z > 0.0);\n    aux[0] = s.y;";
  return {
    name: `reduce_finish_${mode}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> parts: array<${type}>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${mode === "ratio" ? "@group(0) @binding(2) var<storage, read_write> aux: array<f32>;" : ""}
struct U { n: u32, a: f32, p0: u32, p1: u32 }
@group(0) @binding(${mode === "ratio" ? 3 : 2}) var<uniform> u: U;
${wgSum(type)}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = ${type}(0.0);
  for (var i = lid; i < u.n; i += ${WG}u) { acc = acc + parts[i]; }
  let s = wg_sum(lid, acc);
  if (lid == 0u) {
    ${write}
  }
}`,
  };
}
const FINISH_SCALE = finishKernel("scale");
const FINISH_RATIO = finishKernel("ratio");

/** out[0] = a * (sum of nParts f32 partials). */
export function finish(g: Gpu, parts: GPUBuffer, nParts: number, out: GPUBuffer, a: number) {
  const u = new ArrayBuffer(16);
  new Uint32Array(u, 0, 1)[0] = nParts;
  new Float32Array(u, 4, 1)[0] = a;
  g.dispatch(FINISH_SCALE, [{ buffer: parts, size: nParts * 4 }, { buffer: out, size: 4 }], u, [1, 1, 1]);
}

/** From nParts vec4 partials (num, den, invalid count, unused): out[0] = num / den (NaN if any invalid), aux[0] = den. */
export function finishRatio(g: Gpu, parts: GPUBuffer, nParts: number, out: GPUBuffer, aux: GPUBuffer) {
  const binds = [{ buffer: parts, size: nParts * 16 }, { buffer: out, size: 4 }, { buffer: aux, size: 4 }];
  g.dispatch(FINISH_RATIO, binds, new Uint32Array([nParts, 0, 0, 0]), [1, 1, 1]);
}

/**
 * A first-pass kernel summing `expr` over flat windows. expr sees `v` = x[i], and `w` = z[i] when `twoInputs`, plus
 * the uniform scalar `u.t`.
 */
export function flatSumKernel(name: string, expr: string, twoInputs: boolean): Kernel {
  const z = twoInputs ? 1 : 0;
  return {
    name,
    wgsl: `
@group(0) @binding(0) var<storage, read> x: array<f32>;
${twoInputs ? "@group(0) @binding(1) var<storage, read> z: array<f32>;" : ""}
@group(0) @binding(${1 + z}) var<storage, read_write> parts: array<f32>;
struct U { n: u32, gridx: u32, base: u32, t: f32 }
@group(0) @binding(${2 + z}) var<uniform> u: U;
${wgSum("f32")}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * u.gridx;
  let i = wid * ${WG}u + lid;
  var r = 0.0;
  if (i < u.n) {
    let v = x[i];
    ${twoInputs ? "let w = z[i];" : ""}
    r = ${expr};
  }
  let s = wg_sum(lid, r);
  if (lid == 0u) { parts[u.base + wid] = s; }
}`,
  };
}

/** out[0] = a * sum_i expr(x[i], z[i]) over n elements, with flatSumKernel k (inputs: [x] or [x, z]). */
export function flatSum(g: Gpu, k: Kernel, inputs: GPUBuffer[], n: number, out: GPUBuffer, a: number, t = 0) {
  const chunks = flatChunks(g, n).map((c) => ({ ...c, grid: grid1d(g, Math.ceil(c.count / WG)) }));
  const nParts = Math.max(1, chunks.reduce((s, c) => s + c.grid[0] * c.grid[1], 0));
  const parts = g.alloc(nParts * 4);
  if (!chunks.length) g.zero(parts, 0, 4);
  let base = 0;
  for (const c of chunks) {
    const u = new ArrayBuffer(16);
    new Uint32Array(u, 0, 3).set([c.count, c.grid[0], base]);
    new Float32Array(u, 12, 1)[0] = t;
    const binds: Binding[] = inputs.map((buffer) => ({ buffer, offset: c.offset, size: c.size }));
    binds.push({ buffer: parts, size: nParts * 4 });
    g.dispatch(k, binds, u, c.grid);
    base += c.grid[0] * c.grid[1];
  }
  finish(g, parts, nParts, out, a);
  g.free(parts);
}

const SUM = flatSumKernel("sum_partials", "v", false);

/** out[0] = sum of x[0..n). */
export function sum(g: Gpu, x: GPUBuffer, n: number, out: GPUBuffer) {
  flatSum(g, SUM, [x], n, out, 1);
}

const BROADCAST: Kernel = {
  name: "broadcast_scalar",
  wgsl: `
@group(0) @binding(0) var<storage, read> s: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
struct U { n: u32, gridx: u32, a: f32, p: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * ${WG}u;
  if (i >= u.n) { return; }
  y[i] = u.a * s[0];
}`,
};

/** y[i] = a * s[0] for i in [0, n) (s: a one-element buffer). */
export function broadcast(g: Gpu, s: GPUBuffer, y: GPUBuffer, n: number, a = 1) {
  for (const c of flatChunks(g, n)) {
    const grid = grid1d(g, Math.ceil(c.count / WG));
    const u = new ArrayBuffer(16);
    new Uint32Array(u, 0, 2).set([c.count, grid[0]]);
    new Float32Array(u, 8, 1)[0] = a;
    g.dispatch(BROADCAST, [{ buffer: s, size: 4 }, { buffer: y, offset: c.offset, size: c.size }], u, grid);
  }
}

/** float64 sum (CPU reference). */
export function sumRef(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s;
}
