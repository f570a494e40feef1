// conv3d as a channels-last implicit GEMM, the alternative to the NCDHW gather kernel for the forward and input
// gradient: `--conv-kernel channels-last|tuned` runs it in the networks (conv_select.ts), and `bench --mode conv` times
// both (a `variant` field). The design is ../shared/docs/examples/conv3d_channels_last.ts, which ran at 11.9-18.5
// TFLOP/s on an H100 at the U-Net's first two levels (PyTorch fp32: 30-41). On lavapipe (32^3, k=16) the forward ran at
// 0.35x (16k -> 8k at 2^3 voxels: one mostly idle tile) to 1.9x (4k -> 4k at 8^3) the gather kernel's speed.
//
// Passes taken (plan): a 3x3x3 stride-1 pad-1 forward (GEMM K = Cin, N = Cout, T = 3 taps per dimension, pad 1) and
// input gradient (the same convolution of dy with the weights transposed and their taps reversed: K = Cout, N = Cin);
// a 4x4x4 stride-2 pad-1 forward as the 2x2x2 unpadded convolution of x's space-to-depth (space_to_depth.ts:
// K = 8 Cin, N = Cout, T = 2, pad 0), as conv3d.ts runs it; and its input gradient, the transposed 2x2x2 convolution
// (K = Cout, N = 8 Cin, T = 2, pad 1, taps reversed) giving the space-to-depth of dx, scattered back into dx
// (DEPTH_TO_SPACE). K is padded to a multiple of 16 with zero channels and N to a multiple of 32 (columns computed,
// never stored), as long as CL_MIN_USE of the work stays real.
//
// Layouts: the source [N,K,D,H,W] and the result [N,N',OD,OH,OW] (NCDHW, as everywhere) are transposed around the
// GEMM to [V][K] and [V][N'] (V: the voxels of a depth slab, below; a stride-2 input gradient's result goes straight
// back to NCDHW by DEPTH_TO_SPACE); the weights are reordered to N blocks of [T^3][K][NB] (tap-major K), NB <= 128
// output channels. The GEMM: a workgroup takes 256 voxels x the NB channels of one block; each thread 8 voxels x NB/8
// channels (of 256 threads; NB/4 of 128 for NB = 32: registerTile) in named vec4 accumulators; K runs over taps, then
// channels in steps of 16 staged in workgroup memory ([16][256 voxels] and [16][NB]). A dispatch takes one block, or
// where a slab has few voxels (the deep levels, the discriminator's last convolutions) several (grid z), up to
// CL_SPLIT.workgroups workgroups; below that the taps are split over more, each split's partials summed
// (conv3d_sum_parts) before the transpose back, which adds the bias. The volume goes through in depth slabs: each
// slab's output slices and the source slices they read (for a space-to-depth source, made slab by slab from x), so
// that the scratch copies stay within CL_SCRATCH (and one binding) whatever the volume's size. Every tensor is bound
// whole, so each must fit one binding. Nothing is saved.
// The weight gradient's GEMM is conv3d_cl_dw.ts.

import { type Conv3dShape, sumParts } from "./conv3d.ts";
import { type Gpu, grid1d, type Kernel } from "./device.ts";
import { spaceToDepth2 } from "./space_to_depth.ts";

export const BM = 256, BK = 16;
/**
 * The most scratch held at once (the volume is taken in depth slabs that fit): at 160x192x160, k=32 five slabs for a
 * level-0 32 -> 32 convolution, and every memory target holds with channels-last everywhere.
 */
const CL_SCRATCH = 256 * 2 ** 20;
/**
 * `workgroups`: how many a GEMM dispatch should have at least, for a large GPU (an H100 has 132 SMs, each holding one
 * to three of these workgroups); fewer, and one dispatch takes several blocks, and the reduction is split over taps
 * (channelsLastPlan). `minK`: the shortest reduction (taps x channels) a split may have: each split writes a partial
 * of its whole tile, which would cost more than its arithmetic. Tests change them.
 */
export const CL_SPLIT = { workgroups: 512, minK: 256 };

export type ClPass = "forward" | "input_grad";

