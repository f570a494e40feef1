// Synthetic BraTS-like subjects for the demo and tests: four sequences (flair, t1, t1ce, t2) as integer intensities
// and a segmentation (0 background, 1 necrotic core, 2 oedema, 4 enhancing rim), all [X, Y, Z] in NIfTI order
// (x fastest: index = x + X * (y + Y * z)); x is left-right, y posterior-anterior, z inferior-superior.
//
// A subject is built as arrays first (synthSubject, pure given the Rng), then written (writeSynthDataset):
// 1. healthy anatomy: either a skull-stripped synthetic head (ellipsoid brain with a smooth irregular boundary, a
//    folded grey-matter shell, white matter, ventricles, sulcal CSF and an interhemispheric fissure) or a real
//    brain-extracted T1 template whose tissues are classed by intensity (3-means) and mapped piecewise-linearly to
//    each sequence's tissue intensities;
// 2. one or two tumours, each a union of ellipsoidal blobs with irregular level sets: necrotic core inside, an
//    enhancing rim about 1.5 voxels thick, oedema around; every tumour lies inside the brain and has all three labels;
// 3. tumour intensities: the rim is bright only in t1ce and within about 15% of its surroundings elsewhere, so that a
//    student without t1ce has a genuinely harder task on ET;
// 4. a slight blur (partial volume), a smooth multiplicative bias field and Gaussian noise per sequence, a
//    per-subject scale per sequence, rounding to integers >= 1 inside the brain and 0 outside.

import { Rng } from "../nn/rng.ts";
import { type NiftiGeometry, readNifti, writeNifti } from "./nifti.ts";

export const SEQUENCES = ["flair", "t1", "t1ce", "t2"] as const;
export type Sequence = typeof SEQUENCES[number];
export type Size3 = [number, number, number];

export const CSF = 1, GM = 2, WM = 3;

export interface SynthSubject {
  size: Size3;
  grade: "HGG" | "LGG";
  /** Integer intensities, 0 outside the brain. */
  flair: Int16Array;
  t1: Int16Array;
  t1ce: Int16Array;
  t2: Int16Array;
  /** 0, 1 (necrotic core), 2 (oedema), 4 (enhancing rim). */
  seg: Uint8Array;
  /** Healthy tissue class under the tumour-free anatomy: 0 outside, CSF, GM, WM. */
  tissue: Uint8Array;
  /** Number of tumours placed (each has all three labels). */
  tumours: number;
}

/** A brain-extracted T1 volume hosting the tumours (zero outside the brain), already at the subject's size. */
export interface Template {
  size: Size3;
  t1: Float32Array;
}

export interface SynthOptions {
  /** Hosts the tumours in this brain instead of the synthetic head. */
  template?: Template;
  /** Noise sd relative to white matter (default 0.03). */
  noise?: number;
  /** Bias field amplitude (log scale, default 0.12). */
  bias?: number;
}

// Tissue intensities per sequence, roughly BraTS-like (WM-relative contrasts of real scans):
// columns CSF, GM, WM, necrotic core, oedema, enhancing rim.
const INTENSITY: Record<Sequence, number[]> = {
  t1: [350, 750, 1000, 420, 620, 680],
  t1ce: [380, 800, 1050, 430, 650, 2300],
  t2: [2600, 1400, 950, 2350, 2000, 1850],
  flair: [250, 1000, 800, 1150, 1900, 1750],
};
const TUMOUR_COL: Record<number, number> = { 1: 3, 2: 4, 4: 5 };

/** Sum of random plane waves in normalised coordinates, roughly in [-1, 1]: smooth irregularity. */
function waves(rng: Rng, count: number, freq: number): (u: number, v: number, w: number) => number {
  const k: number[][] = [];
  let norm = 0;
  for (let i = 0; i < count; i++) {
    const [a, b, c] = unitVector(rng);
    const f = freq * rng.range(0.7, 1.3), amp = rng.range(0.5, 1);
    k.push([a * f, b * f, c * f, rng.range(0, 2 * Math.PI), amp]);
    norm += amp;
  }
  const scale = 1.6 / norm; // a sum of random-phase cosines rarely exceeds ~60% of its amplitude sum
  return (u, v, w) => {
    let s = 0;
    for (const q of k) s += q[4] * Math.cos(q[0] * u + q[1] * v + q[2] * w + q[3]);
    return s * scale;
  };
}

