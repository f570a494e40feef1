// 3D convolution with PyTorch Conv3d semantics: forward, input/weight/bias gradients, float64 CPU references.
//
// Layouts (f32 row-major): x [N,Cin,D,H,W] and y [N,Cout,OD,OH,OW] (NCDHW), w [Cout,Cin,k,k,k], b [Cout]. The
// forward also reads and/or writes f16 storage for x and y (inference; weights and accumulation stay f32).
// Supported (k, stride, pad): (3,1,1), (1,1,0), (4,2,1), (4,1,1); bias optional. OD = floor((D + 2p - k) / s) + 1.
// Backward reads the forward input x (for dw) and the weights w (for dx); nothing else is saved. Every gradient is
// assigned (written whole into its output buffer), never accumulated.
//
// Kernels:
// - conv3d_gather computes out[oc, o] = sum_ic sum_u W(oc, ic, u) * in[ic, o - pad + u] over a T^3 tap cube
//   (stride 1). Forward: in = x, W = w; a stride-2 forward (4x4x4, pad 1) reads x's space-to-depth instead
//   (space_to_depth.ts: 8 parity channels per input channel, T = 2, no pad), with W(oc, 8ic + parity, u) = w at tap
//   2u + parity, in chunks of input channels (S2D_BYTES) accumulated into y. Input gradient (transposed conv): for
//   stride s, dx splits by the parity r of each coordinate (id = s*m + r) into s^3 dense stride-1 sub-convs over dy
//   with T = ceil(k/s) taps per dimension;
//   tap u reads dy[m - pad' + u] with kernel index kd = r + p + s*pad' - s*u, pad' = floor((k-1-r-p)/s), and the
//   result lands in dx[s*m + r]. Each thread owns VW consecutive outputs along W x VH rows x 4*COV output channels
//   (COV 1 or 2, VH 1, 2 or 4, chosen by the channel and row counts; see threadBlock) in named vec4 accumulators;
//   per (channel, kd) each input row and each weight is loaded once and reused across kh, kw, rows and voxels;
//   weights for CIT input channels (at most the channel count) are staged in workgroup memory.
//   Split-K (splitPlan), for output slices of at most 32 thread positions with at least 16 source channels, where
//   the 8x8 tile would leave most lanes idle: the workgroup fits the slice, KZ lanes along x (the SIMD axis of CPU
//   adapters) take interleaved staged input channels, and channel chunks spread over workgroups; each lane writes
//   partials [chunk*KZ + lane][destination window] and conv3d_sum_parts_out sums them into y (adding the bias, or
//   accumulating over input-channel windows).
// - conv3d_dw, split-K weight gradient: each workgroup takes a chunk of output rows (od, oh) and 4*COV output
//   channels, stages dy row segments in workgroup memory, and each thread (workgroups sized to the Cin*k*k rows, so
//   few lanes idle on small channel counts) accumulates the k kw-taps of one (ci, kd, kh), four voxels per step
//   sharing their x loads, into partials [N*chunks][Cout][Cin][k^3]; conv3d_sum_parts then sums the partials.
// - conv3d_db: workgroups sum chunks of each dy channel plane into partials [N * chunks][Cout] (DB_CHUNKS);
//   conv3d_sum_parts sums them.
//
// Tensors larger than one storage binding: channel planes are bound in windows (planeChunks); the gather kernel
// sums over input-channel windows by accumulating into its output (the first window assigns, adding the bias).

import {
  bindingWindow,
  enables,
  F32_PAIR,
  type Gpu,
  grid1d,
  type Kernel,
  planeChunks,
  type Storage,
  STORAGE_BYTES,
  type StoragePair,
  toStorage,
  vec4Lanes,
} from "./device.ts";
import { cast } from "./elementwise.ts";
import { spaceToDepth2 } from "./space_to_depth.ts";

/** Validated geometry of one convolution. */
export interface Conv3dShape {
  n: number;
  cin: number;
  cout: number;
  d: number;
  h: number;
  w: number;
  k: number;
  stride: number;
  pad: number;
  od: number;
  oh: number;
  ow: number;
}

const SUPPORTED = [[3, 1, 1], [1, 1, 0], [4, 2, 1], [4, 1, 1]];

/** Checks shapes and the (k, stride, pad) combination; the error names every shape involved. */
export function conv3dShape(
  x: readonly number[],
  w: readonly number[],
  b: readonly number[] | null,
  stride: number,
  pad: number,
): Conv3dShape {
  const what = () => `conv3d: x [${x}], weight [${w}], bias ${b ? `[${b}]` : "none"}, stride ${stride}, pad ${pad}`;
  if (x.length !== 5 || w.length !== 5) throw new Error(`${what()}: x and weight must be 5-D (NCDHW, OIDHW)`);
  const [n, cin, d, h, wd] = x;
  const [cout, wcin, k] = w;
  if (w[3] !== k || w[4] !== k) throw new Error(`${what()}: the kernel must be cubic`);
  if (wcin !== cin) throw new Error(`${what()}: weight has ${wcin} input channels, x has ${cin}`);
  if (b && (b.length !== 1 || b[0] !== cout)) throw new Error(`${what()}: bias must be [${cout}]`);
  if (!SUPPORTED.some(([sk, ss, sp]) => sk === k && ss === stride && sp === pad)) {
    throw new Error(
      `${what()}: unsupported (kernel ${k}, stride ${stride}, pad ${pad}); supported are ` +
        SUPPORTED.map(([a, s, p]) => `(${a},${s},${p})`).join(" "),
    );
  }
  const out = (v: number) => Math.floor((v + 2 * pad - k) / stride) + 1;
  const [od, oh, ow] = [out(d), out(h), out(wd)];
  if (n < 1 || cin < 1 || cout < 1 || od < 1 || oh < 1 || ow < 1) {
    throw new Error(`${what()}: empty input or output [${n},${cout},${od},${oh},${ow}]`);
  }
  return { n, cin, cout, d, h, w: wd, k, stride, pad, od, oh, ow };
}

