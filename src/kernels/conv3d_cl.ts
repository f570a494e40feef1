// conv3d as a channels-last implicit GEMM, the alternative to the NCDHW gather kernel for the forward and input
// gradient: `--conv-kernel channels-last|tuned` runs it in the networks (conv_select.ts), and `bench --mode conv` times
// both (a `variant` field). The design is ../shared/docs/examples/conv3d_channels_last.ts, which ran at 11.9-18.5
// TFLOP/s on an H100 at the U-Net's first two levels (PyTorch fp32: 30-41).
//
// Passes taken (plan): a 3x3x3 stride-1 pad-1 forward (GEMM K = Cin, N = Cout, T = 3 taps per dimension, pad 1) and
// input gradient (the same convolution of dy with the weights transposed and their taps reversed: K = Cout, N = Cin);
// a 4x4x4 stride-2 pad-1 forward as the 2x2x2 unpadded convolution of x's space-to-depth (K = 8 Cin, N = Cout, T = 2,
// pad 0), as conv3d.ts runs it; and its input gradient, the transposed 2x2x2 convolution (K = Cout, N = 8 Cin, T = 2,
// pad 1, taps reversed) giving the space-to-depth of dx. K is padded to a multiple of 16 with zero channels and N to a
// multiple of 32 (columns computed, never stored), as long as CL_MIN_USE of the work stays real.
//
// Layouts: the source [N,K,D,H,W] and the result [N,N',OD,OH,OW] stay NCDHW, as everywhere: the GEMM reads the one and
// writes the other where they are, with no transposed copies. Its rows are one sample's output voxels, its columns the
// output channels, its reduction runs over taps, then source channels in steps of 16. The weights are reordered to N
// blocks of [T^3][K][NB] (tap-major K), NB <= 128 output channels. A workgroup takes 256 consecutive output voxels x
// the NB channels of one block; each thread 8 voxels x NB/8 channels (NB/4 for NB = 32: registerTile). Each step stages
// [16 channels][256 voxels] of the source in workgroup memory, each thread loading 4 channels of 4 consecutive voxels
// (consecutive threads, consecutive quads; a voxel's position is decoded once, its source offset once per tap) and
// writing whole vec4s, and [16][NB] of the weights. A stride-2 forward reads x's space-to-depth from x itself: channel
// 8c + 4rd + 2rh + rw of space-to-depth voxel m is x[c][2m + (rd, rh, rw) - 1] (zero outside x). The result leaves
// through workgroup memory, 32 to 128 voxels x NB channels at a time, so that consecutive threads store consecutive
// voxels, + bias; a stride-2 input gradient's result, dx's space-to-depth, is stored at dx's voxels by the same map
// backwards.
// A dispatch takes one block, or where a volume has few voxels (the deep levels, the discriminator's last
// convolutions) several (grid z), up to CL_SPLIT.workgroups workgroups; below that the taps are split over more, each
// split writing partials laid out as its result (at most CL_PARTS bytes), which conv3d_sum_parts sums into it (split 0
// adds the bias). A forward may read and write f16 (inference, `--f16`): arithmetic and partials stay f32, each stored
// value rounded once. Every tensor is bound whole, so each must fit one binding. Nothing is saved; the scratch is the
// reordered weights and any partials. The weight gradient's GEMM is conv3d_cl_dw.ts.

import { type Conv3dShape, sumParts } from "./conv3d.ts";
import { enables, F32_PAIR, type Gpu, grid1d, type Kernel, type StoragePair, toStorage, wordBytes } from "./device.ts";

export const BM = 256, BK = 16;
/** The most partials of a split reduction held at once. */
const CL_PARTS = 256 * 2 ** 20;
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
  out: number[]; // [D, H, W] of the GEMM's result (dx's space-to-depth for a stride-2 input gradient)
  x: number[]; // [D, H, W] of x: what a stride-2 forward reads, what its input gradient writes
  weights: number; // REORDER's mode: 0 forward, 1 input gradient, 2 stride-2 forward, 3 stride-2 input gradient
  splits: number; // parts the taps are split into (1: none); split i takes taps [i T^3 / splits, (i+1) T^3 / splits)
  types: StoragePair; // the source's and the result's storage (f16: a forward, for inference)
}

