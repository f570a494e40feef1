// `hadnet evaluate`: segmentation metrics of predicted label maps against ground truth, the QU-BraTS uncertainty
// score where uncertainty maps are present, and a report.
//
// Predictions: <pred>/<id>.nii[.gz], label maps in the source image space as `hadnet infer` writes them, optionally
// with <id>_unc_{whole,core,enhance}.nii[.gz] (WT, TC, ET uncertainty in [0, 100]) beside them; all three or none.
// Ground truth: a raw BraTS folder (2019 graded, 2020/2021 flat, 2023 names; see src/data/brats.ts), or a folder of
// label maps <id>.nii[.gz] or <id>_seg.nii[.gz] (then no images: no brain mask, no sequence slices).
//
// Pairing is by id. A prediction without ground truth, a shape or affine mismatch, a bad label or an out-of-range
// uncertainty value is an error for the whole run, naming the subject: a mean over fewer subjects than intended would
// look valid. The ids are paired before any volume is read, so a missing ground truth fails at once. Ground truth
// without a prediction is fine (evaluating a subset) and counted in the summary.
//
// Metrics (src/infer/metrics.ts): Dice, HD95 (mm, from the ground truth's pixdim), sensitivity, specificity over the
// whole volume, per ET, TC, WT, NET, ED, BraTS conventions for empty regions. ET is label 4, or 3 with --label-et 3;
// by default 3 when every evaluated ground truth has BraTS 2023 file names. Uncertainty (uncertainty_score.ts): brain
// mask = voxels non-zero in all four sequences when all four are there (as preprocessing's mask), else in the FLAIR;
// subjects with maps but neither are listed in the summary and skipped for the score.
//
// Outputs in --out (default <pred>/evaluation), each written to a temporary name and renamed: metrics.csv (per
// subject), uncertainty.csv (per subject, when any maps), summary.json (statistics; NaN as null), report.html with
// report/*.png (src/infer/report.ts). Progress with ETA on stderr; a table of mean Dice per region on stdout.

import { type Command, intOpt, reqOpt, UsageError } from "../command.ts";
import { discoverSubjects, type Seq, SEQUENCES } from "../data/brats.ts";
import { type NiftiImage, readNifti } from "../data/nifti.ts";
import { Progress, type ProgressOptions } from "../data/progress.ts";
import { writeAtomic } from "../train/common.ts";
import {
  type CaseMetrics,
  type Dims3,
  evaluateCase,
  type Metric,
  type Region,
  REGIONS,
  type Spacing3,
  type Stats,
  stats,
  summarise,
  toCsv,
} from "./metrics.ts";
import { readRunCurves, type ReportVolumes, type RunCurves, writeReport } from "./report.ts";
import {
  evaluateUncertainty,
  UNCERTAINTY_REGIONS,
  type UncertaintyRegion,
  type UncertaintyScore,
} from "./uncertainty_score.ts";

const NII = /\.nii(\.gz)?$/i;

/** File-name suffix of each region's uncertainty map. */
export const UNCERTAINTY_SUFFIXES: Record<UncertaintyRegion, string> = { WT: "whole", TC: "core", ET: "enhance" };
const UNC_NAME = /^(.*)_unc_(whole|core|enhance)$/;

export interface GroundTruth {
  id: string;
  seg: string;
  /** The subject's images by stored name (BraTS layouts; empty for a folder of label maps). */
  images: Partial<Record<Seq, string>>;
  brats2023: boolean;
}

export interface GroundTruthSet {
  layout: "brats" | "labels";
  subjects: Map<string, GroundTruth>;
  /** BraTS subject folders without a seg file. */
  withoutSeg: Set<string>;
}

function niftiFiles(dir: string, what: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile && NII.test(e.name)).map((e) => e.name).sort();
  } catch (e) {
    throw new Error(`${dir}: cannot list the ${what} folder (${(e as Error).message})`);
  }
}

