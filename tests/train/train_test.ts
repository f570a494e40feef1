// Pre-training and HAD-Net training end to end on a tiny synthetic dataset (32^3 volumes, k = 2): losses fall, runs
// resume bit-exactly, the run folder holds what it should, and bad input stops before anything is written.
import assert from "node:assert/strict";
import { setConvKernels } from "../../src/kernels/conv_select.ts";
import { Gpu } from "../../src/kernels/device.ts";
import { planGpu } from "../../src/kernels/null_device.ts";
import { computeSemantics } from "../../src/data/loader.ts";
import { preprocessDataset } from "../../src/data/preprocess.ts";
import { readJsonl } from "../../src/data/progress.ts";
import { writeSynthDataset } from "../../src/data/synth.ts";
import { loadSafetensors } from "../../src/nn/safetensors.ts";
import { Rng } from "../../src/nn/rng.ts";
import { UNet } from "../../src/nn/unet.ts";
import { checkResumeConfig, RESUME_FILE, saveModel, SEMANTICS_FILE } from "../../src/train/common.ts";
import { resolveDataRoot, SubjectCache } from "../../src/train/data.ts";
import { HADNET_CHECKPOINT, HADNET_DEFAULTS, trainHadnet } from "../../src/train/hadnet.ts";
import { CHECKPOINT_NAMES, pretrain, PRETRAIN_DEFAULTS, type PretrainConfig } from "../../src/train/pretrain.ts";
import { testGpu } from "../util.ts";

const TMP = await Deno.makeTempDir({ prefix: "hadnet-train-" });
await writeSynthDataset({ out: `${TMP}/raw`, n: 5, size: [32, 32, 32], seed: 7 });
await preprocessDataset({
  input: `${TMP}/raw`,
  output: `${TMP}/proc`,
  workers: 1,
  force: false,
  withSeg: true,
  write: () => {},
});
const ID = (i: number) => `BraTS19_SYN_000${i}_1`;
const LISTS = { train: [ID(1), ID(2)], validation: [ID(3)], test: [ID(4)] };
const quiet = { write: () => {} };
let runs = 0;
const newOut = () => `${TMP}/run${++runs}`;

function pretrainCfg(over: Partial<PretrainConfig>): PretrainConfig {
  return { ...PRETRAIN_DEFAULTS, role: "student", data: `${TMP}/proc`, ...LISTS, out: newOut(), k: 2, ...over };
}

/** Two checkpoints with bit-identical tensors and equal metadata (the run folder's own path aside). */
async function sameCheckpoint(a: string, b: string) {
  const [x, y] = [await loadSafetensors(a), await loadSafetensors(b)];
  assert.deepEqual([...x.tensors.keys()], [...y.tensors.keys()]);
  for (const [n, t] of x.tensors) {
    const u = y.tensors.get(n)!;
    assert.deepEqual(
      new Uint8Array(t.data.buffer),
      new Uint8Array(u.data.buffer),
      `${n} differs between ${a} and ${b}`,
    );
  }
  const meta = (m: Record<string, string>) => {
    if (!m.state) return m;
    const st = JSON.parse(m.state);
    delete st.config.out;
    return { ...m, state: st };
  };
  assert.deepEqual(meta(x.metadata), meta(y.metadata));
}

/** Log entries without their timestamps (and without the resume marker). */
function epochs(out: string) {
  return readJsonl(`${out}/log.jsonl`).filter((e) => typeof e.epoch === "number" && !e.event).map((e) => {
    const { time: _, ...rest } = e;
    return rest;
  });
}

