// Pre-training of the teacher (4 sequences) or the student (3), as the original Teacher_/Student_Pretraining.py:
// the original's generator init, AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, weight decay 1e-5 on every parameter),
// weighted cross-entropy whose class weights decay by 0.98 per epoch after the first (floored at 1), augmentation,
// order reshuffled each epoch, batch size 1. Validation each epoch: the original's Dice per region and loss (with
// that epoch's weights); metric = mean of WT, TC, ET Dice; the best checkpoint is replaced whenever an epoch's
// metric is >= every earlier one. The original builds a ReduceLROnPlateau (mode max, factor 0.5, patience 30) but
// never steps it: so by default the learning rate stays constant; `lrPlateau` steps it on the validation metric.
//
// Semantics are computed from the data root at the start and saved in the run folder. After every epoch the loop's
// whole state (network, optimiser with step counts, scheduler, metric history, EMA, and the shuffle, dropout and
// augmentation streams) goes to the resume checkpoint, so a resumed seeded run ends identical to an uninterrupted
// one. Random streams: init seed, shuffle seed + 1, dropout seed + 2, augmentation seed + 3.

import { type ConvKernels, setConvKernels, tuneConvs } from "../kernels/conv_select.ts";
import { augment, type Sample } from "../data/augment.ts";
import { computeSemantics, loadSemantics, type Semantics } from "../data/loader.ts";
import { Progress } from "../data/progress.ts";
import { checkSplit } from "../data/split.ts";
import type { Gpu } from "../kernels/device.ts";
import { loadSafetensors } from "../nn/safetensors.ts";
import { crossEntropy } from "../nn/ops/loss.ts";
import { AdamW } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, scope, type Tensor } from "../nn/tensor.ts";
import { UNet } from "../nn/unet.ts";
import {
  CE_WEIGHTS,
  checkResumeConfig,
  Ema,
  EPOCHS_DIR,
  epochWeights,
  evaluate,
  type Evaluation,
  loadResume,
  type Region,
  restoreOptimiser,
  restoreParams,
  RESUME_FILE,
  RunDir,
  saveModel,
  saveResume,
  SEMANTICS_FILE,
  uploadInput,
  uploadLabels,
} from "./common.ts";
import { forEachPrefetched, resolveDataRoot, SubjectCache } from "./data.ts";
import { Plateau } from "./plateau.ts";

export type Role = "teacher" | "student";