// ---- gather convolution (forward and input gradient) ----

const VW = 4; // outputs per thread along W
const WX = 8, WY = 8; // workgroup: 8 W-tiles x 8 rows, one (od, channel block) per workgroup

/** Picks the option with the least cost = rows or channels computed (padded up to the block) x relative cost. */
function cheapest(n: number, costs: Record<number, number>, block: (o: number) => number): number {
  const opts = Object.keys(costs).map(Number);
  const cost = (o: number) => Math.ceil(n / block(o)) * block(o) * costs[o];
  return opts.reduce((best, o) => cost(o) < cost(best) ? o : best);
}

/** Relative cost per output channel of 4, 8 or 16 channels per thread (COV 1, 2, 4), measured on llvmpipe. */
const COV_COST = { 1: 1.3, 2: 1, 4: 0.82 };
const MAX_BODY = 432; // FMA statements in the gather kernel's unrolled body per input channel

/**
 * Output channels per thread, 4*COV, and output rows per thread, VH: both reuse each loaded value more, and loads
 * cost far more than FMAs on CPU adapters (VH 2 and 4: 0.75 and 0.5 of the cost per output row, on llvmpipe), but
 * blocks past the last channel or row are wasted work. llvmpipe's compile time grows steeply with the unrolled body
 * (t^3 * VW * COV * VH FMAs; cold, a 1024-FMA body takes ~30 s, a 432-FMA one 1-2 s), so COV stays <= 2 and VH is
 * limited to bodies of at most MAX_BODY.
 */
function threadBlock(t: number, channels: number, rows: number): { cov: number; vh: number } {
  const cov = cheapest(channels, { 1: COV_COST[1], 2: COV_COST[2] }, (c) => 4 * c);
  const vhCost = Object.fromEntries(
    Object.entries({ 1: 1, 2: 0.75, 4: 0.5 }).filter(([v]) =>
      Number(v) === 1 || t ** 3 * VW * cov * Number(v) <= MAX_BODY
    ),
  );
  return { cov, vh: cheapest(rows, vhCost, (v) => WY * v) };
}

/** Input channels whose weights are staged at once (<= 8 KiB), at most the channel count. */
function stagedChannels(t: number, cov: number, cin: number): number {
  return Math.max(1, Math.min(16, cin, Math.floor(512 / (t ** 3 * cov))));
}

/**
 * Split-K gather on small output planes: the workgroup is fitted to the plane (wx x wy threads) and its KZ lanes
 * take interleaved staged input channels; every lane writes its partial sums (part = chunk * KZ + lane) into a
 * scratch buffer laid out like the destination window, and conv3d_sum_parts_out adds them up.
 */
interface Split {
  wx: number;
  wy: number;
  kz: number;
}

