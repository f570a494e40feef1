// Metrics: hand-computed Dice / sensitivity / specificity, HD95 against hand values, a brute-force O(n m) surface
// distance oracle, and medpy's definition re-run with scipy (binary_erosion + distance_transform_edt + percentile).
import assert from "node:assert/strict";
import {
  type CaseMetrics,
  dice,
  type Dims3,
  evaluateCase,
  hd95,
  HD95_ONE_EMPTY,
  METRICS,
  percentileLinear,
  regionMasks,
  REGIONS,
  sensitivity,
  type Spacing3,
  specificity,
  summarise,
  toCsv,
} from "../../src/infer/metrics.ts";
import { rand } from "../util.ts";

const u8 = (a: number[]) => Uint8Array.from(a);

function vol(dims: Dims3, inside: (x: number, y: number, z: number) => boolean): Uint8Array {
  const [X, Y, Z] = dims;
  const m = new Uint8Array(X * Y * Z);
  for (let z = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++) {
        if (inside(x, y, z)) m[x + X * (y + Y * z)] = 1;
      }
    }
  }
  return m;
}

function runPython(script: string, input: unknown): any {
  const p = new Deno.Command("/usr/bin/python3", { args: ["-c", script], stdin: "piped", stdout: "piped" }).spawn();
  const w = p.stdin.getWriter();
  w.write(new TextEncoder().encode(JSON.stringify(input)));
  w.close();
  return p.output().then((o) => {
    if (!o.success) throw new Error("python failed");
    return JSON.parse(new TextDecoder().decode(o.stdout));
  });
}

// medpy.metric.binary.hd95 (pooled) and the max of the two directed 95th percentiles, on x-fastest volumes.
const MEDPY = `
import json, sys
import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
def sds(a, b, sp):
    fp = generate_binary_structure(3, 1)
    ab = a ^ binary_erosion(a, structure=fp, iterations=1)
    bb = b ^ binary_erosion(b, structure=fp, iterations=1)
    return distance_transform_edt(~bb, sampling=sp)[ab]
out = []
for c in json.load(sys.stdin)["cases"]:
    shape = tuple(c["dims"])
    p = np.array(c["pred"], dtype=np.uint8).reshape(shape, order="F").astype(bool)
    g = np.array(c["gt"], dtype=np.uint8).reshape(shape, order="F").astype(bool)
    d1, d2 = sds(p, g, c["spacing"]), sds(g, p, c["spacing"])
    out.append([float(np.percentile(np.hstack((d1, d2)), 95)),
                float(max(np.percentile(d1, 95), np.percentile(d2, 95)))])
print(json.dumps(out))
`;

/** Surface voxels (6-neighbourhood, outside the volume counts as background) as mm coordinates, by brute force. */
function surfacePoints(m: Uint8Array, dims: Dims3, sp: Spacing3): number[][] {
  const [X, Y, Z] = dims;
  const at = (x: number, y: number, z: number) =>
    x >= 0 && y >= 0 && z >= 0 && x < X && y < Y && z < Z && m[x + X * (y + Y * z)] !== 0;
  const pts: number[][] = [];
  for (let z = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++) {
        if (!at(x, y, z)) continue;
        const nb = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]];
        if (nb.some(([a, b, c]) => !at(x + a, y + b, z + c))) pts.push([x * sp[0], y * sp[1], z * sp[2]]);
      }
    }
  }
  return pts;
}

function bruteHd95(p: Uint8Array, g: Uint8Array, dims: Dims3, sp: Spacing3): [number, number] {
  const ps = surfacePoints(p, dims, sp), gs = surfacePoints(g, dims, sp);
  const directed = (a: number[][], b: number[][]) =>
    Float64Array.from(a, (u) => Math.min(...b.map((v) => Math.hypot(u[0] - v[0], u[1] - v[1], u[2] - v[2]))));
  const d1 = directed(ps, gs), d2 = directed(gs, ps);
  const all = new Float64Array([...d1, ...d2]);
  return [percentileLinear(all, 95), Math.max(percentileLinear(d1, 95), percentileLinear(d2, 95))];
}

