// The evaluation report: report.html, a plain static page (no script), with its images in report/:
// - summary tables (Dice and HD95 per region; uncertainty scores when present);
// - a Dice box plot per region (boxPlotPng, axis 0..1);
// - for a few subjects spread over the WT Dice ranking (by default lowest, median, highest), the axial slice with the largest ground-truth tumour area
//   (the prediction's when the ground truth is empty, the middle slice when both are) of each sequence, once with the
//   prediction and once with the ground truth overlaid (label maps over black when the ground truth has no images);
// - per run folder, the validation metric (and WT/TC/ET Dice) and the losses per epoch from its log.jsonl
//   (lineChartPng), with the axis ranges and a colour legend in the page, since the PNGs carry no text.

import type { Seq } from "../data/brats.ts";
import { readJsonl } from "../data/progress.ts";
import { writeAtomic } from "../train/common.ts";
import type { EvaluationSummary, SubjectResult } from "./evaluate.ts";
import { type Dims3, REGIONS } from "./metrics.ts";
import {
  boxPlotPng,
  LABEL_COLOURS,
  lineChartPng,
  type LineSeries,
  SERIES_COLOURS,
  seriesRange,
  sliceOverlayPng,
} from "./report_png.ts";
import { UNCERTAINTY_REGIONS } from "./uncertainty_score.ts";

/** Curves of one run folder, per logged epoch. */
export interface RunCurves {
  dir: string;
  epochs: number[];
  /** "metric" and, when logged, "Dice WT/TC/ET". */
  metric: Record<string, number[]>;
  /** Every numeric field whose name contains "loss", in order of first appearance. */
  losses: Record<string, number[]>;
}

/** Reads a run folder's log.jsonl (as RunDir in src/train/common.ts writes it); entries without an epoch are skipped. */
export function readRunCurves(dir: string): RunCurves {
  const path = `${dir}/log.jsonl`;
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(`${dir}: no log.jsonl (--runs takes run folders written by hadnet pretrain or train)`);
  }
  const entries = readJsonl(path).filter((e) => typeof e.epoch === "number");
  if (entries.length === 0) throw new Error(`${path}: no entries with an epoch`);
  const num = (v: unknown) => (typeof v === "number" ? v : NaN);
  const metric: Record<string, number[]> = { metric: entries.map((e) => num(e.metric)) };
  for (const r of ["WT", "TC", "ET"]) {
    const d = entries.map((e) => num((e.dice as Record<string, unknown> | undefined)?.[r]));
    if (d.some((x) => !Number.isNaN(x))) metric[`Dice ${r}`] = d;
  }
  const lossKeys = [...new Set(entries.flatMap((e) => Object.keys(e).filter((k) => /loss/i.test(k))))];
  const losses = Object.fromEntries(
    lossKeys.map((k) => [k, entries.map((e) => num(e[k]))]).filter(([, v]) => (v as number[]).some((x) => !isNaN(x))),
  );
  return { dir, epochs: entries.map((e) => e.epoch as number), metric, losses };
}

/** One subject's volumes, as the report draws them. */
export interface ReportVolumes {
  dims: Dims3;
  pred: Uint8Array;
  gt: Uint8Array;
  images: Partial<Record<Seq, ArrayLike<number>>>;
}

export interface ReportInput {
  out: string;
  summary: EvaluationSummary;
  results: SubjectResult[];
  load: (id: string) => Promise<ReportVolumes>;
  curves: RunCurves[];
  /** How many subjects to show with slices. */
  shown: number;
}

/** Up to `k` subjects spread over the WT Dice ranking, lowest first (k = 1: the median). */
export function pickShown(results: SubjectResult[], k: number): SubjectResult[] {
  const sorted = [...results].sort((a, b) => a.metrics.WT.dice - b.metrics.WT.dice || (a.id < b.id ? -1 : 1));
  const n = sorted.length;
  if (k <= 0 || n === 0) return [];
  if (k >= n) return sorted;
  const idx = k === 1
    ? [Math.floor((n - 1) / 2)]
    : Array.from({ length: k }, (_, i) => Math.round((i * (n - 1)) / (k - 1)));
  return [...new Set(idx)].map((i) => sorted[i]);
}

