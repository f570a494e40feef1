// Loading preprocessed subjects as HAD-Net's data generators do.
//
// Layout on disk: <procRoot>/<id>/<grade>/{flr,t1c,t1p,t2w,seg,mask}.npy, [D,H,W] row-major (preprocess.ts), where
// <grade> is the one folder whose name holds HGG or LGG (the original's inference preprocessor writes LGG_or_HGG).
// Semantics: the padded size, the largest cropped size over every subject under the training root, each dim rounded
// up to a multiple of 16, dims 0 and 2 both set to their max; plus the teacher/student channel counts.
// Per sequence, in float32 as numpy computes it: mean and population std over the brain mask's voxels, applied to
// every voxel; clip above at 3; min over the whole cropped volume; x -> (x - min) / (3 - min); then zero padding to
// the semantics size, starting at floor(diff / 2) per dim. Output input [C, D, H, W], labels and mask [D, H, W].
import { Parser } from "pickleparser";
import { loadNpy, type Npy } from "./npy.ts";
import { BRATS_DIR, META_FILE, type PreprocessMeta } from "./preprocess.ts";

/** Teacher channels: flair, t1ce, t1, t2 (the sorted file names). Student: the same without post-contrast t1ce. */
export const TEACHER_SEQUENCES = ["flr", "t1c", "t1p", "t2w"] as const;
export const STUDENT_SEQUENCES = ["flr", "t1p", "t2w"] as const;
export type Role = "teacher" | "student";

export interface Semantics {
  shape: [number, number, number];
  teacherChannels: number;
  studentChannels: number;
}

/** Semantics from every subject's cropped [D,H,W] size. */
export function semanticsFromSizes(sizes: number[][]): Semantics {
  if (sizes.length === 0) throw new Error("semantics: no subjects");
  const max = [0, 1, 2].map((i) => Math.max(...sizes.map((s) => s[i])));
  const up = max.map((m) => Math.ceil(m / 16) * 16);
  const d02 = Math.max(up[0], up[2]);
  return {
    shape: [d02, up[1], d02],
    teacherChannels: TEACHER_SEQUENCES.length,
    studentChannels: STUDENT_SEQUENCES.length,
  };
}

/** The subject's grade folder: the one entry of <procRoot>/<id> whose name holds HGG or LGG. */
export function gradeDir(procRoot: string, id: string): string {
  let names: string[];
  try {
    names = [...Deno.readDirSync(`${procRoot}/${id}`)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch {
    throw new Error(`subject ${id}: no preprocessed folder ${procRoot}/${id}`);
  }
  const hits = names.filter((n) => n.includes("HGG") || n.includes("LGG"));
  if (hits.length !== 1) {
    throw new Error(
      `subject ${id}: ${procRoot}/${id} should hold exactly one HGG or LGG folder, found [${hits.sort().join(", ")}]`,
    );
  }
  return `${procRoot}/${id}/${hits[0]}`;
}

/**
 * The folder of subject folders for a preprocessed dataset given as preprocess's output root (<proc>/BRATS exists)
 * or as that BRATS folder itself.
 */
export function subjectsRoot(proc: string): string {
  const inner = `${proc.replace(/\/+$/, "")}/${BRATS_DIR}`;
  try {
    if (Deno.statSync(inner).isDirectory) return inner;
  } catch {
    // no BRATS folder inside: proc is the folder of subjects
  }
  return proc;
}

/** Every subject folder under `procRoot`, sorted. */
export function listSubjects(procRoot: string): string[] {
  try {
    return [...Deno.readDirSync(procRoot)].filter((e) => e.isDirectory).map((e) => e.name).sort();
  } catch (e) {
    throw new Error(`${procRoot}: cannot list preprocessed subjects (${(e as Error).message})`);
  }
}

/** Semantics over every subject folder under the training root (mask.npy gives each cropped size). */
export async function computeSemantics(procRoot: string): Promise<Semantics> {
  const sizes: number[][] = [];
  for (const id of listSubjects(procRoot)) {
    const mask = await loadNpy(`${gradeDir(procRoot, id)}/mask.npy`);
    if (mask.shape.length !== 3) throw new Error(`subject ${id}: mask.npy has shape (${mask.shape}), expected 3 dims`);
    sizes.push(mask.shape);
  }
  if (sizes.length === 0) throw new Error(`${procRoot}: no subject folders`);
  return semanticsFromSizes(sizes);
}

export async function saveSemantics(path: string, s: Semantics): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(s) + "\n");
}

function checkSemantics(s: Semantics, name: string): Semantics {
  const ok = s.shape?.length === 3 &&
    [...s.shape, s.teacherChannels, s.studentChannels].every((v) => Number.isInteger(v) && v > 0);
  if (!ok) throw new Error(`${name}: bad semantics ${JSON.stringify(s)}`);
  return s;
}