/** xt, yt: storage of the source and (without split-K, whose partials are f32) of the destination. */
function gatherKernel(
  t: number,
  cov: number,
  vh: number,
  split: Split | null,
  xt: Storage,
  yt: Storage,
  s2d: boolean,
): Kernel {
  const [wx, wy, kz] = split ? [split.wx, split.wy, split.kz] : [WX, WY, 1];
  // llvmpipe runs a workgroup's invocations SIMD along x only, so split-K puts its channel lanes on x.
  const [size, lx, ly, lane] = split
    ? [`${kz}, ${wx}, ${wy}`, "lv.y", "lv.z", "lv.x"]
    : [`${WX}, ${WY}, 1`, "lv.x", "lv.y", "lv.z"];
  const t2 = t * t, t3 = t2 * t;
  const cit = stagedChannels(t, cov, Infinity); // the most; u.cit says how many
  const ncol = VW - 1 + t;
  const nrow = vh - 1 + t; // input rows under the thread's vh output rows
  const stage = cit * t3 * cov * 4;
  let setup = "";
  for (let a = 0; a < t; a++) setup += `let zd${a} = id0 + ${a}; let okd${a} = zd${a} >= 0 && zd${a} < u.inD;\n`;
  for (let r = 0; r < nrow; r++) setup += `let zh${r} = ih0 + ${r}; let okh${r} = zh${r} >= 0 && zh${r} < u.inH;\n`;
  for (let a = 0; a < t; a++) {
    for (let r = 0; r < nrow; r++) {
      setup += `let ok${a}_${r} = okd${a} && okh${r}; let ro${a}_${r} = (zd${a} * u.inH + zh${r}) * u.inW + iw0;\n`;
    }
  }
  for (let j = 0; j < ncol; j++) setup += `let okw${j} = iw0 + ${j} >= 0 && iw0 + ${j} < u.inW;\n`;
  const accs: string[] = [];
  for (let y = 0; y < vh; y++) for (let v = 0; v < VW; v++) for (let c = 0; c < cov; c++) accs.push(`a${y}_${v}_${c}`);
  // Per kd: each input row and each weight is loaded once (loads cost far more than FMAs on CPU adapters) and
  // serves every output row and voxel it touches.
  let inner = "";
  for (let a = 0; a < t; a++) {
    inner += "{\n";
    const loaded = new Set<number>();
    for (let r = 0; r < nrow; r++) {
      inner += `  let rb${r} = xb + ro${a}_${r};\n`;
      for (let j = 0; j < ncol; j++) {
        inner += `  let x${r}_${j} = select(0.0, f32(X[u32(rb${r} + ${j})]), ok${a}_${r} && okw${j});\n`;
      }
      for (let y = 0; y < vh; y++) {
        const c = r - y;
        if (c < 0 || c >= t) continue;
        for (let kw = 0; kw < t; kw++) {
          for (let cv = 0; cv < cov; cv++) {
            const wi = ((a * t + c) * t + kw) * cov + cv;
            if (!loaded.has(wi)) inner += `  let w${wi} = ws[wb + ${wi}u];\n`;
            loaded.add(wi);
            for (let v = 0; v < VW; v++) {
              inner += `  a${y}_${v}_${cv} = fma(vec4f(x${r}_${v + kw}), w${wi}, a${y}_${v}_${cv});\n`;
            }
          }
        }
      }
    }
    inner += "}\n";
  }
  let stores = "";
  for (let y = 0; y < vh; y++) {
    stores += `if (oh0 + ${y}u < u.outH) {\n`;
    stores += `let yrow = ybase + ((oh0 + ${y}u) * u.outStep + u.rh) * u.outRow;\n`;
    for (let v = 0; v < VW; v++) {
      stores += `if (ow0 + ${v}u < u.outW) { let yi = yrow + (ow0 + ${v}u) * u.outStep;\n`;
      for (let cv = 0; cv < cov; cv++) {
        for (let q = 0; q < 4; q++) {
          stores += `  store(yi, part, cb * ${4 * cov}u + ${cv * 4 + q}u, a${y}_${v}_${cv}[${q}]);\n`;
        }
      }
      stores += "}\n";
    }
    stores += "}\n";
  }
  return {
    name: `conv3d_gather_t${t}_c${cov}_h${vh}` + (s2d ? "_s2d" : "") + (split ? `_split${wx}x${wy}x${kz}` : "") +
      (xt === "f32" && yt === "f32" ? "" : `_${xt}_${yt}`),
    wgsl: `${enables(xt, yt)}
@group(0) @binding(0) var<storage, read> X: array<${xt}>;
@group(0) @binding(1) var<storage, read> Wt: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<${yt}>;
struct U {
  inD: i32, inH: i32, inW: i32, inPlane: u32,
  outD: u32, outH: u32, outW: u32, nci: u32,
  outRow: u32, outSlice: u32, outPlane: u32, outStep: u32,
  rd: u32, rh: u32, rw: u32, nco: u32,
  padD: i32, padH: i32, padW: i32, xShift: u32,
  ciW: u32, coBase: u32, yShift: u32, k: i32,
  wOC: u32, wIC: u32, tapStep: i32, flags: u32, // flags: 1 = add bias, 2 = accumulate into Y
  tapD: i32, tapH: i32, tapW: i32, cit: u32,
  kper: u32, blocks: u32, partStride: u32, pad0: u32, // split-K: channels per chunk, channel blocks, part size
  wShift: u32, coW: u32, pad1: u32, pad2: u32, // the weight window: its shift, and channel bases within it
}
@group(0) @binding(4) var<uniform> u: U;
var<workgroup> ws: array<vec4f, ${stage / 4}>; // [CIT][tap][COV] x 4 output channels

fn store(yi: u32, part: u32, oc: u32, v: f32) {
  if (oc >= u.nco) { return; }
  var r = v;
  if ((u.flags & 1u) != 0u) { r += B[u.coBase + oc]; }
  let i = yi + oc * u.outPlane + part * u.partStride;
  if ((u.flags & 2u) != 0u) { r += f32(Y[i]); }
  Y[i] = ${toStorage(yt, "r")};
}

@compute @workgroup_size(${size})
fn main(@builtin(workgroup_id) wg: vec3u,
        @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) lv: vec3u) {
  let zc = wg.z / u.outD; // chunk * blocks + channel block
  let od = wg.z - zc * u.outD;
  let chunk = zc / u.blocks;
  let cb = zc - chunk * u.blocks;
  let part = chunk * ${kz}u + ${lane};
  let ciEnd = min(chunk * u.kper + u.kper, u.nci);
  let oh0 = (wg.y * ${wy}u + ${ly}) * ${vh}u;
  let ow0 = (wg.x * ${wx}u + ${lx}) * ${VW}u;
  let id0 = i32(od) - u.padD;
  let ih0 = i32(oh0) - u.padH;
  let iw0 = i32(ow0) - u.padW;
  ${setup}
  ${accs.map((a) => `var ${a} = vec4f(0.0);`).join(" ")}
  for (var ci0 = chunk * u.kper; ci0 < ciEnd; ci0 += u.cit) {
    // Whole vec4s of 4 output channels: a thread writing one component of a vec4 in workgroup memory may rewrite all
    // four (WGSL), racing the threads writing the others.
    for (var e = lid; e < u.cit * ${t3 * cov}u; e += ${wx * wy * kz}u) {
      let cv = e % ${cov}u;
      let tap = (e / ${cov}u) % ${t3}u;
      let ic = ci0 + e / ${cov * t3}u;
      let oc = cb * ${4 * cov}u + cv * 4u;
      var v = vec4f(0.0);
      if (ic < ciEnd) {
        ${
      s2d
        // source channel 8c + 4rd + 2rh + rw reads weight channel c at taps offset by its parities (rd, rh, rw)
        ? "let sc = u.ciW + ic; let wc = sc / 8u; let par = vec3i(vec3u(sc / 4u, sc / 2u, sc) % 2u);"
        : "let wc = u.ciW + ic; let par = vec3i(0);"
    }
        let kd = u.tapD + par.x + u.tapStep * i32(tap / ${t2}u);
        let kh = u.tapH + par.y + u.tapStep * i32((tap / ${t}u) % ${t}u);
        let kw = u.tapW + par.z + u.tapStep * i32(tap % ${t}u);
        let wi = u.wShift + (u.coW + oc) * u.wOC + wc * u.wIC + u32((kd * u.k + kh) * u.k + kw);
        ${vec4Lanes("v", (q) => [`oc + ${q}u < u.nco`, `Wt[wi + ${q}u * u.wOC]`])}
      }
      ws[e] = v;
    }
    workgroupBarrier();
    let nc = min(u.cit, ciEnd - ci0);
    for (var cil = ${lane}; cil < nc; cil += ${kz}u) {
      let xb = i32(u.xShift + (ci0 + cil) * u.inPlane);
      let wb = cil * ${t3 * cov}u;
      ${inner}
    }
    workgroupBarrier();
  }
  let ybase = u.yShift + (od * u.outStep + u.rd) * u.outSlice + u.rw;
  ${stores}
}`,
  };
}