/** Ground truth under `dir`: a folder holding NIfTI files is a folder of label maps, anything else a BraTS folder. */
export function findGroundTruth(dir: string): GroundTruthSet {
  const files = niftiFiles(dir, "ground-truth");
  const subjects = new Map<string, GroundTruth>();
  const withoutSeg = new Set<string>();
  if (files.length > 0) {
    for (const f of files) {
      const id = f.replace(NII, "").replace(/[_-]seg$/i, "");
      const seen = subjects.get(id);
      if (seen) throw new Error(`ground truth for ${id} given twice in ${dir}: ${seen.seg} and ${dir}/${f}`);
      subjects.set(id, { id, seg: `${dir}/${f}`, images: {}, brats2023: false });
    }
    return { layout: "labels", subjects, withoutSeg };
  }
  for (const s of discoverSubjects(dir)) {
    if (!s.files.seg) {
      withoutSeg.add(s.id);
      continue;
    }
    const images: Partial<Record<Seq, string>> = {};
    for (const k of SEQUENCES) if (s.files[k]) images[k] = s.files[k];
    subjects.set(s.id, { id: s.id, seg: s.files.seg, images, brats2023: s.brats2023 });
  }
  return { layout: "brats", subjects, withoutSeg };
}

export interface Prediction {
  id: string;
  path: string;
  /** All three maps or none. */
  uncertainty?: Record<UncertaintyRegion, string>;
}

/** Predictions and their uncertainty maps in `dir`, sorted by id. */
export function findPredictions(dir: string): Prediction[] {
  const preds = new Map<string, string>();
  const maps = new Map<string, Partial<Record<UncertaintyRegion, string>>>();
  const regionOf = Object.fromEntries(UNCERTAINTY_REGIONS.map((r) => [UNCERTAINTY_SUFFIXES[r], r]));
  for (const f of niftiFiles(dir, "prediction")) {
    const stem = f.replace(NII, ""), path = `${dir}/${f}`;
    const m = UNC_NAME.exec(stem);
    if (m) {
      const u = maps.get(m[1]) ?? {};
      const r = regionOf[m[2]] as UncertaintyRegion;
      if (u[r]) throw new Error(`uncertainty map ${m[2]} of ${m[1]} given twice: ${u[r]} and ${path}`);
      u[r] = path;
      maps.set(m[1], u);
    } else {
      if (preds.has(stem)) throw new Error(`prediction ${stem} given twice: ${preds.get(stem)} and ${path}`);
      preds.set(stem, path);
    }
  }
  if (preds.size === 0) throw new Error(`${dir}: no predictions (<id>.nii.gz label maps)`);
  for (const [id, u] of maps) {
    if (!preds.has(id)) throw new Error(`${dir}: uncertainty maps of ${id} but no prediction ${id}.nii.gz`);
    const missing = UNCERTAINTY_REGIONS.filter((r) => !u[r]).map((r) => `${id}_unc_${UNCERTAINTY_SUFFIXES[r]}.nii.gz`);
    if (missing.length > 0) {
      throw new Error(`${dir}: subject ${id} has some uncertainty maps but not ${missing.join(", ")}`);
    }
  }
  return [...preds].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([id, path]) => {
    const u = maps.get(id);
    return u ? { id, path, uncertainty: u as Record<UncertaintyRegion, string> } : { id, path };
  });
}

function listIds(ids: string[]): string {
  return ids.length <= 5 ? ids.join(", ") : `${ids.slice(0, 5).join(", ")} and ${ids.length - 5} more`;
}

/** Each prediction with its ground truth; a prediction without one is an error naming the ids. */
export function pairSubjects(preds: Prediction[], gt: GroundTruthSet, gtDir: string): [Prediction, GroundTruth][] {
  const noSeg = preds.filter((p) => gt.withoutSeg.has(p.id)).map((p) => p.id);
  if (noSeg.length > 0) throw new Error(`no ground truth for ${listIds(noSeg)}: the subject folder has no seg file`);
  const missing = preds.filter((p) => !gt.subjects.has(p.id)).map((p) => p.id);
  if (missing.length > 0) {
    const where = gt.layout === "labels" ? "<id>.nii.gz or <id>_seg.nii.gz" : "a subject folder with a seg file";
    throw new Error(`no ground truth for prediction ${listIds(missing)} in ${gtDir} (looked for ${where})`);
  }
  return preds.map((p) => [p, gt.subjects.get(p.id)!]);
}

