// Instance normalisation (PyTorch InstanceNorm3d: per (n, c) plane, biased variance, eps EPS) with an optional affine
// transform and a fused LeakyReLU (slope 1 = no activation).
//
// Layouts: x, y, dz, dx are NCDHW f32 [N,C,D,H,W]; a plane is one (n, c) volume of L = D*H*W values. weight, bias,
// dweight, dbias are [C]. stats is [N*C, 2] = (mean, rstd) per plane: the forward writes it, the backward reads it
// with x and recomputes x-hat and the pre-activation instead of saving them. All outputs are assigned, none
// accumulated.
//
// Reductions never loop one thread over a plane: each plane is cut into parts of PART values; one workgroup per
// (plane, part) reduces its part (per-thread Welford updates, then a shared-memory tree of Chan merges of
// (count, mean, M2)), and a second pass with one workgroup per plane merges the parts the same way. The backward
// reduces (sum g, sum g * x-hat) per plane the same way, g = dz * activation'(pre), then sums planes over n for
// dweight/dbias. Tensors larger than one storage binding are processed in chunks of whole planes. The forward also
// reads and writes f16 storage (x and y alike, for inference); statistics and arithmetic stay f32.

import { enables, type Gpu, type Kernel, type Storage, STORAGE_BYTES, toStorage } from "./device.ts";
import { planeWindows } from "./planes.ts";

export const EPS = 1e-5;
const WG = 256;
const PART = WG * 16;

type Buf = [name: string, type: string, write?: boolean];

/**
 * A kernel with the given storage bindings (then weight and bias when affine), the shared uniform block last; `t` is
 * the storage type of x and y.
 */
function build(name: string, affine: boolean, bufs: Buf[], body: string, t: Storage = "f32"): Kernel {
  const all: Buf[] = affine ? [...bufs, ["weight", "array<f32>"], ["bias", "array<f32>"]] : bufs;
  const decl = all.map(([n, ty, w], i) =>
    `@group(0) @binding(${i}) var<storage, ${w ? "read_write" : "read"}> ${n}: ${ty};`
  );
  return {
    name: (affine ? `${name}_affine` : name) + (t === "f32" ? "" : `_${t}`),
    wgsl: `${enables(t)}${decl.join("\n")}
struct U { len: u32, shift: u32, parts: u32, first: u32, C: u32, N: u32, slope: f32, inv_len: f32 }
@group(0) @binding(${all.length}) var<uniform> u: U;
// (weight, bias) of channel c.
fn wb(c: u32) -> vec2f { return ${affine ? "vec2f(weight[c], bias[c])" : "vec2f(1.0, 0.0)"}; }
// Chan et al.'s merge of two (count, mean, M2) summaries.
fn chan(a: vec3f, b: vec3f) -> vec3f {
  if (b.x == 0.0) { return a; }
  let n = a.x + b.x;
  let d = b.y - a.y;
  let f = b.x / n;
  return vec3f(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}
fn add2(a: vec2f, b: vec2f) -> vec2f { return a + b; }
${body}`,
  };
}

/** Stores each thread's s in shared memory and tree-reduces it with f into sh[0]. */
const tree = (f: string) => `
  sh[t] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (t < k) { sh[t] = ${f}(sh[t], sh[t + k]); }
    workgroupBarrier();
  }`;

// Workgroup (part wg.x, plane wg.z of the chunk): i runs over the part's values, at base + i in the window.
const partLoop = (body: string) => `
  let base = u.shift + wg.z * u.len;
  let end = min(wg.x * ${PART}u + ${PART}u, u.len);
  for (var i = wg.x * ${PART}u + t; i < end; i += ${WG}u) {
    ${body}
  }`;