/**
 * Windows over `planes` channel planes (of `eb`-byte elements) starting at plane `base` of a buffer (planeChunks,
 * shifted to `base`). Each window's channel count also fits `chunkBytes` per channel in one binding: the weight slice
 * (the weight's outer axis) bound beside it.
 */
function windows(g: Gpu, base: number, planes: number, planeElems: number, eb = 4, chunkBytes = 0) {
  return planeChunks(g, planes, Math.max(planeElems * eb, chunkBytes), 1).map((c) => ({
    first: c.first,
    count: c.count,
    ...bindingWindow(g, (base + c.first) * planeElems, c.count * planeElems, eb),
  }));
}

/** A window of whole channels over a buffer: channels [first, first + count), bound at offset/size, shift elements. */
type ChannelWindow = ReturnType<typeof windows>[number];

interface Gather {
  n: number;
  src: GPUBuffer;
  srcC: number;
  srcDims: number[]; // [D, H, W] of the source
  dst: GPUBuffer;
  dstC: number;
  dstDims: number[]; // full [D, H, W] of the destination
  w: GPUBuffer;
  b: GPUBuffer | null;
  k: number;
  taps: number; // T
  wOC: number; // weight strides of a destination and a source channel
  wIC: number;
  /** The weight's outer (contiguous) axis: destination channels (forward) or source channels (input gradient). */
  wAxis: "dst" | "src";
  /**
   * The source is the space-to-depth (space_to_depth.ts) of x [N, ...shape] (shape [C, D, H, W]): 8 source channels
   * per channel of x, made from x chunk by chunk of channels as the source windows are visited (`src` is unused).
   */
  s2d: { x: GPUBuffer; shape: number[]; pad: number } | null;
  srcT: Storage; // storage of the source and the destination (f16: forward for inference)
  dstT: Storage;
  /** Per parity class: sub-grid size, offset in the destination, pads, tap constants (kd = tap + tapStep*u). */
  classes: { size: number[]; r: number[]; pad: number[]; tap: number[] }[];
  outStep: number;
  tapStep: number;
}

const SPLIT_POSITIONS = 32; // split when an output slice has at most this many thread positions (of WX*WY = 64)
const SPLIT_MIN_CHANNELS = 16; // ... and at least this many source channels to split
const SPLIT_WORKGROUPS = 64; // chunks across workgroups until the dispatch has about this many
const SIMD = 8; // f32 lanes of a 256-bit CPU vector: llvmpipe runs 8 invocations along x at once

/** Split-K plan for one destination window, or null when the slice fills the 8x8 tile or the channels are few. */
function splitPlan(g: Gpu, p: Gather, size: number[], cov: number, dstCount: number, srcCount: number) {
  const [od, oh, owd] = size;
  const cols = Math.ceil(owd / VW);
  if (cols * oh > SPLIT_POSITIONS || p.srcC < SPLIT_MIN_CHANNELS) return null;
  const m = dstCount * p.dstDims.reduce((a, b) => a * b);
  const maxParts = Math.floor(g.maxBinding / (m * 4));
  if (maxParts < 1) return null;
  const cit = stagedChannels(p.taps, cov, p.srcC);
  const wx = cols, wy = oh;
  let kz = 1; // lanes over the staged channels, a power of two
  while (kz * 2 <= Math.min(cit, maxParts) && wx * wy * kz * 2 <= WX * WY) kz *= 2;
  const want = Math.ceil(SPLIT_WORKGROUPS / (od * Math.ceil(dstCount / (4 * cov))));
  const chunks = Math.max(1, Math.min(want, Math.floor(srcCount / cit), Math.floor(maxParts / kz)));
  const kper = Math.ceil(srcCount / chunks / cit) * cit;
  return { split: { wx, wy, kz }, chunks: Math.ceil(srcCount / kper), kper, m };
}

const sumOut = (t: Storage): Kernel => ({
  name: t === "f32" ? "conv3d_sum_parts_out" : `conv3d_sum_parts_out_${t}`,
  wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<${t}>;
struct U { plane: u32, parts: u32, partStride: u32, shift: u32, coBase: u32, flags: u32, pad0: u32, pad1: u32 }
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) { // x: voxel of the plane, y: channel of the window
  if (id.x >= u.plane) { return; }
  let i = id.y * u.plane + id.x;
  var s = 0.0;
  for (var p = 0u; p < u.parts; p++) { s += P[p * u.partStride + i]; }
  if ((u.flags & 1u) != 0u) { s += B[u.coBase + id.y]; }
  let o = u.shift + i;
  if ((u.flags & 2u) != 0u) { s += f32(O[o]); }
  O[o] = ${toStorage(t, "s")};
}`,
});
const SUM_OUT = { f32: sumOut("f32"), f16: sumOut("f16") };

const S2D_BYTES = 64 * 2 ** 20; // the most space-to-depth source held at once (a stride-2 forward's only extra memory)

/**
 * Source windows of a space-to-depth source: whole groups of 8 channels (one input channel each) of at most S2D_BYTES
 * (at least one group), each made into its own buffer by `fill` when visited, so the window binds from offset 0.
 */
function s2dWindows(g: Gpu, p: Gather, n: number, srcPlane: number) {
  const s2d = p.s2d!, [cin, d, h, w] = s2d.shape, eb = STORAGE_BYTES[p.srcT];
  const group = 8 * srcPlane * eb, room = g.maxBinding - g.offsetAlign;
  if (group > room) {
    throw new Error(`conv3d: one channel's space-to-depth (${group} bytes) exceeds the max storage binding`);
  }
  const per = Math.max(1, Math.min(Math.floor(S2D_BYTES / group), Math.floor(room / group)));
  const out = [];
  for (let c0 = 0; c0 < cin; c0 += per) {
    const cc = Math.min(per, cin - c0), size = Math.ceil((cc * group) / 4) * 4;
    const fill = () => {
      const buf = g.alloc(size);
      spaceToDepth2(g, s2d.x, buf, [1, cc, d, h, w], p.srcDims, s2d.pad, p.srcT, n * cin + c0);
      return buf;
    };
    out.push({ first: 8 * c0, count: 8 * cc, offset: 0, shift: 0, size, fill });
  }
  return out;
}

