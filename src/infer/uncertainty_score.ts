// BraTS 2019/2020 uncertainty-quantification score (QU-BraTS), per region WT / TC / ET, as the challenge's evaluation
// script computes it (RagMeh11/QU-BraTS, BraTS_Seg_Uncertainty.py; Mehta et al., MELBA 2022). Plain TypeScript, CPU.
//
// Inputs are flat volumes in one voxel order: label maps (see metrics.ts), one uncertainty map per region with values
// in [0, 100] (uint8 or float), and a brain mask or any image whose nonzero voxels are brain (the script sets BM > 0 to
// 1, so a T1 image works). The script's conventions, reproduced here:
// - thresholds: np.arange(0, 100 + EPS, 100 / num_points) reversed, num_points = 40 by default: [100, 97.5, ..., 2.5,
//   0] (41 values, 0 included); EPS = np.finfo(np.float32).eps.
// - at threshold t, voxels with uncertainty > t are filtered out (a NaN uncertainty is never filtered: NaN > t is false).
// - Dice on the retained voxels, over the whole volume (not brain-masked), 1 when both retained masks are empty, no
//   smoothing: 2 |P∩G| / (|P| + |G|).
// - FTP = (TP_before - TP_after) / (TP_before + EPS), TP counted inside the brain mask; FTN likewise with TN = voxels
//   inside the brain where both prediction and ground truth are background. The script computes these in float32,
//   reproduced with Math.fround (counts are exact integers below 2^24; float32 division of float32 operands through
//   float64 then rounding is exact). Dice is float64 as with NumPy 1.x (`2. * float32` promotes).
// - AUC = sklearn.metrics.auc(thresholds, values) / 100: with thresholds decreasing, sklearn negates np.trapz, so the
//   area is positive; np.trapz adds neighbouring values in their own dtype (float32 for FTP / FTN) before scaling.
// - score = (AUC_Dice + (1 - AUC_FTP) + (1 - AUC_FTN)) / 3 (the challenge's ranking combination; the script itself
//   stops at the three AUCs).

import { regionMasks } from "./metrics.ts";

export const UNCERTAINTY_REGIONS = ["WT", "TC", "ET"] as const;
export type UncertaintyRegion = typeof UNCERTAINTY_REGIONS[number];

const EPS32 = 2 ** -23; // np.finfo(np.float32).eps

/** The script's thresholds: np.arange(0, 100 + EPS, 100 / numPoints), largest first. */
export function uncertaintyThresholds(numPoints = 40): number[] {
  if (!Number.isInteger(numPoints) || numPoints < 1) {
    throw new Error(`numPoints must be a positive integer, got ${numPoints}`);
  }
  const step = 100 / numPoints;
  const n = Math.ceil((100 + EPS32) / step);
  return Array.from({ length: n }, (_, i) => (n - 1 - i) * step);
}

export interface UncertaintyCurve {
  thresholds: number[];
  dice: Float64Array;
  /** Filtered true-positive ratio, float32 like the script. */
  ftp: Float32Array;
  /** Filtered true-negative ratio, float32 like the script. */
  ftn: Float32Array;
}

/**
 * Dice, FTP and FTN at each threshold for one binary region. `gt`, `pred`: masks (nonzero = region); `uncertainty`:
 * values in [0, 100]; `brain`: nonzero (> 0) = brain.
 */