function assertNear(got: number, want: number, what: string) {
  // Distances are sqrt of sums of squared mm offsets; only the summation order differs from the references.
  assert.ok(Math.abs(got - want) <= 1e-12 * Math.max(1, Math.abs(want)), `${what}: got ${got}, want ${want}`);
}

Deno.test("regionMasks: BraTS regions for labelET 4 and 3; other labels are rejected", () => {
  const labels = u8([0, 1, 2, 4, 2, 1]);
  const m = regionMasks(labels);
  assert.deepEqual(Array.from(m.ET), [0, 0, 0, 1, 0, 0]);
  assert.deepEqual(Array.from(m.TC), [0, 1, 0, 1, 0, 1]);
  assert.deepEqual(Array.from(m.WT), [0, 1, 1, 1, 1, 1]);
  assert.deepEqual(Array.from(m.NET), [0, 1, 0, 0, 0, 1]);
  assert.deepEqual(Array.from(m.ED), [0, 0, 1, 0, 1, 0]);
  const m3 = regionMasks(u8([0, 1, 2, 3, 2, 1]), 3);
  for (const r of REGIONS) assert.deepEqual(m3[r], m[r], r);
  assert.throws(() => regionMasks(u8([0, 3]), 4), /label 3 at voxel 1/);
  assert.throws(() => regionMasks(u8([0, 4]), 3), /label 4 at voxel 1/);
});

Deno.test("dice, sensitivity, specificity: hand-computed values and the empty conventions", () => {
  const pred = u8([1, 1, 0, 0, 1, 0, 0, 0]);
  const gt = u8([1, 0, 1, 0, 1, 0, 0, 0]);
  // |P∩G| = 2, |P| = |G| = 3; negatives of G: voxels 1,3,5,6,7, of which P is 0 at 3,5,6,7.
  assert.equal(dice(pred, gt), 4 / 6);
  assert.equal(sensitivity(pred, gt), 2 / 3);
  assert.equal(specificity(pred, gt), 4 / 5);
  // Inside a brain mask without voxels 6 and 7 the negatives are 1,3,5 with P = 0 at 3,5.
  assert.equal(specificity(pred, gt, u8([1, 1, 1, 1, 1, 1, 0, 0])), 2 / 3);
  const empty = new Uint8Array(8);
  assert.equal(dice(empty, empty), 1);
  assert.equal(dice(pred, empty), 0);
  assert.ok(Number.isNaN(sensitivity(pred, empty)));
  assert.equal(sensitivity(empty, gt), 0);
  assert.ok(Number.isNaN(specificity(empty, new Uint8Array(8).fill(1))));
  assert.throws(() => dice(pred, new Uint8Array(7)), /8 and 7 voxels/);
});

Deno.test("percentileLinear matches numpy.percentile", async () => {
  const arrays = [1, 2, 3, 7, 20, 21, 101].map((n, i) => Array.from(rand(n, 10 + i), (v) => v * 10));
  const want: number[][] = await runPython(
    `import json, sys; import numpy as np
a = json.load(sys.stdin); print(json.dumps([[float(np.percentile(np.array(x), q)) for q in (95, 50, 5)] for x in a]))`,
    arrays,
  );
  arrays.forEach((a, i) => {
    [95, 50, 5].forEach((q, j) => assert.equal(percentileLinear(Float64Array.from(a), q), want[i][j], `n=${a.length}`));
  });
});

