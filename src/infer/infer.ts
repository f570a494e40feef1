// `hadnet infer`: segmentation of raw BraTS subjects, as the original inference.py plus its preprocessing, without
// intermediate files: one forward per subject (or per window), plus N dropout passes for MC uncertainty.
//
// Per subject: the NIfTIs are preprocessed in memory (preprocessImages: transpose to [z, y, x], y flip, crop to the
// brain box, uint16), or, with `preprocessed`, the arrays of a preprocessed folder are read (hadnet's or the original
// tool's layout, <id>/<HGG|LGG|LGG_or_HGG>/*.npy). The crop box comes from the in-memory meta, hadnet.json, or for
// the original tool's output (no hadnet.json) the raw images by the original's zero-margin rule (marginMeta).
// Each sequence is normalised over the brain mask (normalizeSequence) and fitted to the semantics size as the
// original inference generator does per dim: zero-padded from floor(diff / 2) when smaller,
// centre-cropped from |floor(diff / 2)| when larger (with a warning; the cut region comes back as background).
// Eval-mode forward, softmax, argmax on the GPU; only the argmax (and the probabilities when uncertainty maps are
// asked for) is read back. Small ET components may be relabelled necrosis (postprocess.ts). Class indices become
// the source labels (preprocess meta classLabels: 3 -> 4, or 3 kept for BraTS 2023 names) and go back into the
// source grid (restoreToOriginal), written as <out>/<id>.nii.gz with the FLAIR's geometry.
//
// Sliding window (`patch`): window starts spread evenly with at least the requested overlap (nnU-Net's rule), each
// window's softmax weighted by a Gaussian with sigma = window / 8 per axis (peak 1), summed in float64 and divided by
// the summed weights. Monte-Carlo dropout: the network in training mode (only dropout differs: instance norm has no
// running statistics), one Rng(seed) per subject so results do not depend on which subjects run before; the label
// map stays the eval-mode one whatever the uncertainty mode.

import { type ConvKernels, setConvKernels, tuneConvs } from "../kernels/conv_select.ts";
import { discoverSubjects, type Key, requiredFiles, type Seq, SEQUENCES, type SubjectSource } from "../data/brats.ts";
import {
  gradeDir,
  listSubjects,
  loadSemantics,
  loadVolume,
  normalizeSequence,
  type Role,
  type Semantics,
  STUDENT_SEQUENCES,
  subjectsRoot,
  TEACHER_SEQUENCES,
} from "../data/loader.ts";
import { type NiftiImage, readNifti, writeNifti } from "../data/nifti.ts";
import {
  marginMeta,
  META_FILE,
  preprocessImages,
  type PreprocessMeta,
  readMeta,
  restoreToOriginal,
} from "../data/preprocess.ts";
import { JsonlLog, Progress } from "../data/progress.ts";
import type { Gpu, Storage } from "../kernels/device.ts";
import { loadWeights } from "../nn/checkpoint.ts";
import { add, affine } from "../nn/ops/elementwise.ts";
import { argmax, softmax } from "../nn/ops/loss.ts";
import { Rng } from "../nn/rng.ts";
import { noGrad, scope, Tensor } from "../nn/tensor.ts";
import { generatorMeta, UNet } from "../nn/unet.ts";
import { regionUncertainty, relabelSmallEt, UNCERTAINTY_REGIONS, type UncertaintyRegion } from "./postprocess.ts";

export const CLASSES = 4;

export interface InferOptions {
  /** Raw dataset root, any layout of brats.ts; with `preprocessed`, a preprocessed root (<proc> or <proc>/BRATS). */
  input: string;
  /** `input` holds preprocessed arrays rather than NIfTIs. */
  preprocessed?: boolean;
  /** Raw dataset root giving the geometry of preprocessed subjects without hadnet.json (the original tool's). */
  raw?: string;
  /** Output folder: <id>.nii.gz, uncertainty maps, infer.jsonl. */
  out: string;
  model: string;
  semantics: string;
  role: Role;
  /** Required k; default: the weights'. */
  k?: number;
  /** Only these subjects (each must exist). */
  ids?: string[];
  /** Redo subjects whose outputs exist. */
  force: boolean;
  /** Sliding-window size [D, H, W]; whole volume when absent. */
  patch?: [number, number, number];
  overlap: number;
  uncertainty?: "entropy" | "mc";
  mcSamples: number;
  dropout: number;
  seed: number;
  /** Smallest ET component kept as ET. */
  minEt?: number;
  /** Store activations as f16 (the adapter's shader-f16; not with MC dropout). */
  f16?: boolean;
  /** How convolution kernels are picked (conv_select.ts; default auto). */
  convKernels?: ConvKernels;
  /** Progress and messages; default stderr. */
  write?: (text: string) => void;
}