/** dims without trailing 1s, which must be 3. */
function dims3(img: NiftiImage, path: string): Dims3 {
  const d = [...img.header.dims];
  while (d.length > 3 && d[d.length - 1] === 1) d.pop();
  if (d.length !== 3) throw new Error(`${path}: expected a 3-D volume, got dims [${img.header.dims}]`);
  return d as unknown as Dims3;
}

/** Affines may differ by float32 rounding of the header fields; anything more is a different space. */
const AFFINE_TOLERANCE_MM = 1e-3;

function checkSameSpace(id: string, what: string, img: NiftiImage, path: string, ref: NiftiImage, refPath: string) {
  const a = dims3(img, path), b = dims3(ref, refPath);
  if (a.some((d, i) => d !== b[i])) {
    throw new Error(`subject ${id}: ${what} ${path} has shape [${a}] but the ground truth ${refPath} has [${b}]`);
  }
  let worst = 0;
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 4; c++) worst = Math.max(worst, Math.abs(img.header.affine[r][c] - ref.header.affine[r][c]));
  }
  if (!(worst <= AFFINE_TOLERANCE_MM)) {
    throw new Error(
      `subject ${id}: ${what} ${path} is not in the ground truth's space (affines differ by up to ${worst} mm: ` +
        `${JSON.stringify(img.header.affine.slice(0, 3))} vs ${JSON.stringify(ref.header.affine.slice(0, 3))})`,
    );
  }
}

/** A label map's voxels as bytes; a non-integer or out-of-range value is an error naming the file and voxel. */
export function toLabels(data: ArrayLike<number>, path: string): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!(Number.isInteger(v) && v >= 0 && v <= 255)) throw new Error(`${path}: voxel ${i} holds ${v}, not a label`);
    out[i] = v;
  }
  return out;
}

export interface LoadedPair {
  dims: Dims3;
  spacing: Spacing3;
  pred: Uint8Array;
  gt: Uint8Array;
  gtImage: NiftiImage;
}

/** Reads a prediction and its ground truth, checking they share a space. */
export async function loadPair(p: Prediction, g: GroundTruth): Promise<LoadedPair> {
  const [pi, gi] = await Promise.all([readNifti(p.path), readNifti(g.seg)]);
  checkSameSpace(p.id, "prediction", pi, p.path, gi, g.seg);
  const spacing = [1, 2, 3].map((i) => Math.abs(gi.header.pixdim[i])) as unknown as Spacing3;
  return {
    dims: dims3(gi, g.seg),
    spacing,
    pred: toLabels(pi.data, p.path),
    gt: toLabels(gi.data, g.seg),
    gtImage: gi,
  };
}

async function readImage(g: GroundTruth, s: Seq, ref: NiftiImage): Promise<NiftiImage> {
  const img = await readNifti(g.images[s]!);
  checkSameSpace(g.id, "image", img, g.images[s]!, ref, g.seg);
  return img;
}

/** What the report draws of one subject: the label maps and whichever images the ground truth has. */
async function reportVolumes(p: Prediction, g: GroundTruth): Promise<ReportVolumes> {
  const v = await loadPair(p, g);
  const images: Partial<Record<Seq, ArrayLike<number>>> = {};
  for (const s of SEQUENCES) if (g.images[s]) images[s] = (await readImage(g, s, v.gtImage)).data;
  return { dims: v.dims, pred: v.pred, gt: v.gt, images };
}

