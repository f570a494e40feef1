// CLI commands of the training stage.
import { choiceOpt, type Command, CONV_KERNEL_HELP, intOpt, numOpt, reqOpt, UsageError } from "../command.ts";

/** Reads the id lists named by --train, --val and (optionally) --test. */
async function lists(v: Record<string, unknown>) {
  const { readIdList } = await import("../data/split.ts");
  return {
    train: await readIdList(reqOpt(v.train, "--train")),
    validation: await readIdList(reqOpt(v.val, "--val")),
    test: v.test === undefined ? [] : await readIdList(reqOpt(v.test, "--test")),
  };
}

function noPositionals(name: string, pos: string[]) {
  if (pos.length) throw new UsageError(`${name} takes no positional arguments, got "${pos.join(" ")}"`);
}

const common = {
  data: { type: "string" },
  train: { type: "string" },
  val: { type: "string" },
  test: { type: "string" },
  out: { type: "string" },
  epochs: { type: "string" },
  dropout: { type: "string" },
  seed: { type: "string" },
  "continuous-saving": { type: "boolean" },
  resume: { type: "boolean" },
  lr: { type: "string" },
  "conv-kernel": { type: "string" },
} as const;

const COMMON_HELP =
  "  --data PROC           preprocessed data: the subjects' folder, or a preprocess output holding BRATS/\n" +
  "  --train/--val LIST    id lists (.npy string arrays as the original, or text, one id per line)\n" +
  "  --test LIST           held-out ids with labels: the best model is evaluated on them at the end\n" +
  "  --out RUNDIR          run folder: config.json, log.jsonl (one JSON object per epoch), HAD_Net_semantics.json,\n" +
  "                        the best checkpoint and last.safetensors (the resume checkpoint, rewritten each epoch)\n" +
  "  --seed S              seeds initialisation, order, dropout and augmentation (default 0)\n" +
  "  --continuous-saving   also keep each epoch's full state (models, optimisers, scheduler) under RUNDIR/epochs/\n" +
  "  --resume              continue the run in RUNDIR from last.safetensors with the same settings (--epochs may grow)\n" +
  "  --lr LR               learning rate (default 2e-4, the paper's)\n" + CONV_KERNEL_HELP;