/**
 * The plan for a pass of this convolution, or null when the channels-last kernel does not take it; `types`, the
 * source's and the result's storage, are f32 but for a forward (f16 for inference).
 */
export function channelsLastPlan(g: Gpu, s: Conv3dShape, pass: ClPass, types = F32_PAIR): Plan | null {
  const vol = [s.d, s.h, s.w], out = [s.od, s.oh, s.ow];
  let q: Omit<Plan, "nb" | "bpd" | "splits" | "k" | "n" | "types">;
  if (s.k === 3 && s.stride === 1 && s.pad === 1) {
    const [kReal, nReal] = pass === "forward" ? [s.cin, s.cout] : [s.cout, s.cin];
    q = { kReal, nReal, taps: 3, pad: 1, src: vol, out: vol, x: vol, weights: pass === "forward" ? 0 : 1 };
  } else if (s.k === 4 && s.stride === 2 && s.pad === 1) {
    const m = out.map((o) => o + 1); // x's space-to-depth
    q = pass === "forward"
      ? { kReal: 8 * s.cin, nReal: s.cout, taps: 2, pad: 0, src: m, out, x: vol, weights: 2 }
      : { kReal: s.cout, nReal: 8 * s.cin, taps: 2, pad: 1, src: out, out: m, x: vol, weights: 3 };
  } else return null;
  const p = { ...q, k: Math.ceil(q.kReal / BK) * BK, n: Math.ceil(q.nReal / 32) * 32 };
  if ((p.kReal / p.k) * (p.nReal / p.n) < CL_MIN_USE) return null;
  let nb = Math.min(128, p.n);
  while (nb >= 32 && (BK * BM + BK * nb) * 4 > g.maxWorkgroupStorage) nb -= 32; // staged inputs and weights
  const [srcC, dstC] = pass === "forward" ? [s.cin, s.cout] : [s.cout, s.cin];
  const [srcV, dstV] = [pass === "forward" ? vol : out, pass === "forward" ? out : vol].map((d) => d[0] * d[1] * d[2]);
  // Each tensor is bound whole, and so are the reordered (padded) weights when one dispatch takes every block.
  const whole = [wordBytes(s.n * srcC * srcV, types[0]), wordBytes(s.n * dstC * dstV, types[1])];
  whole.push(4 * s.cout * s.cin * s.k ** 3);
  whole.push(4 * p.taps ** 3 * p.k * p.n);
  const nvox = p.out[0] * p.out[1] * p.out[2], tiles = Math.ceil(nvox / BM);
  const gy = Math.ceil(tiles / Math.min(tiles, g.maxWorkgroupsPerDim));
  if (pass !== "forward" && types.some((t) => t !== "f32")) throw new Error(`conv3d channels-last ${pass}: f32 only`);
  if (nb < 32 || !whole.every((b) => b <= g.maxBinding) || gy > g.maxWorkgroupsPerDim) return null;
  // A volume of few voxels (the deep levels, the discriminator's last convolutions) makes too few workgroups to fill
  // a GPU: one dispatch then takes several blocks, and the taps are split over up to T^3 workgroups each, as far as
  // their partials fit CL_PARTS (and one binding). Blocks x splits go along grid z.
  const zMax = g.maxWorkgroupsPerDim, t3 = p.taps ** 3;
  const bpd = Math.min(Math.floor(p.n / nb), Math.ceil(CL_SPLIT.workgroups / tiles), zMax);
  const most = Math.max(1, Math.floor(t3 / Math.ceil(CL_SPLIT.minK / p.k))); // splits of at least minK, taps spread
  let splits = Math.min(most, Math.ceil(CL_SPLIT.workgroups / (tiles * bpd)), Math.floor(zMax / bpd));
  while (splits > 1 && splits * nvox * nb * bpd * 4 > Math.min(CL_PARTS, g.maxBinding)) splits--;
  return { ...p, nb, bpd, splits, types };
}

