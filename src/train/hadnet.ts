// HAD-Net training, as the original HAD_Net.py: the pre-trained teacher (no gradients, training mode with dropout
// live unless teacherEval) and student, a fresh hierarchical discriminator (PyTorch's default init), Adam lr 2e-4,
// betas 0.5/0.999 for both, fixed class weights, no augmentation, order reshuffled each epoch.
//
// Per sample, in this order: teacher forward (real segmentation and features); student forward; student loss =
// CE(weights) + 0.2 x MSE(D(student seg, x_student, student features), 1); backward and the student's Adam step (the
// discriminator's gradients from that pass are not kept); discriminator loss = MSE(D(teacher seg, x_student, teacher
// features), 1) + MSE(D(student seg and features from before the student's step, detached), 0); the discriminator
// steps only when its accuracy (mean of the fractions D(real) >= 0.5 and D(fake) <= 0.5) is <= discThreshold —
// otherwise its Adam state, step count included, is untouched.

import type { Gpu } from "../kernels/device.ts";
import { Discriminator } from "../nn/discriminator.ts";
import type { StateDict } from "../nn/module.ts";
import { add, affine } from "../nn/ops/elementwise.ts";
import { crossEntropy, mse } from "../nn/ops/loss.ts";
import { Adam } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, readAll, scope, type Tensor } from "../nn/tensor.ts";
import { type FeaturePairs, UNet } from "../nn/unet.ts";
import { CE_WEIGHTS, Ema, type Region, RunDir, saveModel, validationMetric } from "./common.ts";
import { type SampleSource, upload, validate } from "./pretrain.ts";
import { Progress } from "../data/progress.ts";

export interface HadnetConfig {
  out: string;
  train: string[];
  validation: string[];
  epochs: number;
  k: number;
  dropout: number;
  lr: number;
  betas: [number, number];
  lambdaAdv: number;
  discThreshold: number;
  classWeights: number[];
  teacherEval: boolean;
  /** false: the AD-Net ablation (discriminator without feature pairs). */
  hierarchical: boolean;
  seed: number;
}

export const HADNET_DEFAULTS = {
  epochs: 800,
  dropout: 0.2,
  lr: 2e-4,
  betas: [0.5, 0.999] as [number, number],
  lambdaAdv: 0.2,
  discThreshold: 0.8,
  classWeights: CE_WEIGHTS,
  teacherEval: false,
  hierarchical: true,
  seed: 0,
};

export const HADNET_CHECKPOINT = "HAD_Net_BEST_VAL_VM.safetensors";

/** The networks and optimisers of one HAD-Net run; `step` is one sample's update. */
export class HadnetTrainer {
  readonly teacher: UNet;
  readonly student: UNet;
  readonly disc: Discriminator;
  readonly optG: Adam;
  readonly optD: Adam;
  readonly cfg: Pick<HadnetConfig, "lambdaAdv" | "discThreshold" | "classWeights" | "teacherEval" | "hierarchical">;
  readonly dropRng: Rng;

  constructor(
    g: Gpu,
    cfg: HadnetTrainer["cfg"] & { k: number; dropout: number; lr: number; betas: [number, number]; seed: number },
    weights: { teacher: StateDict; student: StateDict; sources: [string, string] },
  ) {
    this.cfg = cfg;
    const init = new Rng(cfg.seed);
    this.dropRng = new Rng(cfg.seed + 2);
    this.teacher = new UNet(g, { inChannels: 4, k: cfg.k, classes: 4, dropout: cfg.dropout }, init);
    this.student = new UNet(g, { inChannels: 3, k: cfg.k, classes: 4, dropout: cfg.dropout }, init);
    this.teacher.params.load(weights.teacher, weights.sources[0]);
    this.student.params.load(weights.student, weights.sources[1]);
    for (const p of this.teacher.params.list()) p.requiresGrad = false;
    this.disc = new Discriminator(g, { inChannels: 7, k: cfg.k, hierarchical: cfg.hierarchical }, init);
    this.optG = new Adam(this.student.params.list(), { lr: cfg.lr, betas: cfg.betas, eps: 1e-8 });
    this.optD = new Adam(this.disc.params.list(), { lr: cfg.lr, betas: cfg.betas, eps: 1e-8 });
  }

