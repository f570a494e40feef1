// What pre-training and HAD-Net training share: the run folder (resolved config, JSON-lines log, checkpoints), the
// original's validation Dice, subject caching, and model checkpoint files.

import { JsonlLog } from "../data/progress.ts";
import { saveSafetensors } from "../nn/safetensors.ts";
import type { Params } from "../nn/module.ts";

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

  static async create(path: string, config: unknown): Promise<RunDir> {
    await Deno.mkdir(path, { recursive: true });
    const r = new RunDir(path, await JsonlLog.open(`${path}/log.jsonl`));
    await r.writeJson("config.json", config);
    return r;
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