Deno.test({
  name: "pretrain: the training loss falls on a fixed set; run folder, semantics, best checkpoint and test evaluation",
  sanitizeResources: false,
  fn: async () => {
    const g = await testGpu();
    // No augmentation and a larger step, so that a few epochs over the same two subjects show the trend.
    const cfg = pretrainCfg({ epochs: 5, augment: false, lr: 2e-3 });
    const r = await pretrain(g, cfg, quiet);
    const losses = r.history.map((h) => h.trainLoss);
    assert.ok(losses.at(-1)! < losses[0], `training loss did not fall: ${losses}`);
    const names = [...Deno.readDirSync(cfg.out)].map((e) => e.name).sort();
    assert.deepEqual(names, [CHECKPOINT_NAMES.student, SEMANTICS_FILE, "config.json", RESUME_FILE, "log.jsonl"].sort());
    const sem = JSON.parse(await Deno.readTextFile(`${cfg.out}/${SEMANTICS_FILE}`));
    assert.deepEqual(sem, { shape: [32, 32, 32], teacherChannels: 4, studentChannels: 3 });
    const best = await loadSafetensors(`${cfg.out}/${CHECKPOINT_NAMES.student}`);
    assert.equal(best.metadata.k, "2");
    assert.equal(best.metadata.sequences, "3");
    const bestEpoch = Number(best.metadata.epoch);
    // The best checkpoint is the last epoch whose metric is >= every earlier one.
    const want = r.history.filter((h, i) => r.history.slice(0, i).every((p) => h.metric >= p.metric)).at(-1)!;
    assert.equal(bestEpoch, want.epoch);
    assert.ok(r.test && Number.isFinite(r.test.metric));
    const log = readJsonl(`${cfg.out}/log.jsonl`);
    assert.equal(log.filter((e) => typeof e.epoch === "number" && !e.event).length, 5);
    assert.ok(log.some((e) => e.event === "test"));
    // Class weights decay by 0.98 per epoch after the first.
    const w = log.filter((e) => e.epoch === 3 && !e.event)[0].classWeights as number[];
    assert.ok(Math.abs(w[1] - 59.4507 * 0.98 ** 2) < 1e-9);
  },
});

Deno.test({
  name: "pretrain: 1 epoch + resume 1 epoch ends bit-identical to 2 epochs (augmentation, dropout, shuffle)",
  sanitizeResources: false,
  fn: async () => {
    const g = await testGpu();
    const whole = pretrainCfg({ role: "teacher", epochs: 2, seed: 3, continuousSaving: true });
    await pretrain(g, whole, quiet);
    const split = { ...whole, out: newOut(), epochs: 1 };
    await pretrain(g, split, quiet);
    await assert.rejects(() => pretrain(g, split, quiet), /already holds a run/);
    await assert.rejects(
      () => pretrain(g, { ...split, epochs: 2, k: 3 }, { ...quiet, resume: true }),
      /k was 2, now 3/,
    );
    await pretrain(g, { ...split, epochs: 2 }, { ...quiet, resume: true });
    await sameCheckpoint(`${whole.out}/${RESUME_FILE}`, `${split.out}/${RESUME_FILE}`);
    await sameCheckpoint(`${whole.out}/${CHECKPOINT_NAMES.teacher}`, `${split.out}/${CHECKPOINT_NAMES.teacher}`);
    await sameCheckpoint(`${whole.out}/epochs/epoch_0002.safetensors`, `${split.out}/epochs/epoch_0002.safetensors`);
    assert.deepEqual(epochs(split.out), epochs(whole.out));
    const ck = await loadSafetensors(`${whole.out}/${RESUME_FILE}`);
    assert.deepEqual([...ck.tensors.get("opt.step")!.data].every((s) => s === 4), true); // 2 epochs x 2 subjects
  },
});

Deno.test("resume compares convolution kernels as the device runs them: saved gather resumes under auto on a CPU", () => {
  const gpu = planGpu(), cpu = new Gpu(gpu.device, "a CPU adapter's stand-in", true, gpu.features);
  const [gather, auto, tuned] = (["gather", "auto", "tuned"] as const).map((convKernels) => ({ convKernels, k: 2 }));
  checkResumeConfig(cpu, gather, auto, []); // auto is gather there
  assert.throws(() => checkResumeConfig(gpu, gather, auto, []), /convKernels was "gather", now "auto"/);
  assert.throws(() => checkResumeConfig(cpu, tuned, auto, []), /convKernels was "tuned", now "gather"/);
  const k3 = { ...auto, k: 3 };
  assert.throws(() => checkResumeConfig(cpu, gather, k3, []), /k was 2, now 3/);
});

