// Pre-training of the teacher (4 sequences) or the student (3), as the original Teacher_/Student_Pretraining.py:
// AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, weight decay 1e-5 on every parameter), weighted cross-entropy whose
// class weights decay by 0.98 per epoch after the first (floored at 1), augmentation, order reshuffled each epoch,
// batch size 1. Validation each epoch: the original's Dice per region and loss (with that epoch's weights); metric =
// mean of WT, TC, ET Dice; the best checkpoint is replaced whenever an epoch's metric is >= every earlier one. The
// original builds a ReduceLROnPlateau (mode max, factor 0.5, patience 30) but never steps it: so by default the
// learning rate stays constant; `lrPlateau` steps it on the validation metric.

import { augment, type Sample } from "../data/augment.ts";
import type { Gpu } from "../kernels/device.ts";
import { argmax, crossEntropy } from "../nn/ops/loss.ts";
import { AdamW } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, readAll, scope, Tensor } from "../nn/tensor.ts";
import { UNet } from "../nn/unet.ts";
import { CE_WEIGHTS, Ema, epochWeights, type Region, REGIONS, RunDir, saveModel, validationDice, validationMetric } from "./common.ts";
import { Plateau } from "./plateau.ts";
import { Progress } from "../data/progress.ts";

export type Role = "teacher" | "student";

export interface PretrainConfig {
  role: Role;
  /** Run folder for config, logs and checkpoints. */
  out: string;
  train: string[];
  validation: string[];
  epochs: number;
  k: number;
  dropout: number;
  lr: number;
  weightDecay: number;
  /** Per-epoch decay of the class weights. */
  weightDecayFactor: number;
  classWeights: number[];
  augment: boolean;
  lrPlateau: boolean;
  seed: number;
}

export const PRETRAIN_DEFAULTS = {
  epochs: 400,
  k: 32,
  dropout: 0.2,
  lr: 2e-4,
  weightDecay: 1e-5,
  weightDecayFactor: 0.98,
  classWeights: CE_WEIGHTS,
  augment: true,
  lrPlateau: false,
  seed: 0,
};

export const CHECKPOINT_NAMES: Record<Role, string> = {
  teacher: "Pre_Trained_Teacher_BEST_VAL_VM.safetensors",
  student: "Pre_Trained_Student_BEST_VAL_VM.safetensors",
};

export interface EpochResult {
  epoch: number;
  trainLoss: number;
  valLoss: number;
  dice: Record<Region, number>;
  metric: number;
  best: boolean;
}

/** Loads a subject's padded, normalised arrays for a role (from the data loader, cached by the caller). */
export type SampleSource = (id: string) => Promise<Sample>;

