// Segmentation metrics for BraTS label maps, as `hadnet evaluate` reports them (plain TypeScript, CPU).
//
// Volumes are flat Uint8Array in NIfTI order (x fastest): index = x + X * (y + Y * z) for dims [X, Y, Z], with voxel
// spacing [sx, sy, sz] in mm. Labels: 0 background, 1 necrotic / non-enhancing core (NET), 2 oedema (ED), and the
// enhancing tumour (ET) as 4 (BraTS 2017-2021) or 3 (BraTS 2023, `labelET: 3`). Regions: ET = {ET}, TC = {1, ET},
// WT = {1, 2, ET}, NET = {1}, ED = {2}. Masks are Uint8Array with nonzero = inside.
//
// Conventions (BraTS): Dice of two empty masks is 1; HD95 is 0 when both masks are empty and 373.13 mm (the diagonal of
// the 240 x 240 x 155 BraTS volume) when exactly one is. Sensitivity is NaN when the reference is empty and specificity
// NaN when there are no reference negatives (undefined, rather than medpy's 0), so `summarise` skips them.
//
// HD95 follows medpy.metric.binary.hd95 (medpy/metric/binary.py, `__surface_distances`): surface = mask XOR its binary
// erosion by the connectivity-1 structure (6-neighbourhood; scipy's border_value 0, so voxels on the volume edge are
// surface); for every surface voxel of one mask, the exact Euclidean distance (with spacing) to the nearest surface
// voxel of the other; medpy takes numpy.percentile(hstack((d(pred->gt), d(gt->pred))), 95), the 95th percentile of the
// pooled distances ("pooled", the default). "maxDirected" gives max(p95(d(pred->gt)), p95(d(gt->pred))) instead, the
// robust Hausdorff of e.g. DeepMind's surface-distance without surfel weights. Distances come from the
// Felzenszwalb-Huttenlocher separable squared EDT, run only over the bounding box of both masks (exact: every site and
// every query voxel lies inside it).

export type Dims3 = readonly [number, number, number];
export type Spacing3 = readonly [number, number, number];

export const REGIONS = ["ET", "TC", "WT", "NET", "ED"] as const;
export type Region = typeof REGIONS[number];
export const METRICS = ["dice", "hd95", "sensitivity", "specificity"] as const;
export type Metric = typeof METRICS[number];
export type RegionMetrics = Record<Metric, number>;
export type CaseMetrics = Record<Region, RegionMetrics>;

/** HD95 when exactly one of the two masks is empty (BraTS): the diagonal of a 240 x 240 x 155 mm volume. */
export const HD95_ONE_EMPTY = 373.13;

export type Hd95Mode = "pooled" | "maxDirected";

/** Binary masks of each region; throws on a label outside {0, 1, 2, labelET}. */
export function regionMasks(labels: Uint8Array, labelET = 4): Record<Region, Uint8Array> {
  if (labelET !== 3 && labelET !== 4) throw new Error(`labelET must be 3 or 4, got ${labelET}`);
  const n = labels.length;
  const m = Object.fromEntries(REGIONS.map((r) => [r, new Uint8Array(n)])) as Record<Region, Uint8Array>;
  for (let i = 0; i < n; i++) {
    const l = labels[i];
    if (l === 0) continue;
    if (l === 1) m.NET[i] = m.TC[i] = m.WT[i] = 1;
    else if (l === 2) m.ED[i] = m.WT[i] = 1;
    else if (l === labelET) m.ET[i] = m.TC[i] = m.WT[i] = 1;
    else throw new Error(`label ${l} at voxel ${i} is not one of 0, 1, 2, ${labelET} (labelET = ${labelET})`);
  }
  return m;
}

function checkSameLength(what: string, a: ArrayLike<number>, b: ArrayLike<number>) {
  if (a.length !== b.length) throw new Error(`${what}: masks of ${a.length} and ${b.length} voxels`);
}

/** 2|A∩B| / (|A| + |B|); 1 when both are empty. */
export function dice(a: Uint8Array, b: Uint8Array): number {
  checkSameLength("dice", a, b);
  let inter = 0, sa = 0, sb = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] !== 0, y = b[i] !== 0;
    if (x) sa++;
    if (y) sb++;
    if (x && y) inter++;
  }
  return sa + sb === 0 ? 1 : (2 * inter) / (sa + sb);
}