/** Reads semantics saved by hadnet (.json) or by the original (pickled object-array .npy). */
export async function loadSemantics(path: string): Promise<Semantics> {
  if (path.endsWith(".npy")) return parseSemanticsNpy(await Deno.readFile(path), path);
  const s = JSON.parse(await Deno.readTextFile(path));
  return checkSemantics(
    { shape: s.shape, teacherChannels: s.teacherChannels, studentChannels: s.studentChannels },
    path,
  );
}

interface Holder {
  state?: any;
  __setstate__(s: any): void;
}

function holder(fields: Record<string, unknown> = {}): Holder {
  const o: Holder & Record<string, unknown> = {
    ...fields,
    __setstate__(s: any) {
      o.state = s;
    },
  };
  return o;
}

const SCALAR: Record<string, (v: DataView, le: boolean) => number> = {
  i1: (v) => v.getInt8(0),
  u1: (v) => v.getUint8(0),
  i2: (v, le) => v.getInt16(0, le),
  u2: (v, le) => v.getUint16(0, le),
  i4: (v, le) => v.getInt32(0, le),
  u4: (v, le) => v.getUint32(0, le),
  i8: (v, le) => Number(v.getBigInt64(0, le)),
  u8: (v, le) => Number(v.getBigUint64(0, le)),
  f4: (v, le) => v.getFloat32(0, le),
  f8: (v, le) => v.getFloat64(0, le),
};