Deno.test("hd95: hand values, modes and empty conventions", () => {
  const dims: Dims3 = [5, 4, 3];
  const at = (x0: number, y0: number, z0: number) => vol(dims, (x, y, z) => x === x0 && y === y0 && z === z0);
  // Two voxels one step apart along x with sx = 3 mm.
  assert.equal(hd95(at(1, 2, 1), at(2, 2, 1), dims, [3, 1, 2]), 3);
  // ... and along z with sz = 2.5 mm, two steps: 5 mm.
  assert.equal(hd95(at(1, 2, 0), at(1, 2, 2), dims, [3, 1, 2.5]), 5);
  // One voxel against a 5-voxel line along x (sx = 2): d(P->G) = [0], d(G->P) = [0, 2, 4, 6, 8].
  const pt = at(0, 1, 1), line = vol(dims, (_x, y, z) => y === 1 && z === 1);
  // pooled [0,0,2,4,6,8]: index 5 * 0.95 = 4.75 -> 8 - 2 * 0.25 = 7.5
  assert.equal(hd95(pt, line, dims, [2, 1, 1]), 7.5);
  // max(p95([0]), p95([0,2,4,6,8])): index 4 * 0.95 = 3.8 -> 8 - 2 * 0.2 = 7.6
  assert.equal(hd95(pt, line, dims, [2, 1, 1], "maxDirected"), 7.6);
  const empty = new Uint8Array(60);
  assert.equal(hd95(empty, empty, dims, [1, 1, 1]), 0);
  assert.equal(hd95(pt, empty, dims, [1, 1, 1]), HD95_ONE_EMPTY);
  assert.equal(hd95(empty, pt, dims, [1, 1, 1]), 373.13);
  assert.throws(() => hd95(pt, new Uint8Array(59), dims, [1, 1, 1]), /60 and 59 voxels for dims \[5,4,3\]/);
});

Deno.test("hd95: shifted spheres and boxes, random blobs, anisotropic spacing, vs brute force and medpy/scipy", async () => {
  const cases: { dims: Dims3; spacing: Spacing3; pred: Uint8Array; gt: Uint8Array }[] = [];
  const d1: Dims3 = [13, 11, 9];
  const sphere = (cx: number, cy: number, cz: number, r: number, sp: Spacing3) =>
    vol(d1, (x, y, z) => ((x - cx) * sp[0]) ** 2 + ((y - cy) * sp[1]) ** 2 + ((z - cz) * sp[2]) ** 2 <= r * r);
  const sp1: Spacing3 = [1, 1.5, 2.25];
  cases.push({ dims: d1, spacing: sp1, pred: sphere(5, 5, 4, 5, sp1), gt: sphere(7, 4, 5, 6, sp1) });
  // Boxes touching the volume border (volume-edge voxels are surface) and shifted by 2 voxels.
  const box = (x0: number, y0: number, z0: number, x1: number, y1: number, z1: number) =>
    vol(d1, (x, y, z) => x >= x0 && x <= x1 && y >= y0 && y <= y1 && z >= z0 && z <= z1);
  cases.push({ dims: d1, spacing: [0.8, 1.2, 3], pred: box(0, 0, 0, 6, 5, 4), gt: box(2, 1, 2, 8, 10, 8) });
  // Random blobs, including disjoint pieces and holes.
  const d2: Dims3 = [10, 7, 8];
  const r1 = rand(560, 3), r2 = rand(560, 4);
  cases.push({
    dims: d2,
    spacing: [1.3, 0.7, 2],
    pred: Uint8Array.from(r1, (v) => (v > 0.2 ? 1 : 0)),
    gt: Uint8Array.from(r2, (v) => (v > 0.4 ? 1 : 0)),
  });
  // A small object far from a large one: the bounding box of both, not of either, bounds the transform.
  cases.push({ dims: d1, spacing: [1, 1, 1], pred: box(0, 0, 0, 0, 0, 0), gt: box(9, 7, 5, 12, 10, 8) });
  const medpy: number[][] = await runPython(
    MEDPY,
    { cases: cases.map((c) => ({ ...c, pred: Array.from(c.pred), gt: Array.from(c.gt) })) },
  );
  cases.forEach((c, i) => {
    const pooled = hd95(c.pred, c.gt, c.dims, c.spacing);
    const maxd = hd95(c.pred, c.gt, c.dims, c.spacing, "maxDirected");
    const [bp, bm] = bruteHd95(c.pred, c.gt, c.dims, c.spacing);
    assertNear(pooled, bp, `case ${i} pooled vs brute force`);
    assertNear(maxd, bm, `case ${i} maxDirected vs brute force`);
    assertNear(pooled, medpy[i][0], `case ${i} pooled vs medpy`);
    assertNear(maxd, medpy[i][1], `case ${i} maxDirected vs scipy`);
    assert.ok(pooled > 0, `case ${i} is not trivial`);
  });
});

