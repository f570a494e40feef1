// Preprocessing as HAD-Net's data_preprocessor.py, and its inverse.
//
// Per subject: each NIfTI volume (X,Y,Z; x fastest) becomes a row-major [Z,Y,X] array (numpy's transpose of
// nibabel's array), flipped along axis 1 (y). Brain mask = voxels non-zero in every sequence. Everything is cropped
// to the mask's bounding box. Sequences are stored as uint16 the way numpy's astype converts float64 (truncation
// toward zero, after a warning and an absolute value if the cropped volume holds negatives), seg as uint8 with label
// 4 -> 3, the mask as uint8. Output: <out>/BRATS/<id>/<HGG|LGG>/{flr,t1c,t1p,t2w,seg,mask}.npy as the original, plus
// hadnet.json (PreprocessMeta) with what restoreToOriginal needs to put a prediction back into the source space.
import { boundingBox } from "../infer/metrics.ts";
import {
  discoverSubjects,
  type Grade,
  type Key,
  requiredFiles,
  type Seq,
  SEQUENCES,
  type SubjectSource,
} from "./brats.ts";
import { geometryOf, type NiftiGeometry, type NiftiImage, readNifti } from "./nifti.ts";
import { saveNpy } from "./npy.ts";
import { Progress } from "./progress.ts";

/** The name preprocessing workers get; main.ts starts the worker loop in a process of that name. */
export const PREPROCESS_WORKER = "hadnet-preprocess";

/** The worker's module: preprocess_worker.ts from source; the bundle itself (whose main.ts dispatches on the name). */
function workerUrl(): URL {
  return import.meta.url.endsWith(".ts")
    ? new URL("./preprocess_worker.ts", import.meta.url)
    : new URL(import.meta.url);
}

export const BRATS_DIR = "BRATS";
export const META_FILE = "hadnet.json";

export interface PreprocessMeta {
  format: "hadnet-preprocess";
  version: 1;
  id: string;
  grade: Grade;
  /** Source file per stored name. */
  sources: Partial<Record<Key, string>>;
  /** NIfTI dims of the sources [X, Y, Z]. */
  originalShape: number[];
  /** Axis order after the transpose, as source axes: [2, 1, 0] = [Z, Y, X]. */
  transpose: number[];
  /** Axes of the transposed array that were then reversed. */
  flipAxes: number[];
  /** Crop box in the transposed, flipped array: [start, stop) per axis. */
  cropStart: number[];
  cropStop: number[];
  croppedShape: number[];
  /** Original label of each class index (BraTS 2019-2021: [0,1,2,4]; BraTS 2023: [0,1,2,3]). */
  classLabels: number[];
  /** Geometry of the FLAIR source (all sources share dims), its affine and raw header bytes (base64). */
  geometry: NiftiGeometry;
  affine: number[][];
  rawHeader: string;
  warnings: string[];
}

