// Which kernel runs each pass of a convolution: the NCDHW gather kernels (conv3d.ts, every shape) or, where eligible,
// the channels-last GEMMs (conv3d_cl.ts for the forward and input gradient, conv3d_cl_dw.ts for the weight gradient).
// Which is faster depends on the device and the shape (on llvmpipe channels-last ran 0.1x-2x the gather's speed by
// layer and pass), so it is a per-device mode (`--conv-kernel`):
// - "auto" (the default): on a GPU, channels-last wherever eligible but for a forward or input gradient whose staged
//   reduction is more than half zero padding (the teacher's first forward: 4 of 16 channels; 5.7 ms per call against
//   the gather's 2.3 on an H100 at 160x192x160, 142 against 34 ms on llvmpipe at 32^3); on a CPU (fallback) adapter,
//   gather. Measured at 160x192x160, k=32 on an H100, channels-last against gather: inference 128 against 134 ms, a
//   pre-training step 380 against 498, a HAD-Net step 1302 against 1884; on llvmpipe (64^3, k=8) a pre-training step
//   took 3677 against 2455 ms;
// - "gather": the gather kernel everywhere;
// - "channels-last": channels-last wherever eligible;
// - "tuned": measured, not guessed. Every eligible shape and pass seen since the last tuneConvs call is timed there
//   with both kernels on the device at hand, and the faster is kept, as cudnn.benchmark does; until then it runs the
//   gather.
// Ineligible shapes always run the gather kernel; with f16 storage (inference) the forward GEMM runs in f16, and tuned
// mode times both kernels in f16 (a shape's f16 and f32 forwards are separate choices). Channels-last holds the
// reordered weights and any partials of taps split over workgroups (at most 256 MiB) during a forward or input
// gradient, and its split-K partials (at most 256 MiB) during a weight gradient.

import { conv3dBackwardInput, conv3dBackwardWeight, conv3dForward, type Conv3dShape } from "./conv3d.ts";
import {
  channelsLastPlan,
  channelsLastTakes,
  type ClPass,
  conv3dBackwardInputChannelsLast,
  conv3dForwardChannelsLast,
} from "./conv3d_cl.ts";
import { conv3dBackwardWeightChannelsLast, dwGemmPlan } from "./conv3d_cl_dw.ts";
import { F32_PAIR, type Gpu, type StoragePair, wordBytes } from "./device.ts";
import { median } from "./profile.ts";

export type ConvPass = ClPass | "weight_grad";
export const CONV_PASSES: readonly ConvPass[] = ["forward", "input_grad", "weight_grad"];
export type ConvVariant = "gather" | "channels-last";
export const CONV_KERNELS = ["auto", "gather", "channels-last", "tuned"] as const;
export type ConvKernels = typeof CONV_KERNELS[number];

interface Table {
  mode: ConvKernels; // "auto" only on a GPU: a CPU adapter's auto is "gather"
  chosen: Map<string, ConvVariant>;
  /** Eligible shapes seen in tuned mode and not yet timed. */
  pending: Map<string, { s: Conv3dShape; pass: ConvPass; types: StoragePair }>;
}
const tables = new WeakMap<Gpu, Table>();

function table(g: Gpu): Table {
  let t = tables.get(g);
  if (!t) tables.set(g, t = { mode: auto(g), chosen: new Map(), pending: new Map() });
  return t;
}

/** What "auto" is on this device (see the header). */
const auto = (g: Gpu) => g.isFallback ? "gather" : "auto";

/** Of a GEMM pass's staged reduction (K, padded to 16 channels), at least this share must be real for auto to run it. */
const AUTO_MIN_K_USE = 0.5;

/** A pass, its shape and (where not f32) its storage, as tuning logs it. */
const key = (s: Conv3dShape, pass: ConvPass, types: StoragePair) =>
  `${pass}${types.every((t) => t === "f32") ? "" : ` ${types.join("->")}`} [${s.n},${s.cin},${s.d},${s.h},${s.w}] -> ` +
  `${s.cout}, k${s.k} s${s.stride} p${s.pad}`;