/**
 * The least share of the GEMM's work that must be real: channel counts not a multiple of 16 (K) or 32 (N) are padded
 * with zero channels, and below this share of real ones (the student's 3 input channels: 3 of 16) the gather kernel
 * is the one to run.
 */
const CL_MIN_USE = 0.25;

/** One pass as the GEMM sees it. */
export interface Plan {
  k: number; // GEMM channels in: the source's, padded to a multiple of 16 (zero channels)
  n: number; // GEMM channels out, padded to a multiple of 32 (columns computed, never stored)
  kReal: number; // the source's channels
  nReal: number; // the result's channels
  nb: number; // output channels per block (a multiple of 32, at most 128)
  bpd: number; // blocks per dispatch (a narrower last block has one of its own)
  taps: number; // T per dimension
  pad: number;
  src: number[]; // [D, H, W] of the GEMM's source (x's space-to-depth for a stride-2 forward)
  out: number[]; // [D, H, W] of the result
  weights: number; // REORDER's mode: 0 forward, 1 input gradient, 2 stride-2 forward, 3 stride-2 input gradient
  nz: number; // output slices per slab
  splits: number; // parts the taps are split into (1: none); split i takes taps [i T^3 / splits, (i+1) T^3 / splits)
}

/** The plan for a pass of this convolution, or null when the channels-last kernel does not take it. */
export function channelsLastPlan(g: Gpu, s: Conv3dShape, pass: ClPass): Plan | null {
  const vol = [s.d, s.h, s.w], out = [s.od, s.oh, s.ow];
  let q: Omit<Plan, "nb" | "bpd" | "nz" | "splits" | "k" | "n">;
  if (s.k === 3 && s.stride === 1 && s.pad === 1) {
    const [kReal, nReal] = pass === "forward" ? [s.cin, s.cout] : [s.cout, s.cin];
    q = { kReal, nReal, taps: 3, pad: 1, src: vol, out: vol, weights: pass === "forward" ? 0 : 1 };
  } else if (s.k === 4 && s.stride === 2 && s.pad === 1) {
    const m = out.map((o) => o + 1); // x's space-to-depth
    q = pass === "forward"
      ? { kReal: 8 * s.cin, nReal: s.cout, taps: 2, pad: 0, src: m, out, weights: 2 }
      : { kReal: s.cout, nReal: 8 * s.cin, taps: 2, pad: 1, src: out, out: m, weights: 3 };
  } else return null;
  const p = { ...q, k: Math.ceil(q.kReal / BK) * BK, n: Math.ceil(q.nReal / 32) * 32 };
  if ((p.kReal / p.k) * (p.nReal / p.n) < CL_MIN_USE) return null;
  let nb = Math.min(128, p.n);
  while (nb >= 32 && (BK * BM + BK * nb) * 4 > g.maxWorkgroupStorage) nb -= 32; // staged inputs and weights
  const [srcC, dstC] = pass === "forward" ? [s.cin, s.cout] : [s.cout, s.cin];
  const [srcV, dstV] = [pass === "forward" ? vol : out, pass === "forward" ? out : vol].map((d) => d[0] * d[1] * d[2]);
  // Each tensor is bound whole, and so are the reordered (padded) weights when one dispatch takes every block.
  const whole = [s.n * srcC * srcV, s.n * dstC * dstV, s.cout * s.cin * s.k ** 3, p.taps ** 3 * p.k * p.n];
  const fits = whole.every((e) => e * 4 <= g.maxBinding);
  // Scratch per slab: the source's slices (twice for a space-to-depth source: made, then transposed) and the result's
  // (of the blocks in one dispatch; with the reduction split, each split's partials and their sum).
  const [ihw, ohw, f] = [p.src[1] * p.src[2], p.out[1] * p.out[2], p.weights === 2 ? 2 : 1];
  const budget = Math.min(CL_SCRATCH, g.maxBinding) / 4, srcSlices = (z: number) => (z + p.taps - 1) * ihw * p.k * f;
  const slices = (perSlice: number) =>
    Math.min(p.out[0], Math.floor((budget - srcSlices(0)) / (ihw * p.k * f + perSlice)));
  // A slab of few voxels (the deep levels, the discriminator's last convolutions) makes too few workgroups to fill a
  // GPU: one dispatch then takes several blocks, and the taps are split over up to T^3 workgroups each, as far as
  // their partials fit beside the slab.
  const groups = (z: number) => Math.ceil((z * ohw) / BM), t3 = p.taps ** 3;
  let bpd = Math.min(Math.floor(p.n / nb), Math.ceil(CL_SPLIT.workgroups / groups(slices(ohw * nb))));
  while (bpd > 1 && slices(ohw * nb * bpd) < 1) bpd--; // more blocks must not cost the slab its last slice
  const nz = slices(ohw * nb * bpd);
  const most = Math.max(1, Math.floor(t3 / Math.ceil(CL_SPLIT.minK / p.k))); // splits of at least minK, taps spread
  let splits = Math.min(most, Math.ceil(CL_SPLIT.workgroups / (groups(nz) * bpd)));
  while (splits > 1 && srcSlices(nz) + (splits + 1) * nz * ohw * nb * bpd > budget) splits--;
  // The space-to-depth and depth-to-space kernels cover a slice's H x W along one grid dimension.
  const grid = ihw <= 256 * g.maxWorkgroupsPerDim && ohw <= 256 * g.maxWorkgroupsPerDim;
  return nb >= 32 && fits && nz >= 1 && grid ? { ...p, nb, bpd, nz, splits } : null;
}