/** TP / (TP + FN); NaN when the reference is empty. */
export function sensitivity(pred: Uint8Array, gt: Uint8Array): number {
  checkSameLength("sensitivity", pred, gt);
  let tp = 0, pos = 0;
  for (let i = 0; i < gt.length; i++) {
    if (gt[i] === 0) continue;
    pos++;
    if (pred[i] !== 0) tp++;
  }
  return pos === 0 ? NaN : tp / pos;
}

/** TN / (TN + FP) over the whole volume, or over the voxels inside `brainMask` when given; NaN without negatives. */
export function specificity(pred: Uint8Array, gt: Uint8Array, brainMask?: Uint8Array): number {
  checkSameLength("specificity", pred, gt);
  if (brainMask) checkSameLength("specificity brain mask", brainMask, gt);
  let tn = 0, neg = 0;
  for (let i = 0; i < gt.length; i++) {
    if (gt[i] !== 0 || (brainMask && brainMask[i] === 0)) continue;
    neg++;
    if (pred[i] === 0) tn++;
  }
  return neg === 0 ? NaN : tn / neg;
}

/** numpy.percentile(values, q) with the default "linear" method, including numpy's two-sided lerp. Sorts in place. */
export function percentileLinear(values: Float64Array, q: number): number {
  const n = values.length;
  if (n === 0) throw new Error("percentile of an empty array");
  values.sort();
  const virt = (n - 1) * (q / 100);
  const lo = Math.floor(virt), hi = Math.min(lo + 1, n - 1);
  const t = virt - lo, a = values[lo], b = values[hi], d = b - a;
  return t >= 0.5 ? b - d * (1 - t) : a + d * t;
}

interface Box {
  lo: [number, number, number];
  hi: [number, number, number]; // inclusive
}

/** The bounding box of the non-zero voxels of an x-fastest volume; null when there are none. */
export function boundingBox(mask: Uint8Array, dims: Dims3): Box | null {
  const [X, Y] = dims;
  const lo: [number, number, number] = [Infinity, Infinity, Infinity];
  const hi: [number, number, number] = [-1, -1, -1];
  for (let i = 0, x = 0, y = 0, z = 0; i < mask.length; i++) {
    if (mask[i] !== 0) {
      if (x < lo[0]) lo[0] = x;
      if (x > hi[0]) hi[0] = x;
      if (y < lo[1]) lo[1] = y;
      if (y > hi[1]) hi[1] = y;
      if (z < lo[2]) lo[2] = z;
      if (z > hi[2]) hi[2] = z;
    }
    if (++x === X) {
      x = 0;
      if (++y === Y) {
        y = 0;
        z++;
      }
    }
  }
  return hi[0] < 0 ? null : { lo, hi };
}

/**
 * Surface voxels of `mask` inside `box`, as a 0/1 array over the box (x fastest): voxels of the mask with a
 * 6-neighbour outside the mask or outside the volume.
 */
function surfaceInBox(mask: Uint8Array, dims: Dims3, box: Box): Uint8Array {
  const [X, Y, Z] = dims;
  const bx = box.hi[0] - box.lo[0] + 1, by = box.hi[1] - box.lo[1] + 1, bz = box.hi[2] - box.lo[2] + 1;
  const out = new Uint8Array(bx * by * bz);
  const sy = X, sz = X * Y;
  for (let k = 0; k < bz; k++) {
    const z = box.lo[2] + k;
    for (let j = 0; j < by; j++) {
      const y = box.lo[1] + j;
      for (let i = 0; i < bx; i++) {
        const x = box.lo[0] + i;
        const v = x + sy * y + sz * z;
        if (mask[v] === 0) continue;
        const interior = x > 0 && x < X - 1 && y > 0 && y < Y - 1 && z > 0 && z < Z - 1 &&
          mask[v - 1] !== 0 && mask[v + 1] !== 0 && mask[v - sy] !== 0 && mask[v + sy] !== 0 &&
          mask[v - sz] !== 0 && mask[v + sz] !== 0;
        if (!interior) out[i + bx * (j + by * k)] = 1;
      }
    }
  }
  return out;
}