  /**
   * One HAD-Net update on one sample. `training` false runs every network in eval mode (used by the golden test).
   * Returns the losses (GPU scalars, read back by the caller in batches) and whether the discriminator stepped.
   */
  async step(xt: Tensor, xs: Tensor, y: Tensor, training = true): Promise<{ losses: Tensor[]; discStepped: boolean; accuracy: number }> {
    const mode = training ? { training: true, rng: this.dropRng } : { training: false };
    const feats = (f: FeaturePairs) => this.cfg.hierarchical ? f : null;
    const real = noGrad(() => this.teacher.forward(xt, this.cfg.teacherEval ? { training: false } : mode));
    const fake = this.student.forward(xs, mode);
    // The generator pass: the discriminator's parameters take no gradient here (the original discards them).
    const dps = this.disc.params.list();
    for (const p of dps) p.requiresGrad = false;
    const adv = this.disc.forward(fake.logits, xs, feats(fake.features));
    const lossVox = crossEntropy(fake.logits, y, this.cfg.classWeights);
    const lossGan = mse(adv, 1);
    const genLoss = add(lossVox, affine(lossGan, this.cfg.lambdaAdv));
    backward(genLoss);
    this.optG.step();
    this.student.params.zeroGrad();
    for (const p of dps) p.requiresGrad = true;
    // The discriminator pass on detached inputs: the student's outputs from before its step.
    const detach = (f: FeaturePairs) => f.map(([a, b]) => [a.detach(), b.detach()]) as FeaturePairs;
    const dr = this.disc.forward(real.logits, xs, feats(real.features));
    const df = this.disc.forward(fake.logits.detach(), xs, feats(detach(fake.features)));
    const discLoss = add(mse(dr, 1), mse(df, 0));
    const [rv, fv] = await readAll([dr, df]);
    const accuracy = (rv.filter((v) => v >= 0.5).length / rv.length + fv.filter((v) => v <= 0.5).length / fv.length) / 2;
    const discStepped = accuracy <= this.cfg.discThreshold;
    if (discStepped) {
      backward(discLoss);
      this.optD.step();
    }
    this.disc.params.zeroGrad();
    return { losses: [lossVox, lossGan, genLoss, discLoss], discStepped, accuracy };
  }

  dispose() {
    this.optG.dispose();
    this.optD.dispose();
    for (const n of [this.teacher, this.student, this.disc]) n.params.dispose();
  }
}

export async function trainHadnet(
  g: Gpu,
  cfg: HadnetConfig,
  weights: { teacher: StateDict; student: StateDict; sources: [string, string] },
  teacherSource: SampleSource,
  studentSource: SampleSource,
): Promise<{ epoch: number; metric: number; dice: Record<Region, number> }[]> {
  if (!cfg.train.length) throw new Error("train: the training list is empty");
  if (!cfg.validation.length) throw new Error("train: the validation list is empty");
  const run = await RunDir.create(cfg.out, cfg);
  const t = new HadnetTrainer(g, cfg, weights);
  const shuffleRng = new Rng(cfg.seed + 1);
  const ema = new Ema(0.95);
  const history = [];
  let bestMetric = -Infinity;
  const bar = new Progress(cfg.epochs * (cfg.train.length + cfg.validation.length), "HAD-Net");
  try {
    for (let epoch = 1; epoch <= cfg.epochs; epoch++) {
      const losses: Tensor[][] = [];
      let discSteps = 0, accSum = 0;
      for (const id of shuffleRng.shuffle(cfg.train)) {
        const [st, ss] = [await teacherSource(id), await studentSource(id)];
        const r = await scope(async () => {
          const [xt, y] = upload(g, st, 4, id);
          const [xs] = upload(g, ss, 3, id);
          return await t.step(xt, xs, y);
        });
        losses.push(r.losses);
        discSteps += r.discStepped ? 1 : 0;
        accSum += r.accuracy;
        bar.tick();
      }
      const lv = await readAll(losses.flat());
      losses.flat().forEach((x) => x.dispose());
      const meanOf = (j: number) => lv.filter((_, i) => i % 4 === j).reduce((a, x) => a + x[0], 0) / losses.length;
      const v = await validate(g, t.student, cfg.validation, studentSource, cfg.classWeights, () => bar.tick());
      const metric = validationMetric(v.dice);
      const best = metric >= bestMetric;
      if (best) {
        bestMetric = metric;
        await saveModel(`${run.path}/${HADNET_CHECKPOINT}`, t.student.params, {
          kind: "generator",
          k: cfg.k,
          sequences: 3,
          classes: 4,
          role: "student",
          epoch,
        });
      }
      const e = ema.update(metric);
      const entry = {
        epoch,
        lossVox: meanOf(0),
        lossGan: meanOf(1),
        genLoss: meanOf(2),
        discLoss: meanOf(3),
        discAccuracy: accSum / cfg.train.length,
        discSteps,
        valLoss: v.loss,
        dice: v.dice,
        metric,
        best,
        emaMetric: e.ema,
        emaMetricCorrected: e.corrected,
      };
      history.push({ epoch, metric, dice: v.dice });
      run.log(entry);
      bar.log(`epoch ${epoch} gen ${entry.genLoss.toFixed(4)} disc ${entry.discLoss.toFixed(4)} val ${metric.toFixed(4)}`);
    }
  } finally {
    bar.finish();
    run.close();
    t.dispose();
  }
  return history;
}