function unitVector(rng: Rng): Size3 {
  const a = rng.normal(), b = rng.normal(), c = rng.normal();
  const n = Math.hypot(a, b, c) || 1;
  return [a / n, b / n, c / n];
}

/** Synthetic head: tissue classes and the brain's radii (voxels) and normalised radius per voxel. */
function syntheticHead(rng: Rng, size: Size3): { tissue: Uint8Array; rho: Float32Array } {
  const [X, Y, Z] = size;
  const R = [0.4 * X, 0.42 * Y, 0.4 * Z].map((r) => r * rng.range(0.93, 1.03));
  const c = [(X - 1) / 2, (Y - 1) / 2 + rng.range(-0.02, 0.02) * Y, (Z - 1) / 2 + rng.range(-0.03, 0.03) * Z];
  const boundary = waves(rng, 6, 2.5), gyri = waves(rng, 10, 14), sulci = waves(rng, 8, 18);
  const vent = { dx: 0.13 * rng.range(0.8, 1.2), ry: 0.34 * rng.range(0.8, 1.2), rz: 0.13 * rng.range(0.8, 1.3) };
  const tissue = new Uint8Array(X * Y * Z), rho = new Float32Array(X * Y * Z);
  for (let z = 0, i = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++, i++) {
        const u = (x - c[0]) / R[0], v = (y - c[1]) / R[1], w = (z - c[2]) / R[2];
        const r = Math.hypot(u, v, w) / (1 + 0.07 * boundary(u, v, w));
        rho[i] = r;
        if (r >= 1) continue;
        let t = r > 0.77 + 0.08 * gyri(u, v, w) ? GM : WM;
        if (r > 0.95 + 0.04 * sulci(u, v, w)) t = CSF;
        if (Math.abs(x - c[0]) < 0.7 && r > 0.45 && w > -0.3) t = CSF; // interhemispheric fissure
        const vu = (Math.abs(u) - vent.dx) / 0.08, vv = (v + 0.05) / vent.ry, vw = (w - 0.12) / vent.rz;
        if (vu * vu + vv * vv + vw * vw < 1) t = CSF;
        if (Math.hypot(u / 0.12, v / 0.18, (w + 0.05) / 0.15) < 1 && Math.abs(u) > 0.03) t = GM; // deep grey nuclei
        tissue[i] = t;
      }
    }
  }
  return { tissue, rho };
}

/** Tissue classes of a template by 3-means on its brain intensities; returns the class means too. */
function classifyTemplate(t: Template): { tissue: Uint8Array; means: number[] } {
  const vals = t.t1.filter((v) => v > 0).sort();
  if (vals.length < 100) throw new Error(`template of size [${t.size}] has only ${vals.length} brain voxels`);
  const q = (p: number) => vals[Math.floor(p * (vals.length - 1))];
  const m = [q(0.1), q(0.5), q(0.9)];
  for (let it = 0; it < 30; it++) {
    const s = [0, 0, 0], n = [0, 0, 0];
    for (const v of vals) {
      const k = nearest3(v, m);
      s[k] += v;
      n[k]++;
    }
    for (let k = 0; k < 3; k++) if (n[k]) m[k] = s[k] / n[k];
  }
  const tissue = Uint8Array.from(t.t1, (v) => (v > 0 ? 1 + nearest3(v, m) : 0));
  return { tissue, means: m };
}

function nearest3(v: number, m: number[]): number {
  const d0 = Math.abs(v - m[0]), d1 = Math.abs(v - m[1]), d2 = Math.abs(v - m[2]);
  return d0 <= d1 && d0 <= d2 ? 0 : d1 <= d2 ? 1 : 2;
}