/** Brain mask for the uncertainty score: non-zero in all four sequences when present, else in the FLAIR; null if neither. */
async function brainMask(g: GroundTruth, ref: NiftiImage): Promise<Uint8Array | null> {
  const seqs: Seq[] = SEQUENCES.every((s) => g.images[s]) ? [...SEQUENCES] : g.images.flr ? ["flr"] : [];
  if (seqs.length === 0) return null;
  const n = ref.data.length;
  const mask = new Uint8Array(n).fill(1);
  for (const s of seqs) {
    const img = await readImage(g, s, ref);
    for (let i = 0; i < n; i++) if (img.data[i] === 0) mask[i] = 0;
  }
  return mask;
}

async function readUncertainty(id: string, maps: Record<UncertaintyRegion, string>, ref: NiftiImage, refPath: string) {
  const out = {} as Record<UncertaintyRegion, Float32Array | Float64Array>;
  for (const r of UNCERTAINTY_REGIONS) {
    const img = await readNifti(maps[r]);
    checkSameSpace(id, "uncertainty map", img, maps[r], ref, refPath);
    for (let i = 0; i < img.data.length; i++) {
      const v = img.data[i];
      if (!(v >= 0 && v <= 100)) {
        throw new Error(`${maps[r]}: voxel ${i} holds ${v}, outside the uncertainty range [0, 100]`);
      }
    }
    out[r] = img.data;
  }
  return out;
}

export interface SubjectResult {
  id: string;
  metrics: CaseMetrics;
  uncertainty?: Record<UncertaintyRegion, UncertaintyScore>;
}

export type UncertaintyStat = "aucDice" | "aucFtp" | "aucFtn" | "score";
const UNC_STATS: readonly UncertaintyStat[] = ["aucDice", "aucFtp", "aucFtn", "score"];

export interface EvaluationSummary {
  format: "hadnet-evaluation";
  version: 1;
  pred: string;
  gt: string;
  labelET: 3 | 4;
  /** Evaluated subjects, in order. */
  subjects: string[];
  /** Ground-truth subjects that had no prediction. */
  groundTruthWithoutPrediction: string[];
  metrics: Record<Region, Record<Metric, Stats>>;
  uncertainty: {
    subjects: string[];
    /** Subjects with maps but no image to take the brain mask from. */
    skippedNoBrainMask: string[];
    regions: Record<UncertaintyRegion, Record<UncertaintyStat, Stats>>;
  } | null;
}

export interface EvaluateConfig {
  pred: string;
  gt: string;
  /** Default <pred>/evaluation. */
  out?: string;
  /** Run folders whose log.jsonl curves go into the report. */
  runs?: string[];
  /** Default: 3 when every evaluated ground truth has BraTS 2023 names, else 4. */
  labelET?: 3 | 4;
  /** Subjects shown with slices in the report (default 3: lowest, median and highest WT Dice). */
  reportSubjects?: number;
  progress?: ProgressOptions;
}

export interface Evaluation {
  out: string;
  results: SubjectResult[];
  summary: EvaluationSummary;
  /** Files written, relative to `out`. */
  files: string[];
}

function uncertaintyCsv(results: SubjectResult[]): string {
  const cols = UNCERTAINTY_REGIONS.flatMap((r) => UNC_STATS.map((s) => [r, s] as const));
  const lines = [["subject", ...cols.map(([r, s]) => `${s}_${r}`)].join(",")];
  for (const res of results) {
    if (res.uncertainty) lines.push([res.id, ...cols.map(([r, s]) => String(res.uncertainty![r][s]))].join(","));
  }
  return lines.join("\n") + "\n";
}

const enc = new TextEncoder();

