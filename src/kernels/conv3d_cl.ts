// conv3d 3x3x3 stride 1 pad 1, forward and input gradient, as a channels-last implicit GEMM, the alternative to the
// NCDHW gather kernel: `--conv-kernel channels-last|tuned` runs it in the networks (conv_select.ts), and
// `bench --mode conv` times both (a `variant` field).
// The design is ../shared/docs/examples/conv3d_channels_last.ts, which ran at 11.9-18.5 TFLOP/s on an H100 at the
// U-Net's first two levels (PyTorch fp32: 30-41). On lavapipe (32^3, k=16) the forward ran at 0.35x (16k -> 8k at 2^3
// voxels: one mostly idle tile) to 1.9x (4k -> 4k at 8^3) the gather kernel's speed.
//
// Layouts: the source [N,K,D,H,W] and the result [N,N',D,H,W] (NCDHW, as everywhere) are transposed around the GEMM
// to [V][K] and [V][N'] (V: the voxels of a depth slab, below); the weights are reordered to [27][K][N'] (tap-major
// K). Forward: K = Cin, N' = Cout, weights transposed. Input gradient: the source is dy, K = Cout, N' = Cin, and the
// taps reversed (the transposed convolution of a 3x3x3 pad-1 stride-1 one is such a convolution). The GEMM: a
// workgroup of 256 threads takes 256 voxels x all N'; each thread 8 voxels x N'/8 channels in named vec4
// accumulators; K runs over taps, then channels in steps of 16 staged in workgroup memory ([16][256 voxels] and
// [16][N']). The transpose back adds the bias.
// The volume goes through in depth slabs: each slab's output slices, and its source slices with one halo slice each
// side, so that the transposed copies stay within CL_SCRATCH (and one binding) whatever the volume's size.
// Eligible: K a multiple of 16, N' of 32 and at most 128 (more accumulators spill), every operand within one binding.
// Nothing is saved; the weight gradient stays with the split-K kernel.

import type { Conv3dShape } from "./conv3d.ts";
import { type Gpu, grid1d, type Kernel } from "./device.ts";

const BM = 256, BK = 16;
/**
 * The most transposed source and result held at once (the volume is taken in depth slabs that fit): at 160x192x160,
 * k=32 four to five slabs per level-0 convolution, and every memory target holds with channels-last everywhere.
 */
const CL_SCRATCH = 256 * 2 ** 20;

/** Whether the channels-last kernel takes this convolution (see the header). */
export function channelsLastEligible(g: Gpu, s: Conv3dShape): boolean {
  const v = s.d * s.h * s.w;
  return s.k === 3 && s.stride === 1 && s.pad === 1 && s.cin % BK === 0 && s.cout % 32 === 0 && s.cout <= 128 &&
    s.n * Math.max(s.cin, s.cout) * v * 4 <= g.maxBinding && 27 * s.cin * s.cout * 4 <= g.maxBinding &&
    (BK * BM + BK * s.cout) * 4 <= g.maxWorkgroupStorage; // the staged inputs and weights
}

/**
 * The GEMM for `cin` channels in (K) and `cout` out (N) over a slab of u.nz output slices of H x W, starting at slice
 * u.z0 of a volume of u.D slices; the source holds slices u.zlo and up ([V][K]), the result the slab's ([V][N]).
 */