export interface PretrainConfig {
  role: Role;
  /** Preprocessed data (the subjects' root, or a preprocessing output folder holding BRATS/). */
  data: string;
  train: string[];
  validation: string[];
  /** Held-out subjects with labels: the best model is evaluated on them at the end (may be empty). */
  test: string[];
  /** Run folder for config, logs and checkpoints. */
  out: string;
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
  /** Keep a copy of each epoch's full state under epochs/. */
  continuousSaving: boolean;
  seed: number;
  /** How convolution kernels are picked (conv_select.ts); tuned runs are not bit-reproducible. */
  convKernels: ConvKernels;
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
  continuousSaving: false,
  seed: 0,
  test: [] as string[],
  convKernels: "auto" as ConvKernels,
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

export interface PretrainResult {
  history: EpochResult[];
  /** The best model on the test list, when one was given. */
  test?: Evaluation;
}

type RngState = ReturnType<Rng["state"]>;

/** The loop's state in the resume checkpoint. */
interface PretrainState {
  config: PretrainConfig;
  epoch: number;
  history: EpochResult[];
  lr: number;
  rng: { shuffle: RngState; dropout: RngState; augment: RngState };
  plateau: ReturnType<Plateau["state"]>;
  ema: ReturnType<Ema["state"]>;
}

export interface RunOptions {
  /** Continue the run in cfg.out from its resume checkpoint. */
  resume?: boolean;
  /** Bytes of loaded subjects kept in memory (default: data.ts defaultCacheBytes). */
  cacheBytes?: number;
  /** Progress bar output (default stderr). */
  write?: (text: string) => void;
}

/** Checks lists and data, and computes (fresh run) or reads back (resume) the semantics; writes nothing. */
export async function prepareData(
  cfg: { data: string; train: string[]; validation: string[]; test: string[]; out: string },
  resume: boolean,
): Promise<{ root: string; semantics: Semantics }> {
  if (!cfg.train.length) throw new Error("the training list is empty");
  if (!cfg.validation.length) throw new Error("the validation list is empty");
  const root = resolveDataRoot(cfg.data);
  checkSplit({ training: cfg.train, validation: cfg.validation, test: cfg.test }, root);
  if (resume) {
    const path = `${cfg.out}/${SEMANTICS_FILE}`;
    try {
      return { root, semantics: await loadSemantics(path) };
    } catch (e) {
      throw new Error(`--resume: cannot read the run's semantics ${path} (${(e as Error).message})`);
    }
  }
  const semantics = await computeSemantics(root);
  return { root, semantics };
}

export async function pretrain(g: Gpu, cfg: PretrainConfig, o: RunOptions = {}): Promise<PretrainResult> {
  const inChannels = cfg.role === "teacher" ? 4 : 3;
  const { root, semantics } = await prepareData(cfg, !!o.resume);
  const ck = o.resume ? await loadResume<PretrainState>(`${cfg.out}/${RESUME_FILE}`) : null;
  // Settings a run predates take their defaults (what it ran with).
  if (ck) checkResumeConfig(g, { ...PRETRAIN_DEFAULTS, ...ck.state.config }, cfg, ["continuousSaving", "out"]);
  setConvKernels(g, cfg.convKernels);
  const cache = new SubjectCache(root, semantics, cfg.role, o.cacheBytes);

  const initRng = new Rng(cfg.seed), shuffleRng = new Rng(cfg.seed + 1);
  const dropRng = new Rng(cfg.seed + 2), augRng = new Rng(cfg.seed + 3);
  const net = new UNet(g, { inChannels, k: cfg.k, classes: 4, dropout: cfg.dropout }, initRng);
  const opt = new AdamW(net.params.list(), {
    lr: cfg.lr,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: cfg.weightDecay,
  });
  const plateau = new Plateau({ factor: 0.5, patience: 30 });
  const ema = new Ema(0.95);
  let history: EpochResult[] = [];
  let run: RunDir | null = null;
  let bar: Progress | null = null;
  try {
    if (ck) {
      const st = ck.state;
      restoreParams(ck, "model", net.params);
      restoreOptimiser(ck, "opt", opt);
      opt.lr = st.lr;
      shuffleRng.setState(st.rng.shuffle);
      dropRng.setState(st.rng.dropout);
      augRng.setState(st.rng.augment);
      plateau.setState(st.plateau);
      ema.setState(st.ema);
      history = st.history;
      run = await RunDir.resume(cfg.out, st.epoch);
      run.log({ event: "resume", epoch: st.epoch, epochs: cfg.epochs });
    } else {
      run = await RunDir.create(cfg.out, cfg);
      await run.writeJson(SEMANTICS_FILE, semantics);
      run.log({
        event: "start",
        role: cfg.role,
        semantics,
        train: cfg.train.length,
        validation: cfg.validation.length,
      });
    }
    const first = history.length + 1;
    const perEpoch = cfg.train.length + cfg.validation.length;
    bar = new Progress(Math.max(0, cfg.epochs - first + 1) * perEpoch, `pretrain ${cfg.role}`, { write: o.write });
    const loopState = (epoch: number): PretrainState => ({
      config: { ...cfg },
      epoch,
      history,
      lr: opt.lr,
      rng: { shuffle: shuffleRng.state(), dropout: dropRng.state(), augment: augRng.state() },
      plateau: plateau.state(),
      ema: ema.state(),
    });
    const load = async (id: string): Promise<Sample> => {
      const s = await cache.get(id);
      return cfg.augment ? augment(augRng, s) : s;
    };
    const bestPath = `${cfg.out}/${CHECKPOINT_NAMES[cfg.role]}`;
    for (let epoch = first; epoch <= cfg.epochs; epoch++) {
      const weights = epochWeights(cfg.classWeights, epoch, cfg.weightDecayFactor);
      let lossSum = 0;
      await forEachPrefetched(shuffleRng.shuffle(cfg.train), load, async (id, s, prefetchNext) => {
        const loss: Tensor = scope(() => {
          const x = uploadInput(g, s, inChannels, id), y = uploadLabels(g, s, id);
          const { logits } = net.forward(x, { training: true, rng: dropRng });
          const l = crossEntropy(logits, y, weights);
          backward(l);
          opt.step();
          net.params.zeroGrad();
          return l;
        });
        g.flush();
        prefetchNext(); // the next sample loads and augments while the GPU runs this step
        const [v] = await loss.toArray();
        loss.dispose();
        if (!Number.isFinite(v)) throw new Error(`epoch ${epoch}, subject ${id}: training loss is ${v}`);
        lossSum += v;
        for (const c of await tuneConvs(g)) run!.log({ event: "tune", epoch, ...c }); // --conv-kernel tuned
        bar!.tick();
      });
      const v = await evaluate(g, net, cfg.validation, (id) => cache.get(id), weights, () => bar!.tick());
      const best = await keepBest(bestPath, net, cfg.role, epoch, v.metric, history);
      if (cfg.lrPlateau) opt.lr = plateau.step(v.metric, opt.lr);
      const r: EpochResult = {
        epoch,
        trainLoss: lossSum / cfg.train.length,
        valLoss: v.loss,
        dice: v.dice,
        metric: v.metric,
        best,
      };
      history = [...history, r];
      const e = ema.update(v.metric);
      run.log({ ...r, lr: opt.lr, emaMetric: e.ema, emaMetricCorrected: e.corrected, classWeights: weights });
      bar.log(
        `epoch ${epoch}: loss ${r.trainLoss.toFixed(4)}, val loss ${v.loss.toFixed(4)}, metric ${v.metric.toFixed(4)}`,
      );
      await saveEpoch(cfg.out, epoch, cfg.continuousSaving, { model: net.params }, { opt }, loopState(epoch));
    }
    const weights = epochWeights(cfg.classWeights, Math.max(history.length, 1), cfg.weightDecayFactor);
    const test = await testBest(g, net, bestPath, cfg.test, (id) => cache.get(id), weights, run, bar);
    return { history, test };
  } finally {
    bar?.finish();
    run?.close();
    opt.dispose();
    net.params.dispose();
  }
}

/** The resume checkpoint of an epoch, and its per-epoch copy under continuous saving. */
export async function saveEpoch(
  out: string,
  epoch: number,
  keepCopy: boolean,
  nets: Parameters<typeof saveResume>[1],
  opts: Parameters<typeof saveResume>[2],
  state: Parameters<typeof saveResume>[3],
) {
  let copy: string | undefined;
  if (keepCopy) {
    await Deno.mkdir(`${out}/${EPOCHS_DIR}`, { recursive: true });
    copy = `${out}/${EPOCHS_DIR}/epoch_${String(epoch).padStart(4, "0")}.safetensors`;
  }
  await saveResume(`${out}/${RESUME_FILE}`, nets, opts, state, copy);
}

/**
 * Whether an epoch's validation metric is >= every earlier epoch's; if so, `net` is saved as the best checkpoint
 * `path` with its role and epoch in the metadata.
 */
export async function keepBest(
  path: string,
  net: UNet,
  role: Role,
  epoch: number,
  metric: number,
  history: readonly { metric: number }[],
): Promise<boolean> {
  const best = history.every((h) => metric >= h.metric);
  if (best) {
    const { k, inChannels, classes } = net.config;
    await saveModel(path, net.params, { kind: "generator", k, sequences: inChannels, classes, role, epoch });
  }
  return best;
}

/** The best checkpoint `path` loaded into `net` and evaluated on the test subjects (logged and shown), if any. */
export async function testBest(
  g: Gpu,
  net: UNet,
  path: string,
  ids: readonly string[],
  load: (id: string) => Promise<Sample>,
  weights: number[],
  run: RunDir,
  bar: Progress,
): Promise<Evaluation | undefined> {
  if (!ids.length) return undefined;
  net.params.load((await loadSafetensors(path)).tensors, path);
  const test = await evaluate(g, net, ids, load, weights);
  run.log({ event: "test", subjects: ids.length, ...test });
  bar.log(`test (best model): ${formatDice(test)}`);
  return test;
}

function formatDice(e: Evaluation): string {
  return Object.entries(e.dice).map(([r, d]) => `${r} ${d.toFixed(4)}`).join(", ") +
    `, metric ${e.metric.toFixed(4)}, loss ${e.loss.toFixed(4)}`;
}
