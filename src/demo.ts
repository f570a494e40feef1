// `hadnet demo`: the whole HAD-Net workflow on built-in synthetic data, as the commands a researcher would run:
// synth -> preprocess -> split -> pretrain teacher -> pretrain student -> train (HAD-Net) -> infer -> evaluate.
// It ends with a table of Dice per region on the held-out subjects for an untrained student (the floor), the
// pre-trained student, the teacher (which also sees t1ce) and the HAD-Net student, also saved as demo.json.
// The defaults are sized to finish within 15 minutes on a 2-core machine with a CPU WebGPU adapter.

import { type Command, intOpt, numOpt, UsageError } from "./command.ts";

export const DEMO_DEFAULTS = {
  out: "runs/demo",
  subjects: 12,
  size: "32,36,32",
  k: 4,
  pretrainEpochs: 30,
  hadnetEpochs: 10,
  pretrainLr: 3e-3,
  hadnetLr: 5e-4,
  dropout: 0,
  seed: 0,
};

const ROWS = ["untrained student", "student", "teacher", "HAD-Net student"] as const;
export type DemoRow = typeof ROWS[number];
export interface DemoResult {
  rows: Record<DemoRow, { ET: number; TC: number; WT: number }>;
  seconds: number;
  settings: typeof DEMO_DEFAULTS;
}

export const demoCommand: Command = {
  summary: "the whole workflow on synthetic data: synth, preprocess, split, pretrain x2, train, infer, evaluate",
  usage: `hadnet demo [--out runs/demo] [--subjects 12] [--size 32,36,32] [--k 4] [--pretrain-epochs 30]
            [--hadnet-epochs 10] [--pretrain-lr 3e-3] [--hadnet-lr 5e-4] [--dropout 0] [--seed 0]

Runs the HAD-Net workflow end to end on synthetic BraTS-like subjects and prints the Dice per region (ET, TC, WT)
of the held-out subjects for an untrained student, the pre-trained student, the teacher (with t1ce) and the HAD-Net
student. Every step is an ordinary hadnet command; each is printed before it runs, so the demo doubles as a recipe.
Outputs go to --out (replaced when it holds an earlier demo): raw/, proc/, lists/, teacher/, student/, hadnet/,
pred/<model>/ with evaluation/ (metrics.csv, summary.json, report.html), and demo.json with the table.

  --out DIR             output folder (default runs/demo)
  --subjects N          synthetic subjects, split 60/20/20 into train/validation/test (default 12)
  --size X,Y,Z          volume size of the synthetic subjects (default 32,36,32: a 32x32x32 network input)
  --k K                 first-level filters of the networks (default 4; the paper uses 32)
  --pretrain-epochs N   epochs of each pre-training (default 30; the paper uses 400)
  --hadnet-epochs N     epochs of HAD-Net training (default 10; the paper uses 800)
  --pretrain-lr LR      pre-training learning rate (default 3e-3; the paper's 2e-4 needs its 400 epochs)
  --hadnet-lr LR        HAD-Net learning rate (default 5e-4; the paper's 2e-4)
  --dropout P           Dropout3d probability (default 0; the paper's 0.2 zeroes whole channels, which at k = 4
                        removes a quarter of a level's features and keeps this short run from learning ET)
  --seed S              seed of the data and of every run (default 0)`,
  options: {
    out: { type: "string" },
    subjects: { type: "string" },
    size: { type: "string" },
    k: { type: "string" },
    "pretrain-epochs": { type: "string" },
    "hadnet-epochs": { type: "string" },
    "pretrain-lr": { type: "string" },
    "hadnet-lr": { type: "string" },
    dropout: { type: "string" },
    seed: { type: "string" },
  },
  run: async (v, pos) => {
    if (pos.length) throw new UsageError(`demo takes no positional arguments, got "${pos.join(" ")}"`);
    const s = {
      out: (v.out as string | undefined) ?? DEMO_DEFAULTS.out,
      subjects: intOpt(v.subjects, "--subjects", 5) ?? DEMO_DEFAULTS.subjects,
      size: (v.size as string | undefined) ?? DEMO_DEFAULTS.size,
      k: intOpt(v.k, "--k") ?? DEMO_DEFAULTS.k,
      pretrainEpochs: intOpt(v["pretrain-epochs"], "--pretrain-epochs") ?? DEMO_DEFAULTS.pretrainEpochs,
      hadnetEpochs: intOpt(v["hadnet-epochs"], "--hadnet-epochs") ?? DEMO_DEFAULTS.hadnetEpochs,
      pretrainLr: numOpt(v["pretrain-lr"], "--pretrain-lr", 1e-8, 1) ?? DEMO_DEFAULTS.pretrainLr,
      hadnetLr: numOpt(v["hadnet-lr"], "--hadnet-lr", 1e-8, 1) ?? DEMO_DEFAULTS.hadnetLr,
      dropout: numOpt(v.dropout, "--dropout", 0, 0.99) ?? DEMO_DEFAULTS.dropout,
      seed: intOpt(v.seed, "--seed", 0) ?? DEMO_DEFAULTS.seed,
    };
    const result = await runDemo(s);
    console.log(demoTable(result));
    return 0;
  },
};

