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
//
// Teacher and student come from pre-trained checkpoints (hadnet's .safetensors or the original's .pth); k is read from
// the weights. Semantics, validation, best checkpoint, EMA, continuous saving and resume work as in pretrain.ts (the
// resume checkpoint holds teacher, student, discriminator and both optimisers). Random streams: discriminator init
// seed, shuffle seed + 1, dropout seed + 2.

import { type ConvKernels, setConvKernels, tuneConvs } from "../kernels/conv_select.ts";
import type { Sample } from "../data/augment.ts";
import { Progress } from "../data/progress.ts";
import type { Gpu } from "../kernels/device.ts";
import { loadWeights } from "../nn/checkpoint.ts";
import { Discriminator } from "../nn/discriminator.ts";
import type { StateDict } from "../nn/module.ts";
import { add, affine } from "../nn/ops/elementwise.ts";
import { crossEntropy, mse } from "../nn/ops/loss.ts";
import { Adam } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, readAll, scope, type Tensor } from "../nn/tensor.ts";
import { type FeaturePairs, generatorMeta, UNet } from "../nn/unet.ts";
import {
  CE_WEIGHTS,
  checkResumeConfig,
  Ema,
  evaluate,
  type Evaluation,
  loadResume,
  prefixed,
  type Region,
  restoreOptimiser,
  restoreParams,
  RESUME_FILE,
  RunDir,
  SEMANTICS_FILE,
  uploadInput,
  uploadLabels,
} from "./common.ts";
import { forEachPrefetched, studentView, SubjectCache } from "./data.ts";
import { keepBest, prepareData, type RunOptions, saveEpoch, testBest } from "./pretrain.ts";

export interface HadnetConfig {
  /** Preprocessed data (the subjects' root, or a preprocessing output folder holding BRATS/). */
  data: string;
  train: string[];
  validation: string[];
  /** Held-out subjects with labels: the best student is evaluated on them at the end (may be empty). */
  test: string[];
  /** Pre-trained teacher and student weights (.safetensors or .pth). */
  teacher: string;
  student: string;
  out: string;
  epochs: number;
  dropout: number;
  lr: number;
  betas: [number, number];
  lambdaAdv: number;
  discThreshold: number;
  classWeights: number[];
  teacherEval: boolean;
  /** false: the AD-Net ablation (discriminator without feature pairs). */
  hierarchical: boolean;
  continuousSaving: boolean;
  seed: number;
  /** How convolution kernels are picked (conv_select.ts); tuned runs are not bit-reproducible. */
  convKernels: ConvKernels;
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
  continuousSaving: false,
  seed: 0,
  test: [] as string[],
  convKernels: "auto" as ConvKernels,
};

export const HADNET_CHECKPOINT = "HAD_Net_BEST_VAL_VM.safetensors";

export type TrainerConfig =
  & Pick<
    HadnetConfig,
    | "lambdaAdv"
    | "discThreshold"
    | "classWeights"
    | "teacherEval"
    | "hierarchical"
    | "dropout"
    | "lr"
    | "betas"
    | "seed"
  >
  & { k: number };

/** Teacher and student weights and where they came from (for error messages). */
export interface GeneratorWeights {
  teacher: StateDict;
  student: StateDict;
  sources: [string, string];
}

/** Pre-trained teacher and student weights with the k they share. */
export interface PretrainedPair extends GeneratorWeights {
  k: number;
}

/**
 * Reads the pre-trained teacher (4 sequences) and student (3): k, sequences and classes come off the weights; a
 * wrong sequence count, class count or a k that differs between them is one error naming both files.
 */
export async function loadPretrainedPair(teacher: string, student: string): Promise<PretrainedPair> {
  const read = async (path: string, role: string, sequences: number) => {
    const { tensors } = await loadWeights(path);
    const m = generatorMeta(tensors, path);
    if (Number(m.sequences) !== sequences || Number(m.classes) !== 4) {
      throw new Error(
        `${path}: a generator for ${m.sequences} sequences and ${m.classes} classes, ` +
          `but the ${role} takes ${sequences} sequences and 4 classes`,
      );
    }
    return { tensors, k: Number(m.k) };
  };
  const t = await read(teacher, "teacher", 4), s = await read(student, "student", 3);
  if (t.k !== s.k) throw new Error(`teacher ${teacher} has k = ${t.k} but student ${student} has k = ${s.k}`);
  return { k: t.k, teacher: t.tensors, student: s.tensors, sources: [teacher, student] };
}

/** The networks and optimisers of one HAD-Net run; `step` is one sample's update. */
export class HadnetTrainer {
  readonly teacher: UNet;
  readonly student: UNet;
  readonly disc: Discriminator;
  readonly optG: Adam;
  readonly optD: Adam;
  readonly cfg: TrainerConfig;
  readonly dropRng: Rng;