export interface InferSummary {
  done: string[];
  skipped: string[];
  failed: { id: string; reason: string }[];
  warnings: string[];
}

/**
 * Loads a generator for a role: k, sequences and classes from the weights; a mismatch with the role's sequence
 * count, the required k, or 4 classes is one error naming the file and every difference.
 */
export async function loadGenerator(g: Gpu, path: string, role: Role, k?: number, dropout = 0.2): Promise<UNet> {
  const { tensors, metadata } = await loadWeights(path);
  if (metadata.kind !== undefined && metadata.kind !== "generator") {
    throw new Error(`${path}: holds a ${metadata.kind}, not a generator`);
  }
  const m = generatorMeta(tensors, path);
  const found = { k: Number(m.k), sequences: Number(m.sequences), classes: Number(m.classes) };
  const want = { sequences: role === "teacher" ? TEACHER_SEQUENCES.length : STUDENT_SEQUENCES.length };
  const problems: string[] = [];
  if (found.sequences !== want.sequences) {
    problems.push(`it takes ${found.sequences} sequences but a ${role} takes ${want.sequences}`);
  }
  if (k !== undefined && found.k !== k) problems.push(`it has k = ${found.k} but --k ${k} was asked for`);
  if (found.classes !== CLASSES) problems.push(`it has ${found.classes} classes, not ${CLASSES}`);
  if (problems.length) throw new Error(`${path}: model does not fit: ${problems.join("; ")}`);
  const net = new UNet(g, { inChannels: found.sequences, k: found.k, classes: CLASSES, dropout }, new Rng(0));
  net.params.load(tensors, path);
  return net;
}

/** Per dim, as the original inference generator: source start, target start and length of the copied box. */
export function fitBox(
  shape: readonly number[],
  target: readonly number[],
): { src: number[]; dst: number[]; size: number[] } {
  const diff = shape.map((s, i) => target[i] - s);
  return {
    src: diff.map((d) => (d < 0 ? -Math.floor(d / 2) : 0)),
    dst: diff.map((d) => (d >= 0 ? Math.floor(d / 2) : 0)),
    size: shape.map((s, i) => Math.min(s, target[i])),
  };
}

/** Copies a box of `size` from [D,H,W] `src` at `from` into [D',H',W'] `dst` (at element `offset`) at `to`. */
export function copyBox(
  src: ArrayLike<number>,
  srcShape: readonly number[],
  from: readonly number[],
  dst: Float32Array | Uint8Array,
  dstShape: readonly number[],
  to: readonly number[],
  size: readonly number[],
  offset = 0,
) {
  const [, SH, SW] = srcShape, [, TH, TW] = dstShape;
  for (let d = 0; d < size[0]; d++) {
    for (let h = 0; h < size[1]; h++) {
      const s = ((d + from[0]) * SH + h + from[1]) * SW + from[2];
      const t = offset + ((d + to[0]) * TH + h + to[1]) * TW + to[2];
      for (let w = 0; w < size[2]; w++) dst[t + w] = src[s + w];
    }
  }
}

/** Window starts along one axis (nnU-Net): the fewest evenly spread windows whose step is <= window * (1 - overlap). */
export function windowStarts(size: number, window: number, overlap: number): number[] {
  if (window >= size) return [0];
  const n = Math.ceil((size - window) / (window * (1 - overlap))) + 1;
  const step = (size - window) / (n - 1);
  return Array.from({ length: n }, (_, i) => Math.round(i * step));
}