function gemmKernel(cin: number, cout: number, h: number, w: number): Kernel {
  const nv = cout / 32;
  const acc: string[] = [];
  for (let r = 0; r < 8; r++) for (let j = 0; j < nv; j++) acc.push(`c${r}_${j}`);
  let inner = "";
  for (let kk = 0; kk < BK; kk++) {
    inner += `{ let a0 = As[${kk * 64}u + rg * 2u]; let a1 = As[${kk * 64}u + rg * 2u + 1u];\n`;
    for (let j = 0; j < nv; j++) inner += `  let b${j} = Bs[${kk * (cout / 4)}u + cg * ${nv}u + ${j}u];\n`;
    for (let r = 0; r < 8; r++) {
      for (let j = 0; j < nv; j++) {
        inner += `  c${r}_${j} = fma(vec4f(${r < 4 ? "a0" : "a1"}.${"xyzw"[r % 4]}), b${j}, c${r}_${j});\n`;
      }
    }
    inner += "}\n";
  }
  let stores = "";
  for (let r = 0; r < 8; r++) {
    stores += `{ let o = vb + rg * 8u + ${r}u; if (o < nvox) {`;
    for (let j = 0; j < nv; j++) stores += ` Y[o * ${cout / 4}u + cg * ${nv}u + ${j}u] = c${r}_${j};`;
    stores += " } }\n";
  }
  // Inputs: 256 voxels x 16 channels = 1024 vec4 per step; thread t loads voxel t/4 + 64i, channel quad t%4.
  let rows = "", loads = "";
  for (let i = 0; i < 4; i++) {
    rows += `let v${i} = vb + t / 4u + ${64 * i}u; let z${i} = i32(v${i} / ${h * w}u + u.z0); ` +
      `let y${i} = i32((v${i} / ${w}u) % ${h}u); let x${i} = i32(v${i} % ${w}u);\n`;
    loads += `{ let zz = z${i} + dz; let yy = y${i} + dy; let xx = x${i} + dx; var a = vec4f(0.0);
      if (v${i} < nvox && zz >= 0 && zz < i32(u.D) && yy >= 0 && yy < ${h} && xx >= 0 && xx < ${w}) {
        a = X[((u32(zz) - u.zlo) * ${h * w}u + u32(yy) * ${w}u + u32(xx)) * ${cin / 4}u + ci0 / 4u + t % 4u];
      }
      let row = t / 4u + ${64 * i}u; let kq = (t % 4u) * 4u;
      As[kq * 64u + row / 4u][row % 4u] = a.x; As[(kq + 1u) * 64u + row / 4u][row % 4u] = a.y;
      As[(kq + 2u) * 64u + row / 4u][row % 4u] = a.z; As[(kq + 3u) * 64u + row / 4u][row % 4u] = a.w; }\n`;
  }
  const bvecs = BK * cout / 4;
  return {
    name: `conv3d_cl_gemm_${cin}x${cout}_${h}x${w}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> X: array<vec4f>; // [V][Cin]
@group(0) @binding(1) var<storage, read> Wt: array<vec4f>; // [27][Cin][Cout]
@group(0) @binding(2) var<storage, read_write> Y: array<vec4f>; // [V][Cout]
struct U { gridx: u32, z0: u32, nz: u32, zlo: u32, D: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> As: array<vec4f, ${BK * BM / 4}>; // [16 channels][256 voxels]
var<workgroup> Bs: array<vec4f, ${bvecs}>; // [16 channels][Cout]
@compute @workgroup_size(${BM})
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let vb = (wg.y * u.gridx + wg.x) * ${BM}u;
  let nvox = u.nz * ${h * w}u;
  let rg = t / 8u;
  let cg = t % 8u;
  ${rows}
  ${acc.map((c) => `var ${c} = vec4f(0.0);`).join(" ")}
  for (var tap = 0u; tap < 27u; tap++) {
    let dz = i32(tap / 9u) - 1; let dy = i32((tap / 3u) % 3u) - 1; let dx = i32(tap % 3u) - 1;
    for (var ci0 = 0u; ci0 < ${cin}u; ci0 += ${BK}u) {
      ${loads}
      for (var e = t; e < ${bvecs}u; e += ${BM}u) { Bs[e] = Wt[((tap * ${cin}u + ci0) * ${cout}u) / 4u + e]; }
      workgroupBarrier();
      ${inner}
      workgroupBarrier();
    }
  }
  ${stores}
}`,
  };
}

/**
 * T[dst + j * dstStride + i] = S[src + i * srcStride + j] (+ B[j] when bias): a [rows][cols] matrix transposed, each
 * side's rows `stride` apart (a slab of every channel's plane).
 */
const TRANSPOSE: Kernel = {
  name: "conv3d_cl_transpose",
  wgsl: `
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> T: array<f32>;
struct U { rows: u32, cols: u32, bias: u32, src: u32, dst: u32, tilesX: u32, gridX: u32, srcStride: u32,
  dstStride: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> tile: array<array<f32, 17>, 16>; // 17: no bank conflicts on the transposed read
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) g: vec3u, @builtin(local_invocation_id) l: vec3u) {
  // 16x16 tiles, numbered across a 2D grid (a volume's voxels outnumber one grid dimension's 65535 tiles).
  let q = g.y * u.gridX + g.x;
  let wg = vec2u(q % u.tilesX, q / u.tilesX);
  let i = wg.y * 16u + l.y; // source row
  let j = wg.x * 16u + l.x; // source column
  if (i < u.rows && j < u.cols) { tile[l.y][l.x] = S[u.src + i * u.srcStride + j]; }
  workgroupBarrier();
  let ti = wg.x * 16u + l.y; // destination row (a source column)
  let tj = wg.y * 16u + l.x; // destination column (a source row)
  if (ti < u.cols && tj < u.rows) { // tiles past the last (the grid's spare workgroups) fail i < rows and tj < rows
    var r = tile[l.x][l.y];
    if (u.bias != 0u) { r += B[ti]; }
    T[u.dst + ti * u.dstStride + tj] = r;
  }
}`,
};

/**
 * The GEMM's weights T [27][K][N] from w [Cout][Cin][27]: for the forward (K, N) = (Cin, Cout), T = w transposed; for
 * the input gradient (flip) (K, N) = (Cout, Cin) and the taps reversed, the transposed convolution's weights.
 */
const REORDER: Kernel = {
  name: "conv3d_cl_weights",
  wgsl: `
@group(0) @binding(0) var<storage, read> W: array<f32>;
@group(0) @binding(1) var<storage, read_write> T: array<f32>;
struct U { k: u32, n: u32, m: u32, gridx: u32, flip: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let e = id.y * u.gridx * 256u + id.x; // (tap * K + a) * N + b
  if (e >= u.m) { return; }
  let b = e % u.n;
  let a = (e / u.n) % u.k;
  let tap = e / (u.n * u.k);
  if (u.flip == 0u) { T[e] = W[(b * u.k + a) * 27u + tap]; } else { T[e] = W[(a * u.n + b) * 27u + 26u - tap]; }
}`,
};