  constructor(g: Gpu, cfg: TrainerConfig, weights: GeneratorWeights) {
    this.cfg = cfg;
    const { k } = cfg;
    // The generators' init is overwritten by the checkpoints; the discriminator's is drawn from its own stream.
    const unused = new Rng(0);
    this.dropRng = new Rng(cfg.seed + 2);
    this.teacher = new UNet(g, { inChannels: 4, k, classes: 4, dropout: cfg.dropout }, unused);
    this.student = new UNet(g, { inChannels: 3, k, classes: 4, dropout: cfg.dropout }, unused);
    this.teacher.params.load(weights.teacher, weights.sources[0]);
    this.student.params.load(weights.student, weights.sources[1]);
    for (const p of this.teacher.params.list()) p.requiresGrad = false;
    this.disc = new Discriminator(g, { inChannels: 7, k, hierarchical: cfg.hierarchical }, new Rng(cfg.seed));
    this.optG = new Adam(this.student.params.list(), { lr: cfg.lr, betas: cfg.betas, eps: 1e-8 });
    this.optD = new Adam(this.disc.params.list(), { lr: cfg.lr, betas: cfg.betas, eps: 1e-8 });
  }

  /**
   * One HAD-Net update on one sample. `training` false runs every network in eval mode (used by the golden test).
   * Returns the losses [vox, gan, gen, disc] (GPU scalars, read back by the caller in batches), whether the
   * discriminator stepped, and its accuracy. The generator pass is submitted before the first await.
   */
  async step(
    xt: Tensor,
    xs: Tensor,
    y: Tensor,
    training = true,
  ): Promise<{ losses: Tensor[]; discStepped: boolean; accuracy: number }> {
    const mode = training ? { training: true, rng: this.dropRng } : { training: false };
    const feats = (f: FeaturePairs) => this.cfg.hierarchical ? f : null;
    const real = noGrad(() => this.teacher.forward(xt, this.cfg.teacherEval ? { training: false } : mode));
    const fake = this.student.forward(xs, mode);
    // The generator pass: the discriminator's parameters take no gradient here (the original zeroes them before
    // its own backward), so nothing of this pass can reach optD.
    const dps = this.disc.params.list();
    let lossVox: Tensor, lossGan: Tensor, genLoss: Tensor;
    for (const p of dps) p.requiresGrad = false;
    try {
      const adv = this.disc.forward(fake.logits, xs, feats(fake.features));
      lossVox = crossEntropy(fake.logits, y, this.cfg.classWeights);
      lossGan = mse(adv, 1);
      genLoss = add(lossVox, affine(lossGan, this.cfg.lambdaAdv));
      backward(genLoss);
    } finally {
      for (const p of dps) p.requiresGrad = true;
    }
    this.optG.step();
    this.student.params.zeroGrad();
    // The discriminator pass on detached inputs: the student's outputs from before its step, whose graph the
    // generator's backward has spent, cut loose in place (no copies).
    for (const t of [fake.logits, ...fake.features.flat()]) t.detach_();
    const dr = this.disc.forward(real.logits, xs, feats(real.features));
    const df = this.disc.forward(fake.logits, xs, feats(fake.features));
    const discLoss = add(mse(dr, 1), mse(df, 0));
    const [rv, fv] = await readAll([dr, df]);
    const accuracy = (rv.filter((v) => v >= 0.5).length / rv.length + fv.filter((v) => v <= 0.5).length / fv.length) /
      2;
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

export interface HadnetEpoch {
  epoch: number;
  lossVox: number;
  lossGan: number;
  genLoss: number;
  discLoss: number;
  discAccuracy: number;
  discSteps: number;
  valLoss: number;
  dice: Record<Region, number>;
  metric: number;
  best: boolean;
}

type RngState = ReturnType<Rng["state"]>;

interface HadnetState {
  config: HadnetConfig;
  k: number;
  epoch: number;
  history: HadnetEpoch[];
  rng: { shuffle: RngState; dropout: RngState };
  ema: ReturnType<Ema["state"]>;
}

export async function trainHadnet(
  g: Gpu,
  cfg: HadnetConfig,
  o: RunOptions = {},
): Promise<{ history: HadnetEpoch[]; test?: Evaluation }> {
  const { root, semantics } = await prepareData(cfg, !!o.resume);
  const ck = o.resume ? await loadResume<HadnetState>(`${cfg.out}/${RESUME_FILE}`) : null;
  // Settings a run predates take their defaults (what it ran with).
  if (ck) checkResumeConfig(g, { ...HADNET_DEFAULTS, ...ck.state.config }, cfg, ["continuousSaving", "out"]);
  setConvKernels(g, cfg.convKernels);
  // On resume every network comes from the checkpoint; otherwise from the pre-trained files.
  const pair: PretrainedPair = ck
    ? {
      k: ck.state.k,
      teacher: prefixed(ck, "teacher"),
      student: prefixed(ck, "student"),
      sources: [`${ck.path} (teacher)`, `${ck.path} (student)`],
    }
    : await loadPretrainedPair(cfg.teacher, cfg.student);
  const cache = new SubjectCache(root, semantics, "teacher", o.cacheBytes);
  const t = new HadnetTrainer(g, { ...cfg, k: pair.k }, pair);
  const shuffleRng = new Rng(cfg.seed + 1);
  const ema = new Ema(0.95);
  let history: HadnetEpoch[] = [];
  let run: RunDir | null = null;
  let bar: Progress | null = null;
  try {
    if (ck) {
      restoreParams(ck, "disc", t.disc.params);
      restoreOptimiser(ck, "optG", t.optG);
      restoreOptimiser(ck, "optD", t.optD);
      shuffleRng.setState(ck.state.rng.shuffle);
      t.dropRng.setState(ck.state.rng.dropout);
      ema.setState(ck.state.ema);
      history = ck.state.history;
      run = await RunDir.resume(cfg.out, ck.state.epoch);
      run.log({ event: "resume", epoch: ck.state.epoch, epochs: cfg.epochs });
    } else {
      run = await RunDir.create(cfg.out, { ...cfg, k: pair.k });
      await run.writeJson(SEMANTICS_FILE, semantics);
      run.log({ event: "start", k: pair.k, semantics, train: cfg.train.length, validation: cfg.validation.length });
    }
    const first = history.length + 1;
    const perEpoch = cfg.train.length + cfg.validation.length;
    bar = new Progress(Math.max(0, cfg.epochs - first + 1) * perEpoch, "HAD-Net", { write: o.write });
    const pairOf = async (id: string) => {
      const s = await cache.get(id);
      return { teacher: s, student: studentView(s) };
    };
    const studentOf = async (id: string): Promise<Sample> => studentView(await cache.get(id));
    const bestPath = `${cfg.out}/${HADNET_CHECKPOINT}`;
    for (let epoch = first; epoch <= cfg.epochs; epoch++) {
      const losses: Tensor[] = [];
      let discSteps = 0, accSum = 0;
      await forEachPrefetched(shuffleRng.shuffle(cfg.train), pairOf, async (id, s, prefetchNext) => {
        const r = await scope(() => {
          const xt = uploadInput(g, s.teacher, 4, id), xs = uploadInput(g, s.student, 3, id);
          const step = t.step(xt, xs, uploadLabels(g, s.teacher, id));
          prefetchNext(); // the generator pass is submitted: load the next subject meanwhile
          return step;
        });
        losses.push(...r.losses);
        discSteps += r.discStepped ? 1 : 0;
        accSum += r.accuracy;
        for (const c of await tuneConvs(g)) run!.log({ event: "tune", epoch, ...c }); // --conv-kernel tuned
        bar!.tick();
      });
      const lv = await readAll(losses);
      losses.forEach((x) => x.dispose());
      const meanOf = (j: number) => lv.filter((_, i) => i % 4 === j).reduce((a, x) => a + x[0], 0) / cfg.train.length;
      const v = await evaluate(g, t.student, cfg.validation, studentOf, cfg.classWeights, () => bar!.tick());
      const best = await keepBest(bestPath, t.student, "student", epoch, v.metric, history);
      const e = ema.update(v.metric);
      const entry: HadnetEpoch = {
        epoch,
        lossVox: meanOf(0),
        lossGan: meanOf(1),
        genLoss: meanOf(2),
        discLoss: meanOf(3),
        discAccuracy: accSum / cfg.train.length,
        discSteps,
        valLoss: v.loss,
        dice: v.dice,
        metric: v.metric,
        best,
      };
      if (![entry.lossVox, entry.lossGan, entry.discLoss].every(Number.isFinite)) {
        throw new Error(`epoch ${epoch}: a training loss is not finite (${JSON.stringify(entry)})`);
      }
      history = [...history, entry];
      run.log({ ...entry, emaMetric: e.ema, emaMetricCorrected: e.corrected });
      bar.log(
        `epoch ${epoch}: gen ${entry.genLoss.toFixed(4)}, disc ${entry.discLoss.toFixed(4)} ` +
          `(${discSteps} steps), metric ${v.metric.toFixed(4)}`,
      );
      const state: HadnetState = {
        config: cfg,
        k: pair.k,
        epoch,
        history,
        rng: { shuffle: shuffleRng.state(), dropout: t.dropRng.state() },
        ema: ema.state(),
      };
      await saveEpoch(
        cfg.out,
        epoch,
        cfg.continuousSaving,
        { teacher: t.teacher.params, student: t.student.params, disc: t.disc.params },
        { optG: t.optG, optD: t.optD },
        state,
      );
    }
    const test = await testBest(g, t.student, bestPath, cfg.test, studentOf, cfg.classWeights, run, bar);
    return { history, test };
  } finally {
    bar?.finish();
    run?.close();
    t.dispose();
  }
}
