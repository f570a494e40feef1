// One HAD-Net step (HadnetTrainer.step, every network in eval mode) against the PyTorch golden fixture: the four
// losses, the student's Adam update and the discriminator's Adam update (which also shows that the generator pass's
// discriminator gradients do not leak into optD); and the gate: a step whose discriminator accuracy is above the
// threshold leaves the discriminator's parameters and its Adam step counts untouched.
import assert from "node:assert/strict";
import { loadNpy } from "../../src/data/npy.ts";
import type { Gpu } from "../../src/kernels/device.ts";
import { Adam } from "../../src/nn/optim.ts";
import { loadWeights } from "../../src/nn/checkpoint.ts";
import type { StateDict } from "../../src/nn/module.ts";
import { readAll, scope, Tensor } from "../../src/nn/tensor.ts";
import { HADNET_DEFAULTS, HadnetTrainer, loadPretrainedPair } from "../../src/train/hadnet.ts";
import { normCancelled } from "../../src/train/parity.ts";
import { testGpu } from "../util.ts";

const DIR = new URL("../../../shared/fixtures/pytorch-golden", import.meta.url).pathname;
const golden = JSON.parse(await Deno.readTextFile(`${DIR}/golden.json`));

async function trainer(g: Gpu, discThreshold: number): Promise<HadnetTrainer> {
  const pair = await loadPretrainedPair(`${DIR}/teacher.pth`, `${DIR}/student.safetensors`);
  assert.equal(pair.k, golden.k);
  const t = new HadnetTrainer(g, {
    ...HADNET_DEFAULTS,
    classWeights: golden.ce_class_weights,
    lambdaAdv: golden.lambda_adv,
    lr: golden.adam.lr,
    betas: golden.adam.betas,
    discThreshold,
    k: pair.k,
  }, pair);
  t.disc.params.load((await loadWeights(`${DIR}/discriminator.safetensors`)).tensors, "discriminator.safetensors");
  return t;
}

async function inputs(g: Gpu): Promise<[Tensor, Tensor, Tensor]> {
  const f32 = async (n: string) => {
    const a = await loadNpy(`${DIR}/${n}.npy`);
    return Tensor.from(g, a.shape, Float32Array.from(a.data as ArrayLike<number>));
  };
  const y = await loadNpy(`${DIR}/labels.npy`);
  return [
    await f32("teacher_input"),
    await f32("student_input"),
    Tensor.from(g, y.shape, Uint32Array.from(y.data as ArrayLike<number>)),
  ];
}

// normCancelled: conv biases directly followed by an instance norm. Their exact gradient is zero, so both PyTorch's
// and our Adam updates follow the sign of rounding noise; only their size is checked.

/** PyTorch's own gradients move by up to 2e-2 of their scale when the input moves by 1e-7 (LeakyReLU kinks). */
const KINK_SCALE = 2e-2;

/**
 * A first Adam step moves each element by about lr * sign(gradient), so an update off the reference is a gradient
 * sign disagreement. Per tensor: the elements whose update is off by more than 1e-3 of the tensor's largest reference
 * update are counted and reported (the issue asks for at most 0.1%); every one of them must have a reference
 * gradient within the kink sensitivity (KINK_SCALE of the tensor's largest), i.e. a sign PyTorch itself does not
 * hold fixed. Returns the report lines.
 */
function checkUpdates(what: string, before: StateDict, after: StateDict, ref: StateDict, grads: StateDict): string[] {
  const report: string[] = [];
  for (const [name, w] of before) {
    const b = w.data, a = after.get(name)!.data, r = ref.get(name)!.data, gr = grads.get(name)!.data;
    if (normCancelled(name)) {
      assert.ok(a.every((v, i) => Math.abs(v - b[i]) <= golden.adam.lr * 1.001), `${what} ${name}: update above lr`);
      continue;
    }
    let maxRef = 0, maxGrad = 0;
    for (let i = 0; i < b.length; i++) {
      maxRef = Math.max(maxRef, Math.abs(r[i] - b[i]));
      maxGrad = Math.max(maxGrad, Math.abs(gr[i]));
    }
    let off = 0, worst = 0;
    for (let i = 0; i < b.length; i++) {
      if (Math.abs(a[i] - r[i]) > 1e-3 * maxRef) {
        off++;
        worst = Math.max(worst, Math.abs(gr[i]) / maxGrad);
      }
    }
    assert.ok(
      worst <= KINK_SCALE,
      `${what} ${name}: an update is off the reference where the gradient is ${worst.toExponential(2)} of its largest`,
    );
    if (off) {
      report.push(
        `${what} ${name}: ${off}/${b.length} (${(100 * off / b.length).toFixed(3)}%) off, ` +
          `gradients there <= ${worst.toExponential(1)} of the largest`,
      );
    }
  }
  return report;
}