/**
 * A [rows][cols] matrix at element `src` of one buffer (rows `src[2]` apart), transposed into another at element `dst`
 * (rows `dst[2]` apart), + bias.
 */
function transpose(
  g: Gpu,
  src: [GPUBuffer, number, number],
  dst: [GPUBuffer, number, number],
  rows: number,
  cols: number,
  bias: GPUBuffer | null,
) {
  const tilesX = Math.ceil(cols / 16), grid = grid1d(g, tilesX * Math.ceil(rows / 16));
  g.dispatch(
    TRANSPOSE,
    [
      { buffer: src[0], size: (src[1] + (rows - 1) * src[2] + cols) * 4 },
      bias ? { buffer: bias } : { buffer: src[0], size: 4 },
      { buffer: dst[0], size: (dst[1] + (cols - 1) * dst[2] + rows) * 4 },
    ],
    new Uint32Array([rows, cols, bias ? 1 : 0, src[1], dst[1], tilesX, grid[0], src[2], dst[2], 0, 0, 0]),
    grid,
  );
}

/** out = conv(src, the GEMM weights) (+ bias) per sample, src with k channels, out with n (see REORDER for flip). */
function run(
  g: Gpu,
  s: Conv3dShape,
  src: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  out: GPUBuffer,
  flip: boolean,
) {
  const [k, n] = flip ? [s.cout, s.cin] : [s.cin, s.cout];
  if (!channelsLastEligible(g, { ...s, cin: k, cout: n })) {
    throw new Error(
      `conv3d channels-last${flip ? " input gradient" : ""}: [${s.n},${s.cin},${s.d},${s.h},${s.w}] -> ${s.cout}, ` +
        `kernel ${s.k} stride ${s.stride} is not eligible (3x3x3 stride 1 pad 1, ${k} channels in a multiple of 16, ` +
        `${n} out a multiple of 32 up to 128, one binding per operand)`,
    );
  }
  const hw = s.h * s.w, v = s.d * hw, m = 27 * k * n;
  // Depth slabs of nz output slices: the source's with one halo slice each side, transposed, at most CL_SCRATCH.
  const budget = Math.min(CL_SCRATCH, g.maxBinding); // each is bound whole
  const nz = Math.max(1, Math.min(s.d, Math.floor((budget / (hw * 4) - 2 * k) / (k + n))));
  const held = Math.min(s.d, nz + 2);
  const wt = g.alloc(m * 4), st = g.alloc(held * hw * k * 4), ot = g.alloc(nz * hw * n * 4);
  const rgrid = grid1d(g, Math.ceil(m / 256));
  const rw = [{ buffer: w, size: m * 4 }, { buffer: wt, size: m * 4 }];
  g.dispatch(REORDER, rw, new Uint32Array([k, n, m, rgrid[0], flip ? 1 : 0, 0, 0, 0]), rgrid);
  const kernel = gemmKernel(k, n, s.h, s.w);
  const gemm = [{ buffer: st, size: held * hw * k * 4 }, { buffer: wt, size: m * 4 }, {
    buffer: ot,
    size: nz * hw * n * 4,
  }];
  for (let i = 0; i < s.n; i++) {
    for (let z0 = 0; z0 < s.d; z0 += nz) {
      const z1 = Math.min(s.d, z0 + nz), zlo = Math.max(0, z0 - 1), zhi = Math.min(s.d, z1 + 1);
      transpose(g, [src, (i * k * s.d + zlo) * hw, v], [st, 0, k], k, (zhi - zlo) * hw, null); // [K][V] -> [V][K]
      const groups = Math.ceil(((z1 - z0) * hw) / BM), gx = Math.min(groups, g.maxWorkgroupsPerDim);
      const u = new Uint32Array([gx, z0, z1 - z0, zlo, s.d, 0, 0, 0]);
      g.dispatch(kernel, gemm, u, [gx, Math.ceil(groups / gx), 1]);
      transpose(g, [ot, 0, n], [out, (i * n * s.d + z0) * hw, v], (z1 - z0) * hw, n, b); // [V][N] -> [N][V], + bias
    }
  }
  for (const t of [wt, st, ot]) g.free(t);
}

/** y = conv3d(x, w) + b (3x3x3, stride 1, pad 1) through the channels-last GEMM; s must be eligible. */
export function conv3dForwardChannelsLast(
  g: Gpu,
  s: Conv3dShape,
  x: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  y: GPUBuffer,
) {
  run(g, s, x, w, b, y, false);
}

/**
 * dx (assigned) from dy and w: for 3x3x3 stride 1 pad 1 the transposed convolution is the same convolution of dy
 * with the weights transposed (Cout <-> Cin) and their taps reversed; eligible with Cin and Cout swapped.
 */
export function conv3dBackwardInputChannelsLast(g: Gpu, s: Conv3dShape, dy: GPUBuffer, w: GPUBuffer, dx: GPUBuffer) {
  run(g, s, dy, w, null, dx, true);
}