export async function runDemo(s: typeof DEMO_DEFAULTS): Promise<DemoResult> {
  const { runCommand } = await import("./cli.ts");
  const start = performance.now();
  await prepareOut(s.out);
  const o = s.out, seed = String(s.seed);
  const step = async (...argv: string[]) => {
    console.error(`\n$ deno task hadnet ${argv.join(" ")}`);
    const code = await runCommand(argv);
    if (code !== 0) throw new Error(`demo: step "${argv[0]}" failed (exit ${code})`);
  };
  const lists = { train: `${o}/lists/train.txt`, val: `${o}/lists/validation.txt` };
  const teacherCkpt = `${o}/teacher/Pre_Trained_Teacher_BEST_VAL_VM.safetensors`;
  const studentCkpt = `${o}/student/Pre_Trained_Student_BEST_VAL_VM.safetensors`;
  await step("synth", ...flags({ out: `${o}/raw`, n: s.subjects, size: s.size, seed }));
  await step("preprocess", ...flags({ input: `${o}/raw`, output: `${o}/proc` }));
  await step("split", ...flags({ data: `${o}/proc`, out: `${o}/lists`, seed }));
  for (const role of ["teacher", "student"]) {
    const run = {
      role,
      data: `${o}/proc`,
      ...lists,
      out: `${o}/${role}`,
      epochs: s.pretrainEpochs,
      k: s.k,
      dropout: s.dropout,
    };
    await step("pretrain", ...flags({ ...run, lr: s.pretrainLr, seed }));
  }
  const pair = { teacher: teacherCkpt, student: studentCkpt };
  const run = {
    data: `${o}/proc`,
    ...lists,
    ...pair,
    out: `${o}/hadnet`,
    epochs: s.hadnetEpochs,
    lr: s.hadnetLr,
    dropout: s.dropout,
  };
  await step("train", ...flags({ ...run, seed }));
  const untrained = `${o}/untrained_student.safetensors`;
  await saveUntrainedStudent(untrained, s.k, s.seed);
  const models: Record<DemoRow, [string, "student" | "teacher", string]> = {
    "untrained student": [untrained, "student", "untrained"],
    student: [studentCkpt, "student", "student"],
    teacher: [teacherCkpt, "teacher", "teacher"],
    "HAD-Net student": [`${o}/hadnet/HAD_Net_BEST_VAL_VM.safetensors`, "student", "hadnet"],
  };
  const rows = {} as DemoResult["rows"];
  for (const row of ROWS) {
    const [model, role, dir] = models[row];
    const semantics = `${o}/student/HAD_Net_semantics.json`;
    const pred = `${o}/pred/${dir}`;
    await step("infer", `${o}/raw`, pred, ...flags({ model, role, semantics, ids: `${o}/lists/test.txt` }));
    const runs = dir === "untrained" ? [] : flags({ runs: `${o}/${dir}` });
    await step("evaluate", ...flags({ pred, gt: `${o}/raw` }), ...runs);
    const summary = JSON.parse(await Deno.readTextFile(`${pred}/evaluation/summary.json`));
    const dice = (r: string) => summary.metrics[r].dice.mean as number;
    rows[row] = { ET: dice("ET"), TC: dice("TC"), WT: dice("WT") };
  }
  const result: DemoResult = { rows, seconds: (performance.now() - start) / 1000, settings: s };
  const { writeAtomic } = await import("./train/common.ts");
  await writeAtomic(`${o}/demo.json`, new TextEncoder().encode(JSON.stringify(result, null, 1) + "\n"));
  return result;
}

/** {name: value} as command-line flags: ["--name", "value", ...]. */
function flags(o: Record<string, string | number>): string[] {
  return Object.entries(o).flatMap(([k, v]) => [`--${k}`, String(v)]);
}

export function demoTable(r: DemoResult): string {
  const w = Math.max(...ROWS.map((x) => x.length));
  const lines = ROWS.map((row) =>
    `${row.padEnd(w)}  ${(["ET", "TC", "WT"] as const).map((c) => r.rows[row][c].toFixed(3).padStart(6)).join("  ")}`
  );
  return `\nDice on the held-out synthetic subjects (mean over subjects; ${Math.round(r.seconds)} s in all):\n` +
    `${"model".padEnd(w)}  ${["ET", "TC", "WT"].map((c) => c.padStart(6)).join("  ")}\n${lines.join("\n")}`;
}

/** The output folder must be new, empty, or an earlier demo's (which is replaced). */
async function prepareOut(out: string) {
  let entries: string[];
  try {
    entries = [...Deno.readDirSync(out)].map((e) => e.name);
  } catch {
    return;
  }
  if (!entries.length) return;
  if (!entries.includes("demo.json") && !entries.includes("raw")) {
    throw new UsageError(`demo: --out ${out} holds other files; give a new or empty folder`);
  }
  await Deno.remove(out, { recursive: true });
}

/** A student as initialised before any training: the floor the trained models are compared with. */
async function saveUntrainedStudent(path: string, k: number, seed: number) {
  const { gpu } = await import("./kernels/device.ts");
  const { UNet } = await import("./nn/unet.ts");
  const { Rng } = await import("./nn/rng.ts");
  const { saveModel } = await import("./train/common.ts");
  const net = new UNet(await gpu(), { inChannels: 3, k, classes: 4, dropout: 0.2 }, new Rng(seed));
  try {
    await saveModel(path, net.params, { kind: "generator", k, sequences: 3, classes: 4, role: "student" });
  } finally {
    net.params.dispose();
  }
}