/** Gaussian importance map over a window [D, H, W]: exp(-(x - floor(n/2))^2 / (2 (n/8)^2)) per axis, peak 1. */
export function gaussianWindow(shape: readonly number[]): Float64Array {
  const axes = shape.map((n) => {
    const c = Math.floor(n / 2), s = n / 8;
    return Float64Array.from({ length: n }, (_, x) => Math.exp(-((x - c) ** 2) / (2 * s * s)));
  });
  const [D, H, W] = shape;
  const out = new Float64Array(D * H * W);
  for (let d = 0, i = 0; d < D; d++) {
    for (let h = 0; h < H; h++) {
      const a = axes[0][d] * axes[1][h];
      for (let w = 0; w < W; w++, i++) out[i] = a * axes[2][w];
    }
  }
  return out;
}

interface PassResult {
  /** Argmax of the eval-mode softmax (u32 [S]). */
  argmax?: Uint32Array;
  /** Eval-mode softmax [C, S]. */
  probs?: Float32Array;
  /** Mean softmax over the dropout passes [C, S]. */
  mcProbs?: Float32Array;
}

/** One volume [C, D, H, W] through the network: whatever is asked for, read back in one round trip. */
async function pass(
  net: UNet,
  input: Float32Array,
  shape: readonly number[],
  want: { argmax: boolean; probs: boolean; mc?: { samples: number; rng: Rng }; storage: Storage },
): Promise<PassResult> {
  const g = net.params.gpu;
  return await scope(async () => {
    const x = Tensor.from(g, [1, net.config.inChannels, ...shape], input);
    const { p, a, mc } = noGrad(() => {
      const p = scope(() => softmax(net.forward(x, { training: false, storage: want.storage }).logits));
      let mc: Tensor | undefined;
      if (want.mc) {
        for (let i = 0; i < want.mc.samples; i++) {
          const prev = mc;
          mc = scope(() => {
            const q = softmax(net.forward(x, { training: true, rng: want.mc!.rng }).logits);
            return prev ? add(prev, q) : q;
          });
          prev?.dispose();
        }
        mc = affine(mc!, 1 / want.mc.samples);
      }
      return { p, a: want.argmax ? argmax(p) : undefined, mc };
    });
    const reads = [...(a ? [a] : []), ...(want.probs ? [p] : []), ...(mc ? [mc] : [])];
    const bufs = await g.read(reads.map((t) => ({ buffer: t.buffer, size: t.bytes })));
    const r: PassResult = {};
    if (a) r.argmax = new Uint32Array(bufs.shift()!);
    if (want.probs) r.probs = new Float32Array(bufs.shift()!);
    if (mc) r.mcProbs = new Float32Array(bufs.shift()!);
    return r;
  });
}

export interface Prediction {
  /** Class indices over the padded volume [D, H, W]. */
  labels: Uint8Array;
  /** Probabilities [C, D, H, W] the uncertainty maps come from (eval softmax, or the MC mean). */
  probs?: Float32Array;
}

/**
 * Segments a padded, normalised [C, D, H, W] input: the whole volume in one pass, or sliding windows of `patch`
 * (clipped to the volume) with Gaussian-weighted softmax averaging.
 */