export function uncertaintyCurve(
  gt: Uint8Array,
  pred: Uint8Array,
  uncertainty: ArrayLike<number>,
  brain: ArrayLike<number>,
  thresholds: number[],
): UncertaintyCurve {
  const n = gt.length;
  if (pred.length !== n || uncertainty.length !== n || brain.length !== n) {
    throw new Error(
      `uncertaintyCurve: gt ${n}, pred ${pred.length}, uncertainty ${uncertainty.length}, brain ${brain.length} voxels`,
    );
  }
  // A voxel is retained at threshold a[j] (ascending) iff j >= c, c = #{a[j] < u}; histograms of c per voxel class
  // then give every threshold's retained counts in one pass.
  const asc = [...new Set(thresholds)].sort((x, y) => x - y);
  const K = asc.length;
  const hG = new Float64Array(K + 1), hP = new Float64Array(K + 1), hTP = new Float64Array(K + 1);
  const hTPb = new Float64Array(K + 1), hTNb = new Float64Array(K + 1);
  for (let i = 0; i < n; i++) {
    const g = gt[i] !== 0, p = pred[i] !== 0, b = brain[i] > 0;
    if (!g && !p && !b) continue;
    const u = uncertainty[i];
    let lo = 0, hi = K;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (asc[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    if (g) hG[lo]++;
    if (p) hP[lo]++;
    if (g && p) {
      hTP[lo]++;
      if (b) hTPb[lo]++;
    } else if (!g && !p && b) hTNb[lo]++;
  }
  const cum = (h: Float64Array) => {
    const c = new Float64Array(K);
    for (let j = 0, s = 0; j < K; j++) c[j] = s += h[j];
    return c;
  };
  const rG = cum(hG), rP = cum(hP), rTP = cum(hTP), rTPb = cum(hTPb), rTNb = cum(hTNb);
  const tpBefore = rTPb[K - 1] + hTPb[K], tnBefore = rTNb[K - 1] + hTNb[K];
  const filtered = (before: number, after: number) => Math.fround((before - after) / Math.fround(before + EPS32));
  const dice = new Float64Array(thresholds.length);
  const ftp = new Float32Array(thresholds.length), ftn = new Float32Array(thresholds.length);
  thresholds.forEach((t, k) => {
    const j = asc.indexOf(t);
    const union = rG[j] + rP[j];
    dice[k] = union === 0 ? 1 : (2 * rTP[j]) / union;
    ftp[k] = filtered(tpBefore, rTPb[j]);
    ftn[k] = filtered(tnBefore, rTNb[j]);
  });
  return { thresholds, dice, ftp, ftn };
}

/**
 * sklearn.metrics.auc: the trapezoid area under y(x) for monotonic x, positive for decreasing x. Neighbouring y are
 * added in y's precision (float32 for a Float32Array), as np.trapz does.
 */
export function trapezoidAuc(x: ArrayLike<number>, y: Float64Array | Float32Array): number {
  if (x.length !== y.length || x.length < 2) throw new Error(`auc: x of ${x.length} and y of ${y.length} points`);
  let up = true, down = true;
  for (let i = 1; i < x.length; i++) {
    if (x[i] < x[i - 1]) up = false;
    if (x[i] > x[i - 1]) down = false;
  }
  if (!up && !down) throw new Error(`auc: x is neither increasing nor decreasing: [${Array.from(x)}]`);
  const f32 = y instanceof Float32Array;
  let s = 0;
  for (let i = 1; i < x.length; i++) {
    const pair = f32 ? Math.fround(y[i] + y[i - 1]) : y[i] + y[i - 1];
    s += ((x[i] - x[i - 1]) * pair) / 2;
  }
  return up ? s : 0 - s; // 0 - s: no negative zero
}

export interface UncertaintyScore {
  aucDice: number;
  aucFtp: number;
  aucFtn: number;
  /** (aucDice + (1 - aucFtp) + (1 - aucFtn)) / 3 */
  score: number;
}

export function scoreCurve(c: UncertaintyCurve): UncertaintyScore {
  const aucDice = trapezoidAuc(c.thresholds, c.dice) / 100;
  const aucFtp = trapezoidAuc(c.thresholds, c.ftp) / 100;
  const aucFtn = trapezoidAuc(c.thresholds, c.ftn) / 100;
  return { aucDice, aucFtp, aucFtn, score: (aucDice + (1 - aucFtp) + (1 - aucFtn)) / 3 };
}

export interface UncertaintyOptions {
  /** Label of the enhancing tumour: 4 (default) or 3 (BraTS 2023). */
  labelET?: number;
  /** Number of threshold steps (the script's --num_points, default 40). */
  numPoints?: number;
}

/** The QU-BraTS AUCs and score of WT, TC and ET for one subject, with the curves they come from. */
export function evaluateUncertainty(
  pred: Uint8Array,
  gt: Uint8Array,
  uncertainty: Record<UncertaintyRegion, ArrayLike<number>>,
  brain: ArrayLike<number>,
  opts: UncertaintyOptions = {},
): Record<UncertaintyRegion, UncertaintyScore & { curve: UncertaintyCurve }> {
  if (pred.length !== gt.length) throw new Error(`evaluateUncertainty: pred ${pred.length}, gt ${gt.length} voxels`);
  const p = regionMasks(pred, opts.labelET), g = regionMasks(gt, opts.labelET);
  const th = uncertaintyThresholds(opts.numPoints);
  const out = {} as Record<UncertaintyRegion, UncertaintyScore & { curve: UncertaintyCurve }>;
  for (const r of UNCERTAINTY_REGIONS) {
    const curve = uncertaintyCurve(g[r], p[r], uncertainty[r], brain, th);
    out[r] = { ...scoreCurve(curve), curve };
  }
  return out;
}