export async function pretrain(g: Gpu, cfg: PretrainConfig, source: SampleSource): Promise<EpochResult[]> {
  if (!cfg.train.length) throw new Error("pretrain: the training list is empty");
  if (!cfg.validation.length) throw new Error("pretrain: the validation list is empty");
  const run = await RunDir.create(cfg.out, cfg);
  const inChannels = cfg.role === "teacher" ? 4 : 3;
  const initRng = new Rng(cfg.seed), shuffleRng = new Rng(cfg.seed + 1);
  const dropRng = new Rng(cfg.seed + 2), augRng = new Rng(cfg.seed + 3);
  const net = new UNet(g, { inChannels, k: cfg.k, classes: 4, dropout: cfg.dropout }, initRng);
  const opt = new AdamW(net.params.list(), { lr: cfg.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: cfg.weightDecay });
  const plateau = new Plateau({ factor: 0.5, patience: 30 });
  const ema = new Ema(0.95);
  const history: EpochResult[] = [];
  let bestMetric = -Infinity;
  const bar = new Progress(cfg.epochs * (cfg.train.length + cfg.validation.length), `pretrain ${cfg.role}`);
  try {
    for (let epoch = 1; epoch <= cfg.epochs; epoch++) {
      const weights = epochWeights(cfg.classWeights, epoch, cfg.weightDecayFactor);
      const losses: Tensor[] = [];
      for (const id of shuffleRng.shuffle(cfg.train)) {
        let s = await source(id);
        if (cfg.augment) s = augment(augRng, s);
        losses.push(scope(() => {
          const [x, y] = upload(g, s, inChannels, id);
          const { logits } = net.forward(x, { training: true, rng: dropRng });
          const loss = crossEntropy(logits, y, weights);
          backward(loss);
          opt.step();
          net.params.zeroGrad();
          return loss;
        }));
        bar.tick();
      }
      const trainLoss = mean(await readAll(losses));
      losses.forEach((t) => t.dispose());
      const v = await validate(g, net, cfg.validation, source, weights, () => bar.tick());
      const metric = validationMetric(v.dice);
      const best = metric >= bestMetric;
      if (best) {
        bestMetric = metric;
        await saveModel(`${run.path}/${CHECKPOINT_NAMES[cfg.role]}`, net.params, {
          kind: "generator",
          k: cfg.k,
          sequences: inChannels,
          classes: 4,
          role: cfg.role,
          epoch,
        });
      }
      if (cfg.lrPlateau) opt.lr = plateau.step(metric, opt.lr);
      const r: EpochResult = { epoch, trainLoss, valLoss: v.loss, dice: v.dice, metric, best };
      history.push(r);
      const e = ema.update(metric);
      run.log({ ...r, lr: opt.lr, emaMetric: e.ema, emaMetricCorrected: e.corrected, classWeights: weights });
      bar.log(`epoch ${epoch} loss ${trainLoss.toFixed(4)} val ${metric.toFixed(4)}`);
    }
  } finally {
    bar.finish();
    run.close();
    opt.dispose();
    net.params.dispose();
  }
  return history;
}

/** Uploads a sample as [1, C, D, H, W] input (the first `channels` of the sample must be the role's) and labels. */
export function upload(g: Gpu, s: Sample, channels: number, id: string): [Tensor, Tensor] {
  const [c, d, h, w] = s.shape;
  if (c !== channels) throw new Error(`subject ${id}: ${c} sequences loaded, the network takes ${channels}`);
  const labels = new Uint32Array(s.labels.length);
  for (let i = 0; i < labels.length; i++) {
    const l = s.labels[i];
    if (l > 3) throw new Error(`subject ${id}: label ${l} outside the classes 0..3`);
    labels[i] = l;
  }
  return [Tensor.from(g, [1, c, d, h, w], s.input), Tensor.from(g, [1, d, h, w], labels)];
}

/** Eval-mode forward over the validation subjects: the original's Dice per region (mean) and the mean loss. */
export async function validate(
  g: Gpu,
  net: UNet,
  ids: string[],
  source: SampleSource,
  weights: number[],
  tick: () => void = () => {},
): Promise<{ dice: Record<Region, number>; loss: number }> {
  const sums = Object.fromEntries(REGIONS.map((r) => [r, 0])) as Record<Region, number>;
  let loss = 0;
  for (const id of ids) {
    const s = await source(id);
    const [pred, l] = await scope(async () => {
      const [x, y] = upload(g, s, net.config.inChannels, id);
      const { p, lt } = noGrad(() => {
        const { logits } = net.forward(x, { training: false });
        return { p: argmax(logits), lt: crossEntropy(logits, y, weights) };
      });
      const [lv] = await readAll([lt]);
      return [await p.toU32(), lv[0]] as const;
    });
    const d = validationDice(pred, s.labels);
    for (const r of REGIONS) sums[r] += d[r] / ids.length;
    loss += l / ids.length;
    tick();
  }
  return { dice: sums, loss };
}

function mean(xs: Float32Array[]): number {
  return xs.reduce((a, x) => a + x[0], 0) / Math.max(xs.length, 1);
}