function gather(g: Gpu, p: Gather) {
  const [sd, sh, sw] = p.srcDims, [dd, dh, dw] = p.dstDims;
  const srcPlane = sd * sh * sw, dstPlane = dd * dh * dw;
  const srcWindows = (n: number, chunkBytes = 0) =>
    p.s2d
      ? s2dWindows(g, p, n, srcPlane)
      : windows(g, n * p.srcC, p.srcC, srcPlane, STORAGE_BYTES[p.srcT], chunkBytes).map((w) => ({ ...w, fill: null }));
  if (p.dstT === "f16" && srcWindows(0).length > 1) {
    // Sums over several input windows accumulate in the output: in f32, then one rounding to f16.
    const count = p.n * p.dstC * dstPlane, tmp = g.alloc(count * 4);
    gather(g, { ...p, dst: tmp, dstT: "f32" });
    cast(g, tmp, p.dst, count, "f16");
    g.free(tmp);
    return;
  }
  const u = new Int32Array(40);
  // Weights are bound in windows of whole channels of their outer axis, so the channel windows of that side also
  // fit its weight slice.
  const wPer = p.wAxis === "dst" ? p.wOC : p.wIC;
  /** Sums source window iw (bound from `src`) into destination window ow; the i-th source window assigns when 0. */
  const pair = (iw: ChannelWindow, ow: ChannelWindow, i: number, src: GPUBuffer) => {
    let parts: GPUBuffer | null = null;
    try {
      const wc = p.wAxis === "dst" ? ow : iw;
      const ww = bindingWindow(g, wc.first * wPer, wc.count * wPer);
      const [coW, ciW] = p.wAxis === "dst" ? [0, iw.first] : [ow.first, 0];
      const flags = (i === 0 && p.b ? 1 : 0) | (i > 0 ? 2 : 0);
      // The first class is the largest; every class of a window takes the same path (they share the partials).
      // Split-K takes 4 output channels per thread where 8 stage too few input channels to fill the SIMD lanes.
      let cov = threadBlock(p.taps, p.dstC, 1).cov;
      let plan = splitPlan(g, p, p.classes[0].size, cov, ow.count, iw.count);
      const narrow = plan && cov > 1 && plan.split.kz < SIMD
        ? splitPlan(g, p, p.classes[0].size, 1, ow.count, iw.count)
        : null;
      if (plan && narrow && narrow.split.kz > plan.split.kz) [cov, plan] = [1, narrow];
      const partBytes = plan ? plan.m * plan.chunks * plan.split.kz * 4 : 0;
      parts = plan ? g.alloc(partBytes) : null;
      for (const c of p.classes) {
        const [od, oh, owd] = c.size;
        if (od * oh * owd === 0) continue;
        const vh = plan ? 1 : threadBlock(p.taps, p.dstC, oh).vh;
        const kernel = gatherKernel(
          p.taps,
          cov,
          vh,
          plan ? plan.split : null,
          p.srcT,
          plan ? "f32" : p.dstT,
          p.s2d !== null,
        );
        const blocks = Math.ceil(ow.count / (4 * cov));
        const chunks = plan ? plan.chunks : 1;
        if (od * blocks * chunks > g.maxWorkgroupsPerDim) {
          throw new Error(
            `conv3d: ${od} output slices x ${blocks} channel blocks x ${chunks} chunks exceed one dispatch dimension`,
          );
        }
        const [wx, wy] = plan ? [plan.split.wx, plan.split.wy] : [WX, WY];
        u.set([sd, sh, sw, srcPlane, od, oh, owd, iw.count, dw, dh * dw, dstPlane, p.outStep]);
        u.set([...c.r, ow.count, ...c.pad, iw.shift, ciW, ow.first, plan ? 0 : ow.shift, p.k], 12);
        u.set([p.wOC, p.wIC, p.tapStep, plan ? 0 : flags, ...c.tap, stagedChannels(p.taps, cov, p.srcC)], 24);
        u.set([plan ? plan.kper : iw.count, blocks, plan ? plan.m : 0, 0, ww.shift, coW, 0, 0], 32);
        g.dispatch(
          kernel,
          [
            { buffer: src, offset: iw.offset, size: iw.size },
            { buffer: p.w, offset: ww.offset, size: ww.size },
            p.b ? { buffer: p.b } : { buffer: p.w, offset: ww.offset, size: ww.size }, // unread without a bias
            parts ? { buffer: parts, size: partBytes } : { buffer: p.dst, offset: ow.offset, size: ow.size },
          ],
          u,
          [Math.ceil(owd / (VW * wx)), Math.ceil(oh / (wy * vh)), od * blocks * chunks],
        );
      }
      if (plan && parts) {
        g.dispatch(
          SUM_OUT[p.dstT],
          [{ buffer: parts, size: partBytes }, p.b ? { buffer: p.b } : { buffer: parts, size: partBytes }, {
            buffer: p.dst,
            offset: ow.offset,
            size: ow.size,
          }],
          new Uint32Array([dstPlane, plan.chunks * plan.split.kz, plan.m, ow.shift, ow.first, flags, 0, 0]),
          [Math.ceil(dstPlane / 64), ow.count, 1],
        );
      }
    } finally {
      if (parts) g.free(parts);
    }
  };
  for (let n = 0; n < p.n; n++) {
    const outs = windows(g, n * p.dstC, p.dstC, dstPlane, STORAGE_BYTES[p.dstT], p.wAxis === "dst" ? wPer * 4 : 0);
    // Source windows outside: a space-to-depth chunk is made once for every destination window.
    srcWindows(n, p.wAxis === "src" ? wPer * 4 : 0).forEach((iw, i) => {
      const src = iw.fill ? iw.fill() : p.src;
      try {
        for (const ow of outs) pair(iw, ow, i, src);
      } finally {
        if (iw.fill) g.free(src);
      }
    });
  }
}