Deno.test({
  name: "pretrain --conv-kernel tuned: eligible shapes are timed after the first step and logged as tune events",
  sanitizeResources: false,
  fn: async () => {
    const g = await testGpu();
    const cfg = pretrainCfg({ epochs: 1, convKernels: "tuned" });
    try {
      await pretrain(g, cfg, quiet);
      // The choice is part of the run's settings: a resume must keep it.
      await assert.rejects(
        () => pretrain(g, { ...cfg, epochs: 2, convKernels: "gather" }, { ...quiet, resume: true }),
        /convKernels was "tuned", now "gather"/,
      );
    } finally {
      setConvKernels(g, "auto");
    }
    // At k = 2 channels-last takes the forward and input gradient of levels 3 and 4 (8 or 16 of 16 channels in, 16 or
    // 32 of 32 out), and their weight gradients but the up path's 8 -> 4 (in the step's order).
    const tunes = readJsonl(`${cfg.out}/log.jsonl`).filter((e) => e.event === "tune");
    assert.deepEqual(tunes.map((e) => [e.epoch, e.conv]), [
      [1, "forward [1,8,4,4,4] -> 16, k3 s1 p1"],
      [1, "forward [1,16,4,4,4] -> 16, k3 s1 p1"],
      [1, "forward [1,16,2,2,2] -> 32, k3 s1 p1"],
      [1, "forward [1,32,2,2,2] -> 16, k3 s1 p1"],
      [1, "forward [1,16,4,4,4] -> 8, k3 s1 p1"],
      [1, "input_grad [1,16,4,4,4] -> 8, k3 s1 p1"],
      [1, "input_grad [1,16,4,4,4] -> 16, k3 s1 p1"],
      [1, "weight_grad [1,16,4,4,4] -> 16, k3 s1 p1"],
      [1, "input_grad [1,32,2,2,2] -> 16, k3 s1 p1"],
      [1, "weight_grad [1,32,2,2,2] -> 16, k3 s1 p1"],
      [1, "input_grad [1,16,2,2,2] -> 32, k3 s1 p1"],
      [1, "weight_grad [1,16,2,2,2] -> 32, k3 s1 p1"],
      [1, "input_grad [1,8,4,4,4] -> 16, k3 s1 p1"],
      [1, "weight_grad [1,8,4,4,4] -> 16, k3 s1 p1"],
    ]);
    for (const e of tunes) assert.ok(e.variant === "gather" || e.variant === "channels-last");
  },
});

/** Pre-trained networks for HAD-Net: fresh generators (the original's init) saved as hadnet checkpoints. */
async function generators(k: number): Promise<[string, string]> {
  const g = await testGpu();
  const paths: [string, string] = [`${TMP}/teacher_k${k}.safetensors`, `${TMP}/student_k${k}.safetensors`];
  for (const [i, ch] of [[0, 4], [1, 3]]) {
    const net = new UNet(g, { inChannels: ch, k, classes: 4, dropout: 0.2 }, new Rng(10 + i));
    await saveModel(paths[i], net.params, { kind: "generator", k, sequences: ch, classes: 4 });
    net.params.dispose();
  }
  return paths;
}

Deno.test({
  name: "train (HAD-Net): losses fall; 1 epoch + resume ends bit-identical to 2 epochs",
  sanitizeResources: false,
  fn: async () => {
    const g = await testGpu();
    const [teacher, student] = await generators(2);
    const base = { ...HADNET_DEFAULTS, data: `${TMP}/proc`, ...LISTS, teacher, student, lr: 2e-3 };
    const r = await trainHadnet(g, { ...base, out: newOut(), epochs: 4 }, quiet);
    const vox = r.history.map((h) => h.lossVox);
    assert.ok(vox.at(-1)! < vox[0], `voxel loss did not fall: ${vox}`);
    assert.ok(r.history.every((h) => Number.isFinite(h.genLoss) && Number.isFinite(h.discLoss)));
    assert.ok(r.test && Number.isFinite(r.test.metric));

    const whole = { ...base, test: [], out: newOut(), epochs: 2, continuousSaving: true };
    await trainHadnet(g, whole, quiet);
    const split = { ...whole, out: newOut(), epochs: 1 };
    await trainHadnet(g, split, quiet);
    await trainHadnet(g, { ...split, epochs: 2 }, { ...quiet, resume: true });
    await sameCheckpoint(`${whole.out}/${RESUME_FILE}`, `${split.out}/${RESUME_FILE}`);
    await sameCheckpoint(`${whole.out}/${HADNET_CHECKPOINT}`, `${split.out}/${HADNET_CHECKPOINT}`);
    assert.deepEqual(epochs(split.out), epochs(whole.out));
    const ck = await loadSafetensors(`${whole.out}/${RESUME_FILE}`);
    for (const p of ["teacher.", "student.", "disc.", "optG.exp_avg.", "optD.exp_avg_sq."]) {
      assert.ok([...ck.tensors.keys()].some((n) => n.startsWith(p)), `resume checkpoint lacks ${p}*`);
    }
  },
});