/** Whether the channels-last kernel takes this pass of this convolution (see the header). */
export function channelsLastTakes(g: Gpu, s: Conv3dShape, pass: ClPass): boolean {
  return channelsLastPlan(g, s, pass) !== null;
}

/**
 * The register tile both GEMMs (this file's and conv3d_cl_dw.ts's) share: a workgroup's 256 x NB outputs from
 * As [16][256] and Bs [16][NB] in workgroup memory (vec4s; 16 steps of the reduction), thread t of 32 cgs (rg = t /
 * cgs, cg = t % cgs) accumulating rows 8 rg .. 8 rg + 7 x columns 4 (cg nv + j) .. + 3 (nv = NB / 4 cgs) in named
 * vec4s c{row}_{j}, unrolled (wgpu bounds-checks indexed arrays). Bs's rows are `bRow` vec4s apart (NB / 4 unless
 * padded). cgs is 4 for NB = 32 (128 threads of 8 x 8: on llvmpipe 13% faster than 256 of 8 x 4 for a 32 -> 32
 * forward, and the 64 accumulators per thread with which the issue's H100 probe ran fastest), else 8; the tile says
 * how many threads (32 cgs) its workgroup has.
 */
export function registerTile(nb: number, bRow = nb / 4) {
  const cgs = nb === 32 ? 4 : 8, nv = nb / (4 * cgs), threads = 32 * cgs, acc: string[] = [];
  for (let r = 0; r < 8; r++) for (let j = 0; j < nv; j++) acc.push(`c${r}_${j}`);
  let inner = "";
  for (let kk = 0; kk < BK; kk++) {
    inner += `{ let a0 = As[${kk * 64}u + rg * 2u]; let a1 = As[${kk * 64}u + rg * 2u + 1u];\n`;
    for (let j = 0; j < nv; j++) inner += `  let b${j} = Bs[${kk * bRow}u + cg * ${nv}u + ${j}u];\n`;
    for (let r = 0; r < 8; r++) {
      for (let j = 0; j < nv; j++) {
        inner += `  c${r}_${j} = fma(vec4f(${r < 4 ? "a0" : "a1"}.${"xyzw"[r % 4]}), b${j}, c${r}_${j});\n`;
      }
    }
    inner += "}\n";
  }
  return { acc, inner, cgs, nv, threads };
}

/**
 * The GEMM for u.count blocks of NB output channels of a plan (grid z: block, then split of the taps): a slab of u.nz
 * output slices (of OH x OW) starting at slice u.z0; the source ([V][K], slices from u.zlo of a volume of u.D) is read
 * at voxel o + tap - pad. Each split's result goes to its own [count][V][NB] part.
 */
