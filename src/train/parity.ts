// `hadnet parity <fixture-dir>`: holds hadnet's networks to a PyTorch golden fixture folder (layout of
// ../shared/fixtures/pytorch-golden): forward outputs and features of teacher and student, the discriminator's
// outputs, the losses, the student's and discriminator's gradients, and the student after one Adam step. Weights are
// loaded from both the .pth and the .safetensors files; both must give the reference outputs.
//
// Errors are max |ours - ref| / max |ref| per tensor; tolerances: forward 1e-4, gradients 1e-3. Three subtleties:
// - Gradients of conv biases that feed an instance norm are exactly zero in exact arithmetic (the norm removes the
//   mean); the reference holds rounding noise there, so those are held to 1e-3 of the network's largest gradient.
// - The networks are piecewise linear in their LeakyReLU patterns, and a float32 forward (PyTorch's as much as ours)
//   can put a pre-activation within ~1e-6 of zero on either side of the kink; the gradient then jumps (PyTorch's own
//   changes by 1e-3..2e-2 when its input is perturbed by 1e-7). So gradients are also checked against a float64 CPU
//   twin of the networks (src/nn/cpu_backend.ts): (a) the twin on its own pattern against the fixture, which pins
//   the architecture and conventions to PyTorch, and (b) the GPU against the twin forced onto the GPU's own pattern,
//   which pins every GPU kernel and the autodiff. The GPU-vs-fixture gradients are held to 1e-3 when the GPU's pattern
//   equals the float64 one (no kink crossed); otherwise they are reported with the number of crossings and carry no
//   verdict (tolerance null), since (a) and (b) then decide.
// - The Adam step is checked on its update: with the reference gradients (the optimiser alone, 1e-4) and with ours
//   (the fraction of elements whose update is off by more than 1e-3 of the largest, at most 1e-3; held like the
//   gradients when a kink is crossed; skipped for the norm-cancelled biases, whose Adam update follows the sign of
//   rounding noise in PyTorch as much as here).

import { loadNpy } from "../data/npy.ts";
import { gpu } from "../kernels/device.ts";
import { loadWeights } from "../nn/checkpoint.ts";
import { CpuBackend, type CpuTensor } from "../nn/cpu_backend.ts";
import { discForward, Discriminator } from "../nn/discriminator.ts";
import type { StateDict } from "../nn/module.ts";
import { add, affine } from "../nn/ops/elementwise.ts";
import { crossEntropy, mse } from "../nn/ops/loss.ts";
import { Adam } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, readAll, scope, Tensor } from "../nn/tensor.ts";
import { type FeaturePairs, UNet, type UNetConfig, unetForward } from "../nn/unet.ts";

export const FORWARD_TOL = 1e-4;
/**
 * Logits with f16 activation storage (inference) against the reference: an error budget of f16's unit roundoff
 * (2^-11) for each of the about 50 activations stored along the U-Net's deepest path. Not a proven bound (instance
 * norm can amplify an error where a plane's variance is small); the fixture's student uses 65% of it.
 */
export const F16_TOL = 50 * 2 ** -11;
export const GRAD_TOL = 1e-3;
const FEATURES = ["d2", "u3", "d3", "u4", "d4", "c5"] as const;

export interface ParityReport {
  fixture: string;
  adapter: string;
  /** max relative error per compared tensor or value */
  errors: Record<string, number>;
  /** the tolerance each entry was held to; null: reported only (a LeakyReLU kink was crossed, see kinkCrossings) */
  tolerances: Record<string, number | null>;
  /** LeakyReLU outputs whose sign differs between the GPU's float32 pass and the float64 twin, per pass */
  kinkCrossings: { teacher: number; generatorStep: number; discriminatorStep: number };
  /** With f16 activation storage: the fraction of voxels whose label (argmax) matches the reference's; null where
   * the adapter has no shader-f16 (its logits errors are in `errors`, held to F16_TOL). */
  f16LabelAgreement: { teacher: number; student: number } | null;
  failed: string[];
  ok: boolean;
}

interface Golden {
  k: number;
  ce_class_weights: number[];
  lambda_adv: number;
  loss_vox: number;
  loss_gan: number;
  gen_loss: number;
  disc_loss: number;
  adam: { lr: number; betas: [number, number]; eps: number };
}

/**
 * Max |got - ref| relative to max(|ref|, scale); NaN anywhere and a length mismatch give Infinity. The one relative
 * error of the parity check and of the tests' assertClose.
 */