export async function predict(
  net: UNet,
  input: Float32Array,
  shape: readonly number[],
  opts: {
    patch?: readonly number[];
    overlap: number;
    uncertainty?: "entropy" | "mc";
    mcSamples: number;
    seed: number;
    f16?: boolean;
  },
): Promise<Prediction> {
  if (opts.f16 && opts.uncertainty === "mc") {
    throw new Error("f16 storage does not combine with Monte-Carlo dropout uncertainty (its dropout runs in f32)");
  }
  const mc = opts.uncertainty === "mc" ? { samples: opts.mcSamples, rng: new Rng(opts.seed) } : undefined;
  const storage: Storage = opts.f16 ? "f16" : "f32";
  const S = shape[0] * shape[1] * shape[2];
  if (!opts.patch) {
    const r = await pass(net, input, shape, { argmax: true, probs: opts.uncertainty === "entropy", mc, storage });
    return { labels: Uint8Array.from(r.argmax!), probs: r.probs ?? r.mcProbs };
  }
  const win = opts.patch.map((p, i) => Math.min(p, shape[i]));
  const [wd, wh, ww] = win, WS = wd * wh * ww;
  const weight = gaussianWindow(win);
  const acc = new Float64Array(CLASSES * S), accMc = mc ? new Float64Array(CLASSES * S) : undefined;
  const wsum = new Float64Array(S);
  const C = net.config.inChannels;
  const x = new Float32Array(C * WS);
  const all = [0, 0, 0];
  for (const d0 of windowStarts(shape[0], wd, opts.overlap)) {
    for (const h0 of windowStarts(shape[1], wh, opts.overlap)) {
      for (const w0 of windowStarts(shape[2], ww, opts.overlap)) {
        const at = [d0, h0, w0];
        for (let c = 0; c < C; c++) copyBox(input.subarray(c * S), shape, at, x, win, all, win, c * WS);
        const r = await pass(net, x, win, { argmax: false, probs: true, mc, storage });
        for (let d = 0, i = 0; d < wd; d++) {
          for (let h = 0; h < wh; h++) {
            const row = ((d + d0) * shape[1] + h + h0) * shape[2] + w0;
            for (let w = 0; w < ww; w++, i++) {
              const v = row + w, wt = weight[i];
              wsum[v] += wt;
              for (let c = 0; c < CLASSES; c++) {
                acc[c * S + v] += r.probs![c * WS + i] * wt;
                if (accMc) accMc[c * S + v] += r.mcProbs![c * WS + i] * wt;
              }
            }
          }
        }
      }
    }
  }
  // The argmax of the weighted sums is that of the averages (a common positive factor per voxel).
  const labels = new Uint8Array(S);
  for (let v = 0; v < S; v++) {
    let k = 0;
    for (let c = 1; c < CLASSES; c++) if (acc[c * S + v] > acc[k * S + v]) k = c;
    labels[v] = k;
  }
  let probs: Float32Array | undefined;
  const src = accMc ?? (opts.uncertainty ? acc : undefined);
  if (src) {
    probs = new Float32Array(CLASSES * S);
    for (let i = 0; i < probs.length; i++) probs[i] = src[i] / wsum[i % S];
  }
  return { labels, probs };
}

/** The role's sequences normalised and fitted to the semantics size: [C, D, H, W] input. */
export function prepareInput(
  volumes: Partial<Record<Seq, ArrayLike<number>>>,
  mask: Uint8Array,
  shape: readonly number[],
  semantics: Semantics,
  role: Role,
  id: string,
): Float32Array {
  const channels = role === "teacher" ? TEACHER_SEQUENCES : STUDENT_SEQUENCES;
  const target = semantics.shape, S = target[0] * target[1] * target[2];
  const box = fitBox(shape, target);
  const input = new Float32Array(channels.length * S);
  channels.forEach((s, c) => {
    const v = volumes[s];
    if (!v) throw new Error(`subject ${id}: no ${s} sequence for the ${role}`);
    const norm = normalizeSequence(v, mask, `subject ${id}: ${s}`);
    copyBox(norm, shape, box.src, input, target, box.dst, box.size, c * S);
  });
  return input;
}

/** Undoes prepareInput's fit for a [D, H, W] map over the padded volume: the cut region is 0. */
export function unfit(vol: Uint8Array, target: readonly number[], shape: readonly number[]): Uint8Array {
  const box = fitBox(shape, target);
  const out = new Uint8Array(shape[0] * shape[1] * shape[2]);
  copyBox(vol, target, box.dst, out, shape, box.src, box.size);
  return out;
}

/** The JSON-lines log in the output folder, appended by every invocation. */
export const LOG_FILE = "infer.jsonl";

/** 0..100 pass through restoreToOriginal unchanged: it maps class index i to classLabels[i]. */
const PERCENT = Array.from({ length: 101 }, (_, i) => i);