/** A mode as this device runs it: "auto" is "gather" on a CPU adapter. */
export function convKernelsOn(g: Gpu, mode: ConvKernels): ConvKernels {
  return mode === "auto" ? auto(g) : mode;
}

/** Sets how this device picks convolution kernels (see the header); tuned choices already made stay. */
export function setConvKernels(g: Gpu, mode: ConvKernels) {
  table(g).mode = convKernelsOn(g, mode);
  if (mode !== "tuned") table(g).pending.clear();
}

/** How this device picks convolution kernels now ("auto" on a CPU adapter is "gather"). */
export function convKernels(g: Gpu): ConvKernels {
  return table(g).mode;
}

/** Whether a channels-last kernel takes this pass of this convolution. */
export function channelsLastApplies(g: Gpu, s: Conv3dShape, pass: ConvPass): boolean {
  return pass === "weight_grad" ? dwGemmPlan(g, s) !== null : channelsLastTakes(g, s, pass);
}

/** The variant a pass of this shape (and storage) runs now. */
export function convVariant(g: Gpu, s: Conv3dShape, pass: ConvPass, types = F32_PAIR): ConvVariant {
  const t = table(g);
  if (t.mode === "gather" || !channelsLastApplies(g, s, pass)) return "gather";
  if (t.mode === "channels-last") return "channels-last";
  if (t.mode === "auto") {
    const p = pass === "weight_grad" ? null : channelsLastPlan(g, s, pass); // the weight gradient's K is voxels
    return p && p.kReal / p.k < AUTO_MIN_K_USE ? "gather" : "channels-last";
  }
  const k = key(s, pass, types), v = t.chosen.get(k);
  if (!v) t.pending.set(k, { s, pass, types });
  return v ?? "gather";
}

/** y = conv3d(x, w) + b with the chosen kernel (see conv3dForward). */
export function convForward(
  g: Gpu,
  s: Conv3dShape,
  x: GPUBuffer,
  w: GPUBuffer,
  b: GPUBuffer | null,
  y: GPUBuffer,
  types = F32_PAIR,
) {
  // f16 storage takes no more binding room than f32, so an f32-eligible shape is eligible in f16 too.
  if (convVariant(g, s, "forward", types) === "channels-last") conv3dForwardChannelsLast(g, s, x, w, b, y, types);
  else conv3dForward(g, s, x, w, b, y, types);
}

/** Buffers for every pass of one convolution: y is also the gradients' dy. */
export interface ConvBuffers {
  x: GPUBuffer;
  w: GPUBuffer;
  b: GPUBuffer | null;
  y: GPUBuffer;
  dx: GPUBuffer;
  dw: GPUBuffer;
}

/**
 * One pass with the given variant: forward (x, w, b) -> y (x and y stored as `types`), input_grad (y, w) -> dx,
 * weight_grad (x, y) -> dw (f32).
 */
export function runConvPass(g: Gpu, s: Conv3dShape, pass: ConvPass, v: ConvVariant, t: ConvBuffers, types = F32_PAIR) {
  const cl = v === "channels-last";
  if (pass === "forward") (cl ? conv3dForwardChannelsLast : conv3dForward)(g, s, t.x, t.w, t.b, t.y, types);
  else if (pass === "input_grad") (cl ? conv3dBackwardInputChannelsLast : conv3dBackwardInput)(g, s, t.y, t.w, t.dx);
  else (cl ? conv3dBackwardWeightChannelsLast : conv3dBackwardWeight)(g, s, t.x, t.y, t.dw);
}

/** dx (assigned) from dy and w with the chosen kernel (see conv3dBackwardInput). */
export function convBackwardInput(g: Gpu, s: Conv3dShape, dy: GPUBuffer, w: GPUBuffer, dx: GPUBuffer) {
  if (convVariant(g, s, "input_grad") === "channels-last") conv3dBackwardInputChannelsLast(g, s, dy, w, dx);
  else conv3dBackwardInput(g, s, dy, w, dx);
}

/** dw (assigned) from x and dy with the chosen kernel (see conv3dBackwardWeight). */
export function convBackwardWeight(g: Gpu, s: Conv3dShape, x: GPUBuffer, dy: GPUBuffer, dw: GPUBuffer) {
  if (convVariant(g, s, "weight_grad") === "channels-last") conv3dBackwardWeightChannelsLast(g, s, x, dy, dw);
  else conv3dBackwardWeight(g, s, x, dy, dw);
}

