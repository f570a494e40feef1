// QU-BraTS uncertainty score: hand-made cases and a NumPy re-implementation of BraTS_Seg_Uncertainty.py (its float32
// casts, and sklearn.metrics.auc as direction * np.trapz since sklearn is not installed).
import assert from "node:assert/strict";
import {
  evaluateUncertainty,
  scoreCurve,
  trapezoidAuc,
  uncertaintyCurve,
  uncertaintyThresholds,
} from "../../src/infer/uncertainty_score.ts";
import { rand } from "../util.ts";

const QU_BRATS = `
import json, sys
import numpy as np
EPS = np.finfo(np.float32).eps
def dice_metric(g, p):
    g = g.astype("float32"); p = p.astype("float32")
    inter = np.sum(p * g); union = np.sum(p) + np.sum(g)
    return 1.0 if inter == 0.0 and union == 0.0 else (2. * inter) / union
def ratio(sel, unc_mask, bm):
    sel = sel.astype("float32") * bm.astype("float32")
    before = sel.sum(); after = (sel * unc_mask.astype("float32")).sum()
    return (before - after) / (before + EPS)
def make(g, p, u, bm, ths):
    d, ftp, ftn = [], [], []
    for th in ths:
        m = np.ones_like(u, dtype="float32"); m[u > th] = 0.0
        d.append(dice_metric(g * m, p * m))
        ftp.append(ratio(p * g, m, bm))
        ftn.append(ratio((1 - p) * (1 - g), m, bm))
    return d, ftp, ftn
def auc(x, y):
    x = np.asarray(x); y = np.asarray(y)
    dx = np.diff(x)
    direction = -1 if np.all(dx <= 0) else 1
    return float(direction * np.trapz(y, x))
inp = json.load(sys.stdin)
ths = np.arange(0.0, 100.0 + EPS, 100.0 / inp["num_points"]).tolist(); ths.reverse()
GT = np.array(inp["gt"], dtype=np.float64); PRED = np.array(inp["pred"], dtype=np.float64)
BM = np.array(inp["brain"], dtype=np.float64); BM[BM > 0] = 1.0
out = {"thresholds": ths}
for name, sel in (("WT", lambda a: a > 0), ("TC", lambda a: (a == 1) | (a == 4)), ("ET", lambda a: a == 4)):
    g = sel(GT).astype(np.float64); p = sel(PRED).astype(np.float64)
    d, ftp, ftn = make(g, p, np.array(inp["unc"][name], dtype=np.float64), BM, ths)
    a = [auc(ths, d) / 100.0, auc(ths, ftp) / 100.0, auc(ths, ftn) / 100.0]
    out[name] = {"dice": [float(v) for v in d], "ftp": [float(v) for v in ftp], "ftn": [float(v) for v in ftn], "auc": a}
print(json.dumps(out))
`;

async function quBrats(input: unknown): Promise<any> {
  const p = new Deno.Command("/usr/bin/python3", { args: ["-c", QU_BRATS], stdin: "piped", stdout: "piped" }).spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(JSON.stringify(input)));
  await w.close();
  const o = await p.output();
  if (!o.success) throw new Error("python failed");
  return JSON.parse(new TextDecoder().decode(o.stdout));
}

function assertRel(got: number, want: number, what: string) {
  // Only the order of the trapezoid sums differs from NumPy's (pairwise) add.reduce.
  assert.ok(Math.abs(got - want) <= 1e-13 * Math.max(1, Math.abs(want)), `${what}: got ${got}, want ${want}`);
}

Deno.test("uncertaintyThresholds: np.arange(0, 100 + eps, 100 / n) reversed", () => {
  const t = uncertaintyThresholds();
  assert.equal(t.length, 41);
  assert.deepEqual([t[0], t[1], t[39], t[40]], [100, 97.5, 2.5, 0]);
  // numpy's values for 3 and 6 steps (np.arange(0.0, 100.0 + EPS, 100.0 / n)).
  assert.deepEqual(uncertaintyThresholds(3), [100, 66.66666666666667, 33.333333333333336, 0]);
  assert.deepEqual(
    uncertaintyThresholds(6),
    [100, 83.33333333333334, 66.66666666666667, 50, 33.333333333333336, 16.666666666666668, 0],
  );
  assert.throws(() => uncertaintyThresholds(0), /positive integer/);
});

Deno.test("trapezoidAuc: sklearn's sign convention and float32 pair sums", () => {
  assert.equal(trapezoidAuc([0, 1, 3], Float64Array.from([1, 1, 0])), 2);
  assert.equal(trapezoidAuc([3, 1, 0], Float64Array.from([0, 1, 1])), 2);
  // 0.1f + 0.2f is added in float32 before the scaling, as np.trapz does on a float32 array.
  const y = Float32Array.from([0.1, 0.2]);
  assert.equal(trapezoidAuc([0, 2], y), Math.fround(y[0] + y[1]));
  assert.notEqual(Math.fround(y[0] + y[1]), y[0] + y[1]);
  assert.throws(() => trapezoidAuc([0, 2, 1], Float64Array.from([0, 0, 0])), /neither increasing nor decreasing/);
});

