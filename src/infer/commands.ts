// CLI commands of the inference stage.
import { choiceOpt, type Command, CONV_KERNEL_HELP, intOpt, numOpt, reqOpt, UsageError } from "../command.ts";
import { evaluateCommand } from "./evaluate.ts";

export const inferCommands: Record<string, Command> = {
  infer: {
    summary: "segment raw or preprocessed BraTS subjects with a trained generator (NIfTI labels, uncertainty maps)",
    usage: "hadnet infer <input-dir> <out-dir> --model FILE --semantics FILE [options]\n\n" +
      "Segments every subject under <input-dir> (BraTS 2019 HGG/LGG folders, flat 2020/2021, or 2023 names) and\n" +
      "writes <out-dir>/<id>.nii.gz (uint8, the FLAIR's grid and geometry). Each subject is preprocessed in\n" +
      "memory as `preprocess` does, normalised and padded to the semantics size as in training, segmented in eval\n" +
      "mode (argmax of the softmax); then labels 1/2/3 become 1/2/4 (BraTS 2023 inputs keep 1/2/3) and the result\n" +
      "goes back into the source image space. A cropped subject larger than the semantics size is centre-cropped\n" +
      "with a warning and the cut region is labelled background, as the original. Subjects whose outputs exist\n" +
      "are skipped unless --force. A failing subject is reported and the others go on; the exit status is 1 when\n" +
      "any failed. <out-dir>/infer.jsonl gets the options, one line per subject (done, skipped or failed, with\n" +
      "time and warnings) and a summary, appended by each run.\n\n" +
      "Preprocessed input (--preprocessed): <input-dir> is the output of `preprocess` or of the original's\n" +
      "data_preprocessor(_inference).py (<input-dir>[/BRATS]/<id>/<HGG|LGG|LGG_or_HGG>/*.npy); the arrays are\n" +
      "normalised and padded as in training. A subject's hadnet.json places the result back in its source image\n" +
      "space. Without one (the original tool's output), --raw must name the raw BraTS folder it was preprocessed\n" +
      "from: the subject of the same id there gives the geometry (the FLAIR's) and, as the original inference.py,\n" +
      "the placement: per axis of the NIfTI array, the largest leading and trailing all-zero margins over the four\n" +
      "sequences (they must enclose exactly the preprocessed arrays' size).\n\n" +
      "Options:\n" +
      "  --preprocessed        <input-dir> holds preprocessed arrays, not NIfTIs\n" +
      "  --raw DIR             with --preprocessed: raw BraTS folder (any layout above) for subjects that have no\n" +
      "                        hadnet.json\n" +
      "  --model FILE          generator weights: hadnet .safetensors, or the original's .pth (k, sequences and\n" +
      "                        classes are read off the weights)\n" +
      "  --semantics FILE      semantics from training (.json) or the original's HAD_Net_semantics.npy\n" +
      "  --role R              student (3 sequences: flair, t1, t2; default) or teacher (4: with t1ce)\n" +
      "  --k K                 require this many first-level filters (default: whatever the weights have)\n" +
      "  --ids LIST            only these subjects: a comma-separated list, or a file (.npy or one id per line)\n" +
      "  --force               redo subjects whose outputs exist (default: skip them)\n" +
      "  --patch D,H,W         sliding-window inference with windows of D,H,W voxels (multiples of 16, in the\n" +
      "                        preprocessed [z, y, x] order; clipped to the padded size), softmax probabilities\n" +
      "                        weighted by a Gaussian (sigma = 1/8 of the window) and averaged. Instance-norm\n" +
      "                        statistics then cover each window, so results differ from whole-volume inference.\n" +
      "  --overlap F           fraction of a window shared with its neighbour, in [0, 0.95] (default 0.5)\n" +
      "  --uncertainty M       also write <id>_unc_whole/_unc_core/_unc_enhance.nii.gz (uint8, 0-100, BraTS\n" +
      "                        uncertainty-challenge format). M = entropy: the eval-mode softmax; M = mc: the mean\n" +
      "                        softmax over --mc-samples passes with dropout on (instance norm unchanged). Region\n" +
      "                        uncertainty = 100 * binary entropy (in bits) of the region's summed probability\n" +
      "                        (whole: NET+ED+ET, core: NET+ET, enhancing: ET). The label map is always the\n" +
      "                        eval-mode one.\n" +
      "  --mc-samples N        dropout passes for --uncertainty mc (default 10)\n" +
      "  --dropout P           Dropout3d probability for --uncertainty mc (default 0.2, the original's)\n" +
      "  --seed S              seed of the dropout masks; each subject restarts from it (default 0)\n" +
      "  --min-et N            enhancing-tumour components (26-connected) smaller than N voxels become necrosis\n" +
      "  --f16                 store activations as 16-bit floats (half the GPU memory; arithmetic stays 32-bit;\n" +
      "                        needs the adapter's shader-f16; not with --uncertainty mc).\n" +
      "                        Labels can differ from the default where two classes are nearly tied\n" +
      "                        (docs/performance.md)\n" +
      CONV_KERNEL_HELP,
    options: {
      preprocessed: { type: "boolean" },
      raw: { type: "string" },
      model: { type: "string" },
      semantics: { type: "string" },
      role: { type: "string" },
      k: { type: "string" },
      ids: { type: "string" },
      force: { type: "boolean" },
      patch: { type: "string" },
      overlap: { type: "string" },
      uncertainty: { type: "string" },
      "mc-samples": { type: "string" },
      dropout: { type: "string" },
      seed: { type: "string" },
      "min-et": { type: "string" },
      f16: { type: "boolean" },
      "conv-kernel": { type: "string" },
    },
    run: async (v, pos) => {
      if (pos.length !== 2) throw new UsageError("infer takes <input-dir> <out-dir>");
      if (v.raw !== undefined && v.preprocessed !== true) {
        throw new UsageError("--raw is only used with --preprocessed");
      }
      const role = (v.role as string | undefined) ?? "student";
      if (role !== "student" && role !== "teacher") {
        throw new UsageError(`--role must be student or teacher, got "${role}"`);
      }
      const unc = v.uncertainty as string | undefined;
      if (unc !== undefined && unc !== "entropy" && unc !== "mc") {
        throw new UsageError(`--uncertainty must be entropy or mc, got "${unc}"`);
      }
      if (v.f16 === true && unc === "mc") {
        throw new UsageError("--f16 does not combine with --uncertainty mc (Monte-Carlo dropout runs in f32)");
      }
      let patch: [number, number, number] | undefined;
      if (v.patch !== undefined) {
        const p = String(v.patch).split(",").map(Number);
        if (p.length !== 3 || p.some((d) => !Number.isInteger(d) || d < 16 || d % 16 !== 0)) {
          throw new UsageError(`--patch must be three multiples of 16 as D,H,W, got "${v.patch}"`);
        }
        patch = [p[0], p[1], p[2]];
      }
      const { readIdList } = await import("../data/split.ts");
      let ids: string[] | undefined;
      if (v.ids !== undefined) {
        const s = String(v.ids);
        const isFile = (() => {
          try {
            return Deno.statSync(s).isFile;
          } catch {
            return false;
          }
        })();
        ids = isFile ? await readIdList(s) : s.split(",").map((x) => x.trim()).filter((x) => x !== "");
        if (!ids.length) throw new UsageError(`--ids ${s}: no ids`);
      }
      const { CONV_KERNELS } = await import("../kernels/conv_select.ts");
      const convKernels = choiceOpt(v["conv-kernel"], "--conv-kernel", CONV_KERNELS);
      const { gpu } = await import("../kernels/device.ts");
      const { runInference } = await import("./infer.ts");
      const summary = await runInference(await gpu(), {
        input: pos[0],
        preprocessed: v.preprocessed === true,
        raw: v.raw as string | undefined,
        out: pos[1],
        model: reqOpt(v.model, "--model"),
        semantics: reqOpt(v.semantics, "--semantics"),
        role,
        k: intOpt(v.k, "--k"),
        ids,
        force: v.force === true,
        patch,
        overlap: numOpt(v.overlap, "--overlap", 0, 0.95) ?? 0.5,
        uncertainty: unc as "entropy" | "mc" | undefined,
        mcSamples: intOpt(v["mc-samples"], "--mc-samples") ?? 10,
        dropout: numOpt(v.dropout, "--dropout", 0, 0.99) ?? 0.2,
        seed: intOpt(v.seed, "--seed", 0, 2 ** 32 - 1) ?? 0,
        minEt: intOpt(v["min-et"], "--min-et"),
        f16: v.f16 === true,
        convKernels,
      });
      return summary.failed.length ? 1 : 0;
    },
  },
  evaluate: evaluateCommand,
};