/**
 * One measured choice: milliseconds per call of each variant (median, an empty sync's cost taken off), the calls each
 * timed sample ran before its sync, and the one kept.
 */
export interface ConvChoice {
  conv: string;
  gather_ms: number;
  channels_last_ms: number;
  reps: number;
  variant: ConvVariant;
}

/**
 * A timed sample runs calls for at least about TUNE_MS before its sync (up to TUNE_REPS): a sync through Deno costs
 * 10 ms or more, which would swamp a kernel of a few milliseconds.
 */
const TUNE_MS = 20, TUNE_REPS = 16;

/** Calls per timed sample for a kernel of about `ms` milliseconds per call (its sync's cost taken off). */
export function tuneReps(ms: number): number {
  return ms <= 0 ? TUNE_REPS : Math.min(TUNE_REPS, Math.max(1, Math.ceil(TUNE_MS / ms)));
}

/** An empty sync's fixed cost in milliseconds (the median of three), taken off timed samples. */
export async function syncCost(g: Gpu): Promise<number> {
  await g.sync(); // work already submitted must not count
  const syncs = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await g.sync();
    syncs.push(performance.now() - t0);
  }
  return median(syncs);
}

/** Milliseconds per call of `run` over `calls` calls before one sync, the sync's cost (`syncMs`) taken off. */
export async function sampleMs(g: Gpu, run: () => void | Promise<void>, calls: number, syncMs: number) {
  const t0 = performance.now();
  for (let i = 0; i < calls; i++) await run();
  await g.sync();
  return (performance.now() - t0 - syncMs) / calls;
}

/**
 * In tuned mode, times both variants of every eligible shape seen since the last call on scratch buffers, and keeps
 * the faster. Each variant runs one untimed call (it compiles the pipelines) and one timed call; the faster's time,
 * less an empty sync's, sets the calls per sample for both (tuneReps); then each takes the median of `iters` samples,
 * per call, the sync's cost taken off. Call it between steps; it returns what it measured (nothing in other modes).
 */
export async function tuneConvs(g: Gpu, iters = 3): Promise<ConvChoice[]> {
  const t = table(g), out: ConvChoice[] = [];
  if (t.mode !== "tuned" || !t.pending.size) return out;
  const syncMs = await syncCost(g); // after the step's own work, which must not count against the first variant
  for (const [k, { s, pass, types }] of t.pending) {
    const [vin, vout] = [s.n * s.d * s.h * s.w, s.n * s.od * s.oh * s.ow];
    const sizes = [wordBytes(s.cin * vin, types[0]), 4 * s.cout * s.cin * s.k ** 3, 4 * s.cout];
    const [x, w, b, y] = [...sizes, wordBytes(s.cout * vout, types[1])].map((n) => g.alloc(n));
    const run = (v: ConvVariant) => runConvPass(g, s, pass, v, { x, w, b, y, dx: x, dw: w }, types); // x as dx, w as dw
    const ms: Record<ConvVariant, number> = { gather: 0, "channels-last": 0 };
    const variants = ["gather", "channels-last"] as const;
    const sample = (v: ConvVariant, calls: number) => sampleMs(g, () => run(v), calls, syncMs);
    let reps = 1;
    try {
      const probes = [];
      for (const v of variants) {
        await sample(v, 1);
        probes.push(await sample(v, 1));
      }
      reps = tuneReps(Math.min(...probes));
      for (const v of variants) {
        const times = [];
        for (let j = 0; j < iters; j++) times.push(await sample(v, reps));
        ms[v] = median(times);
      }
    } finally {
      for (const buf of [x, w, b, y]) g.free(buf);
    }
    const variant = ms["channels-last"] < ms.gather ? "channels-last" : "gather";
    t.chosen.set(k, variant);
    out.push({ conv: k, gather_ms: ms.gather, channels_last_ms: ms["channels-last"], reps, variant });
  }
  t.pending.clear();
  return out;
}