Deno.test("evaluateCase: per-region metrics of a small label map", () => {
  const dims: Dims3 = [4, 1, 1];
  // gt: ED, NET, ET, bg; pred: ED, ET, ET, ED.
  const gt = u8([2, 1, 4, 0]), pred = u8([2, 4, 4, 2]);
  const m = evaluateCase(pred, gt, dims, [1, 1, 1]);
  // ET: P = {1,2}, G = {2}: dice 2/3, sens 1, spec 2/3 (negatives 0,1,3; P = 0 at 0,3).
  assert.deepEqual([m.ET.dice, m.ET.sensitivity, m.ET.specificity], [2 / 3, 1, 2 / 3]);
  // ET surfaces: P {1,2} (a 1-voxel-thick volume: all surface), G {2}: distances [1,0] and [0] -> p95 of [0,0,1]:
  // index 2 * 0.95 = 1.9 -> 1 - 1 * 0.1.
  assert.equal(m.ET.hd95, 1 - (1 - (2 * 0.95 - 1)));
  // TC: P = {1,2} = G: perfect.
  assert.deepEqual(m.TC, { dice: 1, hd95: 0, sensitivity: 1, specificity: 1 });
  // NET: P empty, G = {1}.
  assert.deepEqual(m.NET, { dice: 0, hd95: HD95_ONE_EMPTY, sensitivity: 0, specificity: 1 });
  // ED: P = {0,3}, G = {0}; WT: P = all, G = {0,1,2}: no negatives predicted correctly.
  assert.equal(m.ED.dice, 2 / 3);
  assert.equal(m.WT.specificity, 0);
  assert.equal(m.WT.sensitivity, 1);
  // Specificity within a brain mask that leaves out voxel 3.
  const mb = evaluateCase(pred, gt, dims, [1, 1, 1], { brainMask: u8([1, 1, 1, 0]) });
  assert.ok(Number.isNaN(mb.WT.specificity));
  assert.equal(mb.ED.specificity, 1);
  // BraTS 2023 labels give the same numbers.
  assert.deepEqual(evaluateCase(u8([2, 3, 3, 2]), u8([2, 1, 3, 0]), dims, [1, 1, 1], { labelET: 3 }), m);
});

Deno.test("summarise skips NaN; toCsv writes one line per subject", () => {
  const mk = (d: number, s: number): CaseMetrics =>
    Object.fromEntries(
      REGIONS.map((r) => [r, { dice: d, hd95: 2 * d, sensitivity: s, specificity: 1 }]),
    ) as CaseMetrics;
  const cases = [mk(0.5, NaN), mk(1, 0.25), mk(0.75, 0.75)];
  const s = summarise(cases);
  assert.deepEqual(s.WT.dice, { mean: 0.75, median: 0.75, std: Math.sqrt(0.125 / 3), n: 3 });
  assert.deepEqual(s.ET.sensitivity, { mean: 0.5, median: 0.5, std: 0.25, n: 2 });
  assert.deepEqual(s.TC.hd95.median, 1.5);
  const allNaN = summarise([mk(NaN, NaN)]).ED.dice;
  assert.ok(Number.isNaN(allNaN.mean) && allNaN.n === 0);

  const csv = toCsv([{ subject: "BraTS_001", metrics: cases[0] }, { subject: 'a,"b"', metrics: cases[1] }]);
  const lines = csv.split("\n");
  assert.equal(lines.length, 4);
  assert.equal(lines[3], "");
  const header = lines[0].split(",");
  assert.equal(header.length, 1 + METRICS.length * REGIONS.length);
  assert.deepEqual(header.slice(0, 3), ["subject", "dice_ET", "dice_TC"]);
  assert.equal(header[header.length - 1], "specificity_ED");
  assert.ok(lines[1].startsWith("BraTS_001,0.5,0.5,0.5,0.5,0.5,1,1,1,1,1,NaN,"));
  assert.ok(lines[2].startsWith('"a,""b""",1,'));
});
