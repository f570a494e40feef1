// CLI commands of the data stage: synthetic subjects, preprocessing, train/validation/test id lists.
// Modules are imported when a command runs, so `hadnet --help` and other stages do not load them.
import { type Command, intOpt, reqOpt, UsageError } from "../command.ts";

/** A comma-separated list of exactly `count` numbers, each checked by `ok` (described by `what`). */
function numList(v: unknown, name: string, count: number, ok: (x: number) => boolean, what: string): number[] {
  const parts = String(v).split(",");
  const xs = parts.map((p) => (p.trim() === "" ? NaN : Number(p)));
  if (parts.length !== count || !xs.every((x) => Number.isFinite(x) && ok(x))) {
    throw new UsageError(`${name} must be ${count} comma-separated ${what}, got "${v}"`);
  }
  return xs;
}

function noPositionals(cmd: string, pos: string[]) {
  if (pos.length > 0) throw new UsageError(`${cmd} takes no positional arguments, got "${pos[0]}"`);
}

export const dataCommands: Record<string, Command> = {
  synth: {
    summary: "write synthetic BraTS-like subjects (BraTS 2019 layout) for demos and tests",
    usage: "hadnet synth --out DIR [--n 8] [--size 48,56,40] [--seed 0] [--template NIFTI]\n\n" +
      "Writes N synthetic subjects as DIR/{HGG,LGG}/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz (ids BraTS19_SYN_0001_1, " +
      "...): four int16 sequences and a uint8 segmentation (labels 0, 1 necrotic core, 2 oedema, 4 enhancing rim), " +
      "1 mm isotropic. Subject k is drawn from seed + k, so a seed always gives byte-identical files. Prints one " +
      "summary line.\n\n" +
      "Options:\n" +
      "  --out DIR          output folder, created if needed (required)\n" +
      "  --n N              number of subjects (default 8)\n" +
      "  --size X,Y,Z       volume size in voxels, each >= 16 (default 48,56,40); below about 28 per axis some\n" +
      "                     seeds find no room for a tumour and fail\n" +
      "  --seed S           integer seed in [0, 4294967295] (default 0)\n" +
      "  --template NIFTI   brain-extracted T1 (e.g. Colin27 ch2bet.nii.gz) resampled to --size to host the " +
      "tumours\n" +
      "                     instead of the synthetic head (default: synthetic head)",
    options: {
      out: { type: "string" },
      n: { type: "string" },
      size: { type: "string" },
      seed: { type: "string" },
      template: { type: "string" },
    },
    run: async (v, pos) => {
      noPositionals("synth", pos);
      const out = reqOpt(v.out, "--out");
      const n = intOpt(v.n, "--n", 1, 100000) ?? 8;
      const seed = intOpt(v.seed, "--seed", 0, 2 ** 32 - 1) ?? 0;
      const size = v.size === undefined
        ? undefined
        : numList(v.size, "--size", 3, (x) => Number.isInteger(x) && x >= 16 && x <= 1024, "integers in [16, 1024]");
      const { DEFAULT_SYNTH_SIZE, writeSynthDataset } = await import("./synth.ts");
      const dirs = await writeSynthDataset({
        out,
        n,
        seed,
        size: size as [number, number, number] | undefined,
        template: v.template as string | undefined,
      });
      const hgg = dirs.filter((d) => d.includes("/HGG/")).length;
      console.log(
        `synth: wrote ${n} subjects (${hgg} HGG, ${n - hgg} LGG) of ${(size ?? DEFAULT_SYNTH_SIZE).join("x")} ` +
          `voxels, seed ${seed}, to ${out}`,
      );
      return 0;
    },
  },

  preprocess: {
    summary: "preprocess a BraTS dataset as the original (transpose, flip, crop to the brain, .npy per sequence)",
    usage: "hadnet preprocess --input RAW --output PROC [--workers N] [--force] [--no-seg]\n\n" +
      "Reads every subject under RAW (BraTS 2019 RAW/{HGG,LGG}/<id>/, BraTS 2020/2021 RAW/<id>/ with " +
      "_flair/_t1/_t1ce/_t2/_seg names, or BraTS 2023 RAW/<id>/ with -t2f/-t1n/-t1c/-t2w/-seg names; .nii or " +
      ".nii.gz) and writes PROC/BRATS/<id>/<HGG|LGG>/{flr,t1c,t1p,t2w,seg,mask}.npy as HAD-Net's " +
      "data_preprocessor.py, plus hadnet.json (what is needed to map predictions back to the source space). " +
      "Ungraded subjects go under HGG. Progress, warnings and failures go to stderr, then a summary line and one " +
      "line per failed subject with its reason. A failing subject does not stop the others; the exit status is 1 " +
      "when any subject failed, 0 otherwise.\n\n" +
      "Options:\n" +
      "  --input RAW     dataset folder (required)\n" +
      "  --output PROC   output root; subjects go under PROC/BRATS (required)\n" +
      `  --workers N     subjects preprocessed in parallel (default: number of CPU cores, here ${navigator.hardwareConcurrency})\n` +
      "  --force         redo subjects whose outputs already exist (default: skip them)\n" +
      "  --no-seg        inference data: no segmentation needed, none stored (default: seg required)",
    options: {
      input: { type: "string" },
      output: { type: "string" },
      workers: { type: "string" },
      force: { type: "boolean" },
      "no-seg": { type: "boolean" },
    },
    run: async (v, pos) => {
      noPositionals("preprocess", pos);
      const input = reqOpt(v.input, "--input"), output = reqOpt(v.output, "--output");
      const workers = intOpt(v.workers, "--workers", 1, 1024) ?? navigator.hardwareConcurrency;
      const { preprocessDataset } = await import("./preprocess.ts");
      const s = await preprocessDataset({
        input,
        output,
        workers,
        force: v.force === true,
        withSeg: v["no-seg"] !== true,
      });
      if (s.processed.length + s.skipped.length + s.failed.length === 0) {
        throw new Error(`${input}: no subject folders found (see hadnet preprocess --help for the layouts)`);
      }
      return s.failed.length > 0 ? 1 : 0;
    },
  },

  split: {
    summary: "split preprocessed subjects into train/validation/test id lists, or check such lists",
    usage: "hadnet split --data PROC --out DIR [--ratios 0.6,0.2,0.2] [--seed 0]\n" +
      "hadnet split --check LIST... [--data PROC]\n\n" +
      "Split: lists the subject folders of PROC, which is either preprocess's output root (the subjects are then " +
      "PROC/BRATS/<id>) or that BRATS folder itself, shuffles their ids with the seed and cuts them by the " +
      "ratios (normalised to sum 1; validation and test get round(n * ratio) ids, train the rest). Writes " +
      "DIR/train.txt, DIR/validation.txt and DIR/test.txt (one id per line, sorted) and prints the counts.\n\n" +
      "Check (--check): reads the given id lists (text, one id per line, or .npy string arrays as the original " +
      "saves) and fails with one message naming every id that appears twice in a list or in two lists (a data " +
      "leak) and, with --data, every id without a preprocessed folder.\n\n" +
      "Options:\n" +
      "  --data PROC         preprocessed dataset (required to split; optional with --check)\n" +
      "  --out DIR           folder for the three lists, created if needed (required to split)\n" +
      "  --ratios T,V,E      train, validation, test shares, non-negative with a positive sum (default 0.6,0.2,0.2)\n" +
      "  --seed S            integer seed in [0, 4294967295] (default 0)\n" +
      "  --check LIST...     check the id list files given as arguments instead of splitting",
    options: {
      data: { type: "string" },
      out: { type: "string" },
      ratios: { type: "string" },
      seed: { type: "string" },
      check: { type: "boolean" },
    },
    run: async (v, pos) => {
      const { subjectsRoot, listSubjects } = await import("./loader.ts");
      const { checkSplit, makeSplit, readIdList, writeIdList } = await import("./split.ts");
      if (v.check) {
        for (const o of ["out", "ratios", "seed"]) {
          if (v[o] !== undefined) throw new UsageError(`split --check does not take --${o}`);
        }
        if (pos.length === 0) throw new UsageError("split --check needs one or more id list files");
        if (new Set(pos).size !== pos.length) throw new UsageError("split --check: a list file is given twice");
        const lists: Record<string, string[]> = {};
        for (const p of pos) lists[p] = await readIdList(p);
        const root = v.data === undefined ? undefined : subjectsRoot(reqOpt(v.data, "--data"));
        checkSplit(lists, root);
        const ids = new Set(Object.values(lists).flat()).size;
        console.log(
          `split --check: ${pos.length} lists, ${ids} ids, no duplicates or leaks` +
            (root === undefined ? "" : `, all preprocessed under ${root}`),
        );
        return 0;
      }
      noPositionals("split", pos);
      const root = subjectsRoot(reqOpt(v.data, "--data"));
      const out = reqOpt(v.out, "--out");
      const ratios = v.ratios === undefined ? [0.6, 0.2, 0.2] : numList(
        v.ratios,
        "--ratios",
        3,
        (x) => x >= 0,
        "non-negative numbers",
      );
      if (ratios[0] + ratios[1] + ratios[2] <= 0) throw new UsageError(`--ratios "${v.ratios}" must not sum to 0`);
      const seed = intOpt(v.seed, "--seed", 0, 2 ** 32 - 1) ?? 0;
      const ids = listSubjects(root);
      if (ids.length === 0) throw new Error(`${root}: no subject folders to split`);
      const split = makeSplit(ids, ratios as [number, number, number], seed);
      checkSplit({ ...split }, root); // every id has its grade folder
      await Deno.mkdir(out, { recursive: true });
      for (const name of ["train", "validation", "test"] as const) {
        await writeIdList(`${out}/${name}.txt`, split[name]);
      }
      console.log(
        `split: ${split.train.length} train, ${split.validation.length} validation, ${split.test.length} test ` +
          `(of ${ids.length} subjects in ${root}, seed ${seed}) written to ${out}/{train,validation,test}.txt`,
      );
      return 0;
    },
  },
};