Deno.test("uncertainty score: hand-made cases", () => {
  const th = uncertaintyThresholds();
  const gt = Uint8Array.from([1, 1, 1, 0, 0, 0, 0, 0]);
  const brain = new Uint8Array(8).fill(1);
  // All certain, all correct: Dice 1 everywhere, nothing filtered.
  const certain = scoreCurve(uncertaintyCurve(gt, gt, new Uint8Array(8), brain, th));
  assert.deepEqual(certain, { aucDice: 1, aucFtp: 0, aucFtn: 0, score: 1 });
  // All fully uncertain, all correct: kept only at t = 100; below, both retained masks are empty (Dice 1) and every
  // TP / TN is filtered (3 TP: 3 + EPS rounds to 3 in float32, ratio 1). AUC = (97.5 * 1 + 2.5 * (0 + 1) / 2) / 100.
  const unsure = scoreCurve(uncertaintyCurve(gt, gt, new Uint8Array(8).fill(100), brain, th));
  assert.equal(unsure.aucDice, 1);
  assert.equal(unsure.aucFtp, 0.9875);
  assert.equal(unsure.aucFtn, 0.9875);
  assert.equal(unsure.score, (1 + (1 - 0.9875) + (1 - 0.9875)) / 3);
  // A single TP shows the EPS: float32(1 / float32(1 + 2^-23)) = 1 - 2^-23.
  const one = uncertaintyCurve(Uint8Array.of(1, 0), Uint8Array.of(1, 0), Uint8Array.of(50, 0), Uint8Array.of(1, 1), th);
  assert.equal(one.ftp[th.indexOf(50)], 0);
  assert.equal(one.ftp[th.indexOf(47.5)], 1 - 2 ** -23);
  // Errors flagged at 100, the rest certain: Dice d0 = 2*2/(3+3) = 2/3 at t = 100, 1 below; no TP / TN filtered.
  const pred = Uint8Array.from([1, 1, 0, 1, 0, 0, 0, 0]);
  const u = Uint8Array.from([0, 0, 100, 100, 0, 0, 0, 0]);
  const flagged = scoreCurve(uncertaintyCurve(gt, pred, u, brain, th));
  assert.equal(flagged.aucDice, (97.5 + (2.5 * (1 + 2 / 3)) / 2) / 100);
  assert.deepEqual([flagged.aucFtp, flagged.aucFtn], [0, 0]);
  // Voxels outside the brain count for Dice but not for FTN: all TN outside the brain and uncertain -> FTN 0.
  const outside = uncertaintyCurve(gt, gt, Uint8Array.from([0, 0, 0, 100, 100, 100, 100, 100]), gt, th);
  assert.ok(outside.ftn.every((v) => v === 0));
  // NaN uncertainty is never filtered (NaN > t is false).
  const nan = uncertaintyCurve(Uint8Array.of(1), Uint8Array.of(1), Float64Array.of(NaN), Uint8Array.of(1), th);
  assert.ok(nan.ftp.every((v) => v === 0));
  assert.throws(() => uncertaintyCurve(gt, pred, u, new Uint8Array(7), th), /brain 7 voxels/);
});

Deno.test("evaluateUncertainty matches a NumPy re-implementation of BraTS_Seg_Uncertainty.py", async () => {
  const n = 9 * 8 * 7;
  const r = rand(4 * n, 7);
  const label = (v: number) => (v < 0 ? 0 : v < 0.3 ? 2 : v < 0.6 ? 1 : 4);
  const gt = Uint8Array.from({ length: n }, (_, i) => label(r[i]));
  // Mostly agreeing prediction: a fifth of the voxels relabelled.
  const pred = Uint8Array.from({ length: n }, (_, i) => (Math.abs(r[n + i]) < 0.2 ? label(r[n + i] * 5) : gt[i]));
  // Integer uncertainties hit thresholds exactly (5, 10, ...); floats too (2.5 multiples) in the TC map.
  const unc = {
    WT: Uint8Array.from({ length: n }, (_, i) => Math.floor((r[2 * n + i] + 1) * 50.5)),
    TC: Float64Array.from({ length: n }, (_, i) => Math.round((r[3 * n + i] + 1) * 20) * 2.5),
    ET: Uint8Array.from({ length: n }, (_, i) => (pred[i] === gt[i] ? 10 : 95) + (i % 5)),
  };
  const brain = Float32Array.from({ length: n }, (_, i) => (i % 11 === 0 ? 0 : 100 + i));
  for (const numPoints of [40, 7]) {
    const got = evaluateUncertainty(pred, gt, unc, brain, { numPoints });
    const want = await quBrats({
      num_points: numPoints,
      gt: Array.from(gt),
      pred: Array.from(pred),
      brain: Array.from(brain),
      unc: { WT: Array.from(unc.WT), TC: Array.from(unc.TC), ET: Array.from(unc.ET) },
    });
    for (const reg of ["WT", "TC", "ET"] as const) {
      const g = got[reg], w = want[reg];
      assert.deepEqual(g.curve.thresholds, want.thresholds);
      assert.deepEqual(Array.from(g.curve.dice), w.dice, `${reg} dice`);
      assert.deepEqual(Array.from(g.curve.ftp), w.ftp, `${reg} ftp`);
      assert.deepEqual(Array.from(g.curve.ftn), w.ftn, `${reg} ftn`);
      assertRel(g.aucDice, w.auc[0], `${reg} AUC Dice`);
      assertRel(g.aucFtp, w.auc[1], `${reg} AUC FTP`);
      assertRel(g.aucFtn, w.auc[2], `${reg} AUC FTN`);
      assert.equal(g.score, (g.aucDice + (1 - g.aucFtp) + (1 - g.aucFtn)) / 3);
      // Not a degenerate case: some filtering happens and the prediction is imperfect.
      assert.ok(g.aucFtp > 0 && g.aucFtn > 0 && g.curve.dice[0] < 1, `${reg} is not trivial`);
    }
  }
});