export const trainCommands: Record<string, Command> = {
  parity: {
    summary: "compare hadnet's networks with a PyTorch golden fixture folder",
    usage:
      "hadnet parity <fixture-dir>\n\nRuns the networks on a folder laid out as ../shared/fixtures/pytorch-golden " +
      "and prints one JSON object with the max relative error per tensor; exits non-zero when a tolerance " +
      "(forward 1e-4, gradients 1e-3) is exceeded. Where the adapter has shader-f16 it also runs the forward with " +
      "f16 activation storage (infer --f16): logits held to an error budget of 50 x 2^-11, label agreement reported.",
    options: {},
    run: async (_v, pos) => {
      if (pos.length !== 1) throw new UsageError("parity takes exactly one fixture folder");
      const { runParity } = await import("./parity.ts");
      const report = await runParity(pos[0]);
      console.log(JSON.stringify(report));
      return report.ok ? 0 : 1;
    },
  },
  pretrain: {
    summary: "pre-train the teacher (4 sequences) or the student (3) as the original",
    usage: "hadnet pretrain --role teacher|student --data PROC --train LIST --val LIST [--test LIST] --out RUNDIR\n" +
      "                [--epochs 400] [--k 32] [--dropout 0.2] [--seed 0] [--lr-plateau] [--continuous-saving] [--resume]\n\n" +
      "As Teacher_/Student_Pretraining.py: AdamW (lr 2e-4, weight decay 1e-5), class-weighted cross-entropy whose weights\n" +
      "decay by 0.98 per epoch, augmentation, batch size 1. Validation Dice per region each epoch; the best model by the\n" +
      "mean of WT, TC and ET Dice is saved as Pre_Trained_{Teacher,Student}_BEST_VAL_VM.safetensors.\n\n" +
      "  --role R              teacher or student\n" + COMMON_HELP + "\n" +
      "  --epochs N            epochs (default 400)\n" +
      "  --k K                 filters of the first level (default 32)\n" +
      "  --dropout P           Dropout3d probability (default 0.2)\n" +
      "  --lr-plateau          halve the learning rate after 30 epochs without improvement (the original never does)",
    options: { ...common, role: { type: "string" }, k: { type: "string" }, "lr-plateau": { type: "boolean" } },
    run: async (v, pos) => {
      noPositionals("pretrain", pos);
      const role = reqOpt(v.role, "--role");
      if (role !== "teacher" && role !== "student") {
        throw new UsageError(`--role must be teacher or student, got "${role}"`);
      }
      const { pretrain, PRETRAIN_DEFAULTS: D } = await import("./pretrain.ts");
      const { gpu } = await import("../kernels/device.ts");
      const { CONV_KERNELS } = await import("../kernels/conv_select.ts");
      const cfg = {
        ...D,
        role: role as "teacher" | "student",
        data: reqOpt(v.data, "--data"),
        out: reqOpt(v.out, "--out"),
        ...(await lists(v)),
        epochs: intOpt(v.epochs, "--epochs") ?? D.epochs,
        k: intOpt(v.k, "--k") ?? D.k,
        dropout: numOpt(v.dropout, "--dropout", 0, 0.99) ?? D.dropout,
        lr: numOpt(v.lr, "--lr", 1e-8, 1) ?? D.lr,
        seed: intOpt(v.seed, "--seed", 0, 2 ** 31) ?? D.seed,
        lrPlateau: !!v["lr-plateau"],
        continuousSaving: !!v["continuous-saving"],
        convKernels: choiceOpt(v["conv-kernel"], "--conv-kernel", CONV_KERNELS) ?? D.convKernels,
      };
      const r = await pretrain(await gpu(), cfg, { resume: !!v.resume });
      const last = r.history.at(-1);
      console.log(JSON.stringify({ out: cfg.out, epochs: r.history.length, metric: last?.metric, test: r.test }));
      return 0;
    },
  },
  train: {
    summary: "train HAD-Net (student, hierarchical discriminator) from pre-trained teacher and student",
    usage:
      "hadnet train --data PROC --train LIST --val LIST --teacher FILE --student FILE --out RUNDIR [--test LIST]\n" +
      "             [--epochs 800] [--dropout 0.2] [--teacher-eval] [--disc-threshold 0.8] [--no-hierarchy] [--seed 0]\n" +
      "             [--continuous-saving] [--resume]\n\n" +
      "As HAD_Net.py: Adam (lr 2e-4, betas 0.5/0.999) for the student and a fresh discriminator, student loss =\n" +
      "weighted cross-entropy + 0.2 x adversarial MSE; the discriminator steps only while its accuracy is <= the\n" +
      "threshold. The best student is saved as HAD_Net_BEST_VAL_VM.safetensors.\n\n" +
      "  --teacher FILE        pre-trained teacher (.safetensors from pretrain or import, or the original's .pth)\n" +
      "  --student FILE        pre-trained student (same formats); k is read from the weights and must agree\n" +
      COMMON_HELP + "\n" +
      "  --epochs N            epochs (default 800)\n" +
      "  --dropout P           Dropout3d probability of teacher and student in training mode (default 0.2)\n" +
      "  --teacher-eval        run the teacher in eval mode (the original leaves its dropout on)\n" +
      "  --disc-threshold T    update the discriminator only when its accuracy is <= T (default 0.8)\n" +
      "  --no-hierarchy        AD-Net ablation: the discriminator sees no feature pairs",
    options: {
      ...common,
      teacher: { type: "string" },
      student: { type: "string" },
      "teacher-eval": { type: "boolean" },
      "disc-threshold": { type: "string" },
      "no-hierarchy": { type: "boolean" },
    },
    run: async (v, pos) => {
      noPositionals("train", pos);
      const { trainHadnet, HADNET_DEFAULTS: D } = await import("./hadnet.ts");
      const { gpu } = await import("../kernels/device.ts");
      const { CONV_KERNELS } = await import("../kernels/conv_select.ts");
      const cfg = {
        ...D,
        data: reqOpt(v.data, "--data"),
        out: reqOpt(v.out, "--out"),
        teacher: reqOpt(v.teacher, "--teacher"),
        student: reqOpt(v.student, "--student"),
        ...(await lists(v)),
        epochs: intOpt(v.epochs, "--epochs") ?? D.epochs,
        dropout: numOpt(v.dropout, "--dropout", 0, 0.99) ?? D.dropout,
        lr: numOpt(v.lr, "--lr", 1e-8, 1) ?? D.lr,
        discThreshold: numOpt(v["disc-threshold"], "--disc-threshold") ?? D.discThreshold,
        teacherEval: !!v["teacher-eval"],
        hierarchical: !v["no-hierarchy"],
        seed: intOpt(v.seed, "--seed", 0, 2 ** 31) ?? D.seed,
        continuousSaving: !!v["continuous-saving"],
        convKernels: choiceOpt(v["conv-kernel"], "--conv-kernel", CONV_KERNELS) ?? D.convKernels,
      };
      const r = await trainHadnet(await gpu(), cfg, { resume: !!v.resume });
      const last = r.history.at(-1);
      console.log(JSON.stringify({ out: cfg.out, epochs: r.history.length, metric: last?.metric, test: r.test }));
      return 0;
    },
  },
};