/**
 * y = conv3d(x, w) + b. Buffers hold s's tensors; b may be null; x and y are stored as `types` (f32, f32). A stride-2
 * convolution runs as the stride-1 convolution of x's space-to-depth (space_to_depth.ts), made in chunks of at most
 * S2D_BYTES whose partial sums accumulate in y.
 */
export function conv3dForward(
  g: Gpu,
  s: Conv3dShape,
  x: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  y: GPUBuffer,
  types: StoragePair = F32_PAIR,
) {
  const s2d = s.stride === 2;
  const taps = s2d ? s.k / 2 : s.k;
  gather(g, {
    n: s.n,
    src: x,
    srcC: s2d ? 8 * s.cin : s.cin,
    srcDims: s2d ? [s.od, s.oh, s.ow].map((o) => o + taps - 1) : [s.d, s.h, s.w],
    dst: y,
    dstC: s.cout,
    dstDims: [s.od, s.oh, s.ow],
    w,
    b,
    k: s.k,
    taps,
    wOC: s.cin * s.k ** 3,
    wIC: s.k ** 3,
    wAxis: "dst",
    s2d: s2d ? { x, shape: [s.cin, s.d, s.h, s.w], pad: s.pad } : null,
    srcT: types[0],
    dstT: types[1],
    classes: [{ size: [s.od, s.oh, s.ow], r: [0, 0, 0], pad: s2d ? [0, 0, 0] : [s.pad, s.pad, s.pad], tap: [0, 0, 0] }],
    outStep: 1,
    tapStep: s2d ? 2 : 1,
  });
}

/** dx (assigned) from dy and w: the transposed convolution, one dense sub-convolution per output parity class. */
export function conv3dBackwardInput(g: Gpu, s: Conv3dShape, dy: GPUBuffer, w: GPUBuffer, dx: GPUBuffer) {
  const st = s.stride;
  const classes = [];
  for (let q = 0; q < st ** 3; q++) {
    const r = [Math.floor(q / (st * st)), Math.floor(q / st) % st, q % st];
    const pad = r.map((ri) => Math.floor((s.k - 1 - ri - s.pad) / st));
    classes.push({
      size: [s.d, s.h, s.w].map((dim, i) => Math.ceil((dim - r[i]) / st)),
      r,
      pad,
      tap: r.map((ri, i) => ri + s.pad + st * pad[i]),
    });
  }
  gather(g, {
    n: s.n,
    src: dy,
    srcC: s.cout,
    srcDims: [s.od, s.oh, s.ow],
    dst: dx,
    dstC: s.cin,
    dstDims: [s.d, s.h, s.w],
    w,
    b: null,
    k: s.k,
    taps: Math.ceil(s.k / st),
    wOC: s.k ** 3,
    wIC: s.cin * s.k ** 3,
    wAxis: "src",
    s2d: null,
    srcT: "f32",
    dstT: "f32",
    classes,
    outStep: st,
    tapStep: -st,
  });
}

// ---- weight and bias gradients ----

const SEG = 64; // dy row segment staged per step
const DW_JV = 4; // voxels per inner step (divides SEG)

/** Threads per dw workgroup: the (ci, kd, kh) rows split evenly over workgroups of <= 64, a multiple of 8. */
function dwThreads(rows: number): number {
  return 8 * Math.ceil(rows / Math.ceil(rows / 64) / 8);
}

function dwKernel(k: number, s: number, threads: number, cov: number): Kernel {
  const k2 = k * k, k3 = k2 * k;
  // Per step JV voxels: (JV-1)*s + k x values serve JV x k taps.
  let body = "", stores = "";
  for (let j = 0; j < (DW_JV - 1) * s + k; j++) {
    body += `let x${j} = select(0.0, X[u32(xb + iw0 + ${j})], rowok && iw0 + ${j} >= 0 && iw0 + ${j} < u.W);\n`;
  }
  for (let v = 0; v < DW_JV; v++) {
    for (let c = 0; c < cov; c++) {
      body += `{ let d = dys[(j + ${v}u) * ${cov}u + ${c}u];\n`;
      for (let kw = 0; kw < k; kw++) body += `  a${kw}_${c} = fma(vec4f(x${v * s + kw}), d, a${kw}_${c});\n`;
      body += "}\n";
    }
  }
  for (let kw = 0; kw < k; kw++) {
    for (let c = 0; c < cov; c++) {
      for (let q = 0; q < 4; q++) {
        stores += `put(pb, cb * ${4 * cov}u + ${c * 4 + q}u, ${kw}u, a${kw}_${c}[${q}]);\n`;
      }
    }
  }
  const accs = [];
  for (let kw = 0; kw < k; kw++) for (let c = 0; c < cov; c++) accs.push(`var a${kw}_${c} = vec4f(0.0);`);
  return {
    name: `conv3d_dw_k${k}_s${s}_t${threads}_c${cov}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> DY: array<f32>;
@group(0) @binding(2) var<storage, read_write> P: array<f32>;
struct U {
  D: i32, H: i32, W: i32, inPlane: u32,
  OH: u32, OW: u32, outPlane: u32, rows: u32,
  rowsPer: u32, nci: u32, nco: u32, xShift: u32,
  yShift: u32, ciBase: u32, coBase: u32, part0: u32,
  cin: u32, cout: u32, pad: i32, pad0: u32,
}
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> dys: array<vec4f, ${SEG * cov}>; // [SEG voxels][COV] x 4 output channels

fn put(pb: u32, oc: u32, kw: u32, v: f32) {
  if (oc < u.nco) { P[pb + oc * u.cin * ${k3}u + kw] = v; }
}

@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let q = wg.x * ${threads}u + lid;
  let ci = q / ${k2}u;
  let kd = i32((q / ${k}u) % ${k}u);
  let kh = i32(q % ${k}u);
  let cb = wg.y;
  let r0 = wg.z * u.rowsPer;
  let r1 = min(r0 + u.rowsPer, u.rows);
  ${accs.join(" ")}
  for (var r = r0; r < r1; r++) {
    let od = r / u.OH;
    let oh = r - od * u.OH;
    let id = i32(od) * ${s} - u.pad + kd;
    let ih = i32(oh) * ${s} - u.pad + kh;
    let rowok = ci < u.nci && id >= 0 && id < u.D && ih >= 0 && ih < u.H;
    let xb = i32(u.xShift + ci * u.inPlane) + (id * u.H + ih) * u.W;
    let yb = u.yShift + r * u.OW;
    for (var s0 = 0u; s0 < u.OW; s0 += ${SEG}u) {
      // Whole vec4s of 4 output channels (see the weights' staging in conv3d_gather).
      for (var e = lid; e < ${SEG * cov}u; e += ${threads}u) {
        let j = e % ${SEG}u;
        let oc = cb * ${4 * cov}u + (e / ${SEG}u) * 4u;
        let yi = yb + oc * u.outPlane + s0 + j;
        var v = vec4f(0.0);
        if (s0 + j < u.OW) {
          ${vec4Lanes("v", (q) => [`oc + ${q}u < u.nco`, `DY[yi + ${q}u * u.outPlane]`])}
        }
        dys[j * ${cov}u + e / ${SEG}u] = v;
      }
      workgroupBarrier();
      let ns = min(${SEG}u, u.OW - s0);
      for (var j = 0u; j < ns; j += ${DW_JV}u) { // staged dy past the row end is zero
        let iw0 = i32(s0 + j) * ${s} - u.pad;
        ${body}
      }
      workgroupBarrier();
    }
  }
  if (ci >= u.nci) { return; }
  let pb = (u.part0 + wg.z) * u.cout * u.cin * ${k3}u + u.coBase * u.cin * ${k3}u + (u.ciBase + ci) * ${k3}u +
    u32(kd * ${k2} + kh * ${k});
  ${stores}
}`,
  };
}

