// `hadnet evaluate` end to end on hand-made 12^3 label volumes: known Dice / HD95 (a 5^3 cube against the same cube
// shifted by 2 voxels along z with spacing 1,1,2 mm), BraTS empty-region conventions, CSV / JSON contents,
// hand-computed uncertainty scores, the report's images, pairing errors and the ET label 3 convention.
import assert from "node:assert/strict";
import { type NiftiGeometry, writeNifti } from "../../src/data/nifti.ts";
import { RunDir } from "../../src/train/common.ts";
import { diceTable, evaluate, type EvaluationSummary } from "../../src/infer/evaluate.ts";
import { HD95_ONE_EMPTY } from "../../src/infer/metrics.ts";
import { assertClose } from "../util.ts";

const DIMS = [12, 12, 12];
const N = 12 * 12 * 12;
const SPACING = [1, 1, 2];
const GEOM: NiftiGeometry = {
  pixdim: [1, ...SPACING, 1, 0, 0, 0],
  qformCode: 0,
  sformCode: 1,
  quatern: [0, 0, 0],
  qoffset: [0, 0, 0],
  srow: [[1, 0, 0, -6], [0, 1, 0, -6], [0, 0, 2, -12]],
  xyztUnits: 2,
};
const ROOT = new URL("../..", import.meta.url).pathname;
const quiet = { write: () => {} };

/** Labels: `label` inside the box [lo, hi) (x, y, z), 0 elsewhere; later boxes overwrite earlier ones. */
function boxes(...bs: [number[], number[], number][]): Uint8Array {
  const v = new Uint8Array(N);
  for (const [lo, hi, label] of bs) {
    for (let z = lo[2]; z < hi[2]; z++) {
      for (let y = lo[1]; y < hi[1]; y++) for (let x = lo[0]; x < hi[0]; x++) v[x + 12 * (y + 12 * z)] = label;
    }
  }
  return v;
}

const CUBE = boxes([[2, 2, 2], [7, 7, 7], 4]);
const CUBE_SHIFTED = boxes([[2, 2, 4], [7, 7, 9], 4]);
// B: oedema only in the ground truth; the prediction adds necrosis the ground truth lacks.
const B_GT = boxes([[3, 3, 3], [8, 8, 8], 2]);
const B_PRED = boxes([[3, 3, 3], [8, 8, 8], 2], [[4, 4, 4], [6, 6, 6], 1]);

async function writeLabels(path: string, labels: Uint8Array) {
  await writeNifti(path, labels, DIMS, GEOM, "uint8");
}

/** A BraTS 2020-style folder: root/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz, images non-zero everywhere. */
async function bratsFolder(dir: string, segs: Record<string, Uint8Array>) {
  for (const [id, seg] of Object.entries(segs)) {
    await Deno.mkdir(`${dir}/${id}`, { recursive: true });
    for (const [i, s] of ["flair", "t1", "t1ce", "t2"].entries()) {
      const img = Float32Array.from({ length: N }, (_, k) => 1 + ((k * (i + 3)) % 17));
      await writeNifti(`${dir}/${id}/${id}_${s}.nii.gz`, img, DIMS, GEOM, "int16");
    }
    await writeLabels(`${dir}/${id}/${id}_seg.nii.gz`, seg);
  }
}

async function predFolder(dir: string, preds: Record<string, Uint8Array>) {
  await Deno.mkdir(dir, { recursive: true });
  for (const [id, p] of Object.entries(preds)) await writeLabels(`${dir}/${id}.nii.gz`, p);
}

