// `hadnet parity <fixture-dir>`: holds hadnet's networks to a PyTorch golden fixture folder (layout of
// ../shared/fixtures/pytorch-golden): forward outputs and features of teacher and student, the discriminator's
// outputs, the loss values, the student's and discriminator's gradients, and the student after one Adam step.
// Weights are loaded from both the .pth and the .safetensors files; both must give the reference outputs.
//
// Errors are max |ours - ref| / max |ref| per tensor. Tolerances: forward values 1e-4, gradients 1e-3. The Adam step
// is checked on its update (after - before) relative to the reference update, twice: driven by the reference
// gradients (isolates the optimiser; 1e-4) and by our own gradients (the whole path; 1e-3 — elements whose gradient is
// within our float32 error of zero may legitimately take the opposite sign, so this one is reported as the fraction of
// elements off by more than 1e-3 of the largest update, which must stay under 1e-3).

import { loadNpy } from "../data/npy.ts";
import { gpu } from "../kernels/device.ts";
import { loadWeights } from "../nn/checkpoint.ts";
import { Discriminator } from "../nn/discriminator.ts";
import type { StateDict } from "../nn/module.ts";
import { crossEntropy, mse } from "../nn/ops/loss.ts";
import { add, affine } from "../nn/ops/elementwise.ts";
import { Adam } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, readAll, scope, Tensor } from "../nn/tensor.ts";
import { type FeaturePairs, UNet } from "../nn/unet.ts";

export const FORWARD_TOL = 1e-4;
export const GRAD_TOL = 1e-3;
const FEATURES = ["d2", "u3", "d3", "u4", "d4", "c5"] as const;

export interface ParityReport {
  fixture: string;
  adapter: string;
  /** max relative error per compared tensor or value */
  errors: Record<string, number>;
  /** the tolerance each entry was held to */
  tolerances: Record<string, number>;
  failed: string[];
  ok: boolean;
}

interface Golden {
  k: number;
  shape: [number, number, number];
  ce_class_weights: number[];
  lambda_adv: number;
  loss_vox: number;
  loss_gan: number;
  gen_loss: number;
  disc_loss: number;
  adam: { lr: number; betas: [number, number]; eps: number };
}