export interface Preprocessed {
  volumes: Record<Seq, Uint16Array>;
  mask: Uint8Array;
  seg?: Uint8Array;
  meta: PreprocessMeta;
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Spatial dims of a volume: 3D, or more with trailing dims of 1. */
function dims3(img: NiftiImage, what: string): number[] {
  const d = img.header.dims;
  if (d.length < 3 || d.slice(3).some((x) => x !== 1)) {
    throw new Error(`${what}: expected a 3D volume, got dims [${d}]`);
  }
  return d.slice(0, 3);
}

/** Copies the crop box of the transposed, y-flipped view of x-fastest `src` into a row-major [Z,Y,X] array. */
function cropTransposed<T extends Uint8Array | Uint16Array | Float64Array>(
  src: ArrayLike<number>,
  shape: number[],
  start: number[],
  stop: number[],
  out: T,
  convert: (v: number) => number,
): T {
  const [X, Y] = shape;
  let i = 0;
  for (let z = start[0]; z < stop[0]; z++) {
    for (let y = start[1]; y < stop[1]; y++) {
      const row = X * (Y - 1 - y + Y * z);
      for (let x = start[2]; x < stop[2]; x++) out[i++] = convert(src[row + x]);
    }
  }
  return out;
}

/**
 * The pure part: sequences (and seg) already read. `sources` names files for messages and the metadata.
 * `brats2023` picks the label convention when the seg does not tell (no seg, or neither 3 nor 4 in it).
 */
export function preprocessImages(
  id: string,
  grade: Grade,
  images: Record<Seq, NiftiImage>,
  seg: NiftiImage | undefined,
  sources: Partial<Record<Key, string>>,
  brats2023 = false,
  warn: (message: string) => void = () => {},
): Preprocessed {
  const warnings: string[] = [];
  const note = (m: string) => {
    warnings.push(m);
    warn(m);
  };
  const shape = dims3(images.flr, sources.flr ?? "flr");
  const all: [Key, NiftiImage][] = [...SEQUENCES.map((s) => [s, images[s]] as [Key, NiftiImage])];
  if (seg) all.push(["seg", seg]);
  for (const [k, img] of all) {
    const d = dims3(img, sources[k] ?? k);
    if (d.some((x, i) => x !== shape[i])) {
      throw new Error(
        `subject ${id}: shape mismatch: ${k} (${sources[k]}) has dims [${d}] but flr (${sources.flr}) has [${shape}]`,
      );
    }
  }
  const [X, Y, Z] = shape;
  const n = X * Y * Z;
  // Mask in source order and its bounding box in source coordinates.
  const inBrain = new Uint8Array(n).fill(1);
  for (const s of SEQUENCES) {
    const d = images[s].data;
    for (let i = 0; i < n; i++) if (d[i] === 0) inBrain[i] = 0;
  }
  const box = boundingBox(inBrain, [X, Y, Z]);
  if (!box) throw new Error(`subject ${id}: no voxel is non-zero in every sequence (empty brain mask)`);
  const { lo, hi } = box;
  // Transposed axes [Z, Y, X]; the flip maps source y to Y - 1 - y.
  const cropStart = [lo[2], Y - 1 - hi[1], lo[0]];
  const cropStop = [hi[2] + 1, Y - lo[1], hi[0] + 1];
  const croppedShape = cropStart.map((s, i) => cropStop[i] - s);
  const m = croppedShape[0] * croppedShape[1] * croppedShape[2];
  const crop = <T extends Uint8Array | Uint16Array | Float64Array>(
    src: ArrayLike<number>,
    out: T,
    f: (v: number) => number,
  ) => cropTransposed(src, shape, cropStart, cropStop, out, f);

  const volumes = {} as Record<Seq, Uint16Array>;
  for (const s of SEQUENCES) {
    const v = crop(images[s].data, new Float64Array(m), (x) => x);
    let negative = false, over = false;
    for (let i = 0; i < m; i++) {
      if (v[i] < 0) negative = true;
      if (Math.abs(v[i]) >= 65536) over = true;
    }
    const name = `${s} (${sources[s] ?? s})`;
    if (negative) {
      note(`subject ${id}: sequence ${name} has negative values; taking their absolute value before uint16`);
    }
    if (over) note(`subject ${id}: sequence ${name} has values of 65536 or more; uint16 wraps them as numpy does`);
    // NaN & 0xffff is 0; values beyond uint16 wrap modulo 2^16 like numpy's cast on x86.
    volumes[s] = Uint16Array.from(v, (x) => Math.trunc(negative ? Math.abs(x) : x) & 0xffff);
  }
  const mask = crop(inBrain, new Uint8Array(m), (x) => x);
  let segOut: Uint8Array | undefined;
  let has3 = false, has4 = false;
  if (seg) {
    let inCrop = 0, total = 0;
    segOut = crop(seg.data, new Uint8Array(m), (x) => {
      if (x !== 0) inCrop++;
      return x === 4 ? 3 : Math.trunc(x) & 0xff;
    });
    // The whole volume decides the label convention, as the original maps 4 -> 3 before cropping.
    for (let i = 0; i < n; i++) {
      const x = seg.data[i];
      if (x !== 0) total++;
      if (x === 4) has4 = true;
      else if (x === 3) has3 = true;
    }
    if (total > inCrop) {
      note(`subject ${id}: seg has ${total - inCrop} labelled voxels outside the brain's bounding box, dropped`);
    }
  }
  const classLabels = has4 ? [0, 1, 2, 4] : has3 || brats2023 ? [0, 1, 2, 3] : [0, 1, 2, 4];
  const meta = metaFor(
    id,
    grade,
    sources,
    images.flr,
    shape,
    { cropStart, cropStop, croppedShape },
    classLabels,
    warnings,
  );
  return { volumes, mask, seg: segOut, meta };
}

/** The record that undoes preprocessing: the source's shape and geometry (flair's), the transpose, flip and crop. */
function metaFor(
  id: string,
  grade: Grade,
  sources: PreprocessMeta["sources"],
  flair: NiftiImage,
  originalShape: PreprocessMeta["originalShape"],
  crop: Pick<PreprocessMeta, "cropStart" | "cropStop" | "croppedShape">,
  classLabels: PreprocessMeta["classLabels"],
  warnings: string[],
): PreprocessMeta {
  return {
    format: "hadnet-preprocess",
    version: 1,
    id,
    grade,
    sources,
    originalShape,
    transpose: [2, 1, 0],
    flipAxes: [1],
    ...crop,
    classLabels,
    geometry: geometryOf(flair.header),
    affine: flair.header.affine,
    rawHeader: base64(flair.rawHeader),
    warnings,
  };
}

/**
 * Puts a [D,H,W] row-major volume over the crop box (class indices, e.g. a prediction or seg.npy) back into the
 * source space: x-fastest, NIfTI dims `meta.originalShape`, zero outside the crop. Class indices become the
 * original labels (`meta.classLabels`) unless `mapLabels` is false.
 */
export function restoreToOriginal(pred: ArrayLike<number>, meta: PreprocessMeta, mapLabels = true): Uint8Array {
  const [X, Y, Z] = meta.originalShape;
  const [D, H, W] = meta.croppedShape;
  if (pred.length !== D * H * W) {
    throw new Error(
      `restoreToOriginal: subject ${meta.id}: got ${pred.length} voxels, crop [${D},${H},${W}] needs ${D * H * W}`,
    );
  }
  const out = new Uint8Array(X * Y * Z);
  const [z0, y0, x0] = meta.cropStart;
  const labels = meta.classLabels;
  for (let d = 0, i = 0; d < D; d++) {
    for (let h = 0; h < H; h++) {
      const row = X * (Y - 1 - (y0 + h) + Y * (z0 + d)) + x0;
      for (let w = 0; w < W; w++, i++) {
        const c = pred[i];
        if (!(Number.isInteger(c) && c >= 0 && c < labels.length)) {
          throw new Error(
            `restoreToOriginal: subject ${meta.id}: voxel ${i} holds ${c}, not a class in 0..${labels.length - 1}`,
          );
        }
        out[row + w] = mapLabels ? labels[c] : c;
      }
    }
  }
  return out;
}

/**
 * The crop box of a subject preprocessed by the original tool (its arrays, no hadnet.json), recovered from the raw
 * images as the original's inference.py does (SaverioVad/HAD_Net, get_cuts and save_segmentation): per source axis
 * of the untransposed NIfTI arrays, each sequence's leading zero margin (first non-zero index) and trailing one
 * (size - 1 - last non-zero index), each the max over flair, t1ce, t1 and t2; the prediction, un-padded and swapped
 * back to [X, Y, Z] then y-flipped, is zero-padded by those margins. Placement is thus by the leading margins in
 * source space; after our transpose to [Z, Y, X] and y flip the start is [z lead, y trail, x lead]. The original
 * fails when the padded result is not the FLAIR's shape; here the same condition (margin box != the stored arrays'
 * shape, i.e. this rule disagrees with the brain mask's bounding box) is an error naming the subject.
 * Returns a PreprocessMeta for restoreToOriginal (labels: BraTS 2023 keeps 3, others 3 -> 4, as the original).
 */
export function marginMeta(
  id: string,
  grade: Grade,
  images: Record<Seq, NiftiImage>,
  croppedShape: readonly number[],
  sources: Partial<Record<Key, string>>,
  brats2023: boolean,
): PreprocessMeta {
  const shape = dims3(images.flr, sources.flr ?? "flr");
  const lead = [0, 0, 0], trail = [0, 0, 0];
  for (const s of SEQUENCES) {
    const d = dims3(images[s], sources[s] ?? s);
    if (d.some((x, i) => x !== shape[i])) {
      throw new Error(
        `subject ${id}: shape mismatch: ${s} (${sources[s]}) has dims [${d}] but flr (${sources.flr}) has [${shape}]`,
      );
    }
    const box = boundingBox(Uint8Array.from(images[s].data, (v) => (v !== 0 ? 1 : 0)), [d[0], d[1], d[2]]);
    if (!box) throw new Error(`subject ${id}: ${s} (${sources[s]}) is all zero`);
    for (let a = 0; a < 3; a++) {
      lead[a] = Math.max(lead[a], box.lo[a]);
      trail[a] = Math.max(trail[a], shape[a] - 1 - box.hi[a]);
    }
  }
  const [X, Y, Z] = shape;
  const cropStart = [lead[2], trail[1], lead[0]];
  const cropStop = [Z - trail[2], Y - lead[1], X - trail[0]];
  const box = cropStart.map((s, i) => cropStop[i] - s);
  if (box.some((b, i) => b !== croppedShape[i])) {
    throw new Error(
      `subject ${id}: the raw images' zero margins give a [${box}] brain box but the preprocessed arrays are ` +
        `[${croppedShape}] ([z, y, x]); are they preprocessed from these raw images (${sources.flr})?`,
    );
  }
  const crop = { cropStart, cropStop, croppedShape: [...croppedShape] };
  return metaFor(id, grade, sources, images.flr, shape, crop, brats2023 ? [0, 1, 2, 3] : [0, 1, 2, 4], []);
}

/** Where a subject's files go. LGG keeps its folder; HGG and ungraded subjects use HGG, as the original expects. */
export function subjectDir(outRoot: string, id: string, grade: Grade): string {
  return `${outRoot}/${BRATS_DIR}/${id}/${grade === "LGG" ? "LGG" : "HGG"}`;
}

export function outputNames(withSeg: boolean): string[] {
  return [...SEQUENCES, ...(withSeg ? ["seg"] : []), "mask"].map((n) => `${n}.npy`);
}

/** Whether every output of a subject exists (hadnet.json is written last). */
export function isProcessed(outRoot: string, src: SubjectSource, withSeg: boolean): boolean {
  const dir = subjectDir(outRoot, src.id, src.grade);
  return [...outputNames(withSeg), META_FILE].every((f) => {
    try {
      return Deno.statSync(`${dir}/${f}`).isFile;
    } catch {
      return false;
    }
  });
}

/** Reads, preprocesses and writes one subject; returns its warnings. */
export async function preprocessSubject(
  src: SubjectSource,
  outRoot: string,
  withSeg: boolean,
  warn?: (message: string) => void,
): Promise<string[]> {
  const files = requiredFiles(src, withSeg);
  const images = {} as Record<Seq, NiftiImage>;
  for (const s of SEQUENCES) images[s] = await readNifti(files[s]);
  const seg = withSeg ? await readNifti(files.seg) : undefined;
  const sources: Partial<Record<Key, string>> = {};
  for (const k of [...SEQUENCES, ...(withSeg ? ["seg" as const] : [])]) sources[k] = files[k];
  const p = preprocessImages(src.id, src.grade, images, seg, sources, src.brats2023, warn);
  const dir = subjectDir(outRoot, src.id, src.grade);
  await Deno.mkdir(dir, { recursive: true });
  const shape = p.meta.croppedShape;
  for (const s of SEQUENCES) await saveNpy(`${dir}/${s}.npy`, { dtype: "<u2", shape, data: p.volumes[s] });
  if (p.seg) await saveNpy(`${dir}/seg.npy`, { dtype: "|u1", shape, data: p.seg });
  await saveNpy(`${dir}/mask.npy`, { dtype: "|u1", shape, data: p.mask });
  const tmp = `${dir}/${META_FILE}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(p.meta, null, 1) + "\n");
  await Deno.rename(tmp, `${dir}/${META_FILE}`);
  return p.meta.warnings;
}

export async function readMeta(dir: string): Promise<PreprocessMeta> {
  const path = `${dir}/${META_FILE}`;
  const meta = JSON.parse(await Deno.readTextFile(path));
  if (meta.format !== "hadnet-preprocess" || meta.version !== 1) throw new Error(`${path}: not a hadnet.json (v1)`);
  return meta;
}

export interface DatasetOptions {
  /** Dataset root in any layout of brats.ts. */
  input: string;
  /** Output root; subjects go under <output>/BRATS. */
  output: string;
  /** Parallel Deno Workers; 1 runs in this thread. */
  workers: number;
  /** Redo subjects whose outputs already exist. */
  force: boolean;
  /** Training data (seg required and stored) or inference data (seg ignored). */
  withSeg: boolean;
  /** Where progress, warnings and failures go; default stderr. */
  write?: (text: string) => void;
}

export interface DatasetSummary {
  processed: string[];
  skipped: string[];
  failed: { id: string; reason: string }[];
  warnings: string[];
}

type Job = { src: SubjectSource; output: string; withSeg: boolean };
type Reply = { ok: true; warnings: string[] } | { ok: false; reason: string };

/** Runs one job in this thread; the worker runs the same. */
export async function runJob(job: Job): Promise<Reply> {
  try {
    return { ok: true, warnings: await preprocessSubject(job.src, job.output, job.withSeg) };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

/**
 * Preprocesses every subject under `input` (skipping finished ones unless `force`), with a progress bar. A failing
 * subject is reported on one line with its reason and the others go on; the summary lists each outcome.
 */
export async function preprocessDataset(opts: DatasetOptions): Promise<DatasetSummary> {
  const write = opts.write ?? ((t: string) => Deno.stderr.writeSync(new TextEncoder().encode(t)));
  const all = discoverSubjects(opts.input);
  const summary: DatasetSummary = { processed: [], skipped: [], failed: [], warnings: [] };
  const todo = all.filter((s) => {
    const done = !opts.force && isProcessed(opts.output, s, opts.withSeg);
    if (done) summary.skipped.push(s.id);
    return !done;
  });
  const bar = new Progress(todo.length, "preprocess", { write });
  const finish = (id: string, r: Reply) => {
    if (r.ok) {
      summary.processed.push(id);
      for (const w of r.warnings) {
        summary.warnings.push(w);
        bar.log(`warning: ${w}`);
      }
    } else {
      summary.failed.push({ id, reason: r.reason });
      bar.log(`failed: ${r.reason.startsWith(`subject ${id}`) ? r.reason : `subject ${id}: ${r.reason}`}`);
    }
    bar.tick(1, id);
  };
  const nWorkers = Math.max(1, Math.min(opts.workers, todo.length));
  let next = 0;
  if (nWorkers === 1) {
    for (const src of todo) finish(src.id, await runJob({ src, output: opts.output, withSeg: opts.withSeg }));
  } else {
    const lane = async () => {
      const w = new Worker(workerUrl(), { type: "module", name: PREPROCESS_WORKER });
      try {
        while (next < todo.length) {
          const src = todo[next++];
          const reply = await new Promise<Reply>((resolve) => {
            w.onmessage = (e: MessageEvent<Reply>) => resolve(e.data);
            w.onerror = (e: ErrorEvent) => {
              e.preventDefault();
              resolve({ ok: false, reason: `worker error: ${e.message}` });
            };
            w.postMessage({ src, output: opts.output, withSeg: opts.withSeg } satisfies Job);
          });
          finish(src.id, reply);
        }
      } finally {
        w.terminate();
      }
    };
    await Promise.all(Array.from({ length: nWorkers }, lane));
  }
  bar.finish();
  const sort = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  summary.processed.sort(sort);
  summary.failed.sort((a, b) => sort(a.id, b.id));
  write(
    `preprocess: ${summary.processed.length} processed, ${summary.skipped.length} already done, ` +
      `${summary.failed.length} failed, ${summary.warnings.length} warnings (of ${all.length} subjects)\n`,
  );
  for (const f of summary.failed) write(`  failed ${f.id}: ${f.reason}\n`);
  return summary;
}
