// What pre-training and HAD-Net training share: the run folder (resolved config, JSON-lines log, checkpoints), the
// resume checkpoint, the original's validation Dice and the validation pass, and model checkpoint files.
//
// Resume checkpoint (last.safetensors, rewritten atomically after every epoch): each network's parameters as
// `<net>.<param>`, each optimiser as `<opt>.step` (per-parameter step counts, in parameter order),
// `<opt>.exp_avg.<param>` and `<opt>.exp_avg_sq.<param>`; metadata `format` = "hadnet-resume" and `state` = JSON of
// the loop's state (config, epoch, metric history, random streams, EMA, scheduler, learning rates).

import type { Sample } from "../data/augment.ts";
import { JsonlLog, readJsonl } from "../data/progress.ts";
import { type ConvKernels, convKernelsOn } from "../kernels/conv_select.ts";
import type { Gpu } from "../kernels/device.ts";
import type { Params, StateDict } from "../nn/module.ts";
import { argmax, crossEntropy } from "../nn/ops/loss.ts";
import type { Adam, AdamW } from "../nn/optim.ts";
import { loadSafetensors, saveSafetensors, type Weights, writeSafetensors } from "../nn/safetensors.ts";
import { noGrad, readAll, scope, Tensor } from "../nn/tensor.ts";
import type { UNet } from "../nn/unet.ts";
import { forEachPrefetched } from "./data.ts";

export const SEMANTICS_FILE = "HAD_Net_semantics.json";
export const RESUME_FILE = "last.safetensors";
/** Per-epoch copies of the resume checkpoint kept by --continuous-saving. */
export const EPOCHS_DIR = "epochs";

/** BraTS 2019 class weights of the original release (background, NET, ED, ET). */
export const CE_WEIGHTS = [1.0, 59.4507, 23.3190, 71.8481];

/** A run's own folder: config.json, log.jsonl and checkpoints. */
export class RunDir {
  readonly path: string;
  readonly #log: JsonlLog;
  private constructor(path: string, log: JsonlLog) {
    this.path = path;
    this.#log = log;
  }

  /** A fresh run: refuses a folder that already holds one (log.jsonl or a resume checkpoint). */
  static async create(path: string, config: unknown): Promise<RunDir> {
    for (const f of ["log.jsonl", RESUME_FILE]) {
      if (exists(`${path}/${f}`)) {
        throw new Error(`${path} already holds a run (${f}): pass --resume to continue it, or choose another --out`);
      }
    }
    await Deno.mkdir(path, { recursive: true });
    await writeAtomic(`${path}/config.json`, new TextEncoder().encode(JSON.stringify(config, null, 1) + "\n"));
    return new RunDir(path, await JsonlLog.open(`${path}/log.jsonl`));
  }

  /** Reopens a run after its checkpoint of `epoch`: log entries of later epochs (cut short) are dropped. */
  static async resume(path: string, epoch: number): Promise<RunDir> {
    const logPath = `${path}/log.jsonl`;
    const kept = exists(logPath)
      ? readJsonl(logPath).filter((e) => !(typeof e.epoch === "number" && e.epoch > epoch) && e.event !== "test")
      : [];
    await writeAtomic(logPath, new TextEncoder().encode(kept.map((e) => JSON.stringify(e) + "\n").join("")));
    return new RunDir(path, await JsonlLog.open(logPath));
  }

  async writeJson(name: string, value: unknown) {
    await writeAtomic(`${this.path}/${name}`, new TextEncoder().encode(JSON.stringify(value, null, 1) + "\n"));
  }

  log(entry: Record<string, unknown>) {
    this.#log.write(entry);
  }