const ENTRY = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) t: u32) {`;

// Per-plane constants and, per value, x-hat, the pre-activation, and g = dz * activation'(pre).
const PLANE = `
  let p = u.first + wg.z;
  let st = stats[p];
  let a = wb(p % u.C);`;
const PRE = `let xh = (f32(x[base + i]) - st.x) * st.y;
    let pre = xh * a.x + a.y;`;
const GRAD = `${PRE}
    let gz = dz[base + i];
    let gg = select(u.slope * gz, gz, pre > 0.0);`;

const statsPart = (t: Storage) =>
  build(
    "inorm_stats_part",
    false,
    [["x", `array<${t}>`], ["part", "array<vec4f>", true]],
    `var<workgroup> sh: array<vec3f, ${WG}>;
${ENTRY}
  var s = vec3f(0.0);
  ${
      partLoop(`let v = f32(x[base + i]);
    s.x += 1.0;
    let d = v - s.y;
    s.y += d / s.x;
    s.z += d * (v - s.y);`)
    }
  ${tree("chan")}
  if (t == 0u) { part[wg.z * u.parts + wg.x] = vec4f(sh[0], 0.0); }
}`,
    t,
  );
const STATS_PART = { f32: statsPart("f32"), f16: statsPart("f16") };

const STATS_MERGE = build(
  "inorm_stats_merge",
  false,
  [["part", "array<vec4f>"], ["stats", "array<vec2f>", true]],
  `var<workgroup> sh: array<vec3f, ${WG}>;
${ENTRY}
  var s = vec3f(0.0);
  for (var j = t; j < u.parts; j += ${WG}u) { s = chan(s, part[wg.z * u.parts + j].xyz); }
  ${tree("chan")}
  if (t == 0u) {
    let r = sh[0];
    stats[u.first + wg.z] = vec2f(r.y, inverseSqrt(r.z / r.x + ${EPS}));
  }
}`,
);

const applyKernel = (affine: boolean, t: Storage) =>
  build(
    "inorm_apply",
    affine,
    [["x", `array<${t}>`], ["stats", "array<vec2f>"], ["y", `array<${t}>`, true]],
    `${ENTRY}${PLANE}${
      partLoop(`${PRE}
    y[base + i] = ${toStorage(t, "select(u.slope * pre, pre, pre > 0.0)")};`)
    }
}`,
    t,
  );

const bwdPartKernel = (affine: boolean) =>
  build(
    "inorm_bwd_part",
    affine,
    [["x", "array<f32>"], ["dz", "array<f32>"], ["stats", "array<vec2f>"], ["part", "array<vec2f>", true]],
    `var<workgroup> sh: array<vec2f, ${WG}>;
${ENTRY}${PLANE}
  var s = vec2f(0.0);
  ${
      partLoop(`${GRAD}
    s += vec2f(gg, gg * xh);`)
    }
  ${tree("add2")}
  if (t == 0u) { part[wg.z * u.parts + wg.x] = sh[0]; }
}`,
  );

const BWD_MERGE = build(
  "inorm_bwd_merge",
  false,
  [["part", "array<vec2f>"], ["sums", "array<vec2f>", true]],
  `var<workgroup> sh: array<vec2f, ${WG}>;