const sumPartsKernel = (t: Storage): Kernel => ({
  name: t === "f32" ? "conv3d_sum_parts" : `conv3d_sum_parts_${t}`,
  wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read_write> O: array<${t}>;
struct U { m: u32, parts: u32, gridx: u32, shift: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x + id.y * u.gridx * 256u;
  if (i >= u.m) { return; }
  var s = 0.0;
  for (var p = 0u; p < u.parts; p++) { s += P[p * u.m + i]; }
  O[u.shift + i] = ${toStorage(t, "s")};
}`,
});
const SUM_PARTS = { f32: sumPartsKernel("f32"), f16: sumPartsKernel("f16") };

/** out[first + i] = sum over `count` parts of parts[part * m + i], for i < m; out is stored as t. */
export function sumParts(
  g: Gpu,
  parts: GPUBuffer,
  out: GPUBuffer,
  m: number,
  count: number,
  first = 0,
  t: Storage = "f32",
) {
  const grid = grid1d(g, Math.ceil(m / 256));
  const o = bindingWindow(g, first, m, STORAGE_BYTES[t]);
  g.dispatch(
    SUM_PARTS[t],
    [{ buffer: parts, size: m * count * 4 }, { buffer: out, offset: o.offset, size: o.size }],
    new Uint32Array([m, count, grid[0], o.shift]),
    grid,
  );
}

/**
 * Row chunks of the split-K reduction: DW_CHUNKS, or more (up to DW_MAX_CHUNKS) where the other two grid axes hold
 * fewer than DW_MIN_GROUPS / DW_CHUNKS workgroups. The U-Net's 1x1x1 conv_out (k -> 4) has one workgroup of k threads
 * per chunk: at k = 32, 160x192x160, 64 chunks took 8.6 ms on an H100.
 */
const DW_CHUNKS = 64, DW_MIN_GROUPS = 2048, DW_MAX_CHUNKS = 1024;

/**
 * dw (assigned) = sum over batch and output voxels of dy (x) shifted x: split-K partials, then a sum. The partials
 * [N * chunks][Cout][Cin][k^3] are one binding; where N parts of the whole weight do not fit one, output channels are
 * taken in groups (each with its own partials and sum into its slice of dw).
 */
export function conv3dBackwardWeight(g: Gpu, s: Conv3dShape, x: GPUBuffer, dy: GPUBuffer, dw: GPUBuffer) {
  const k3 = s.k ** 3, perCo = s.cin * k3; // weights per output channel
  const rows = s.od * s.oh;
  const fit = Math.floor(g.maxBinding / (perCo * 4 * s.n)); // output channels with one part each
  // All output channels at once when their partials fit (row chunks then take what room there is), else groups; a
  // group after the first writes dw from an unaligned offset, so its window needs room for the shift.
  const group = fit >= s.cout ? s.cout : Math.min(fit, Math.floor((g.maxBinding - g.offsetAlign) / (perCo * 4)));
  if (fit < 1 || group < 1) {
    throw new Error(
      `conv3d: the weight gradient of one output channel (${perCo * 4} bytes) x ${s.n} exceeds a binding`,
    );
  }
  const threads = dwThreads(s.cin * s.k * s.k), cov = cheapest(s.cout, COV_COST, (c) => 4 * c);
  const kernel = dwKernel(s.k, s.stride, threads, cov);
  const inPlane = s.d * s.h * s.w, outPlane = s.od * s.oh * s.ow;
  const u = new Int32Array(20);
  for (let c0 = 0; c0 < s.cout; c0 += group) {
    const cc = Math.min(group, s.cout - c0), m = cc * perCo;
    const groups = Math.ceil(s.cin * s.k * s.k / threads) * Math.ceil(cc / (4 * cov));
    const want = Math.min(DW_MAX_CHUNKS, Math.max(DW_CHUNKS, Math.ceil(DW_MIN_GROUPS / groups)));
    const chunks = Math.max(1, Math.min(rows, want, Math.floor(fit / cc)));
    const rowsPer = Math.ceil(rows / chunks);
    const used = Math.ceil(rows / rowsPer);
    const parts = g.alloc(m * s.n * used * 4);
    for (let n = 0; n < s.n; n++) {
      for (const xw of windows(g, n * s.cin, s.cin, inPlane)) {
        for (const yw of windows(g, n * s.cout + c0, cc, outPlane)) {
          u.set([s.d, s.h, s.w, inPlane, s.oh, s.ow, outPlane, rows, rowsPer, xw.count, yw.count, xw.shift]);
          u.set([yw.shift, xw.first, yw.first, n * used, s.cin, cc, s.pad, 0], 12);
          g.dispatch(
            kernel,
            [
              { buffer: x, offset: xw.offset, size: xw.size },
              { buffer: dy, offset: yw.offset, size: yw.size },
              { buffer: parts, size: m * s.n * used * 4 },
            ],
            u,
            [Math.ceil(xw.count * s.k * s.k / threads), Math.ceil(yw.count / (4 * cov)), used],
          );
        }
      }
    }
    sumParts(g, parts, dw, m, s.n * used, c0 * perCo);
    g.free(parts);
  }
}

const DB: Kernel = {
  name: "conv3d_db",
  wgsl: `
@group(0) @binding(0) var<storage, read> DY: array<f32>;
@group(0) @binding(1) var<storage, read_write> P: array<f32>;
struct U { plane: u32, shift: u32, len: u32, part: u32, cout: u32, first: u32, pad0: u32, pad1: u32 }
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let base = u.shift + wg.y * u.plane;
  let end = min((wg.x + 1u) * u.len, u.plane);
  var s = 0.0;
  for (var i = wg.x * u.len + lid; i < end; i += 256u) { s += DY[base + i]; }
  red[lid] = s;
  workgroupBarrier();
  for (var h = 128u; h > 0u; h >>= 1u) {
    if (lid < h) { red[lid] += red[lid + h]; }
    workgroupBarrier();
  }
  if (lid == 0u) { P[(u.part + wg.x) * u.cout + u.first + wg.y] = red[0]; }
}`,
};

/**
 * Bias-gradient chunks: a channel plane is summed in up to DB_CHUNKS pieces of at least DB_MIN_LEN values, one
 * workgroup each, so that a few channels of a large volume still fill the GPU (one workgroup per plane summed a
 * level-0 plane of 160x192x160 in about 2.3 ms on an H100: 43 ms of a pre-training step).
 */
export const DB_CHUNKS = 128, DB_MIN_LEN = 4096;

/** db (assigned) = sum of dy over batch and voxels, per output channel: partials [N * chunks][Cout], then a sum. */
export function conv3dBackwardBias(g: Gpu, s: Conv3dShape, dy: GPUBuffer, db: GPUBuffer) {
  const plane = s.od * s.oh * s.ow;
  const len = Math.max(DB_MIN_LEN, Math.ceil(plane / DB_CHUNKS)), chunks = Math.ceil(plane / len);
  const parts = g.alloc(s.n * chunks * s.cout * 4);
  for (let n = 0; n < s.n; n++) {
    for (const yw of windows(g, n * s.cout, s.cout, plane)) {
      g.dispatch(
        DB,
        [{ buffer: dy, offset: yw.offset, size: yw.size }, { buffer: parts }],
        new Uint32Array([plane, yw.shift, len, n * chunks, s.cout, yw.first, 0, 0]),
        [chunks, yw.count, 1],
      );
    }
  }
  sumParts(g, parts, db, s.cout, s.n * chunks);
  g.free(parts);
}

// ---- CPU references (float64) ----

function forEachTap(
  s: Conv3dShape,
  fn: (oi: number, xi: number, wi: number) => void,
) {
  const { n: N, cin, cout, d, h, w, k, stride, pad, od, oh, ow } = s;
  const k3 = k ** 3;
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let z = 0; z < od; z++) {
        for (let y = 0; y < oh; y++) {
          for (let x = 0; x < ow; x++) {
            const oi = (((n * cout + co) * od + z) * oh + y) * ow + x;
            for (let ci = 0; ci < cin; ci++) {
              for (let kd = 0; kd < k; kd++) {
                const iz = z * stride - pad + kd;
                if (iz < 0 || iz >= d) continue;
                for (let kh = 0; kh < k; kh++) {
                  const iy = y * stride - pad + kh;
                  if (iy < 0 || iy >= h) continue;
                  for (let kw = 0; kw < k; kw++) {
                    const ix = x * stride - pad + kw;
                    if (ix < 0 || ix >= w) continue;
                    fn(
                      oi,
                      (((n * cin + ci) * d + iz) * h + iy) * w + ix,
                      (co * cin + ci) * k3 + (kd * k + kh) * k + kw,
                    );
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

export function conv3dRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  s: Conv3dShape,
): Float64Array {
  const plane = s.od * s.oh * s.ow;
  const y = new Float64Array(s.n * s.cout * plane);
  if (b) { for (let i = 0; i < y.length; i++) y[i] = b[Math.floor(i / plane) % s.cout]; }
  forEachTap(s, (oi, xi, wi) => y[oi] += w[wi] * x[xi]);
  return y;
}

export function conv3dBackwardRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dy: ArrayLike<number>,
  s: Conv3dShape,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const dx = new Float64Array(x.length), dw = new Float64Array(w.length), db = new Float64Array(s.cout);
  const plane = s.od * s.oh * s.ow;
  for (let i = 0; i < dy.length; i++) db[Math.floor(i / plane) % s.cout] += dy[i];
  forEachTap(s, (oi, xi, wi) => {
    dx[xi] += w[wi] * dy[oi];
    dw[wi] += x[xi] * dy[oi];
  });
  return { dx, dw, db };
}