/** Evaluates every prediction in cfg.pred against cfg.gt and writes the outputs; see the header. */
export async function evaluate(cfg: EvaluateConfig): Promise<Evaluation> {
  const out = cfg.out ?? `${cfg.pred}/evaluation`;
  const preds = findPredictions(cfg.pred);
  const gtSet = findGroundTruth(cfg.gt);
  const pairs = pairSubjects(preds, gtSet, cfg.gt);
  // Run logs are read before the long part so a wrong folder fails at once.
  const curves: RunCurves[] = (cfg.runs ?? []).map(readRunCurves);
  const labelET = cfg.labelET ?? (pairs.every(([, g]) => g.brats2023) ? 3 : 4);
  const results: SubjectResult[] = [];
  const skippedNoBrainMask: string[] = [];
  const bar = new Progress(pairs.length, "evaluate", cfg.progress);
  try {
    for (const [p, g] of pairs) {
      const v = await loadPair(p, g);
      let metrics: CaseMetrics;
      try {
        metrics = evaluateCase(v.pred, v.gt, v.dims, v.spacing, { labelET });
      } catch (e) {
        throw new Error(`subject ${p.id}: ${(e as Error).message}; --label-et picks the ET label (now ${labelET})`);
      }
      const res: SubjectResult = { id: p.id, metrics };
      if (p.uncertainty) {
        const brain = await brainMask(g, v.gtImage);
        if (brain) {
          const maps = await readUncertainty(p.id, p.uncertainty, v.gtImage, g.seg);
          const u = evaluateUncertainty(v.pred, v.gt, maps, brain, { labelET });
          const scores = {} as Record<UncertaintyRegion, UncertaintyScore>;
          for (const r of UNCERTAINTY_REGIONS) {
            const { aucDice, aucFtp, aucFtn, score } = u[r];
            scores[r] = { aucDice, aucFtp, aucFtn, score };
          }
          res.uncertainty = scores;
        } else skippedNoBrainMask.push(p.id);
      }
      results.push(res);
      bar.tick(1, `${p.id} WT Dice ${metrics.WT.dice.toFixed(3)}`);
    }
    if (skippedNoBrainMask.length > 0) {
      bar.log(
        `uncertainty maps of ${listIds(skippedNoBrainMask)} not scored: no FLAIR for the brain mask ` +
          `(give --gt as a BraTS folder with the images)`,
      );
    }
  } finally {
    bar.finish();
  }
  const withUnc = results.filter((r) => r.uncertainty);
  const evaluated = new Set(results.map((r) => r.id));
  const summary: EvaluationSummary = {
    format: "hadnet-evaluation",
    version: 1,
    pred: cfg.pred,
    gt: cfg.gt,
    labelET,
    subjects: results.map((r) => r.id),
    groundTruthWithoutPrediction: [...gtSet.subjects.keys()].filter((id) => !evaluated.has(id)).sort(),
    metrics: summarise(results.map((r) => r.metrics)),
    uncertainty: withUnc.length + skippedNoBrainMask.length === 0 ? null : {
      subjects: withUnc.map((r) => r.id),
      skippedNoBrainMask,
      regions: Object.fromEntries(UNCERTAINTY_REGIONS.map((r) => [
        r,
        Object.fromEntries(UNC_STATS.map((s) => [s, stats(withUnc.map((w) => w.uncertainty![r][s]))])),
      ])) as Record<UncertaintyRegion, Record<UncertaintyStat, Stats>>,
    },
  };
  await Deno.mkdir(out, { recursive: true });
  const files = ["metrics.csv", "summary.json"];
  await writeAtomic(
    `${out}/metrics.csv`,
    enc.encode(toCsv(results.map((r) => ({ subject: r.id, metrics: r.metrics })))),
  );
  if (withUnc.length > 0) {
    files.push("uncertainty.csv");
    await writeAtomic(`${out}/uncertainty.csv`, enc.encode(uncertaintyCsv(results)));
  }
  await writeAtomic(`${out}/summary.json`, enc.encode(JSON.stringify(summary, null, 1) + "\n"));
  const byId = new Map(pairs.map(([p, g]) => [p.id, { pred: p, gt: g }]));
  files.push(
    ...await writeReport({
      out,
      summary,
      results,
      load: (id) => reportVolumes(byId.get(id)!.pred, byId.get(id)!.gt),
      curves,
      shown: cfg.reportSubjects ?? 3,
    }),
  );
  return { out, results, summary, files };
}