/**
 * In place: the squared distance transform along one line of `n` samples (stride `stride` from `start` in `g`), with
 * sample spacing sqrt(w): out[q] = min_p g[p] + w (q - p)^2 (Felzenszwalb & Huttenlocher 2012, infinite samples
 * skipped). `f`, `v`, `zb` are scratch of length >= n, n, n + 1.
 */
function edt1d(
  g: Float64Array,
  start: number,
  stride: number,
  n: number,
  w: number,
  f: Float64Array,
  v: Int32Array,
  zb: Float64Array,
) {
  for (let q = 0; q < n; q++) f[q] = g[start + q * stride];
  let k = -1;
  for (let q = 0; q < n; q++) {
    const fq = f[q];
    if (fq === Infinity) continue;
    let s = -Infinity;
    while (k >= 0) {
      const p = v[k];
      s = (fq + w * q * q - (f[p] + w * p * p)) / (2 * w * (q - p));
      if (s > zb[k]) break;
      k--;
    }
    if (k < 0) s = -Infinity;
    k++;
    v[k] = q;
    zb[k] = s;
    zb[k + 1] = Infinity;
  }
  if (k < 0) return; // no finite sample: the line stays infinite
  for (let q = 0, j = 0; q < n; q++) {
    while (zb[j + 1] < q) j++;
    const d = q - v[j];
    g[start + q * stride] = f[v[j]] + w * d * d;
  }
}

/** Squared Euclidean distance (mm^2) from every voxel of a [bx, by, bz] grid to the nearest nonzero of `sites`. */
function squaredEdt(sites: Uint8Array, bdims: Dims3, spacing: Spacing3): Float64Array {
  const [bx, by, bz] = bdims;
  const g = new Float64Array(sites.length);
  for (let i = 0; i < sites.length; i++) g[i] = sites[i] !== 0 ? 0 : Infinity;
  const m = Math.max(bx, by, bz);
  const f = new Float64Array(m), v = new Int32Array(m), zb = new Float64Array(m + 1);
  const [wx, wy, wz] = spacing.map((s) => s * s);
  for (let z = 0; z < bz; z++) for (let y = 0; y < by; y++) edt1d(g, bx * (y + by * z), 1, bx, wx, f, v, zb);
  for (let z = 0; z < bz; z++) for (let x = 0; x < bx; x++) edt1d(g, x + bx * by * z, bx, by, wy, f, v, zb);
  for (let y = 0; y < by; y++) for (let x = 0; x < bx; x++) edt1d(g, x + bx * y, bx * by, bz, wz, f, v, zb);
  return g;
}

/** Distances (mm) from each surface voxel in `from` to the nearest surface voxel in `to` (both over the box grid). */
function directedSurfaceDistances(from: Uint8Array, to: Uint8Array, bdims: Dims3, spacing: Spacing3): Float64Array {
  const d2 = squaredEdt(to, bdims, spacing);
  let n = 0;
  for (let i = 0; i < from.length; i++) if (from[i] !== 0) n++;
  const out = new Float64Array(n);
  for (let i = 0, k = 0; i < from.length; i++) if (from[i] !== 0) out[k++] = Math.sqrt(d2[i]);
  return out;
}

function checkVolume(what: string, dims: Dims3, spacing: Spacing3, ...vols: Uint8Array[]) {
  const n = dims[0] * dims[1] * dims[2];
  if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`${what}: dims must be 3 positive integers, got [${dims}]`);
  }
  if (spacing.length !== 3 || !spacing.every((s) => s > 0)) {
    throw new Error(`${what}: spacing must be 3 positive numbers, got [${spacing}]`);
  }
  for (const v of vols) {
    if (v.length !== n) {
      throw new Error(
        `${what}: volumes of ${vols.map((u) => u.length).join(" and ")} voxels for dims [${dims}] (${n})`,
      );
    }
  }
}