Deno.test("HAD-Net step reproduces the PyTorch golden losses and Adam updates", async () => {
  const g = await testGpu();
  const t = await trainer(g, 1); // accuracy <= 1 always: the discriminator steps
  try {
    await scope(async () => {
      const [xt, xs, y] = await inputs(g);
      const sBefore = await t.student.params.stateDict(), dBefore = await t.disc.params.stateDict();
      const r = await t.step(xt, xs, y, false);
      assert.ok(r.discStepped);
      const lv = (await readAll(r.losses)).map((x) => x[0]);
      const names = ["loss_vox", "loss_gan", "gen_loss", "disc_loss"];
      names.forEach((n, i) => {
        const rel = Math.abs(lv[i] - golden[n]) / Math.abs(golden[n]);
        assert.ok(rel <= 1e-4, `${n}: ${lv[i]} vs ${golden[n]} (relative ${rel.toExponential(2)})`);
      });
      // The student against PyTorch's step.
      const ref = (await loadWeights(`${DIR}/student_after_adam.safetensors`)).tensors;
      const sGrads = (await loadWeights(`${DIR}/student_grads.safetensors`)).tensors;
      const report = checkUpdates("student", sBefore, await t.student.params.stateDict(), ref, sGrads);
      // The discriminator against Adam driven by PyTorch's discriminator gradients (disc_loss only: had the
      // generator pass's gradients leaked in, the update would differ).
      const refGrads = (await loadWeights(`${DIR}/discriminator_grads.safetensors`)).tensors;
      const dAfter = await t.disc.params.stateDict();
      const dRef: StateDict = await scope(async () => {
        const ps = [...dBefore].map(([n, w]) => {
          const p = Tensor.from(g, w.shape, w.data).keep();
          p.name = n;
          p.grad = Tensor.from(g, w.shape, refGrads.get(n)!.data).keep();
          return p;
        });
        const opt = new Adam(ps, { lr: golden.adam.lr, betas: golden.adam.betas, eps: golden.adam.eps });
        opt.step();
        const out = await readAll(ps);
        opt.dispose();
        ps.forEach((p) => (p.zeroGrad(), p.dispose()));
        return new Map(ps.map((p, i) => [p.name, { shape: [...p.shape], data: out[i] }]));
      });
      report.push(...checkUpdates("discriminator", dBefore, dAfter, dRef, refGrads));
      if (report.length) console.log(`elements off the reference update:\n  ${report.join("\n  ")}`);
      const steps = await t.optD.state();
      assert.ok(steps.step.every((s) => s === 1));
      r.losses.forEach((l) => l.dispose());
    });
  } finally {
    t.dispose();
  }
});

Deno.test("HAD-Net step: above the accuracy threshold the discriminator and its Adam state stay untouched", async () => {
  const g = await testGpu();
  const t = await trainer(g, -1); // accuracy >= 0 > -1: never steps
  try {
    await scope(async () => {
      const [xt, xs, y] = await inputs(g);
      const dBefore = await t.disc.params.stateDict(), sBefore = await t.student.params.stateDict();
      const optBefore = await t.optD.state();
      const r = await t.step(xt, xs, y, false);
      assert.equal(r.discStepped, false);
      const dAfter = await t.disc.params.stateDict();
      for (const [n, w] of dBefore) assert.deepEqual(dAfter.get(n)!.data, w.data, `${n} changed`);
      const optAfter = await t.optD.state();
      assert.deepEqual(optAfter.step, optBefore.step);
      assert.ok(optAfter.step.every((s) => s === 0));
      optAfter.expAvg.forEach((m, i) => assert.deepEqual(m, optBefore.expAvg[i]));
      assert.ok(t.disc.params.list().every((p) => p.grad === null), "discriminator gradients left behind");
      // The student still stepped.
      const sAfter = await t.student.params.stateDict();
      assert.ok([...sBefore].some(([n, w]) => w.data.some((v, i) => v !== sAfter.get(n)!.data[i])));
      assert.ok((await t.optG.state()).step.every((s) => s === 1));
      r.losses.forEach((l) => l.dispose());
    });
  } finally {
    t.dispose();
  }
});

Deno.test("pre-trained pair: a k or sequence-count mismatch is one error naming the files", async () => {
  await assert.rejects(
    () => loadPretrainedPair(`${DIR}/student.safetensors`, `${DIR}/student.safetensors`),
    /student\.safetensors: a generator for 3 sequences and 4 classes, but the teacher takes 4 sequences/,
  );
  const tmp = await Deno.makeTempDir();
  try {
    const { saveSafetensors } = await import("../../src/nn/safetensors.ts");
    const w = (await loadWeights(`${DIR}/student.safetensors`)).tensors;
    // The same names with k doubled: only the first conv's shape matters to the reader.
    const other: StateDict = new Map(
      [...w].map((
        [n, t],
      ) => [n, n === "conv_d1.conv1.conv.weight" ? { shape: [8, 3, 3, 3, 3], data: new Float32Array(648) } : t]),
    );
    await saveSafetensors(`${tmp}/s8.safetensors`, other);
    await assert.rejects(
      () => loadPretrainedPair(`${DIR}/teacher.safetensors`, `${tmp}/s8.safetensors`),
      /has k = 4 but student .*s8\.safetensors has k = 8/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