${ENTRY}
  var s = vec2f(0.0);
  for (var j = t; j < u.parts; j += ${WG}u) { s += part[wg.z * u.parts + j]; }
  ${tree("add2")}
  if (t == 0u) { sums[u.first + wg.z] = sh[0]; }
}`,
);

// dweight[c] = sum_n sum(g * x-hat), dbias[c] = sum_n sum(g): N is the batch size, a handful of planes per thread.
const BWD_AFFINE = build(
  "inorm_bwd_affine",
  false,
  [["sums", "array<vec2f>"], ["dweight", "array<f32>", true], ["dbias", "array<f32>", true]],
  `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let c = id.x;
  if (c >= u.C) { return; }
  var s = vec2f(0.0);
  for (var n = 0u; n < u.N; n++) { s += sums[n * u.C + c]; }
  dweight[c] = s.y;
  dbias[c] = s.x;
}`,
);

// dx = rstd * w * (g - mean(g) - x-hat * mean(g * x-hat)).
const bwdDxKernel = (affine: boolean) =>
  build(
    "inorm_bwd_dx",
    affine,
    [["x", "array<f32>"], ["dz", "array<f32>"], ["stats", "array<vec2f>"], ["sums", "array<vec2f>"], [
      "dx",
      "array<f32>",
      true,
    ]],
    `${ENTRY}${PLANE}
  let m = sums[p] * u.inv_len;
  let k = st.y * a.x;${
      partLoop(`${GRAD}
    dx[base + i] = k * (gg - m.x - xh * m.y);`)
    }
}`,
  );

const APPLY = {
  f32: [applyKernel(false, "f32"), applyKernel(true, "f32")],
  f16: [applyKernel(false, "f16"), applyKernel(true, "f16")],
};
const BWD_PART = [bwdPartKernel(false), bwdPartKernel(true)];
const BWD_DX = [bwdDxKernel(false), bwdDxKernel(true)];

export interface Affine<T> {
  weight: T;
  bias: T;
}

/** Checks a [N,C,D,H,W] shape (and [C] weight and bias) and returns N, C and the plane size. */
export function normShape(op: string, shape: readonly number[], affine: [weight: number, bias: number] | null) {
  const [N, C, D, H, W] = shape;
  if (shape.length !== 5 || N * C * D * H * W === 0) {
    throw new Error(`${op}: x [${shape}] must be a non-empty [N,C,D,H,W]`);
  }
  if (affine && (affine[0] !== C || affine[1] !== C)) {
    throw new Error(
      `${op}: weight [${affine[0]}] and bias [${affine[1]}] must be [${C}] for x [${shape}]`,
    );
  }
  return { N, C, L: D * H * W };
}

/** Chunks of whole planes that fit one binding, a scratch buffer for one chunk's per-part partials, the uniforms. */
function chunked(g: Gpu, N: number, C: number, L: number, slope: number, t: Storage = "f32") {
  const parts = Math.ceil(L / PART);
  if (parts > g.maxWorkgroupsPerDim) throw new Error(`instance norm: a plane of ${L} values is too large`);
  const chunks = planeWindows(g, N * C, [L], [STORAGE_BYTES[t]]).map((c) => {
    const { offset, shift, size } = c.win[0];
    const u = new ArrayBuffer(32);
    new Uint32Array(u, 0, 6).set([L, shift, parts, c.first, C, N]);
    new Float32Array(u, 24, 2).set([slope, 1 / L]);
    return { count: c.count, offset, size, u };
  });
  const scratch = g.alloc(Math.max(...chunks.map((c) => c.count)) * parts * 16);
  return { parts, chunks, scratch };
}

/**
 * y = act((x - mean) * rstd * weight + bias), x and y stored as t; writes stats (mean, rstd) per plane for the
 * backward.
 */
export function instanceNormForward(
  g: Gpu,
  x: GPUBuffer,
  y: GPUBuffer,
  stats: GPUBuffer,
  affine: Affine<GPUBuffer> | null,
  shape: readonly number[],
  slope: number,
  t: Storage = "f32",
) {
  const { N, C, L } = normShape("instanceNorm", shape, null);
  const { parts, chunks, scratch } = chunked(g, N, C, L, slope, t);
  const ab = affine ? [{ buffer: affine.weight }, { buffer: affine.bias }] : [];
  for (const c of chunks) {
    const xw = { buffer: x, offset: c.offset, size: c.size };
    g.dispatch(STATS_PART[t], [xw, { buffer: scratch }], c.u, [parts, 1, c.count]);
    g.dispatch(STATS_MERGE, [{ buffer: scratch }, { buffer: stats }], c.u, [1, 1, c.count]);
    const yw = { buffer: y, offset: c.offset, size: c.size };
    g.dispatch(APPLY[t][+!!affine], [xw, { buffer: stats }, yw, ...ab], c.u, [parts, 1, c.count]);
  }
  g.free(scratch);
}

/** From the forward input x, its stats and the output gradient dz: dx, and dweight/dbias ([C] each) when given. */
export function instanceNormBackward(
  g: Gpu,
  x: GPUBuffer,
  dz: GPUBuffer,
  stats: GPUBuffer,
  affine: Affine<GPUBuffer> | null,
  dx: GPUBuffer,
  daffine: Affine<GPUBuffer> | null,
  shape: readonly number[],
  slope: number,
) {
  const { N, C, L } = normShape("instanceNormBackward", shape, null);
  const { parts, chunks, scratch } = chunked(g, N, C, L, slope);
  const sums = g.alloc(N * C * 8); // per plane: (sum g, sum g * x-hat)
  const ab = affine ? [{ buffer: affine.weight }, { buffer: affine.bias }] : [];
  for (const c of chunks) {
    const win = (buffer: GPUBuffer) => ({ buffer, offset: c.offset, size: c.size });
    const partBinds = [win(x), win(dz), { buffer: stats }, { buffer: scratch }, ...ab];
    g.dispatch(BWD_PART[+!!affine], partBinds, c.u, [parts, 1, c.count]);
    g.dispatch(BWD_MERGE, [{ buffer: scratch }, { buffer: sums }], c.u, [1, 1, c.count]);
    const dxBinds = [win(x), win(dz), { buffer: stats }, { buffer: sums }, win(dx), ...ab];
    g.dispatch(BWD_DX[+!!affine], dxBinds, c.u, [parts, 1, c.count]);
  }
  if (daffine) {
    const binds = [{ buffer: sums }, { buffer: daffine.weight }, { buffer: daffine.bias }];
    g.dispatch(BWD_AFFINE, binds, chunks[0].u, [Math.ceil(C / 64), 1, 1]);
  }
  g.free(scratch);
  g.free(sums);
}

// CPU references in float64 (two-pass mean and variance). Without affine, weight 1 and bias 0 are used, and the
// returned dweight/dbias are the gradients they would have.

export function instanceNormRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  affine: Affine<ArrayLike<number>> | null,
  slope: number,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const { N, C, L } = normShape("instanceNormRef", shape, affine && [affine.weight.length, affine.bias.length]);
  const y = new Float64Array(N * C * L), mean = new Float64Array(N * C), rstd = new Float64Array(N * C);
  for (let p = 0; p < N * C; p++) {
    const o = p * L;
    let m = 0, v = 0;
    for (let i = 0; i < L; i++) m += x[o + i];
    m /= L;
    for (let i = 0; i < L; i++) v += (x[o + i] - m) ** 2;
    const r = 1 / Math.sqrt(v / L + EPS);
    const w = affine ? affine.weight[p % C] : 1, b = affine ? affine.bias[p % C] : 0;
    for (let i = 0; i < L; i++) {
      const pre = (x[o + i] - m) * r * w + b;
      y[o + i] = pre > 0 ? pre : slope * pre;
    }
    mean[p] = m;
    rstd[p] = r;
  }
  return { y, mean, rstd };
}

export function instanceNormBackwardRef(
  x: ArrayLike<number>,
  dz: ArrayLike<number>,
  shape: readonly number[],
  affine: Affine<ArrayLike<number>> | null,
  slope: number,
): { dx: Float64Array; dweight: Float64Array; dbias: Float64Array } {
  const { N, C, L } = normShape("instanceNormBackwardRef", shape, affine && [affine.weight.length, affine.bias.length]);
  const { mean, rstd } = instanceNormRef(x, shape, affine, slope);
  const dx = new Float64Array(N * C * L), dweight = new Float64Array(C), dbias = new Float64Array(C);
  const xh = new Float64Array(L), gg = new Float64Array(L);
  for (let p = 0; p < N * C; p++) {
    const o = p * L, c = p % C;
    const w = affine ? affine.weight[c] : 1, b = affine ? affine.bias[c] : 0;
    let sg = 0, sgx = 0;
    for (let i = 0; i < L; i++) {
      xh[i] = (x[o + i] - mean[p]) * rstd[p];
      gg[i] = xh[i] * w + b > 0 ? dz[o + i] : slope * dz[o + i];
      sg += gg[i];
      sgx += gg[i] * xh[i];
    }
    for (let i = 0; i < L; i++) dx[o + i] = rstd[p] * w * (gg[i] - sg / L - xh[i] * sgx / L);
    dweight[c] += sgx;
    dbias[c] += sg;
  }
  return { dx, dweight, dbias };
}