/** The axial (z) slice with the most labelled voxels in `labels`, then in `fallback`; the middle one if both are empty. */
export function largestTumourSlice(labels: Uint8Array, fallback: Uint8Array, dims: Dims3): number {
  const plane = dims[0] * dims[1];
  for (const l of [labels, fallback]) {
    let best = -1, bestCount = 0;
    for (let z = 0; z < dims[2]; z++) {
      let c = 0;
      for (let i = z * plane; i < (z + 1) * plane; i++) if (l[i] !== 0) c++;
      if (c > bestCount) [best, bestCount] = [z, c];
    }
    if (best >= 0) return best;
  }
  return dims[2] >> 1;
}

const SEQ_NAMES: Record<Seq, string> = { flr: "FLAIR", t1c: "T1 post-contrast", t1p: "T1", t2w: "T2" };

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function num(x: number, digits: number): string {
  return Number.isNaN(x) ? "n/a" : x.toFixed(digits);
}

/** A file-name-safe form of a subject id. */
function safe(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, "_");
}

function swatch(c: readonly number[]): string {
  return `<span class="sw" style="background:rgb(${c.join(",")})"></span>`;
}

function legend(names: string[]): string {
  return names.map((n, i) => `${swatch(SERIES_COLOURS[i % SERIES_COLOURS.length])}${esc(n)}`).join(" &nbsp; ");
}

function table(head: string[], rows: string[][]): string {
  const tr = (cells: string[], tag: string) => `<tr>${cells.map((c) => `<${tag}>${c}</${tag}>`).join("")}</tr>`;
  return `<table>${tr(head, "th")}${rows.map((r) => tr(r, "td")).join("")}</table>`;
}