function gemmKernel(p: Plan, nb: number): Kernel {
  const { k, taps: t, pad } = p, [, ih, iw] = p.src, [, oh, ow] = p.out;
  const { acc, inner, cgs, nv, threads } = registerTile(nb);
  let stores = "";
  for (let r = 0; r < 8; r++) {
    stores += `{ let o = vb + rg * 8u + ${r}u; if (o < nvox) {`;
    for (let j = 0; j < nv; j++) stores += ` Y[yb + o * ${nb / 4}u + cg * ${nv}u + ${j}u] = c${r}_${j};`;
    stores += " } }\n";
  }
  // Inputs: 256 voxels x 16 channels = 1024 vec4 per step; thread t loads voxel t/4 + (threads/4) i, channel quad t%4.
  let rows = "", loads = "";
  for (let i = 0; i < 1024 / threads; i++) {
    rows += `let v${i} = vb + t / 4u + ${(threads / 4) * i}u; let z${i} = i32(v${i} / ${oh * ow}u + u.z0); ` +
      `let y${i} = i32((v${i} / ${ow}u) % ${oh}u); let x${i} = i32(v${i} % ${ow}u);\n`;
    loads += `{ let zz = z${i} + dz; let yy = y${i} + dy; let xx = x${i} + dx; var a = vec4f(0.0);
      if (v${i} < nvox && zz >= 0 && zz < i32(u.D) && yy >= 0 && yy < ${ih} && xx >= 0 && xx < ${iw}) {
        a = X[((u32(zz) - u.zlo) * ${ih * iw}u + u32(yy) * ${iw}u + u32(xx)) * ${k / 4}u + ci0 / 4u + t % 4u];
      }
      let row = t / 4u + ${(threads / 4) * i}u; let kq = (t % 4u) * 4u;
      As[kq * 64u + row / 4u][row % 4u] = a.x; As[(kq + 1u) * 64u + row / 4u][row % 4u] = a.y;
      As[(kq + 2u) * 64u + row / 4u][row % 4u] = a.z; As[(kq + 3u) * 64u + row / 4u][row % 4u] = a.w; }\n`;
  }
  const bvecs = BK * nb / 4;
  return {
    name: `conv3d_cl_gemm_t${t}p${pad}_${k}x${nb}_${ih}x${iw}_${oh}x${ow}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> X: array<vec4f>; // [V][K]
@group(0) @binding(1) var<storage, read> Wt: array<vec4f>; // [count][T^3][K][NB]
@group(0) @binding(2) var<storage, read_write> Y: array<vec4f>; // [splits][count][V][NB]
struct U { gridx: u32, z0: u32, nz: u32, zlo: u32, D: u32, splits: u32, count: u32, p0: u32 }
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> As: array<vec4f, ${BK * BM / 4}>; // [16 channels][256 voxels]
var<workgroup> Bs: array<vec4f, ${bvecs}>; // [16 channels][NB]
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let vb = (wg.y * u.gridx + wg.x) * ${BM}u;
  let nvox = u.nz * ${oh * ow}u;
  let rg = t / ${cgs}u;
  let cg = t % ${cgs}u;
  ${rows}
  let blk = wg.z / u.splits;
  let split = wg.z % u.splits;
  let wb = blk * ${t ** 3 * k * nb / 4}u;
  let yb = (split * u.count + blk) * nvox * ${nb / 4}u;
  ${acc.map((c) => `var ${c} = vec4f(0.0);`).join(" ")}
  for (var tap = split * ${t ** 3}u / u.splits; tap < (split + 1u) * ${t ** 3}u / u.splits; tap++) {
    let dz = i32(tap / ${t * t}u) - ${pad};
    let dy = i32((tap / ${t}u) % ${t}u) - ${pad};
    let dx = i32(tap % ${t}u) - ${pad};
    for (var ci0 = 0u; ci0 < ${k}u; ci0 += ${BK}u) {
      ${loads}
      for (var e = t; e < ${bvecs}u; e += ${threads}u) { Bs[e] = Wt[wb + ((tap * ${k}u + ci0) * ${nb}u) / 4u + e]; }
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
 * T[dst + j * dstStride + i] = S[src + i * srcStride + j] (+ B[biasOff + j] when bias): a [rows][cols] matrix
 * transposed, each side's rows `stride` apart (a slab of every channel's plane).
 */
const TRANSPOSE: Kernel = {
  name: "conv3d_cl_transpose",
  wgsl: `
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> T: array<f32>;
struct U { rows: u32, cols: u32, bias: u32, src: u32, dst: u32, tilesX: u32, gridX: u32, srcStride: u32,
  dstStride: u32, biasOff: u32, p1: u32, p2: u32 }
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
    if (u.bias != 0u) { r += B[u.biasOff + ti]; }
    T[u.dst + ti * u.dstStride + tj] = r;
  }
}`,
};

/**
 * One block's GEMM weights, [T^3][K][NB] for output channels n0.. n0 + NB, from w [Cout][Cin][k^3]. Mode 0, the
 * forward: (K, N) = (Cin, Cout), w transposed. Mode 1, the input gradient: (K, N) = (Cout, Cin), the taps reversed
 * (the transposed convolution's weights). Mode 2, the stride-2 forward over x's space-to-depth: K = 8 Cin, source
 * channel 8c + 4rd + 2rh + rw at tap (a, b, e) reads w's tap (2a + rd, 2b + rh, 2e + rw) of channel c. Mode 3, its
 * input gradient (the transposed 2x2x2 convolution, pad 1): (K, N) = (Cout, 8 Cin), mode 2's weights with the taps
 * reversed. u.k is the padded K (the layout's), u.kr and u.n the real K and N (w's strides); padding channels get 0.
 */
const REORDER: Kernel = {
  name: "conv3d_cl_weights",
  wgsl: `