function fmt(x: number, digits: number): string {
  return Number.isNaN(x) ? "n/a" : x.toFixed(digits);
}

/** The stdout table: mean, standard deviation and median Dice, and mean HD95, per region. */
export function diceTable(summary: EvaluationSummary): string {
  const rows = [["region", "Dice mean", "std", "median", "HD95 mean (mm)"]];
  for (const r of REGIONS) {
    const d = summary.metrics[r].dice;
    rows.push([r, fmt(d.mean, 4), fmt(d.std, 4), fmt(d.median, 4), fmt(summary.metrics[r].hd95.mean, 2)]);
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const lines = rows.map((row) => row.map((x, c) => (c === 0 ? x.padEnd(w[c]) : x.padStart(w[c]))).join("  "));
  return `Mean Dice over ${summary.subjects.length} subjects (ET label ${summary.labelET}):\n${lines.join("\n")}`;
}

export const evaluateCommand: Command = {
  summary:
    "Dice, HD95, sensitivity, specificity (and uncertainty scores) of predictions against ground truth, with a report",
  usage: `usage: deno task hadnet evaluate --pred DIR --gt DIR [--out DIR] [--runs RUNDIR ...] [--label-et 4|3]

Compares the label maps <pred>/<id>.nii.gz (as \`hadnet infer\` writes them) with the ground truth of the same id and
writes metrics.csv (per subject: Dice, HD95 in mm, sensitivity and specificity of ET, TC, WT, NET and ED, BraTS
conventions for empty regions), summary.json (mean, median, std per region and metric) and report.html (slices of
a few subjects with prediction and ground truth, a Dice box plot, training curves) to --out, then prints the mean
Dice per region. Where <id>_unc_whole/core/enhance.nii.gz lie beside a prediction, the BraTS 2019/2020 uncertainty
score per region goes into uncertainty.csv and summary.json (brain mask from the subject's images).
A prediction without ground truth, or in another shape or space than its ground truth, stops the run with a message
naming the subject; ground truth without a prediction is skipped.

options:
  --pred DIR              folder of predictions <id>.nii.gz (required)
  --gt DIR                raw BraTS folder (2019 HGG/LGG, 2020/2021, 2023 names), or a folder of <id>.nii.gz or
                          <id>_seg.nii.gz label maps (required)
  --out DIR               output folder (default: <pred>/evaluation)
  --runs RUNDIR ...       run folders (with log.jsonl) whose metric and losses per epoch the report plots; repeat
                          --runs or list the folders after it
  --label-et 4|3          label of the enhancing tumour (default: 3 for BraTS 2023 file names, else 4)
  --report-subjects N     subjects shown with slices in the report: lowest, median, highest WT Dice (default 3)`,
  options: {
    pred: { type: "string" },
    gt: { type: "string" },
    out: { type: "string" },
    runs: { type: "string", multiple: true },
    "label-et": { type: "string" },
    "report-subjects": { type: "string" },
  },
  run: async (values, positionals) => {
    const runs = (values.runs as string[] | undefined) ?? [];
    if (positionals.length > 0 && runs.length === 0) {
      throw new UsageError(`evaluate: unexpected argument "${positionals[0]}"`);
    }
    const et = intOpt(values["label-et"], "--label-et", 3, 4) as 3 | 4 | undefined;
    const ev = await evaluate({
      pred: reqOpt(values.pred, "--pred"),
      gt: reqOpt(values.gt, "--gt"),
      out: values.out as string | undefined,
      runs: [...runs, ...positionals],
      labelET: et,
      reportSubjects: intOpt(values["report-subjects"], "--report-subjects", 0),
    });
    console.log(diceTable(ev.summary));
    console.log(`wrote ${ev.files.filter((f) => !f.startsWith("report/")).map((f) => `${ev.out}/${f}`).join(", ")}`);
    return 0;
  },
};