/** Writes report.html and its PNGs under `out`; returns the files written, relative to `out`. */
export async function writeReport(input: ReportInput): Promise<string[]> {
  const { out, summary: s } = input;
  await Deno.mkdir(`${out}/report`, { recursive: true });
  const files: string[] = [];
  const png = async (name: string, bytes: Uint8Array) => {
    await writeAtomic(`${out}/report/${name}`, bytes);
    files.push(`report/${name}`);
    return `report/${name}`;
  };
  const html: string[] = [];
  html.push(
    `<h1>hadnet evaluation</h1>`,
    `<p>Predictions <code>${esc(s.pred)}</code> against ground truth <code>${esc(s.gt)}</code>: ` +
      `${s.subjects.length} subjects, ET label ${s.labelET}` +
      (s.groundTruthWithoutPrediction.length > 0
        ? `; ${s.groundTruthWithoutPrediction.length} ground-truth subjects without a prediction not evaluated`
        : "") +
      `. Per-subject values: <a href="metrics.csv">metrics.csv</a>; statistics: <a href="summary.json">summary.json</a>.</p>`,
  );
  const m = s.metrics;
  html.push(
    `<h2>Summary</h2>`,
    table(
      [
        "region",
        "Dice mean",
        "Dice std",
        "Dice median",
        "HD95 mean (mm)",
        "HD95 median (mm)",
        "sensitivity mean",
        "specificity mean",
      ],
      REGIONS.map((r) => [
        r,
        num(m[r].dice.mean, 4),
        num(m[r].dice.std, 4),
        num(m[r].dice.median, 4),
        num(m[r].hd95.mean, 2),
        num(m[r].hd95.median, 2),
        num(m[r].sensitivity.mean, 4),
        num(m[r].specificity.mean, 4),
      ]),
    ),
  );
  if (s.uncertainty) {
    const u = s.uncertainty;
    html.push(
      `<h2>Uncertainty (BraTS 2019/2020 score)</h2><p>${u.subjects.length} subjects with uncertainty maps` +
        (u.skippedNoBrainMask.length > 0
          ? `; ${u.skippedNoBrainMask.length} skipped (no image for the brain mask)`
          : "") +
        `. Per subject: <a href="uncertainty.csv">uncertainty.csv</a>.</p>`,
      table(
        ["region", "score mean", "AUC Dice mean", "AUC FTP mean", "AUC FTN mean"],
        UNCERTAINTY_REGIONS.map((r) => [
          r,
          num(u.regions[r].score.mean, 4),
          num(u.regions[r].aucDice.mean, 4),
          num(u.regions[r].aucFtp.mean, 4),
          num(u.regions[r].aucFtn.mean, 4),
        ]),
      ),
    );
  }
  const box = await png(
    "dice_box.png",
    boxPlotPng(Object.fromEntries(REGIONS.map((r) => [r, input.results.map((x) => x.metrics[r].dice)])), {
      min: 0,
      max: 1,
    }),
  );
  html.push(
    `<h2>Dice per region</h2><p>Box from the 25th to the 75th percentile, black line at the median, whiskers to the ` +
      `minimum and maximum; vertical axis 0 (bottom) to 1 (top). ${legend([...REGIONS])}</p>`,
    `<img src="${box}" alt="Dice box plot">`,
  );
  const shown = pickShown(input.results, input.shown);
  if (shown.length > 0) {
    html.push(
      `<h2>Subjects</h2><p>Spread over the WT Dice ranking, lowest first. Axial slice with the largest ground-truth tumour ` +
        `area; labels ${swatch(LABEL_COLOURS.NET)}NET ${swatch(LABEL_COLOURS.ED)}ED ${swatch(LABEL_COLOURS.ET)}ET.</p>`,
    );
  }
  for (const res of shown) {
    const v = await input.load(res.id);
    const z = largestTumourSlice(v.gt, v.pred, v.dims);
    const seqs = Object.keys(v.images) as Seq[];
    const rows: string[][] = [];
    const opts = { labelET: s.labelET };
    const background = (seq: Seq | null) => (seq ? v.images[seq]! : new Uint8Array(v.pred.length));
    for (const seq of seqs.length > 0 ? seqs : [null]) {
      const name = `${safe(res.id)}_${seq ?? "labels"}`;
      const p = await png(`${name}_pred.png`, sliceOverlayPng(background(seq), v.pred, v.dims, 2, z, opts));
      const g = await png(`${name}_gt.png`, sliceOverlayPng(background(seq), v.gt, v.dims, 2, z, opts));
      const label = seq ? SEQ_NAMES[seq] : "labels";
      rows.push([
        esc(label),
        `<img class="slice" src="${p}" alt="${esc(`${res.id} ${label} prediction`)}">`,
        `<img class="slice" src="${g}" alt="${esc(`${res.id} ${label} ground truth`)}">`,
      ]);
    }
    const dices = REGIONS.map((r) => `${r} ${num(res.metrics[r].dice, 3)}`).join(", ");
    html.push(
      `<h3>${esc(res.id)}</h3><p>Dice ${dices}; slice z = ${z}.</p>`,
      table(["sequence", "prediction", "ground truth"], rows),
    );
  }
  if (input.curves.length > 0) html.push(`<h2>Training</h2>`);
  for (const [i, c] of input.curves.entries()) {
    html.push(`<h3><code>${esc(c.dir)}</code></h3>`);
    for (const [kind, series] of [["metric", c.metric], ["losses", c.losses]] as const) {
      if (Object.keys(series).length === 0) continue;
      const lines: Record<string, LineSeries> = Object.fromEntries(
        Object.entries(series).map(([k, y]) => [k, { x: c.epochs, y }]),
      );
      const [x0, x1] = seriesRange(lines, "x"), [y0, y1] = seriesRange(lines, "y");
      if (Number.isNaN(y0)) continue;
      const f = await png(`run${i}_${kind}.png`, lineChartPng(lines, { xMin: x0, xMax: x1, yMin: y0, yMax: y1 }));
      html.push(
        `<p>${kind === "metric" ? "Validation" : "Losses"} per epoch (epochs ${x0} to ${x1} left to right, ` +
          `${num(y0, 4)} to ${num(y1, 4)} bottom to top): ${legend(Object.keys(lines))}</p>`,
        `<img src="${f}" alt="${esc(`${c.dir} ${kind}`)}">`,
      );
    }
  }
  const page = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hadnet evaluation</title>
<style>
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
img.slice { width: 240px; image-rendering: pixelated; }
.sw { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin-right: 0.3em; }
</style></head><body>
${html.join("\n")}
</body></html>
`;
  await writeAtomic(`${out}/report.html`, new TextEncoder().encode(page));
  files.push("report.html");
  return files;
}