/** Piecewise-linear map through (CSF, GM, WM) means, extrapolating the end segments. */
function tissueMap(means: number[], to: number[]): (v: number) => number {
  return (v) => {
    const k = v < means[1] ? 0 : 1;
    const f = (v - means[k]) / (means[k + 1] - means[k]);
    return Math.max(0.2 * to[0], to[k] + f * (to[k + 1] - to[k]));
  };
}

/**
 * Places one tumour into `seg` (where brain is set and seg is 0 beyond a margin); returns false when the drawn
 * tumour does not fit or misses a label, leaving `seg` untouched.
 */
function placeTumour(rng: Rng, size: Size3, brain: (i: number) => boolean, seg: Uint8Array, scale: number): boolean {
  const [X, Y, Z] = size;
  const minR = 0.4 * Math.min(X, Y, Z);
  const s0 = minR * rng.range(0.26, 0.4) * scale;
  const rim = Math.max(1.3, 0.09 * minR);
  const core = Math.max(0.25, 1 - rim / s0);
  const oedema = rng.range(1.6, 2.2);
  const centre = [X, Y, Z].map((d) => (d - 1) / 2 + rng.range(-0.22, 0.22) * d);
  const blobs: number[][] = [];
  const nb = 1 + rng.int(3);
  for (let b = 0; b < nb; b++) {
    const off = b === 0 ? [0, 0, 0] : unitVector(rng).map((v) => v * s0 * rng.range(0.3, 0.9));
    const s = b === 0 ? s0 : s0 * rng.range(0.6, 1);
    blobs.push([0, 1, 2].flatMap((k) => [centre[k] + off[k], 1 / (s * rng.range(0.8, 1.25))]));
  }
  const rough = waves(rng, 6, 3), spread = waves(rng, 6, 2);
  const ext = s0 * (oedema * 1.4 + 1);
  const lo = centre.map((c) => Math.max(0, Math.floor(c - ext)));
  const hi = [X, Y, Z].map((d, k) => Math.min(d - 1, Math.ceil(centre[k] + ext)));
  const put: number[] = [];
  const count = { 1: 0, 2: 0, 4: 0 } as Record<number, number>;
  for (let z = lo[2]; z <= hi[2]; z++) {
    for (let y = lo[1]; y <= hi[1]; y++) {
      for (let x = lo[0]; x <= hi[0]; x++) {
        let g = Infinity;
        for (const b of blobs) g = Math.min(g, Math.hypot((x - b[0]) * b[1], (y - b[2]) * b[3], (z - b[4]) * b[5]));
        const u = (x - centre[0]) / minR, v = (y - centre[1]) / minR, w = (z - centre[2]) / minR;
        const gc = g * (1 + 0.1 * rough(u, v, w));
        const label = gc < core ? 1 : gc < 1 ? 4 : g * (1 + 0.25 * spread(u, v, w)) < oedema ? 2 : 0;
        if (!label) continue;
        const i = x + X * (y + Y * z);
        // Keep a voxel of healthy brain between tumour and the brain's edge, and tumours apart.
        if (!brain(i) || seg[i] || x === 0 || y === 0 || z === 0 || x === X - 1 || y === Y - 1 || z === Z - 1) {
          return false;
        }
        for (const j of [i - 1, i + 1, i - X, i + X, i - X * Y, i + X * Y]) if (!brain(j) || seg[j]) return false;
        put.push(i, label);
        count[label]++;
      }
    }
  }
  if (count[1] < 2 || count[4] < 4 || count[2] < 4) return false;
  for (let k = 0; k < put.length; k += 2) seg[put[k]] = put[k + 1];
  return true;
}