/**
 * Whether the channels-last kernel takes this pass of this convolution (see the header), in f32; f16 storage needs no
 * more binding room, so it takes the same shapes.
 */
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
 * The GEMM for blocks of NB output channels of a plan (grid z: block, then split of the taps: u.splits) over 256-voxel
 * tiles of one sample's result (grid x, y), reading the source from element u.xb and writing the result from element
 * u.yb (the dispatch's first channel); with the taps split, each split writes its own part (u.part elements apart) of
 * partials laid out as the result.
 */
function gemmKernel(p: Plan, nb: number): Kernel {
  const { k, kReal, taps: t, pad } = p, [sd, sh, sw] = p.src, [od, oh, ow] = p.out, [xd, xh, xw] = p.x;
  const { acc, inner, cgs, nv, threads } = registerTile(nb);
  const nvox = od * oh * ow, xv = xd * xh * xw, s2d = p.weights === 2, d2s = p.weights === 3;
  // Staging: thread t loads tile voxels 4 (t % 64) .. + 3 (each decoded once, its source offset found once per tap)
  // for channel group g = t / 64 + (threads / 64) i (slot i) of 4 channels, and writes each channel's 4 voxels as one
  // vec4: whole vectors, since writing one component may rewrite the vector (WGSL), racing the threads sharing it.
  // Consecutive threads read consecutive quads, so the four loads of a channel cover a contiguous run.
  // Loads have no branches: a padding voxel's index is clamped into the source and select() drops what it read (a
  // multiply would keep a NaN; on llvmpipe 10% faster than branches); likewise a padding channel (K past kReal).
  const sv = sd * sh * sw, padK = kReal % BK !== 0, hw = xh * xw, J = [0, 1, 2, 3];
  let decode = "", offsets = "", loads = "";
  for (const j of J) {
    decode += `let o${j} = vb + 4u * (t % 64u) + ${j}u; let z${j} = i32(o${j} / ${oh * ow}u); ` +
      `let y${j} = i32((o${j} / ${ow}u) % ${oh}u); let x${j} = i32(o${j} % ${ow}u);\n`;
    offsets += s2d
      // x's offset at parity 0 of the tap's space-to-depth voxel, 2 (o + tap) - 1; parities add 0 or 1 per axis.
      ? `let bz${j} = 2 * (z${j} + dz) - 1; let by${j} = 2 * (y${j} + dy) - 1; let bx${j} = 2 * (x${j} + dx) - 1;
        let s${j} = (bz${j} * ${xh} + by${j}) * ${xw} + bx${j};\n`
      : `var s${j} = -1; { let zz = z${j} + dz; let yy = y${j} + dy; let xx = x${j} + dx;
        if (zz >= 0 && zz < ${sd} && yy >= 0 && yy < ${sh} && xx >= 0 && xx < ${sw}) {
          s${j} = (zz * ${sh} + yy) * ${sw} + xx; } }
        let at${j} = u.xb + u32(max(s${j}, 0)); let ok${j} = s${j} >= 0;\n`;
  }
  for (let i = 0; i < BM / threads; i++) {
    const g = `(t / 64u + ${(threads / 64) * i}u)`;
    if (s2d) { // channel 4 g + cc of the step: x's channel ci0 / 8 + g / 2 at parity (g % 2, cc / 2, cc % 2)
      decode += `let rd${i} = ${g} % 2u;\n`;
      for (const j of J) offsets += `let zk${i}_${j} = select(bz${j} >= 0, bz${j} + 1 < ${xd}, rd${i} == 1u);\n`;
    }
    for (let cc = 0; cc < 4; cc++) {
      const v = J.map((j) => {
        if (!s2d) {
          const ch = `(ci0 + 4u * ${g} + ${cc}u)`;
          const ok = padK ? `ok${j} && ${ch} < ${kReal}u` : `ok${j}`;
          return `select(0.0, f32(X[at${j} + ${padK ? `min(${ch}, ${kReal - 1}u)` : ch} * ${sv}u]), ${ok})`;
        }
        const [rh, rw] = [cc >> 1, cc & 1], ch = `(ci0 / 8u + ${g} / 2u)`;
        const ok = [
          `zk${i}_${j}`,
          rh ? `by${j} + 1 < ${xh}` : `by${j} >= 0`,
          rw ? `bx${j} + 1 < ${xw}` : `bx${j} >= 0`,
        ];
        if (padK) ok.push(`${ch} < ${kReal / 8}u`);
        const voxel = `min(u32(max(s${j} + i32(rd${i}) * ${hw} + ${rh * xw + rw}, 0)), ${xv - 1}u)`;
        return `select(0.0, f32(X[u.xb + ${padK ? `min(${ch}, ${kReal / 8 - 1}u)` : ch} * ${xv}u + ${voxel}]), ` +
          `${ok.join(" && ")})`;
      });
      loads += `As[(4u * ${g} + ${cc}u) * 64u + t % 64u] = vec4f(${v.join(",\n  ")});\n`;
    }
  }
  // The result leaves through As in chunks of `rows` voxels x NB channels ([NB][rows]; a power of 2 that fits): the
  // threads holding a chunk's voxels (whole warps) put their registers there as vec4s along the voxels, then every
  // thread stores `per` of its values, consecutive threads at consecutive voxels of one channel.
  const rows = [128, 64, 32].find((r) => r * nb <= BK * BM)!, per = (rows * nb) / threads, step = threads / rows;
  let puts = `if (rg / ${rows / 8}u == q) { let v = (rg % ${rows / 8}u) * 2u;\n`;
  for (let j = 0; j < nv; j++) {
    for (let e = 0; e < 4; e++) {
      const at = `((cg * ${nv}u + ${j}u) * 4u + ${e}u) * ${rows / 4}u + v`,
        comp = (r: number) => `c${r}_${j}.${"xyzw"[e]}`;
      puts += `As[${at}] = vec4f(${[0, 1, 2, 3].map(comp)}); As[${at} + 1u] = vec4f(${[4, 5, 6, 7].map(comp)});\n`;
    }
  }
  puts += "}\n";
  // Column 8 c + q of a stride-2 input gradient is channel c of dx at parity q of the space-to-depth voxel m = (z, y,
  // x): dx's voxel 2 m + q - 1.
  const where = d2s
    ? `let z = i32(o / ${oh * ow}u); let y = i32((o / ${ow}u) % ${oh}u); let x = i32(o % ${ow}u);
      let e = ((2 * z - 1) * ${xh} + 2 * y - 1) * ${xw} + 2 * x - 1;
      let lo = vec3<bool>(z > 0, y > 0, x > 0); let hi = vec3<bool>(2 * z < ${xd}, 2 * y < ${xh}, 2 * x < ${xw});`
    : "";
  // Split partials are f32; the result is stored as its type (f16 saturating).
  const [xt, yt] = [p.types[0], p.splits > 1 ? "f32" : p.types[1]], put = toStorage(yt, "a");
  const store = d2s
    ? `let r = vec3<bool>(col % 8u >= 4u, col % 4u >= 2u, col % 2u == 1u);
      if (all(select(lo, hi, r))) {
        Y[u.yb + split * u.part + (col / 8u) * ${xv}u + u32(e + dot(vec3i(r), vec3i(${xh * xw}, ${xw}, 1)))] = ${put};
      }`
    : `Y[u.yb + split * u.part + col * ${nvox}u + o] = ${put};`;
  const bvecs = BK * nb / 4;
  return {
    name: `conv3d_cl_gemm_m${p.weights}_t${t}p${pad}_${kReal}/${k}x${nb}_${p.src}_${p.out}_${p.x}_${xt}_${yt}`,
    wgsl: `${enables(xt, yt)}
@group(0) @binding(0) var<storage, read> X: array<${xt}>; // the source, NCDHW
@group(0) @binding(1) var<storage, read> Wt: array<vec4f>; // [count][T^3][K][NB]
@group(0) @binding(2) var<storage, read> B: array<f32>; // the bias, where u.bias
@group(0) @binding(3) var<storage, read_write> Y: array<${yt}>; // the result, NCDHW, or its partials
struct U { gridx: u32, splits: u32, xb: u32, yb: u32, part: u32, n0: u32, ncols: u32, bias: u32 }
@group(0) @binding(4) var<uniform> u: U;
var<workgroup> As: array<vec4f, ${BK * BM / 4}>; // [16 channels][256 voxels]
var<workgroup> Bs: array<vec4f, ${bvecs}>; // [16 channels][NB]
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let vb = (wg.y * u.gridx + wg.x) * ${BM}u;
  let rg = t / ${cgs}u;
  let cg = t % ${cgs}u;
  ${decode}
  let blk = wg.z / u.splits;
  let split = wg.z % u.splits;
  let wb = blk * ${t ** 3 * k * nb / 4}u;
  ${acc.map((c) => `var ${c} = vec4f(0.0);`).join(" ")}
  for (var tap = split * ${t ** 3}u / u.splits; tap < (split + 1u) * ${t ** 3}u / u.splits; tap++) {
    let dz = i32(tap / ${t * t}u) - ${pad};
    let dy = i32((tap / ${t}u) % ${t}u) - ${pad};
    let dx = i32(tap % ${t}u) - ${pad};
    ${offsets}
    for (var ci0 = 0u; ci0 < ${k}u; ci0 += ${BK}u) {
      ${loads}
      for (var e = t; e < ${bvecs}u; e += ${threads}u) { Bs[e] = Wt[wb + ((tap * ${k}u + ci0) * ${nb}u) / 4u + e]; }
      workgroupBarrier();
      ${inner}
      workgroupBarrier();
    }
  }
  let bias = u.bias != 0u && split == 0u;
  for (var q = 0u; q < ${BM / rows}u; q++) {
    ${puts}
    workgroupBarrier();
    let o = vb + q * ${rows}u + t % ${rows}u;
    ${where}
    for (var i = 0u; i < ${per}u; i++) {
      let c = t / ${rows}u + ${step}u * i; // of the tile's columns
      let col = blk * ${nb}u + c; // of the dispatch's
      if (col < u.ncols && o < ${nvox}u) {
        var a = As[(c * ${rows}u + t % ${rows}u) / 4u][t % 4u];
        if (bias) { a += B[u.n0 + col]; }
        ${store}
      }
    }
    workgroupBarrier();
  }
}`,
  };
}

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

/** out = conv(src, w) (+ bias) per sample through the GEMM, for the pass's plan, src and out stored as `types`. */
function run(
  g: Gpu,
  s: Conv3dShape,
  pass: ClPass,
  src: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  out: GPUBuffer,
  types = F32_PAIR,
) {
  const p = channelsLastPlan(g, s, pass, types);
  if (!p) {
    throw new Error(
      `conv3d channels-last ${pass === "forward" ? "forward" : "input gradient"}: [${s.n},${s.cin},${s.d},${s.h},` +
        `${s.w}] -> ${s.cout}, kernel ${s.k} stride ${s.stride} is not eligible (3x3x3 stride 1 pad 1 or 4x4x4 ` +
        `stride 2 pad 1; GEMM channels padded to multiples of 16 in and 32 out at most 4x, those of x counted 8 ` +
        `times for stride 2; every tensor within one binding)`,
    );
  }
  const t3 = p.taps ** 3, m = t3 * p.k * p.n, { splits } = p, xv = s.d * s.h * s.w;
  const nvox = p.out[0] * p.out[1] * p.out[2], srcV = p.weights === 2 ? xv : p.src[0] * p.src[1] * p.src[2];
  const srcC = pass === "forward" ? s.cin : s.cout;
  /** The result's elements for `cols` GEMM columns (for a stride-2 input gradient 8 per channel of dx). */
  const at = (cols: number) => p.weights === 3 ? (cols / 8) * xv : cols * nvox;
  // Dispatches of bpd blocks of NB channels, and one for a narrower last block.
  const groups: { n0: number; nb: number; count: number }[] = [];
  for (let n0 = 0; n0 + p.nb <= p.n; n0 += p.bpd * p.nb) {
    groups.push({ n0, nb: p.nb, count: Math.min(p.bpd, Math.floor((p.n - n0) / p.nb)) });
  }
  if (p.n % p.nb) groups.push({ n0: p.n - (p.n % p.nb), nb: p.n % p.nb, count: 1 });
  const wt = g.alloc(m * 4), parts = splits > 1 ? g.alloc(splits * at(p.bpd * p.nb) * 4) : null;
  try {
    for (let n0 = 0; n0 < p.n; n0 += p.nb) {
      const nb = Math.min(p.nb, p.n - n0), rgrid = grid1d(g, Math.ceil((t3 * p.k * nb) / 256));
      const u = new Uint32Array([p.k, p.nReal, nb, n0, t3 * p.k * nb, rgrid[0], p.weights, p.kReal]);
      g.dispatch(REORDER, [{ buffer: w, size: s.cout * s.cin * s.k ** 3 * 4 }, { buffer: wt, size: m * 4 }], u, rgrid);
    }
    const tiles = Math.ceil(nvox / BM), gx = Math.min(tiles, g.maxWorkgroupsPerDim), gy = Math.ceil(tiles / gx);
    const xb = { buffer: src, size: wordBytes(s.n * srcC * srcV, types[0]) };
    const yb = { buffer: out, size: wordBytes(at(s.n * p.nReal), types[1]) };
    for (let i = 0; i < s.n; i++) {
      for (const { n0, nb, count } of groups) {
        // The dispatch's real columns (a padded last block's padding is not stored) and where they go.
        const ncols = Math.min(count * nb, p.nReal - n0), first = at(i * p.nReal + n0);
        const u = new Uint32Array([gx, splits, i * srcC * srcV, parts ? 0 : first, at(ncols), n0, ncols, b ? 1 : 0]);
        const wb = { buffer: wt, offset: n0 * t3 * p.k * 4, size: count * nb * t3 * p.k * 4 };
        const dst = parts ? { buffer: parts, size: splits * at(ncols) * 4 } : yb;
        g.dispatch(gemmKernel(p, nb), [xb, wb, b ? { buffer: b } : wb, dst], u, [gx, gy, count * splits]);
        if (parts) sumParts(g, parts, out, at(ncols), splits, first, types[1]);
      }
    }
  } finally {
    for (const t of [wt, parts]) if (t) g.free(t);
  }
}

/**
 * y = conv3d(x, w) + b through the channels-last GEMM, x and y stored as `types` (f16 for inference); s must be
 * eligible (channelsLastTakes).
 */
export function conv3dForwardChannelsLast(
  g: Gpu,
  s: Conv3dShape,
  x: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  y: GPUBuffer,
  types = F32_PAIR,
) {
  run(g, s, "forward", x, w, b, y, types);
}

/**
 * dx (assigned) from dy and w: for 3x3x3 stride 1 pad 1 the transposed convolution is the same convolution of dy
 * with the weights transposed (Cout <-> Cin) and their taps reversed; s must be eligible for the input gradient.
 */
export function conv3dBackwardInputChannelsLast(g: Gpu, s: Conv3dShape, dy: GPUBuffer, w: GPUBuffer, dx: GPUBuffer) {
  run(g, s, "input_grad", dy, w, null, dx);
}