Deno.test({
  name: "train --conv-kernel tuned: the discriminator's eligible passes are timed and logged",
  sanitizeResources: false,
  fn: async () => {
    const g = await testGpu();
    const [teacher, student] = await generators(2);
    const cfg = {
      ...HADNET_DEFAULTS,
      data: `${TMP}/proc`,
      ...LISTS,
      test: [],
      teacher,
      student,
      out: newOut(),
      epochs: 1,
      convKernels: "tuned" as const,
    };
    try {
      const r = await trainHadnet(g, cfg, quiet);
      assert.ok(r.history.every((h) => Number.isFinite(h.genLoss) && Number.isFinite(h.discLoss)));
    } finally {
      setConvKernels(g, "auto");
    }
    // At k = 2 (32^3): the discriminator's stride-2 passes from 16 channels up (the U-Net's eligible shapes may have
    // been timed already by an earlier test in this process: choices stay with the device).
    const tunes = readJsonl(`${cfg.out}/log.jsonl`).filter((e) => e.event === "tune").map((e) => e.conv as string);
    for (const c of ["forward [1,32,8,8,8] -> 32, k4 s2", "input_grad [1,16,16,16,16] -> 16, k4 s2"]) {
      assert.ok(tunes.some((t) => t.startsWith(c)), `no tune event for ${c}: ${tunes.join("; ")}`);
    }
  },
});

Deno.test("SubjectCache keeps subjects while under its bound and hands the same sample back", async () => {
  const root = resolveDataRoot(`${TMP}/proc`);
  const one = 32 ** 3 * (3 * 4 + 2); // student input (f32) + labels + mask
  const cache = new SubjectCache(root, await computeSemantics(root), "student", one);
  const a = await cache.get(ID(1));
  assert.deepEqual(a.shape, [3, 32, 32, 32]);
  assert.equal(await cache.get(ID(1)), a);
  assert.equal(cache.bytes, one);
  const b = await cache.get(ID(2));
  assert.notEqual(await cache.get(ID(2)), b); // over the bound: loaded again
  assert.deepEqual(await cache.get(ID(2)), b);
  assert.deepEqual([cache.hits, cache.misses, cache.bytes], [1, 4, one]);
});

/** Runs the CLI; returns exit code and stderr lines. */
async function cli(args: string[]): Promise<{ code: number; lines: string[] }> {
  const main = new URL("../../main.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const lines = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l.trim() !== "");
  return { code: out.code, lines };
}

Deno.test({
  name: "CLI: unknown id, a leak between lists and a checkpoint of another k give one line, exit 1, no files",
  sanitizeResources: false,
  fn: async () => {
    const lists = `${TMP}/lists`;
    await Deno.mkdir(lists, { recursive: true });
    const write = (name: string, ids: string[]) => Deno.writeTextFile(`${lists}/${name}`, ids.join("\n") + "\n");
    await write("train.txt", [ID(1), ID(2)]);
    await write("val.txt", [ID(3)]);
    await write("unknown.txt", ["BraTS19_NOPE_1"]);
    await write("leak.txt", [ID(2)]);
    const [t2, s2] = await generators(2);
    const [, s3] = await generators(3);
    const args = (
      out: string,
      val: string,
    ) => ["--data", `${TMP}/proc`, "--train", `${lists}/train.txt`, "--val", val, "--out", out];
    const cases: [string[], RegExp][] = [
      [
        ["pretrain", "--role", "student", "--k", "2", ...args(`${TMP}/bad1`, `${lists}/unknown.txt`)],
        /no preprocessed data .* BraTS19_NOPE_1/,
      ],
      [
        ["pretrain", "--role", "teacher", "--k", "2", ...args(`${TMP}/bad2`, `${lists}/leak.txt`)],
        /data leak: BraTS19_SYN_0002_1 is in training and validation/,
      ],
      [
        ["train", "--teacher", t2, "--student", s3, ...args(`${TMP}/bad3`, `${lists}/val.txt`)],
        /teacher .* has k = 2 but student .* has k = 3/,
      ],
      [
        ["train", "--teacher", s2, "--student", s2, ...args(`${TMP}/bad4`, `${lists}/val.txt`)],
        /a generator for 3 sequences/,
      ],
      [
        ["pretrain", "--role", "pupil", ...args(`${TMP}/bad5`, `${lists}/val.txt`)],
        /--role must be teacher or student/,
      ],
    ];
    for (const [a, re] of cases) {
      const r = await cli(a);
      assert.notEqual(r.code, 0, a.join(" "));
      assert.equal(r.lines.length, 1, `expected one line, got:\n${r.lines.join("\n")}`);
      assert.match(r.lines[0], /^hadnet: /);
      assert.match(r.lines[0], re);
    }
    for (let i = 1; i <= 5; i++) assert.throws(() => Deno.statSync(`${TMP}/bad${i}`), Deno.errors.NotFound);
  },
});

globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));