/** Gaussian blur (separable, sigma in voxels, zero beyond the volume) in place. */
function blur(vol: Float32Array, size: Size3, sigma: number) {
  const r = Math.ceil(2.5 * sigma);
  const k = Array.from({ length: 2 * r + 1 }, (_, i) => Math.exp(-((i - r) ** 2) / (2 * sigma * sigma)));
  const ks = k.reduce((a, b) => a + b);
  const kn = k.map((v) => v / ks);
  const [X, Y, Z] = size;
  const line = new Float32Array(Math.max(X, Y, Z));
  // Each axis in turn: [length, stride, the two other axes' (count, stride)].
  const axes: number[][] = [[X, 1, Y, X, Z, X * Y], [Y, X, X, 1, Z, X * Y], [Z, X * Y, X, 1, Y, X]];
  for (const [len, stride, na, sa, nb, sb] of axes) {
    for (let b = 0; b < nb; b++) {
      for (let a = 0; a < na; a++) {
        const base = a * sa + b * sb;
        for (let p = 0; p < len; p++) line[p] = vol[base + p * stride];
        for (let p = 0; p < len; p++) {
          let s = 0;
          for (let t = Math.max(-r, -p); t <= Math.min(r, len - 1 - p); t++) s += kn[t + r] * line[p + t];
          vol[base + p * stride] = s;
        }
      }
    }
  }
}

/** One subject (see the header comment); pure given the Rng's state. */
export function synthSubject(rng: Rng, size: Size3, opts: SynthOptions = {}): SynthSubject {
  if (size.some((d) => !Number.isInteger(d) || d < 16)) throw new Error(`synthSubject: size [${size}] must be >= 16`);
  const tpl = opts.template;
  if (tpl && tpl.size.some((d, k) => d !== size[k])) {
    throw new Error(`synthSubject: template size [${tpl.size}] differs from size [${size}]`);
  }
  const [X, Y, Z] = size, n = X * Y * Z;
  const grade = rng.uniform() < 0.75 ? "HGG" : "LGG";
  const head = tpl ? null : syntheticHead(rng, size);
  const cls = tpl ? classifyTemplate(tpl) : null;
  const tissue = head ? head.tissue : cls!.tissue;
  // Tumours stay off the outer cortex (rho < 0.9) in the synthetic head; in a template, inside its brain.
  const brain = head ? (i: number) => head.rho[i] < 0.9 : (i: number) => tissue[i] > 0;

  const seg = new Uint8Array(n);
  const nTumours = rng.uniform() < 0.25 ? 2 : 1;
  let placed = 0;
  for (let t = 0; t < nTumours; t++) {
    let scale = 1;
    for (let tries = 0; tries < 200; tries++, scale = Math.max(0.5, scale * 0.98)) {
      if (placeTumour(rng, size, brain, seg, scale)) {
        placed++;
        break;
      }
    }
    if (placed === 0) throw new Error(`synthSubject: no tumour fits a brain of size [${size}]`);
  }

  const noise = opts.noise ?? 0.03, biasAmp = opts.bias ?? 0.12;
  const out = {} as Record<Sequence, Int16Array>;
  for (const seq of SEQUENCES) {
    const table = INTENSITY[seq];
    const jitter = [1, 2, 4].map(() => rng.range(0.93, 1.07)); // per-subject tumour heterogeneity
    const map = cls ? tissueMap(cls.means, table) : null;
    const vol = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      if (!tissue[i]) continue;
      const l = seg[i];
      vol[i] = l ? table[TUMOUR_COL[l]] * jitter[l === 4 ? 2 : l - 1] : map ? map(tpl!.t1[i]) : table[tissue[i] - 1];
    }
    blur(vol, size, 0.6);
    const field = waves(rng, 4, 1.5), gain = rng.range(0.8, 1.25), sd = noise * table[2];
    const v = new Int16Array(n);
    for (let z = 0, i = 0; z < Z; z++) {
      for (let y = 0; y < Y; y++) {
        for (let x = 0; x < X; x++, i++) {
          if (!tissue[i]) continue;
          const bias = Math.exp(biasAmp * field(x / X - 0.5, y / Y - 0.5, z / Z - 0.5));
          v[i] = Math.min(32767, Math.max(1, Math.round(gain * (vol[i] * bias + sd * rng.normal()))));
        }
      }
    }
    out[seq] = v;
  }
  return { size: [...size], grade, ...out, seg, tissue, tumours: placed };
}