/** 95th-percentile Hausdorff distance in mm between two masks (medpy's definition by default; see the header). */
export function hd95(
  pred: Uint8Array,
  gt: Uint8Array,
  dims: Dims3,
  spacing: Spacing3,
  mode: Hd95Mode = "pooled",
): number {
  checkVolume("hd95", dims, spacing, pred, gt);
  const pb = boundingBox(pred, dims), gb = boundingBox(gt, dims);
  if (!pb && !gb) return 0;
  if (!pb || !gb) return HD95_ONE_EMPTY;
  const lo = [0, 1, 2].map((a) => Math.min(pb.lo[a], gb.lo[a])) as [number, number, number];
  const hi = [0, 1, 2].map((a) => Math.max(pb.hi[a], gb.hi[a])) as [number, number, number];
  const box: Box = { lo, hi };
  const bdims: Dims3 = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
  const ps = surfaceInBox(pred, dims, box), gs = surfaceInBox(gt, dims, box);
  const pg = directedSurfaceDistances(ps, gs, bdims, spacing);
  const gp = directedSurfaceDistances(gs, ps, bdims, spacing);
  if (mode === "maxDirected") return Math.max(percentileLinear(pg, 95), percentileLinear(gp, 95));
  const all = new Float64Array(pg.length + gp.length);
  all.set(pg);
  all.set(gp, pg.length);
  return percentileLinear(all, 95);
}

export interface EvaluateOptions {
  /** Label of the enhancing tumour: 4 (default, BraTS 2017-2021) or 3 (BraTS 2023). */
  labelET?: number;
  /** Specificity is counted inside this mask (nonzero = brain) when given, else over the whole volume. */
  brainMask?: Uint8Array;
  hd95Mode?: Hd95Mode;
}

/** Dice, HD95, sensitivity and specificity of every region for one subject. */
export function evaluateCase(
  pred: Uint8Array,
  gt: Uint8Array,
  dims: Dims3,
  spacing: Spacing3,
  opts: EvaluateOptions = {},
): CaseMetrics {
  checkVolume("evaluateCase", dims, spacing, pred, gt, ...(opts.brainMask ? [opts.brainMask] : []));
  const p = regionMasks(pred, opts.labelET), g = regionMasks(gt, opts.labelET);
  const out = {} as CaseMetrics;
  for (const r of REGIONS) {
    out[r] = {
      dice: dice(p[r], g[r]),
      hd95: hd95(p[r], g[r], dims, spacing, opts.hd95Mode),
      sensitivity: sensitivity(p[r], g[r]),
      specificity: specificity(p[r], g[r], opts.brainMask),
    };
  }
  return out;
}

export interface Stats {
  mean: number;
  median: number;
  /** Population standard deviation (numpy's default ddof = 0). */
  std: number;
  /** Number of non-NaN values the statistics are over. */
  n: number;
}

/** Mean, median and population standard deviation of the non-NaN values. */
export function stats(values: number[]): Stats {
  const v = Float64Array.from(values.filter((x) => !Number.isNaN(x)));
  const n = v.length;
  if (n === 0) return { mean: NaN, median: NaN, std: NaN, n };
  let s = 0;
  for (const x of v) s += x;
  const mean = s / n;
  let ss = 0;
  for (const x of v) ss += (x - mean) * (x - mean);
  return { mean, median: percentileLinear(v, 50), std: Math.sqrt(ss / n), n };
}

/** Mean, median and standard deviation per region and metric over subjects, skipping NaN values. */
export function summarise(cases: CaseMetrics[]): Record<Region, Record<Metric, Stats>> {
  const out = {} as Record<Region, Record<Metric, Stats>>;
  for (const r of REGIONS) {
    out[r] = {} as Record<Metric, Stats>;
    for (const m of METRICS) out[r][m] = stats(cases.map((c) => c[r][m]));
  }
  return out;
}

export interface CaseRow {
  subject: string;
  metrics: CaseMetrics;
}

function csvField(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * Per-subject CSV: header `subject,dice_ET,...,dice_ED,hd95_ET,...,specificity_ED`, one line per row, numbers at full
 * precision, undefined values as NaN.
 */
export function toCsv(rows: CaseRow[]): string {
  const cols = METRICS.flatMap((m) => REGIONS.map((r) => [m, r] as const));
  const lines = [["subject", ...cols.map(([m, r]) => `${m}_${r}`)].join(",")];
  for (const row of rows) {
    lines.push([csvField(row.subject), ...cols.map(([m, r]) => String(row.metrics[r][m]))].join(","));
  }
  return lines.join("\n") + "\n";
}