export function outputNames(id: string, uncertainty: boolean): string[] {
  const regions = Object.keys(UNCERTAINTY_REGIONS) as UncertaintyRegion[];
  return [`${id}.nii.gz`, ...(uncertainty ? regions.map((r) => `${id}_unc_${r}.nii.gz`) : [])];
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** A subject ready to segment: the fitted input, the cropped [D, H, W] it came from, the way back, warnings. */
interface Prepared {
  input: Float32Array;
  shape: number[];
  meta: PreprocessMeta;
  warnings: string[];
}

async function readSequences(src: SubjectSource) {
  const files = requiredFiles(src, false);
  const images = {} as Record<Seq, NiftiImage>;
  for (const s of SEQUENCES) images[s] = await readNifti(files[s]);
  const sources: Partial<Record<Key, string>> = Object.fromEntries(SEQUENCES.map((s) => [s, files[s]]));
  return { images, sources };
}

/** A raw subject, preprocessed in memory. */
async function prepareRaw(src: SubjectSource, semantics: Semantics, role: Role): Promise<Prepared> {
  const { images, sources } = await readSequences(src);
  const p = preprocessImages(src.id, src.grade, images, undefined, sources, src.brats2023);
  const shape = p.meta.croppedShape;
  const input = prepareInput(p.volumes, p.mask, shape, semantics, role, src.id);
  return { input, shape, meta: p.meta, warnings: [...p.meta.warnings] };
}

/**
 * A preprocessed subject folder: its arrays, placed back by its hadnet.json or, without one (the original tool's
 * output), by the raw subject of the same id in `raw` (marginMeta).
 */
async function preparePreprocessed(
  root: string,
  id: string,
  semantics: Semantics,
  role: Role,
  raw?: { dir: string; byId: Map<string, SubjectSource> },
): Promise<Prepared> {
  const dir = gradeDir(root, id);
  const mask = await loadVolume(dir, "mask", id);
  const shape = mask.shape;
  const volumes: Partial<Record<Seq, ArrayLike<number>>> = {};
  for (const s of role === "teacher" ? TEACHER_SEQUENCES : STUDENT_SEQUENCES) {
    volumes[s] = (await loadVolume(dir, s, id, shape)).data as ArrayLike<number>;
  }
  let meta: PreprocessMeta;
  if (exists(`${dir}/${META_FILE}`)) {
    meta = await readMeta(dir);
    if (meta.croppedShape.some((d, i) => d !== shape[i])) {
      throw new Error(
        `subject ${id}: ${dir}/${META_FILE} records a [${meta.croppedShape}] crop, mask.npy is [${shape}]`,
      );
    }
  } else {
    if (!raw) {
      throw new Error(
        `subject ${id}: ${dir} has no ${META_FILE} (preprocessed by the original tool?); give --raw, the raw BraTS ` +
          `folder it came from, to place the prediction`,
      );
    }
    const src = raw.byId.get(id);
    if (!src) {
      throw new Error(
        `subject ${id}: not found in the raw folder ${raw.dir} (--raw), needed to place its prediction ` +
          `(${dir} has no ${META_FILE})`,
      );
    }
    const { images, sources } = await readSequences(src);
    meta = marginMeta(id, src.grade, images, shape, sources, src.brats2023);
  }
  return {
    input: prepareInput(volumes, mask.data as Uint8Array, shape, semantics, role, id),
    shape,
    meta,
    warnings: [],
  };
}

/** Segments one prepared subject and writes its outputs; returns its warnings. */
async function segmentSubject(
  net: UNet,
  id: string,
  prepared: Prepared,
  semantics: Semantics,
  o: InferOptions,
): Promise<string[]> {
  const { input, shape, meta } = prepared;
  const warnings = [...prepared.warnings];
  const target = semantics.shape;
  const cut = shape.map((s, i) => (s > target[i] ? i : -1)).filter((i) => i >= 0);
  if (cut.length) {
    warnings.push(
      `subject ${id}: cropped size [${shape}] exceeds the semantics size [${target}] in dim ${cut.join(", ")}; ` +
        `centre-cropped, the cut region is labelled background`,
    );
  }
  const pred = await predict(net, input, target, o);
  const labels = unfit(pred.labels, target, shape);
  if (o.minEt !== undefined) relabelSmallEt(labels, shape, o.minEt);
  const write = (name: string, data: Uint8Array) =>
    writeNifti(`${o.out}/${name}`, data, meta.originalShape, meta.geometry, "uint8", "hadnet infer");
  const [segName, ...uncNames] = outputNames(id, pred.probs !== undefined);
  if (pred.probs) {
    const unc = regionUncertainty(pred.probs, target[0] * target[1] * target[2]);
    const regions = Object.keys(UNCERTAINTY_REGIONS) as UncertaintyRegion[];
    for (let i = 0; i < regions.length; i++) {
      const back = restoreToOriginal(unfit(unc[regions[i]], target, shape), { ...meta, classLabels: PERCENT });
      await write(uncNames[i], back);
    }
  }
  // Written last: its presence with the maps marks the subject done.
  await write(segName, restoreToOriginal(labels, meta));
  return warnings;
}

/**
 * Segments every selected subject, skipping finished ones unless `force`. A failing subject is reported by id and
 * the others go on. infer.jsonl in the output folder gets the options, one line per subject, then a summary.
 */
export async function runInference(g: Gpu, o: InferOptions): Promise<InferSummary> {
  if (o.f16 && !g.features.has("shader-f16")) {
    throw new Error(`--f16 needs the adapter's shader-f16 feature, which ${g.adapterName} lacks`);
  }
  setConvKernels(g, o.convKernels ?? "auto");
  const write = o.write ?? ((t: string) => Deno.stderr.writeSync(new TextEncoder().encode(t)));
  const semantics = await loadSemantics(o.semantics);
  const channels = o.role === "teacher" ? semantics.teacherChannels : semantics.studentChannels;
  const expected = o.role === "teacher" ? TEACHER_SEQUENCES.length : STUDENT_SEQUENCES.length;
  if (channels !== expected) {
    throw new Error(`${o.semantics}: semantics gives the ${o.role} ${channels} sequences, expected ${expected}`);
  }
  let subjects: { id: string; prepare: () => Promise<Prepared> }[];
  if (o.preprocessed) {
    const root = subjectsRoot(o.input);
    const raw = o.raw ? { dir: o.raw, byId: new Map(discoverSubjects(o.raw).map((s) => [s.id, s])) } : undefined;
    subjects = listSubjects(root).map((id) => ({
      id,
      prepare: () => preparePreprocessed(root, id, semantics, o.role, raw),
    }));
  } else {
    subjects = discoverSubjects(o.input).map((src) => ({
      id: src.id,
      prepare: () => prepareRaw(src, semantics, o.role),
    }));
  }
  if (o.ids) {
    const byId = new Map(subjects.map((s) => [s.id, s]));
    const missing = o.ids.filter((id) => !byId.has(id));
    if (missing.length) throw new Error(`${o.input}: no subject ${missing.join(", ")} (from --ids)`);
    subjects = [...new Set(o.ids)].map((id) => byId.get(id)!);
  }
  if (!subjects.length) throw new Error(`${o.input}: no subjects found`);
  const net = await loadGenerator(g, o.model, o.role, o.k, o.dropout);
  const { write: _w, ...config } = o;
  await Deno.mkdir(o.out, { recursive: true });
  const run = await JsonlLog.open(`${o.out}/${LOG_FILE}`);
  run.write({ event: "start", config, semanticsShape: semantics.shape });
  const summary: InferSummary = { done: [], skipped: [], failed: [], warnings: [] };
  const todo = subjects.filter((s) => {
    const done = !o.force && outputNames(s.id, o.uncertainty !== undefined).every((f) => exists(`${o.out}/${f}`));
    if (done) {
      summary.skipped.push(s.id);
      run.write({ id: s.id, status: "skipped" });
    }
    return !done;
  });
  const bar = new Progress(todo.length, "infer", { write });
  try {
    for (const s of todo) {
      const t0 = performance.now();
      try {
        const warnings = await segmentSubject(net, s.id, await s.prepare(), semantics, o);
        for (const w of warnings) bar.log(`warning: ${w}`);
        summary.warnings.push(...warnings);
        summary.done.push(s.id);
        run.write({ id: s.id, status: "done", seconds: (performance.now() - t0) / 1000, warnings });
      } catch (e) {
        const msg = (e as Error).message;
        const reason = msg.includes(s.id) ? msg : `subject ${s.id}: ${msg}`;
        summary.failed.push({ id: s.id, reason });
        bar.log(`failed: ${reason}`);
        run.write({ id: s.id, status: "failed", seconds: (performance.now() - t0) / 1000, reason });
      }
      bar.tick(1, s.id);
      for (const c of await tuneConvs(g)) run.write({ event: "tune", ...c }); // --conv-kernel tuned
    }
    bar.finish();
    const line = `infer: ${summary.done.length} segmented, ${summary.skipped.length} already done, ` +
      `${summary.failed.length} failed, ${summary.warnings.length} warnings (of ${subjects.length} subjects)`;
    write(line + "\n");
    run.write({ summary: line, ...summary });
  } finally {
    run.close();
    net.params.dispose();
  }
  return summary;
}