/** HAD_Net_semantics.npy: a pickled object array ((x, y, z), teacher, student), numbers possibly numpy scalars. */
export function parseSemanticsNpy(bytes: Uint8Array, name = "<semantics.npy>"): Semantics {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 12 || magic.some((b, i) => bytes[i] !== b)) throw new Error(`${name}: not a .npy file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const start = bytes[6] === 1 ? 10 + view.getUint16(8, true) : 12 + view.getUint32(8, true);
  const header = new TextDecoder("latin1").decode(bytes.subarray(0, start));
  if (!/'descr':\s*'\|O'/.test(header)) {
    throw new Error(`${name}: not a pickled object array (header ${header.trim()})`);
  }
  const resolve = (module: string, fn: string): any => {
    const fq = `${module}.${fn}`;
    if (/^numpy\.(_?core\.multiarray\._reconstruct)$/.test(fq)) return () => holder();
    if (fq === "numpy.dtype") return (descr: string) => holder({ descr });
    if (/^numpy\.(_?core\.multiarray\.scalar)$/.test(fq)) {
      return (dtype: Holder & { descr: string }, data: Uint8Array | string) => {
        const raw = typeof data === "string" ? Uint8Array.from(data, (c) => c.charCodeAt(0)) : new Uint8Array(data);
        const get = SCALAR[dtype.descr];
        if (!get) throw new Error(`${name}: unsupported numpy scalar type ${dtype.descr}`);
        return get(new DataView(raw.buffer, raw.byteOffset, raw.byteLength), dtype.state?.[1] !== ">");
      };
    }
    if (fq === "_codecs.encode") return (s: string) => s; // protocol 2 bytes: latin-1 text, decoded above
    if (fq === "numpy.ndarray") return holder;
    throw new Error(`${name}: unexpected Python object ${fq} in the pickle`);
  };
  let arr: Holder;
  try {
    arr = new Parser({ nameResolver: { resolve } }).parse<Holder>(bytes.subarray(start));
  } catch (e) {
    throw new Error(`${name}: cannot unpickle (${(e as Error).message})`);
  }
  const items = arr?.state?.[4];
  const [dims, t, s] = Array.isArray(items) ? items : [];
  if (!Array.isArray(dims) || dims.length !== 3) {
    throw new Error(`${name}: expected ((x, y, z), teacher, student), got ${JSON.stringify(items)}`);
  }
  return checkSemantics({ shape: [dims[0], dims[1], dims[2]], teacherChannels: t, studentChannels: s }, name);
}

/** One sequence normalised in float32 as numpy does (mean/std over the mask, clip above 3, rescale by the min). */
export function normalizeSequence(vol: ArrayLike<number>, mask: ArrayLike<number>, what = "sequence"): Float32Array {
  const n = vol.length;
  let sum = 0, count = 0;
  for (let i = 0; i < n; i++) {
    if (mask[i] === 1) {
      sum += vol[i];
      count++;
    }
  }
  if (count === 0) throw new Error(`${what}: empty brain mask`);
  const mu = sum / count;
  let ss = 0;
  for (let i = 0; i < n; i++) if (mask[i] === 1) ss += (vol[i] - mu) ** 2;
  const mu32 = Math.fround(mu), sigma = Math.fround(Math.sqrt(ss / count));
  if (!(sigma > 0)) throw new Error(`${what}: constant inside the brain mask (std 0), cannot normalise`);
  const out = new Float32Array(n);
  let min = Infinity;
  for (let i = 0; i < n; i++) {
    const z = Math.min(Math.fround(Math.fround(vol[i] - mu32) / sigma), 3);
    out[i] = z;
    if (z < min) min = z;
  }
  const den = Math.fround(3 - min);
  for (let i = 0; i < n; i++) out[i] = Math.fround(out[i] - min) / den;
  return out;
}

/** Where a [D,H,W] volume starts inside the padded target: floor((target - size) / 2) per dim. */
export function padStart(shape: number[], target: number[], what = "volume"): number[] {
  const diff = shape.map((s, i) => target[i] - s);
  if (diff.some((d) => d < 0)) throw new Error(`${what}: size [${shape}] exceeds the semantics size [${target}]`);
  return diff.map((d) => Math.floor(d / 2));
}

/** Copies a [D,H,W] volume into `out` (a zeroed [D',H',W'] block at `offset` elements) at `start`. */
export function padInto(
  src: ArrayLike<number>,
  shape: number[],
  target: number[],
  start: number[],
  out: Float32Array | Uint8Array,
  offset = 0,
) {
  const [D, H, W] = shape, [, TH, TW] = target;
  for (let d = 0; d < D; d++) {
    for (let h = 0; h < H; h++) {
      const dst = offset + ((d + start[0]) * TH + h + start[1]) * TW + start[2];
      const from = (d * H + h) * W;
      for (let w = 0; w < W; w++) out[dst + w] = src[from + w];
    }
  }
}

export interface LoadedSubject {
  /** [C, D, H, W] with C = 4 (teacher: flr, t1c, t1p, t2w) or 3 (student: flr, t1p, t2w). */
  input: Float32Array;
  /** Class indices 0..3, [D, H, W]. */
  labels?: Uint8Array;
  /** Brain mask, [D, H, W]. */
  mask: Uint8Array;
  meta: {
    id: string;
    dir: string;
    channels: string[];
    shape: number[];
    croppedShape: number[];
    padStart: number[];
    /** hadnet.json when hadnet preprocessed the subject (absent for the original tool's output). */
    preprocess?: PreprocessMeta;
  };
}

/** One .npy of a subject folder, 3D and (when given) of `shape`; errors name the subject and file. */
export async function loadVolume(dir: string, name: string, id: string, shape?: number[]): Promise<Npy> {
  let a: Npy;
  try {
    a = await loadNpy(`${dir}/${name}.npy`);
  } catch (e) {
    throw new Error(`subject ${id}: cannot load ${name}.npy (${(e as Error).message})`);
  }
  if (a.shape.length !== 3 || (shape && a.shape.some((s, i) => s !== shape[i]))) {
    throw new Error(`subject ${id}: ${name}.npy has shape (${a.shape}), mask.npy has (${shape ?? "?"})`);
  }
  return a;
}

/** One subject, normalised and padded to the semantics size, as the original data generator returns it. */
export async function loadSubject(
  procRoot: string,
  id: string,
  semantics: Semantics,
  role: Role,
  withSeg: boolean,
): Promise<LoadedSubject> {
  const dir = gradeDir(procRoot, id);
  const mask = await loadVolume(dir, "mask", id);
  const shape = mask.shape;
  const target = semantics.shape;
  const start = padStart(shape, target, `subject ${id}`);
  const vox = target[0] * target[1] * target[2];
  const channels = role === "teacher" ? [...TEACHER_SEQUENCES] : [...STUDENT_SEQUENCES];
  const expected = role === "teacher" ? semantics.teacherChannels : semantics.studentChannels;
  if (channels.length !== expected) {
    throw new Error(`subject ${id}: ${role} has ${channels.length} sequences but semantics says ${expected}`);
  }
  const input = new Float32Array(channels.length * vox);
  for (let c = 0; c < channels.length; c++) {
    const v = await loadVolume(dir, channels[c], id, shape);
    const norm = normalizeSequence(
      v.data as ArrayLike<number>,
      mask.data as Uint8Array,
      `subject ${id}: ${channels[c]}`,
    );
    padInto(norm, shape, target, start, input, c * vox);
  }
  const maskOut = new Uint8Array(vox);
  padInto(mask.data as Uint8Array, shape, target, start, maskOut);
  let labels: Uint8Array | undefined;
  if (withSeg) {
    const seg = (await loadVolume(dir, "seg", id, shape)).data as Uint8Array;
    labels = new Uint8Array(vox);
    padInto(seg.map((x) => (x === 4 ? 3 : x)), shape, target, start, labels);
    for (let i = 0; i < vox; i++) {
      if (labels[i] > 3) throw new Error(`subject ${id}: seg.npy holds label ${labels[i]}, expected 0..4`);
    }
  }
  let preprocess: PreprocessMeta | undefined;
  try {
    preprocess = JSON.parse(await Deno.readTextFile(`${dir}/${META_FILE}`));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(`subject ${id}: bad ${META_FILE} (${(e as Error).message})`);
    }
  }
  return {
    input,
    labels,
    mask: maskOut,
    meta: { id, dir, channels, shape: [...target], croppedShape: shape, padStart: start, preprocess },
  };
}