@group(0) @binding(0) var<storage, read> W: array<f32>;
@group(0) @binding(1) var<storage, read_write> T: array<f32>;
struct U { k: u32, n: u32, nb: u32, n0: u32, m: u32, gridx: u32, mode: u32, kr: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let e = id.y * u.gridx * 256u + id.x; // (tap * K + a) * NB + b
  if (e >= u.m) { return; }
  let b = u.n0 + e % u.nb;
  let a = (e / u.nb) % u.k;
  let tap = e / (u.nb * u.k);
  if (a >= u.kr || b >= u.n) { T[u.n0 * (u.m / u.nb) + e] = 0.0; return; } // a padding channel: nothing of w
  var s = 0u;
  if (u.mode == 0u) { s = (b * u.kr + a) * 27u + tap; }
  else if (u.mode == 1u) { s = (a * u.n + b) * 27u + 26u - tap; }
  else if (u.mode == 2u) {
    let kd = 2u * (tap / 4u) + (a / 4u) % 2u; let kh = 2u * ((tap / 2u) % 2u) + (a / 2u) % 2u;
    let kw = 2u * (tap % 2u) + a % 2u;
    s = (b * (u.kr / 8u) + a / 8u) * 64u + (kd * 4u + kh) * 4u + kw;
  } else {
    let r = 7u - tap;
    let kd = 2u * (r / 4u) + (b / 4u) % 2u; let kh = 2u * ((r / 2u) % 2u) + (b / 2u) % 2u;
    let kw = 2u * (r % 2u) + b % 2u;
    s = (a * (u.n / 8u) + b / 8u) * 64u + (kd * 4u + kh) * 4u + kw;
  }
  T[u.n0 * (u.m / u.nb) + e] = W[s];
}`,
};

/**
 * The stride-2 input gradient's result, dxs [V][NB] (from element src) for the space-to-depth slices z0.. of a block
 * of NB channels (8 per channel of x, from channel c0), scattered back to dx [C][D][H][W]: x voxel (z, y, x) of
 * channel c is parity (z + 1) % 2 ... of space-to-depth voxel ((z + 1) / 2, ...) (pad 1). Threads: one per x voxel of
 * slices zx0 + y of the grid, channel c0 + grid z.
 */
const DEPTH_TO_SPACE: Kernel = {
  name: "conv3d_cl_depth_to_space",
  wgsl: `
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read_write> T: array<f32>;
struct U { H: u32, W: u32, MH: u32, MW: u32, z0: u32, zx0: u32, nb: u32, dst: u32, plane: u32, src: u32, p1: u32,
  p2: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x >= u.H * u.W) { return; }
  let y = id.x / u.W;
  let x = id.x - y * u.W;
  let z = u.zx0 + id.y;
  let q = ((z + 1u) % 2u) * 4u + ((y + 1u) % 2u) * 2u + (x + 1u) % 2u;
  let m = (((z + 1u) / 2u - u.z0) * u.MH + (y + 1u) / 2u) * u.MW + (x + 1u) / 2u;
  T[u.dst + id.z * u.plane + z * u.H * u.W + id.x] = S[u.src + m * u.nb + id.z * 8u + q];
}`,
};

/**
 * A [rows][cols] matrix at element `src` of one buffer (rows `src[2]` apart), transposed into another at element `dst`
 * (rows `dst[2]` apart), + bias from element `biasOff` of b.
 */
function transpose(
  g: Gpu,
  src: [GPUBuffer, number, number],
  dst: [GPUBuffer, number, number],
  rows: number,
  cols: number,
  bias: GPUBuffer | null,
  biasOff = 0,
) {
  const tilesX = Math.ceil(cols / 16), grid = grid1d(g, tilesX * Math.ceil(rows / 16));
  g.dispatch(
    TRANSPOSE,
    [
      { buffer: src[0], size: (src[1] + (rows - 1) * src[2] + cols) * 4 },
      bias ? { buffer: bias } : { buffer: src[0], size: 4 },
      { buffer: dst[0], size: (dst[1] + (cols - 1) * dst[2] + rows) * 4 },
    ],
    new Uint32Array([rows, cols, bias ? 1 : 0, src[1], dst[1], tilesX, grid[0], src[2], dst[2], biasOff, 0, 0]),
    grid,
  );
}

/** out = conv(src, w) (+ bias) per sample through the GEMM, for the pass's plan. */
function run(g: Gpu, s: Conv3dShape, pass: ClPass, src: GPUBuffer, w: GPUBuffer, b: GPUBuffer | null, out: GPUBuffer) {
  const p = channelsLastPlan(g, s, pass);
  if (!p) {
    throw new Error(
      `conv3d channels-last ${pass === "forward" ? "forward" : "input gradient"}: [${s.n},${s.cin},${s.d},${s.h},` +
        `${s.w}] -> ${s.cout}, kernel ${s.k} stride ${s.stride} is not eligible (3x3x3 stride 1 pad 1 or 4x4x4 ` +
        `stride 2 pad 1; GEMM channels padded to multiples of 16 in and 32 out at most 4x, those of x counted 8 ` +
        `times for stride 2; every tensor within one binding)`,
    );
  }
  const [sd, ih, iw] = p.src, [od, oh, ow] = p.out, ihw = ih * iw, ohw = oh * ow;
  const t3 = p.taps ** 3, m = t3 * p.k * p.n, held = Math.min(sd, p.nz + p.taps - 1), { splits } = p;
  // Dispatches of bpd blocks of NB channels, and one for a narrower last block.
  const groups: { n0: number; nb: number; count: number }[] = [];
  for (let n0 = 0; n0 + p.nb <= p.n; n0 += p.bpd * p.nb) {
    groups.push({ n0, nb: p.nb, count: Math.min(p.bpd, Math.floor((p.n - n0) / p.nb)) });
  }
  if (p.n % p.nb) groups.push({ n0: p.n - (p.n % p.nb), nb: p.n % p.nb, count: 1 });
  const result = p.nz * ohw * p.nb * p.bpd; // one split's result, [count][V][NB], at most
  const wt = g.alloc(m * 4), st = g.alloc(held * ihw * p.k * 4), ot = g.alloc(splits * result * 4);
  const xs = p.weights === 2 ? g.alloc(held * ihw * p.kReal * 4) : null;
  const sum = splits > 1 ? g.alloc(result * 4) : null;
  try {
    // The source's padding channels, which the transposes in never write, are zeroed: a pooled buffer's NaN or Inf
    // there would survive their zero weights (0 x NaN).
    if (p.kReal < p.k) g.zero(st);
    for (let n0 = 0; n0 < p.n; n0 += p.nb) {
      const nb = Math.min(p.nb, p.n - n0), rgrid = grid1d(g, Math.ceil((t3 * p.k * nb) / 256));
      const u = new Uint32Array([p.k, p.nReal, nb, n0, t3 * p.k * nb, rgrid[0], p.weights, p.kReal]);
      g.dispatch(REORDER, [{ buffer: w, size: s.cout * s.cin * s.k ** 3 * 4 }, { buffer: wt, size: m * 4 }], u, rgrid);
    }
    const [srcC, outV] = [pass === "forward" ? s.cin : s.cout, od * ohw];
    for (let i = 0; i < s.n; i++) {
      for (let z0 = 0; z0 < od; z0 += p.nz) {
        // Output slices [z0, z1) read source slices [zlo, zhi).
        const z1 = Math.min(od, z0 + p.nz), zlo = Math.max(0, z0 - p.pad), zhi = Math.min(sd, z1 - p.pad + p.taps - 1);
        const cols = (zhi - zlo) * ihw, nvox = (z1 - z0) * ohw;
        if (xs) { // the space-to-depth of x's slices for this slab, then transposed
          spaceToDepth2(g, src, xs, [1, s.cin, s.d, s.h, s.w], [zhi - zlo, ih, iw], s.pad, "f32", i * s.cin, zlo);
          transpose(g, [xs, 0, cols], [st, 0, p.k], p.kReal, cols, null);
        } else transpose(g, [src, (i * srcC * sd + zlo) * ihw, sd * ihw], [st, 0, p.k], p.kReal, cols, null);
        const vgroups = Math.ceil(nvox / BM), gx = Math.min(vgroups, g.maxWorkgroupsPerDim);
        for (const { n0, nb, count } of groups) {
          const size = count * nvox * nb; // one split's result: [count][V][NB]
          const u = new Uint32Array([gx, z0, z1 - z0, zlo, sd, splits, count, 0]);
          const wb = { buffer: wt, offset: n0 * t3 * p.k * 4, size: count * nb * t3 * p.k * 4 };
          const binds = [{ buffer: st, size: held * ihw * p.k * 4 }, wb, { buffer: ot, size: splits * size * 4 }];
          g.dispatch(gemmKernel(p, nb), binds, u, [gx, Math.ceil(vgroups / gx), count * splits]);
          if (sum) sumParts(g, ot, sum, size, splits);
          const res = sum ?? ot;
          for (let c = 0; c < count; c++) {
            // The block's first channel, its real channels (the last block's padding is not stored), its result.
            const [c0, r0] = [n0 + c * nb, c * nvox * nb], real = Math.min(nb, p.nReal - c0);
            if (p.weights === 3) { // dxs slab -> dx: its x slices [2 z0 - 1, 2 z1 - 1) of channels c0 / 8 ..
              const [zx0, zx1] = [Math.max(0, 2 * z0 - 1), Math.min(s.d, 2 * z1 - 1)], plane = s.d * s.h * s.w;
              const u = new Uint32Array([s.h, s.w, oh, ow, z0, zx0, nb, (i * s.cin + c0 / 8) * plane, plane, r0, 0, 0]);
              const binds = [{ buffer: res, size: (r0 + nvox * nb) * 4 }, {
                buffer: out,
                size: s.n * s.cin * plane * 4,
              }];
              g.dispatch(DEPTH_TO_SPACE, binds, u, [Math.ceil((s.h * s.w) / 256), zx1 - zx0, real / 8]);
            } else {
              const dst = ((i * p.nReal + c0) * od + z0) * ohw;
              transpose(g, [res, r0, nb], [out, dst, outV], nvox, real, b, c0); // [V][NB] -> [NB][V], + bias
            }
          }
        }
      }
    }
  } finally {
    for (const t of [wt, st, ot, xs, sum]) if (t) g.free(t);
  }
}

/** y = conv3d(x, w) + b through the channels-last GEMM; s must be eligible (channelsLastTakes). */
export function conv3dForwardChannelsLast(
  g: Gpu,
  s: Conv3dShape,
  x: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  y: GPUBuffer,
) {
  run(g, s, "forward", x, w, b, y);
}

/**
 * dx (assigned) from dy and w: for 3x3x3 stride 1 pad 1 the transposed convolution is the same convolution of dy
 * with the weights transposed (Cout <-> Cin) and their taps reversed; s must be eligible for the input gradient.
 */
export function conv3dBackwardInputChannelsLast(g: Gpu, s: Conv3dShape, dy: GPUBuffer, w: GPUBuffer, dx: GPUBuffer) {
  run(g, s, "input_grad", dy, w, null, dx);
}