async function cli(...args: string[]) {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "evaluate", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

function csvRows(text: string): Record<string, string>[] {
  const [head, ...lines] = text.trim().split("\n").map((l) => l.split(","));
  return lines.map((l) => Object.fromEntries(head.map((h, i) => [h, l[i]])));
}

Deno.test("evaluate: known Dice and HD95, empty-region conventions, CSV, JSON and the stdout table", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await bratsFolder(`${tmp}/gt`, { A: CUBE, B: B_GT, C: B_GT });
    await predFolder(`${tmp}/pred`, { A: CUBE_SHIFTED, B: B_PRED });
    const { code, stdout, stderr } = await cli("--pred", `${tmp}/pred`, "--gt", `${tmp}/gt`);
    assert.equal(code, 0, stderr);
    assert.match(stderr, /evaluate \[#+\] 2\/2 100% .* ETA 0s/);
    const out = `${tmp}/pred/evaluation`;
    const rows = csvRows(await Deno.readTextFile(`${out}/metrics.csv`));
    assert.deepEqual(rows.map((r) => r.subject), ["A", "B"]);
    const [a, b] = rows.map((r) => (k: string) => Number(r[k]));
    // A: 5x5x5 cubes overlapping in 5x5x3 voxels: Dice 2*75/250; every surface distance is 0 or 2 voxels * 2 mm,
    // and scipy (medpy's definition) gives HD95 = 4.0 mm. ET = TC = WT, no NET or ED.
    for (const r of ["ET", "TC", "WT"]) {
      assert.equal(a(`dice_${r}`), 0.6);
      assert.equal(a(`hd95_${r}`), 4);
      assert.equal(a(`sensitivity_${r}`), 0.6);
      assert.equal(a(`specificity_${r}`), 1 - 50 / (N - 125));
    }
    // Both empty: Dice 1, HD95 0, sensitivity undefined.
    assert.equal(a("dice_NET"), 1);
    assert.equal(a("hd95_NET"), 0);
    assert.ok(Number.isNaN(a("sensitivity_NET")));
    assert.equal(b("dice_ET"), 1);
    assert.equal(b("hd95_ET"), 0);
    // B: necrosis predicted where there is none: Dice 0, HD95 of one empty mask; WT identical.
    assert.equal(b("dice_NET"), 0);
    assert.equal(b("hd95_NET"), HD95_ONE_EMPTY);
    assert.equal(b("dice_WT"), 1);
    assert.equal(b("hd95_WT"), 0);
    assert.equal(b("dice_ED"), 2 * 117 / (117 + 125));
    const s: EvaluationSummary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assert.deepEqual(s.subjects, ["A", "B"]);
    assert.deepEqual(s.groundTruthWithoutPrediction, ["C"]);
    assert.equal(s.labelET, 4);
    assert.equal(s.uncertainty, null);
    assert.deepEqual(s.metrics.ET.dice, { mean: 0.8, median: 0.8, std: 0.2, n: 2 });
    assert.deepEqual(s.metrics.ET.hd95, { mean: 2, median: 2, std: 2, n: 2 });
    assert.deepEqual(s.metrics.ET.sensitivity, { mean: 0.6, median: 0.6, std: 0, n: 1 }); // B's NaN skipped
    assert.equal(s.metrics.NET.dice.mean, 0.5);
    assert.ok(!(await exists(`${out}/uncertainty.csv`)));
    // The stdout table: one line per region with the mean Dice.
    assert.ok(stdout.includes(diceTable(s)), stdout);
    assert.match(stdout, /^ET +0\.8000 +0\.2000 +0\.8000 +2\.00$/m);
    assert.match(stdout, /^TC +0\.3000 +0\.3000 +0\.3000 +188\.56$/m); // B: predicted necrosis, no core
    assert.match(stdout, /^NET +0\.5000 +0\.5000 +0\.5000 +186\.56$/m);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("evaluate: uncertainty scores per region from the maps beside the prediction", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await bratsFolder(`${tmp}/gt`, { A: CUBE, B: B_GT });
    await predFolder(`${tmp}/pred`, { A: CUBE_SHIFTED, B: B_PRED });
    // Constant maps (WT = TC = ET Dice 0.6 for A). Thresholds 100, 97.5, ..., 0; u > t is filtered.
    // whole 0: nothing filtered: AUC Dice 0.6, FTP = FTN = 0.
    // core 100: all filtered below t = 100 (Dice 1, FTP = FTN = 1): AUC Dice (2.5 * 0.8 + 97.5) / 100, FTP and FTN
    //   (2.5 * 0.5 + 97.5) / 100.
    // enhance 50: kept for t >= 50: AUC Dice (50 * 0.6 + 2.5 * 0.8 + 47.5) / 100, FTP and FTN (1.25 + 47.5) / 100.
    const maps = { whole: 0, core: 100, enhance: 50 };
    for (const [name, u] of Object.entries(maps)) {
      await writeNifti(`${tmp}/pred/A_unc_${name}.nii.gz`, new Uint8Array(N).fill(u), DIMS, GEOM, "uint8");
    }
    const ev = await evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt`, out: `${tmp}/ev`, progress: quiet });
    const u = ev.results[0].uncertainty!;
    assert.equal(ev.results[1].uncertainty, undefined);
    const want = {
      WT: { aucDice: 0.6, aucFtp: 0, aucFtn: 0 },
      TC: { aucDice: 0.995, aucFtp: 0.9875, aucFtn: 0.9875 },
      ET: { aucDice: 0.795, aucFtp: 0.4875, aucFtn: 0.4875 },
    };
    for (const [r, w] of Object.entries(want)) {
      const got = u[r as keyof typeof want];
      assertClose([got.aucDice, got.aucFtp, got.aucFtn], [w.aucDice, w.aucFtp, w.aucFtn], 1e-12, r);
      assertClose([got.score], [(w.aucDice + 2 - w.aucFtp - w.aucFtn) / 3], 1e-12, r);
    }
    const s: EvaluationSummary = JSON.parse(await Deno.readTextFile(`${tmp}/ev/summary.json`));
    assert.deepEqual(s.uncertainty!.subjects, ["A"]);
    assert.equal(s.uncertainty!.regions.TC.score.n, 1);
    assertClose([s.uncertainty!.regions.ET.score.mean], [(0.795 + 2 - 0.975) / 3], 1e-12);
    const rows = csvRows(await Deno.readTextFile(`${tmp}/ev/uncertainty.csv`));
    assert.deepEqual(rows.map((r) => r.subject), ["A"]);
    assertClose([Number(rows[0].score_WT)], [2.6 / 3], 1e-12);
    // Two of three maps: an error naming the missing one.
    await Deno.remove(`${tmp}/pred/A_unc_core.nii.gz`);
    await assert.rejects(
      evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt`, out: `${tmp}/ev`, progress: quiet }),
      /subject A has some uncertainty maps but not A_unc_core\.nii\.gz/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("evaluate: report.html references existing PNG slices, box plot and training curves", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await bratsFolder(`${tmp}/gt`, { A: CUBE, B: B_GT, "C d": B_GT });
    await predFolder(`${tmp}/pred`, { A: CUBE_SHIFTED, B: B_PRED, "C d": B_GT });
    const run = await RunDir.create(`${tmp}/run`, { k: 4 });
    for (let epoch = 1; epoch <= 3; epoch++) {
      run.log({ epoch, trainLoss: 1 / epoch, valLoss: 1.5 / epoch, dice: { WT: 0.5, TC: 0.4, ET: 0.3 }, metric: 0.4 });
    }
    run.close();
    const ev = await evaluate({
      pred: `${tmp}/pred`,
      gt: `${tmp}/gt`,
      out: `${tmp}/ev`,
      runs: [`${tmp}/run`],
      reportSubjects: 2,
      progress: quiet,
    });
    const html = await Deno.readTextFile(`${tmp}/ev/report.html`);
    const srcs = [...html.matchAll(/<img[^>]* src="([^"]+)"/g)].map((m) => m[1]);
    for (const src of srcs) {
      const bytes = await Deno.readFile(`${tmp}/ev/${src}`);
      assert.deepEqual(Array.from(bytes.subarray(1, 4)), [0x50, 0x4e, 0x47], `${src} is a PNG`);
    }
    // Two subjects (lowest and highest WT Dice: A, then B or "C d") x 4 sequences x (prediction, ground truth),
    // the box plot, the metric and the loss curves.
    assert.equal(srcs.length, 2 * 4 * 2 + 3);
    assert.ok(srcs.includes("report/A_flr_pred.png") && srcs.includes("report/A_t2w_gt.png"));
    assert.ok(srcs.includes("report/dice_box.png"));
    assert.ok(srcs.includes("report/run0_metric.png") && srcs.includes("report/run0_losses.png"));
    assert.match(html, /trainLoss.*valLoss/);
    assert.match(html, /epochs 1 to 3 left to right/);
    assert.deepEqual(new Set(ev.files.filter((f) => f.endsWith(".png"))), new Set(srcs));
    // A run folder without a log fails before any subject is read.
    await assert.rejects(
      evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt`, out: `${tmp}/ev`, runs: [`${tmp}/gt`], progress: quiet }),
      /gt: no log\.jsonl/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("evaluate: a prediction without ground truth or in another space stops the run naming the subject", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await bratsFolder(`${tmp}/gt`, { A: CUBE });
    await predFolder(`${tmp}/pred`, { A: CUBE_SHIFTED, Z9: CUBE });
    const r = await cli("--pred", `${tmp}/pred`, "--gt", `${tmp}/gt`);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr.trim(),
      `hadnet: no ground truth for prediction Z9 in ${tmp}/gt (looked for a subject folder with a seg file)`,
    );
    await Deno.remove(`${tmp}/pred/Z9.nii.gz`);
    await writeNifti(`${tmp}/pred/A.nii.gz`, new Uint8Array(12 * 12 * 11), [12, 12, 11], GEOM, "uint8");
    await assert.rejects(
      evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt`, progress: quiet }),
      /subject A: prediction .*A\.nii\.gz has shape \[12,12,11\] but the ground truth .*A_seg\.nii\.gz has \[12,12,12\]/,
    );
    const moved = { ...GEOM, srow: [[1, 0, 0, -5], [0, 1, 0, -6], [0, 0, 2, -12]] };
    await writeNifti(`${tmp}/pred/A.nii.gz`, CUBE, DIMS, moved, "uint8");
    await assert.rejects(
      evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt`, progress: quiet }),
      /subject A: prediction .* is not in the ground truth's space \(affines differ by up to 1 mm/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("evaluate: ET label 3 (folder of label maps, and BraTS 2023 names by default)", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const to3 = (v: Uint8Array) => v.map((l) => (l === 4 ? 3 : l));
    await Deno.mkdir(`${tmp}/labels`);
    await writeLabels(`${tmp}/labels/A_seg.nii.gz`, to3(boxes([[2, 2, 2], [7, 7, 7], 2], [[3, 3, 3], [6, 6, 6], 4])));
    await predFolder(`${tmp}/pred`, { A: to3(boxes([[2, 2, 2], [7, 7, 7], 2], [[3, 3, 4], [6, 6, 7], 4])) });
    // Label maps alone carry no convention: ET is 4 unless told.
    await assert.rejects(
      evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/labels`, progress: quiet }),
      /subject A: label 3 at voxel \d+ is not one of 0, 1, 2, 4 .*--label-et picks the ET label \(now 4\)/,
    );
    const ev = await evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/labels`, labelET: 3, progress: quiet });
    const m = ev.results[0].metrics;
    assert.equal(m.ET.dice, 2 * 18 / 54); // 3x3x3 cubes one voxel apart along z
    assert.equal(m.WT.dice, 1);
    assert.equal(ev.summary.labelET, 3);
    // Uncertainty maps with ground truth that has no images: no brain mask, listed as skipped.
    for (const name of ["whole", "core", "enhance"]) {
      await writeNifti(`${tmp}/pred/A_unc_${name}.nii.gz`, new Uint8Array(N), DIMS, GEOM, "uint8");
    }
    const skipped = await evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/labels`, labelET: 3, progress: quiet });
    assert.equal(skipped.results[0].uncertainty, undefined);
    assert.deepEqual(skipped.summary.uncertainty?.skippedNoBrainMask, ["A"]);
    assert.deepEqual(skipped.summary.uncertainty?.subjects, []);
    // BraTS 2023 file names: ET label 3 without the option.
    await Deno.mkdir(`${tmp}/gt23/A`, { recursive: true });
    await Deno.copyFile(`${tmp}/labels/A_seg.nii.gz`, `${tmp}/gt23/A/A-seg.nii.gz`);
    await writeNifti(`${tmp}/gt23/A/A-t2f.nii.gz`, new Float32Array(N).fill(7), DIMS, GEOM, "int16");
    const ev23 = await evaluate({ pred: `${tmp}/pred`, gt: `${tmp}/gt23`, progress: quiet });
    assert.equal(ev23.summary.labelET, 3);
    assert.equal(ev23.results[0].metrics.ET.dice, 2 * 18 / 54);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