export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) return Infinity;
  let err = 0, mag = 1e-12;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    err = Math.max(err, Number.isNaN(d) ? Infinity : d);
    mag = Math.max(mag, Math.abs(ref[i]));
  }
  return err / mag;
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
  const tolerances: Record<string, number> = {};
  const check = (name: string, got: ArrayLike<number>, ref: ArrayLike<number>, tol: number) => {
    errors[name] = relErr(got, ref);
    tolerances[name] = tol;
  };
  const rng = new Rng(0);
  const teacher = new UNet(g, { inChannels: 4, k, classes: 4, dropout: 0.2 }, rng);
  const student = new UNet(g, { inChannels: 3, k, classes: 4, dropout: 0.2 }, rng);
  const disc = new Discriminator(g, { inChannels: 7, k, hierarchical: true }, rng);
  const eval_ = { training: false };
  const [ti, si, labels] = await Promise.all([npy("teacher_input"), npy("student_input"), loadNpy(`${dir}/labels.npy`)]);
  try {
    await scope(async () => {
      const xt = Tensor.from(g, ti.shape, ti.data);
      const xs = Tensor.from(g, si.shape, si.data);
      const y = Tensor.from(g, labels.shape, Uint32Array.from(labels.data as ArrayLike<number>));

      // Forward parity, once per weight format.
      for (const fmt of ["pth", "safetensors"]) {
        teacher.params.load(await weights(`teacher.${fmt}`), `${dir}/teacher.${fmt}`);
        student.params.load(await weights(`student.${fmt}`), `${dir}/student.${fmt}`);
        await scope(async () => {
          const outs = noGrad(() => ({ t: teacher.forward(xt, eval_), s: student.forward(xs, eval_) }));
          for (const [who, o] of [["teacher", outs.t], ["student", outs.s]] as const) {
            const mine = [o.logits, ...o.features.flat()];
            const got = await readAll(mine);
            const names = [`${who}_logits`, ...FEATURES.map((f) => `${who}_feat_${f}`)];
            for (let i = 0; i < names.length; i++) {
              check(`${names[i]} (${fmt})`, got[i], (await npy(names[i])).data, FORWARD_TOL);
            }
          }
        });
      }
      disc.params.load(await weights("discriminator.safetensors"), `${dir}/discriminator.safetensors`);

      // One HAD-Net generator step, as HAD_Net.py orders it.
      const before = await student.params.stateDict();
      const { logits: tl, features: tf } = noGrad(() => teacher.forward(xt, eval_));
      const { logits: sl, features: sf } = student.forward(xs, eval_);
      const adv = disc.forward(sl, xs, sf);
      const lossVox = crossEntropy(sl, y, golden.ce_class_weights);
      const lossGan = mse(adv, 1);
      const genLoss = add(lossVox, affine(lossGan, golden.lambda_adv));
      backward(genLoss);
      const [advV, lv, lg, gl] = await readAll([adv, lossVox, lossGan, genLoss]);
      check("disc_fake_adv", advV, (await npy("disc_fake_adv")).data, FORWARD_TOL);
      check("loss_vox", lv, [golden.loss_vox], FORWARD_TOL);
      check("loss_gan", lg, [golden.loss_gan], FORWARD_TOL);
      check("gen_loss", gl, [golden.gen_loss], FORWARD_TOL);
      const refGrads = await weights("student_grads.safetensors");
      const grads = await readAll(student.params.list().map((p) => p.grad!));
      student.params.list().forEach((p, i) => check(`student_grad ${p.name}`, grads[i], refGrads.get(p.name)!.data, GRAD_TOL));
      disc.params.zeroGrad(); // the generator pass's discriminator gradients are discarded

      // The Adam step, first with the reference gradients (the optimiser alone), then with ours (the whole path).
      const after = await weights("student_after_adam.safetensors");
      const adamOpts = { lr: golden.adam.lr, betas: golden.adam.betas, eps: golden.adam.eps };
      const step = async (gradsFrom: "reference" | "ours") => {
        student.params.load(before, "the student before the step");
        if (gradsFrom === "reference") {
          for (const p of student.params.list()) {
            p.zeroGrad();
            p.grad = Tensor.from(g, p.shape, refGrads.get(p.name)!.data).keep();
          }
        }
        const opt = new Adam(student.params.list(), adamOpts);
        opt.step();
        opt.dispose();
        return await student.params.stateDict();
      };
      const stepped = await step("ours");
      for (const [name, t] of stepped) {
        const b = before.get(name)!.data, a = after.get(name)!.data;
        const dOurs = t.data.map((v, i) => v - b[i]), dRef = a.map((v, i) => v - b[i]);
        const maxRef = dRef.reduce((m, v) => Math.max(m, Math.abs(v)), 1e-12);
        const off = dOurs.filter((v, i) => Math.abs(v - dRef[i]) > 1e-3 * maxRef).length / dRef.length;
        errors[`student_after_adam ${name} (fraction of updates off)`] = off;
        tolerances[`student_after_adam ${name} (fraction of updates off)`] = 1e-3;
      }
      for (const [name, t] of await step("reference")) {
        const b = before.get(name)!.data;
        check(
          `student_after_adam ${name} (reference grads, update)`,
          t.data.map((v, i) => v - b[i]),
          after.get(name)!.data.map((v, i) => v - b[i]),
          FORWARD_TOL,
        );
      }

      // The discriminator step: real = teacher's segmentation and features, fake = the student's from before the step.
      const detach = (f: FeaturePairs) => f.map(([a, b]) => [a.detach(), b.detach()]) as FeaturePairs;
      const dr = disc.forward(tl, xs, detach(tf));
      const df = disc.forward(sl.detach(), xs, detach(sf));
      const discLoss = add(mse(dr, 1), mse(df, 0));
      backward(discLoss);
      const [drV, dfV, dl] = await readAll([dr, df, discLoss]);
      check("disc_real", drV, (await npy("disc_real")).data, FORWARD_TOL);
      check("disc_fake", dfV, (await npy("disc_fake")).data, FORWARD_TOL);
      check("disc_loss", dl, [golden.disc_loss], FORWARD_TOL);
      const refD = await weights("discriminator_grads.safetensors");
      const dg = await readAll(disc.params.list().map((p) => p.grad!));
      disc.params.list().forEach((p, i) => check(`disc_grad ${p.name}`, dg[i], refD.get(p.name)!.data, GRAD_TOL));
    });
  } finally {
    for (const m of [teacher.params, student.params, disc.params]) m.dispose();
  }
  const failed = Object.keys(errors).filter((n) => !(errors[n] <= tolerances[n]));
  return { fixture: dir, adapter: g.adapterName, errors, tolerances, failed, ok: failed.length === 0 };
}