/** 1 mm isotropic, axis-aligned, centred geometry (qform and sform). */
export function synthGeometry(size: Size3): NiftiGeometry {
  const off = size.map((d) => -(d - 1) / 2);
  return {
    pixdim: [1, 1, 1, 1, 0, 0, 0, 0],
    qformCode: 1,
    sformCode: 1,
    quatern: [0, 0, 0],
    qoffset: off,
    srow: [[1, 0, 0, off[0]], [0, 1, 0, off[1]], [0, 0, 1, off[2]]],
    xyztUnits: 2, // millimetres
  };
}

/** Reads a brain-extracted T1 NIfTI and resamples it (trilinear, same field of view) to `size`. */
export async function loadTemplate(path: string, size: Size3): Promise<Template> {
  const img = await readNifti(path);
  const [sx, sy, sz] = img.header.dims;
  if (img.header.dims.length < 3 || [sx, sy, sz].some((d) => d < 2)) {
    throw new Error(`${path}: template needs a 3-D volume, got dims [${img.header.dims}]`);
  }
  const src = img.data, [X, Y, Z] = size;
  const t1 = new Float32Array(X * Y * Z);
  const at = (x: number, y: number, z: number) => src[x + sx * (y + sy * z)];
  for (let z = 0, i = 0; z < Z; z++) {
    const fz = (z * (sz - 1)) / (Z - 1), z0 = Math.min(Math.floor(fz), sz - 2), wz = fz - z0;
    for (let y = 0; y < Y; y++) {
      const fy = (y * (sy - 1)) / (Y - 1), y0 = Math.min(Math.floor(fy), sy - 2), wy = fy - y0;
      for (let x = 0; x < X; x++, i++) {
        const fx = (x * (sx - 1)) / (X - 1), x0 = Math.min(Math.floor(fx), sx - 2), wx = fx - x0;
        let v = 0, inside = true;
        for (let k = 0; k < 8; k++) {
          const dx = k & 1, dy = (k >> 1) & 1, dz = k >> 2;
          const s = at(x0 + dx, y0 + dy, z0 + dz);
          inside &&= s > 0;
          v += s * (dx ? wx : 1 - wx) * (dy ? wy : 1 - wy) * (dz ? wz : 1 - wz);
        }
        t1[i] = inside ? v : 0; // brain only where all neighbours are brain: no blurred rim of skull-stripped edge
      }
    }
  }
  return { size: [...size], t1 };
}

export interface SynthDatasetOptions {
  out: string;
  n: number;
  size?: Size3;
  seed: number;
  /** Path of a brain-extracted T1 NIfTI hosting the tumours (e.g. Colin27 ch2bet.nii.gz). */
  template?: string;
}

export const DEFAULT_SYNTH_SIZE: Size3 = [48, 56, 40];

/**
 * Writes n subjects in the BraTS 2019 layout, out/{HGG,LGG}/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz, ids
 * BraTS19_SYN_0001_1, ...; sequences int16, seg uint8. Subject k draws from new Rng(seed + k), so a seed gives
 * identical bytes (gzip without a timestamp). Returns the subject directories.
 */
export async function writeSynthDataset(o: SynthDatasetOptions): Promise<string[]> {
  const size = o.size ?? DEFAULT_SYNTH_SIZE;
  const template = o.template ? await loadTemplate(o.template, size) : undefined;
  const geom = synthGeometry(size);
  const dirs: string[] = [];
  for (let k = 0; k < o.n; k++) {
    const s = synthSubject(new Rng((o.seed + k) >>> 0), size, { template });
    const id = `BraTS19_SYN_${String(k + 1).padStart(4, "0")}_1`;
    const dir = `${o.out}/${s.grade}/${id}`;
    await Deno.mkdir(dir, { recursive: true });
    const files: [string, ArrayLike<number>, "int16" | "uint8"][] = [
      ...SEQUENCES.map((q) => [q, s[q], "int16"] as [string, Int16Array, "int16"]),
      ["seg", s.seg, "uint8"],
    ];
    for (const [name, data, dtype] of files) {
      await writeNifti(`${dir}/${id}_${name}.nii.gz`, data, size, geom, dtype, "hadnet synthetic");
    }
    dirs.push(dir);
  }
  return dirs;
}