export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>, scale = 0): number {
  if (got.length !== ref.length) return Infinity;
  let err = 0, mag = Math.max(scale, 1e-30);
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    err = Math.max(err, Number.isNaN(d) ? Infinity : d);
    mag = Math.max(mag, Math.abs(ref[i]));
  }
  return err / mag;
}

/** Conv biases directly followed by an instance norm: their exact gradient is zero. */
export function normCancelled(name: string): boolean {
  return /conv\.bias$|conv_up\.bias$|^disc_[234]\.0\.bias$/.test(name);
}

function maxAbs(ws: Iterable<ArrayLike<number>>): number {
  let m = 0;
  for (const w of ws) for (let i = 0; i < w.length; i++) m = Math.max(m, Math.abs(w[i]));
  return m;
}

export async function runParity(dir: string): Promise<ParityReport> {
  const g = await gpu();
  const golden: Golden = JSON.parse(await Deno.readTextFile(`${dir}/golden.json`));
  const { k } = golden;
  const npy = async (name: string) => {
    const a = await loadNpy(`${dir}/${name}.npy`);
    return { shape: a.shape, data: Float32Array.from(a.data as ArrayLike<number>) };
  };
  const weights = async (name: string): Promise<StateDict> => (await loadWeights(`${dir}/${name}`)).tensors;
  const errors: Record<string, number> = {};
  const tolerances: Record<string, number | null> = {};
  const check = (name: string, got: ArrayLike<number>, ref: ArrayLike<number>, tol: number | null, scale = 0) => {
    errors[name] = relErr(got, ref, scale);
    tolerances[name] = tol;
  };
  const tCfg: UNetConfig = { inChannels: 4, k, classes: 4, dropout: 0.2 };
  const sCfg: UNetConfig = { ...tCfg, inChannels: 3 };
  const dCfg = { inChannels: 7, k, hierarchical: true };
  const rng = new Rng(0);
  const teacher = new UNet(g, tCfg, rng);
  const student = new UNet(g, sCfg, rng);
  const disc = new Discriminator(g, dCfg, rng);
  const [ti, si, labels] = await Promise.all([
    npy("teacher_input"),
    npy("student_input"),
    loadNpy(`${dir}/labels.npy`),
  ]);
  const labelArr = Uint32Array.from(labels.data as ArrayLike<number>);
  const W = {
    teacher: await weights("teacher.safetensors"),
    student: await weights("student.safetensors"),
    disc: await weights("discriminator.safetensors"),
    studentGrads: await weights("student_grads.safetensors"),
    discGrads: await weights("discriminator_grads.safetensors"),
    after: await weights("student_after_adam.safetensors"),
  };
  const gpuGrads = { student: new Map<string, Float32Array>(), disc: new Map<string, Float32Array>() };
  const traces = { teacher: [] as Uint8Array[], gen: [] as Uint8Array[], disc: [] as Uint8Array[] };
  let stepped: StateDict = new Map(), steppedRef: StateDict = new Map();
  let f16LabelAgreement: ParityReport["f16LabelAgreement"] = null;
  const signs = async (ts: Tensor[]) => (await readAll(ts)).map((a) => Uint8Array.from(a, (v) => v > 0 ? 1 : 0));
  try {
    await scope(async () => {
      const xt = Tensor.from(g, ti.shape, ti.data);
      const xs = Tensor.from(g, si.shape, si.data);
      const y = Tensor.from(g, labels.shape, labelArr);
      const evalMode = (trace?: Tensor[]) => ({ training: false, trace });

      // Forward parity, once per weight format.
      for (const fmt of ["pth", "safetensors"]) {
        teacher.params.load(fmt === "pth" ? await weights("teacher.pth") : W.teacher, `${dir}/teacher.${fmt}`);
        student.params.load(fmt === "pth" ? await weights("student.pth") : W.student, `${dir}/student.${fmt}`);
        await scope(async () => {
          const outs = noGrad(() => ({ t: teacher.forward(xt, evalMode()), s: student.forward(xs, evalMode()) }));
          for (const [who, o] of [["teacher", outs.t], ["student", outs.s]] as const) {
            const got = await readAll([o.logits, ...o.features.flat()]);
            const names = [`${who}_logits`, ...FEATURES.map((f) => `${who}_feat_${f}`)];
            for (let i = 0; i < names.length; i++) {
              check(`${names[i]} (${fmt})`, got[i], (await npy(names[i])).data, FORWARD_TOL);
            }
          }
        });
      }
      disc.params.load(W.disc, `${dir}/discriminator.safetensors`);

      // The f16-storage option (inference) on the same weights and inputs.
      if (g.features.has("shader-f16")) {
        f16LabelAgreement = await scope(async () => {
          const half = { training: false, storage: "f16" as const };
          const outs = noGrad(() => [teacher.forward(xt, half).logits, student.forward(xs, half).logits]);
          const got = await readAll(outs);
          const agree: number[] = [];
          for (const [i, who] of (["teacher", "student"] as const).entries()) {
            const ref = (await npy(`${who}_logits`)).data;
            check(`${who}_logits (f16 storage)`, got[i], ref, F16_TOL);
            agree.push(labelAgreement(got[i], ref, outs[i].shape[1]));
          }
          return { teacher: agree[0], student: agree[1] };
        });
      }

      // One HAD-Net generator step, as HAD_Net.py orders it, tracing every LeakyReLU output.
      const tTrace: Tensor[] = [], gTrace: Tensor[] = [], dTrace: Tensor[] = [];
      const before = await student.params.stateDict();
      const { logits: tl, features: tf } = noGrad(() => teacher.forward(xt, evalMode(tTrace)));
      const { logits: sl, features: sf } = student.forward(xs, evalMode(gTrace));
      const adv = disc.forward(sl, xs, sf, gTrace);
      const lossVox = crossEntropy(sl, y, golden.ce_class_weights);
      const lossGan = mse(adv, 1);
      const genLoss = add(lossVox, affine(lossGan, golden.lambda_adv));
      backward(genLoss);
      const [advV, lv, lg, gl] = await readAll([adv, lossVox, lossGan, genLoss]);
      check("disc_fake_adv", advV, (await npy("disc_fake_adv")).data, FORWARD_TOL);
      check("loss_vox", lv, [golden.loss_vox], FORWARD_TOL);
      check("loss_gan", lg, [golden.loss_gan], FORWARD_TOL);
      check("gen_loss", gl, [golden.gen_loss], FORWARD_TOL);
      const sg = await readAll(student.params.list().map((p) => p.grad!));
      student.params.list().forEach((p, i) => gpuGrads.student.set(p.name, sg[i]));
      disc.params.zeroGrad(); // the generator pass's discriminator gradients are discarded

      // The Adam step: with the reference gradients (the optimiser alone), then with ours (the whole path).
      const adamStep = async (gradsFrom: "reference" | "ours") => {
        student.params.load(before, "the student before the step");
        if (gradsFrom === "reference") {
          for (const p of student.params.list()) {
            p.zeroGrad();
            p.grad = Tensor.from(g, p.shape, W.studentGrads.get(p.name)!.data).keep();
          }
        }
        const opt = new Adam(student.params.list(), golden.adam);
        opt.step();
        opt.dispose();
        return await student.params.stateDict();
      };
      stepped = await adamStep("ours");
      steppedRef = await adamStep("reference");
      for (const [name, t] of steppedRef) {
        const b = before.get(name)!.data;
        check(
          `student_after_adam ${name} (reference grads, update)`,
          t.data.map((v, i) => v - b[i]),
          W.after.get(name)!.data.map((v, i) => v - b[i]),
          FORWARD_TOL,
        );
      }

      // The discriminator step: real = the teacher's outputs, fake = the student's from before its step, detached.
      const detach = (f: FeaturePairs) => f.map(([a, b]) => [a.detach(), b.detach()]) as FeaturePairs;
      const dr = disc.forward(tl, xs, detach(tf), dTrace);
      const df = disc.forward(sl.detach(), xs, detach(sf), dTrace);
      const discLoss = add(mse(dr, 1), mse(df, 0));
      backward(discLoss);
      const [drV, dfV, dl] = await readAll([dr, df, discLoss]);
      check("disc_real", drV, (await npy("disc_real")).data, FORWARD_TOL);
      check("disc_fake", dfV, (await npy("disc_fake")).data, FORWARD_TOL);
      check("disc_loss", dl, [golden.disc_loss], FORWARD_TOL);
      const dg = await readAll(disc.params.list().map((p) => p.grad!));
      disc.params.list().forEach((p, i) => gpuGrads.disc.set(p.name, dg[i]));
      traces.teacher = await signs(tTrace);
      traces.gen = await signs(gTrace);
      traces.disc = await signs(dTrace);
    });
  } finally {
    for (const m of [teacher.params, student.params, disc.params]) m.dispose();
  }

  // The float64 twin: once on its own LeakyReLU pattern, once forced onto the GPU's.
  const twin = (forced: typeof traces | null) => {
    const tB = new CpuBackend(W.teacher, forced?.teacher);
    const t = unetForward(tB, tB.input(ti.shape, ti.data), tCfg);
    const gB = new CpuBackend(new Map([...W.student, ...W.disc]), forced?.gen);
    const xs = gB.input(si.shape, si.data);
    const s = unetForward(gB, xs, sCfg);
    const adv = discForward(gB, s.logits, xs, s.features, dCfg);
    gB.backward(
      gB.axpy(gB.crossEntropy(s.logits, labelArr, golden.ce_class_weights), gB.mse(adv, 1), golden.lambda_adv),
    );
    const dB = new CpuBackend(W.disc, forced?.disc);
    const copy = (x: CpuTensor) => dB.input(x.shape, x.data);
    const feats = (f: FeaturePairs<CpuTensor>) => f.map(([a, b]) => [copy(a), copy(b)]) as FeaturePairs<CpuTensor>;
    const xd = copy(xs);
    const dr = discForward(dB, copy(t.logits), xd, feats(t.features), dCfg);
    const df = discForward(dB, copy(s.logits), xd, feats(s.features), dCfg);
    dB.backward(dB.axpy(dB.mse(dr, 1), dB.mse(df, 0), 1));
    const grads = (b: CpuBackend, names: Iterable<string>) => new Map([...names].map((n) => [n, b.param(n).grad!]));
    return {
      masks: { teacher: tB.masks, gen: gB.masks, disc: dB.masks },
      student: grads(gB, W.student.keys()),
      disc: grads(dB, W.disc.keys()),
    };
  };
  const own = twin(null), forced = twin(traces);
  const crossings = (a: Uint8Array[], b: Uint8Array[]) =>
    a.reduce((n, m, i) => n + m.reduce((c, v, j) => c + (v !== b[i][j] ? 1 : 0), 0), 0);
  const kinkCrossings = {
    teacher: crossings(traces.teacher, own.masks.teacher),
    generatorStep: crossings(traces.gen, own.masks.gen),
    discriminatorStep: crossings(traces.disc, own.masks.disc),
  };
  const crossed = {
    student: kinkCrossings.teacher + kinkCrossings.generatorStep > 0,
    disc: kinkCrossings.discriminatorStep > 0,
  };
  for (const net of ["student", "disc"] as const) {
    const ref = net === "student" ? W.studentGrads : W.discGrads;
    const scale = { fixture: maxAbs([...ref.values()].map((t) => t.data)), twin: maxAbs(forced[net].values()) };
    for (const [name, r] of ref) {
      const zero = normCancelled(name);
      const ours = gpuGrads[net].get(name)!;
      check(`${net}_grad ${name}`, ours, r.data, crossed[net] ? null : GRAD_TOL, zero ? scale.fixture : 0);
      check(
        `${net}_grad ${name} (float64 twin vs fixture)`,
        own[net].get(name)!,
        r.data,
        GRAD_TOL,
        zero ? scale.fixture : 0,
      );
      check(
        `${net}_grad ${name} (vs float64 twin on the GPU's pattern)`,
        ours,
        forced[net].get(name)!,
        GRAD_TOL,
        zero ? scale.twin : 0,
      );
    }
  }
  for (const [name, t] of stepped) {
    if (normCancelled(name)) continue; // updates driven by rounding noise in PyTorch as much as here
    const b = W.student.get(name)!.data, a = W.after.get(name)!.data;
    const dRef = a.map((v, i) => v - b[i]);
    const maxRef = maxAbs([dRef]);
    const off = t.data.filter((v, i) => Math.abs(v - b[i] - dRef[i]) > 1e-3 * maxRef).length / dRef.length;
    const key = `student_after_adam ${name} (fraction of updates off)`;
    errors[key] = off;
    tolerances[key] = crossed.student ? null : 1e-3;
  }
  const failed = Object.keys(errors).filter((n) => tolerances[n] !== null && !(errors[n] <= tolerances[n]!));
  return {
    fixture: dir,
    adapter: g.adapterName,
    errors,
    tolerances,
    kinkCrossings,
    f16LabelAgreement,
    failed,
    ok: failed.length === 0,
  };
}

/** The fraction of voxels where two [1, C, ...] logit volumes pick the same class (first maximum on ties). */
function labelAgreement(a: ArrayLike<number>, b: ArrayLike<number>, classes: number): number {
  const n = a.length / classes;
  const pick = (x: ArrayLike<number>, v: number) => {
    let best = 0;
    for (let c = 1; c < classes; c++) if (x[c * n + v] > x[best * n + v]) best = c;
    return best;
  };
  let same = 0;
  for (let v = 0; v < n; v++) if (pick(a, v) === pick(b, v)) same++;
  return same / n;
}