  close() {
    this.#log.close();
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes a file under a temporary name, then renames it, so a reader never sees half a file. */
export async function writeAtomic(path: string, bytes: Uint8Array) {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
}

export interface ModelMeta {
  kind: "generator" | "discriminator";
  k: number;
  sequences: number;
  classes: number;
  [key: string]: string | number;
}

/** Saves a network's parameters as safetensors with hadnet's metadata block. */
export async function saveModel(path: string, params: Params, meta: ModelMeta) {
  const sd = await params.stateDict();
  await saveSafetensors(path, sd, Object.fromEntries(Object.entries(meta).map(([k, v]) => [k, String(v)])));
}

export const REGIONS = ["NET", "ED", "ET", "WT", "TC"] as const;
export type Region = typeof REGIONS[number];

/**
 * The original's validation Dice per region over the whole padded volume, on class indices (1 NET, 2 ED, 3 ET):
 * (2 |A and B| + 1) / (|A| + |B| + 1).
 */
export function validationDice(pred: ArrayLike<number>, gt: ArrayLike<number>): Record<Region, number> {
  if (pred.length !== gt.length) throw new Error(`prediction has ${pred.length} voxels, labels ${gt.length}`);
  const sets: Record<Region, number[]> = { NET: [1], ED: [2], ET: [3], WT: [1, 2, 3], TC: [1, 3] };
  const out = {} as Record<Region, number>;
  for (const r of REGIONS) {
    const inSet = new Uint8Array(4);
    for (const c of sets[r]) inSet[c] = 1;
    let a = 0, b = 0, both = 0;
    for (let i = 0; i < pred.length; i++) {
      const p = inSet[pred[i]], q = inSet[gt[i]];
      a += p;
      b += q;
      both += p & q;
    }
    out[r] = (2 * both + 1) / (a + b + 1);
  }
  return out;
}

/** The validation metric: mean of WT, TC and ET Dice. */
export function validationMetric(d: Record<Region, number>): number {
  return (d.WT + d.TC + d.ET) / 3;
}

/** Class weights of an epoch (1-based): multiplied by `decay` each epoch after the first, floored at 1. */
export function epochWeights(base: number[], epoch: number, decay: number): number[] {
  return base.map((w) => Math.max(1, w * decay ** (epoch - 1)));
}

/** Exponential moving average with bias correction (as logged by the original). */
export class Ema {
  value = 0;
  #n = 0;
  readonly decay: number;
  constructor(decay: number) {
    this.decay = decay;
  }
  update(x: number): { ema: number; corrected: number } {
    this.#n++;
    this.value = this.decay * this.value + (1 - this.decay) * x;
    return { ema: this.value, corrected: this.value / (1 - this.decay ** this.#n) };
  }
  state() {
    return { value: this.value, n: this.#n };
  }
  setState(s: { value: number; n: number }) {
    this.value = s.value;
    this.#n = s.n;
  }
}

type Optimiser = Adam | AdamW;

/** What a resume checkpoint holds besides tensors: JSON-serialisable loop state. */
export interface LoopState {
  epoch: number;
  config: object;
}

/**
 * Writes the resume checkpoint (and, when `copy` is given, the same bytes there too), each atomically. Parameters
 * and moments are read back in one round trip per network or optimiser.
 */
export async function saveResume(
  path: string,
  nets: Record<string, Params>,
  opts: Record<string, Optimiser>,
  state: LoopState,
  copy?: string,
) {
  const tensors: Weights = new Map();
  for (const [prefix, params] of Object.entries(nets)) {
    for (const [name, t] of await params.stateDict()) tensors.set(`${prefix}.${name}`, t);
  }
  for (const [prefix, opt] of Object.entries(opts)) {
    const st = await opt.state();
    tensors.set(`${prefix}.step`, { shape: [st.step.length], data: st.step });
    opt.params.forEach((p, i) => {
      tensors.set(`${prefix}.exp_avg.${p.name}`, { shape: [...p.shape], data: st.expAvg[i] });
      tensors.set(`${prefix}.exp_avg_sq.${p.name}`, { shape: [...p.shape], data: st.expAvgSq[i] });
    });
  }
  const bytes = writeSafetensors(tensors, { format: "hadnet-resume", state: JSON.stringify(state) });
  await writeAtomic(path, bytes);
  if (copy) await writeAtomic(copy, bytes);
}

export interface ResumeCheckpoint<S extends LoopState = LoopState> {
  path: string;
  tensors: Weights;
  state: S;
}

export async function loadResume<S extends LoopState>(path: string): Promise<ResumeCheckpoint<S>> {
  let f;
  try {
    f = await loadSafetensors(path);
  } catch (e) {
    throw new Error(
      e instanceof Deno.errors.NotFound ? `${path}: no resume checkpoint (was the run started?)` : (e as Error).message,
    );
  }
  if (f.metadata.format !== "hadnet-resume" || !f.metadata.state) throw new Error(`${path}: not a resume checkpoint`);
  return { path, tensors: f.tensors, state: JSON.parse(f.metadata.state) };
}

/** The tensors of one network in a resume checkpoint, without the prefix. */
export function prefixed(ck: ResumeCheckpoint, prefix: string): StateDict {
  const sd: StateDict = new Map();
  for (const [name, t] of ck.tensors) if (name.startsWith(`${prefix}.`)) sd.set(name.slice(prefix.length + 1), t);
  return sd;
}

/** A network's parameters from a resume checkpoint (names and shapes checked by Params.load). */
export function restoreParams(ck: ResumeCheckpoint, prefix: string, params: Params) {
  params.load(prefixed(ck, prefix), `${ck.path} (${prefix})`);
}

/** An optimiser's step counts and moments from a resume checkpoint. */
export function restoreOptimiser(ck: ResumeCheckpoint, prefix: string, opt: Optimiser) {
  const get = (name: string) => {
    const t = ck.tensors.get(name);
    if (!t) throw new Error(`${ck.path}: resume checkpoint lacks ${name}`);
    return t.data;
  };
  opt.loadState({
    step: get(`${prefix}.step`),
    expAvg: opt.params.map((p) => get(`${prefix}.exp_avg.${p.name}`)),
    expAvgSq: opt.params.map((p) => get(`${prefix}.exp_avg_sq.${p.name}`)),
  });
}

/**
 * On resume the settings must be those the run started with, except `epochs` (a run may be extended) and the
 * listed keys: one error naming every difference. Convolution kernels compare as this device runs them, so a run
 * saved with "gather" resumes under "auto" on a CPU adapter (where auto is gather), not on a GPU.
 */
export function checkResumeConfig(
  g: Gpu,
  savedConfig: { convKernels: ConvKernels },
  nowConfig: { convKernels: ConvKernels },
  free: string[],
) {
  const kernels = (c: { convKernels: ConvKernels }) => ({ ...c, convKernels: convKernelsOn(g, c.convKernels) });
  const saved: Record<string, unknown> = kernels(savedConfig), now: Record<string, unknown> = kernels(nowConfig);
  const skip = new Set(["epochs", ...free]);
  const keys = [...new Set([...Object.keys(saved), ...Object.keys(now)])].filter((k) => !skip.has(k)).sort();
  const diff = keys.filter((k) => JSON.stringify(saved[k]) !== JSON.stringify(now[k]));
  if (diff.length) {
    throw new Error(
      `--resume with other settings than the run started with: ${
        diff.map((k) => `${k} was ${JSON.stringify(saved[k])}, now ${JSON.stringify(now[k])}`).join("; ")
      }`,
    );
  }
}

/** Uploads a sample's input as [1, C, D, H, W] (C must be `channels`). */
export function uploadInput(g: Gpu, s: Sample, channels: number, id: string): Tensor {
  const [c, d, h, w] = s.shape;
  if (c !== channels) throw new Error(`subject ${id}: ${c} sequences loaded, the network takes ${channels}`);
  return Tensor.from(g, [1, c, d, h, w], s.input);
}

/** Uploads a sample's labels (class indices 0..3) as u32 [1, D, H, W]. */
export function uploadLabels(g: Gpu, s: Sample, id: string): Tensor {
  const [, d, h, w] = s.shape;
  const labels = new Uint32Array(s.labels.length);
  for (let i = 0; i < labels.length; i++) {
    const l = s.labels[i];
    if (l > 3) throw new Error(`subject ${id}: label ${l} outside the classes 0..3`);
    labels[i] = l;
  }
  return Tensor.from(g, [1, d, h, w], labels);
}

export interface Evaluation {
  dice: Record<Region, number>;
  metric: number;
  loss: number;
}

/**
 * Eval-mode forward over subjects (validation or test) as the original's validation_epoch: mean Dice per region, the
 * metric and the mean weighted cross-entropy. The next subject loads while the GPU runs the current one.
 */
export async function evaluate(
  g: Gpu,
  net: UNet,
  ids: readonly string[],
  load: (id: string) => Promise<Sample>,
  weights: number[],
  tick: () => void = () => {},
): Promise<Evaluation> {
  const dice = Object.fromEntries(REGIONS.map((r) => [r, 0])) as Record<Region, number>;
  let loss = 0;
  await forEachPrefetched(ids, load, async (id, s, prefetchNext) => {
    const [lv, pv] = await scope(() => {
      const x = uploadInput(g, s, net.config.inChannels, id), y = uploadLabels(g, s, id);
      const out = noGrad(() => {
        const { logits } = net.forward(x, { training: false });
        return [crossEntropy(logits, y, weights), argmax(logits)];
      });
      const read = readAll(out); // submits the forward
      prefetchNext();
      return read;
    });
    const d = validationDice(new Uint32Array(pv.buffer, pv.byteOffset, pv.length), s.labels);
    for (const r of REGIONS) dice[r] += d[r] / ids.length;
    loss += lv[0] / ids.length;
    tick();
  });
  return { dice, metric: validationMetric(dice), loss };
}
