// `hadnet infer` on tiny synthetic BraTS data (40x36x30, cropped to about 23x29x32: padded in some dims, cut in
// others) with randomly initialised k=2 generators; the outputs are checked with nibabel (/usr/bin/python3) and
// against the brain box computed here from the source NIfTIs. Plus the pure parts: fit/unfit, window starts, the
// Gaussian map, 26-connected components and the small-ET relabelling, region uncertainty. Preprocessed input
// (hadnet's layout with hadnet.json, the original tool's without) must give the raw-folder output voxel for voxel.
import assert from "node:assert/strict";
import { main } from "../../main.ts";
import { inferCommands } from "../../src/infer/commands.ts";
import { encodeNifti, type NiftiImage, parseNifti, readNifti } from "../../src/data/nifti.ts";
import { marginMeta, preprocessDataset, preprocessImages, restoreToOriginal } from "../../src/data/preprocess.ts";
import { writeSynthDataset } from "../../src/data/synth.ts";
import { synthGeometry } from "../../src/data/synth.ts";
import { copyBox, fitBox, gaussianWindow, runInference, unfit, windowStarts } from "../../src/infer/infer.ts";
import { Gpu } from "../../src/kernels/device.ts";
import { components26, regionUncertainty, relabelSmallEt } from "../../src/infer/postprocess.ts";
import { saveSafetensors } from "../../src/nn/safetensors.ts";
import { readJsonl } from "../../src/data/progress.ts";
import { Rng } from "../../src/nn/rng.ts";
import { UNet } from "../../src/nn/unet.ts";
import { saveModel } from "../../src/train/common.ts";
import { python, testGpu, testGpuF16 } from "../util.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const SIZE: [number, number, number] = [40, 36, 30];
const IDS = ["BraTS19_SYN_0001_1", "BraTS19_SYN_0002_1"];

/** shape, dtype, unique values, and whether the affine equals the reference file's, as nibabel reads them. */
async function nib(
  path: string,
  ref: string,
): Promise<{ shape: number[]; dtype: string; values: number[]; affine: boolean }> {
  return JSON.parse(
    await python(
      "import sys,json,numpy as np,nibabel as nb\n" +
        "a=nb.load(sys.argv[1]);r=nb.load(sys.argv[2]);d=np.asanyarray(a.dataobj)\n" +
        "print(json.dumps({'shape':list(a.shape),'dtype':str(d.dtype),'values':np.unique(d).tolist()," +
        "'affine':bool(np.allclose(a.affine,r.affine,atol=1e-6))}))",
      path,
      ref,
    ),
  );
}

/** Voxels (x-fastest) non-zero in every sequence: their bounding box [lo, hi] per source axis. */
async function brainBox(dir: string, id: string): Promise<{ lo: number[]; hi: number[] }> {
  const vols = await Promise.all(["flair", "t1", "t1ce", "t2"].map((s) => readNifti(`${dir}/${id}_${s}.nii.gz`)));
  const [X, Y, Z] = SIZE;
  const lo = [X, Y, Z], hi = [-1, -1, -1];
  for (let z = 0, i = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++, i++) {
        if (vols.some((v) => v.data[i] === 0)) continue;
        [x, y, z].forEach((c, a) => {
          lo[a] = Math.min(lo[a], c);
          hi[a] = Math.max(hi[a], c);
        });
      }
    }
  }
  return { lo, hi };
}

interface Fixture {
  dir: string;
  raw: string;
  student: string;
  studentEt: string;
  teacher: string;
  sem32: string;
  sem16: string;
}

/** Two synthetic subjects, k=2 student/teacher models (one biased to ET everywhere), two semantics files. */
async function fixture(): Promise<Fixture> {
  const g = await testGpu();
  const dir = await Deno.makeTempDir({ prefix: "hadnet-infer-" });
  const raw = `${dir}/raw`;
  await writeSynthDataset({ out: raw, n: 2, size: SIZE, seed: 3 });
  const f: Fixture = {
    dir,
    raw,
    student: `${dir}/student.safetensors`,
    studentEt: `${dir}/student_et.safetensors`,
    teacher: `${dir}/teacher.safetensors`,
    sem32: `${dir}/sem32.json`,
    sem16: `${dir}/sem16.json`,
  };
  for (const [path, inChannels] of [[f.student, 3], [f.teacher, 4]] as const) {
    const net = new UNet(g, { inChannels, k: 2, classes: 4, dropout: 0.2 }, new Rng(inChannels));
    await saveModel(path, net.params, { kind: "generator", k: 2, sequences: inChannels, classes: 4 });
    if (inChannels === 3) {
      const sd = await net.params.stateDict();
      sd.get("conv_out.bias")!.data.set([0, 0, 0, 1000]);
      await saveSafetensors(f.studentEt, sd, { kind: "generator", k: "2", sequences: "3", classes: "4" });
    }
    net.params.dispose();
  }
  const sem = (shape: number[]) => JSON.stringify({ shape, teacherChannels: 4, studentChannels: 3 });
  await Deno.writeTextFile(f.sem32, sem([32, 32, 32]));
  await Deno.writeTextFile(f.sem16, sem([16, 32, 32]));
  return f;
}

async function withFixture(fn: (f: Fixture) => Promise<void>) {
  const f = await fixture();
  try {
    await fn(f);
  } finally {
    await Deno.remove(f.dir, { recursive: true });
  }
}

const infer = (f: Fixture, out: string, model: string, sem: string, ...rest: string[]) =>
  main(["infer", f.raw, out, "--model", model, "--semantics", sem, ...rest]);

Deno.test("infer --help documents every option", () => {
  const { usage, options } = inferCommands.infer;
  assert.ok(usage.startsWith("hadnet infer <input-dir> <out-dir>"));
  for (const o of Object.keys(options)) assert.ok(usage.includes(`--${o} `), `--${o} missing from --help`);
});

Deno.test("infer refuses an unknown --conv-kernel, naming the choices", async () => {
  await assert.rejects(
    () => inferCommands.infer.run({ "conv-kernel": "fastest" }, ["in", "out"]),
    /--conv-kernel must be one of auto, gather, channels-last, tuned, got "fastest"/,
  );
});

Deno.test("fitBox/unfit: pad from floor(diff/2), cut from |floor(diff/2)| as the original; unfit inverts", () => {
  const box = fitBox([23, 29, 35], [32, 32, 32]);
  assert.deepEqual(box, { src: [0, 0, 2], dst: [4, 1, 0], size: [23, 29, 32] });
  // 7 too many: numpy's abs((-7)//2) = 4 cut in front, 3 behind.
  assert.deepEqual(fitBox([23], [16]).src, [4]);
  const shape = [3, 4, 5], target = [4, 2, 6];
  const vol = Uint8Array.from({ length: 60 }, (_, i) => 1 + (i % 250));
  const padded = new Uint8Array(48);
  const b = fitBox(shape, target);
  copyBox(vol, shape, b.src, padded, target, b.dst, b.size);
  const back = unfit(padded, target, shape);
  for (let d = 0, i = 0; d < 3; d++) {
    for (let h = 0; h < 4; h++) {
      for (let w = 0; w < 5; w++, i++) assert.equal(back[i], h === 1 || h === 2 ? vol[i] : 0, `(${d},${h},${w})`);
    }
  }
});

Deno.test("sliding windows: nnU-Net starts cover the volume with the overlap; Gaussian peak 1, sigma n/8", () => {
  assert.deepEqual(windowStarts(32, 32, 0.5), [0]);
  assert.deepEqual(windowStarts(32, 48, 0.5), [0]);
  assert.deepEqual(windowStarts(32, 16, 0.5), [0, 8, 16]);
  assert.deepEqual(windowStarts(48, 32, 0), [0, 16]);
  assert.deepEqual(windowStarts(100, 32, 0.5), [0, 14, 27, 41, 54, 68]);
  const gw = gaussianWindow([16, 8, 32]);
  assert.equal(gw[(8 * 8 + 4) * 32 + 16], 1);
  // One sigma (2 voxels) from the centre along the first axis.
  assert.ok(Math.abs(gw[(10 * 8 + 4) * 32 + 16] - Math.exp(-0.5)) < 1e-12);
  assert.ok(gw.every((v) => v > 0 && v <= 1));
});

Deno.test("components26 connects diagonal neighbours; relabelSmallEt turns small ET components into necrosis", () => {
  const shape = [4, 5, 6];
  const pred = new Uint8Array(120);
  const at = (d: number, h: number, w: number) => (d * 5 + h) * 6 + w;
  // A 3-voxel diagonal chain (26- but not 6-connected), a 5-voxel block, one isolated voxel, oedema around.
  for (const [d, h, w] of [[0, 0, 0], [1, 1, 1], [2, 2, 0]]) pred[at(d, h, w)] = 3;
  for (const [d, h, w] of [[0, 4, 4], [0, 4, 5], [1, 4, 5], [1, 3, 5], [0, 3, 5]]) pred[at(d, h, w)] = 3;
  pred[at(3, 0, 5)] = 3;
  pred[at(3, 4, 0)] = 2;
  const { labels, sizes } = components26(pred.map((c) => (c === 3 ? 1 : 0)), shape);
  assert.deepEqual(sizes, [0, 3, 5, 1]);
  assert.equal(labels[at(2, 2, 0)], labels[at(0, 0, 0)]);
  const before = pred.slice();
  assert.equal(relabelSmallEt(pred, shape, 4), 4);
  for (let i = 0; i < 120; i++) {
    const small = before[i] === 3 && sizes[labels[i]] < 4;
    assert.equal(pred[i], small ? 1 : before[i], `voxel ${i}`);
  }
  assert.equal(relabelSmallEt(pred, shape, 1), 0);
  assert.throws(() => components26(new Uint8Array(5), [1, 2, 3]), /5 voxels does not match shape \[1,2,3\]/);
});

Deno.test("regionUncertainty: 100 * binary entropy in bits of the summed region probability", () => {
  // Classes [bg, NET, ED, ET] x 3 voxels.
  const p = Float32Array.from([
    [1, 0.5, 0.25],
    [0, 0, 0.25],
    [0, 0.25, 0.25],
    [0, 0.25, 0.25],
  ].flat());
  const u = regionUncertainty(p, 3);
  const h = (q: number) => Math.round(100 * -(q * Math.log2(q) + (1 - q) * Math.log2(1 - q)));
  assert.deepEqual([...u.whole], [0, 100, h(0.75)]);
  assert.deepEqual([...u.core], [0, h(0.25), 100]);
  assert.deepEqual([...u.enhance], [0, h(0.25), h(0.25)]);
});

Deno.test("infer: labels in the FLAIR's grid (nibabel), background outside the brain box, cut region, skip, ids", async () => {
  await withFixture(async (f) => {
    const out = `${f.dir}/out`;
    assert.equal(await infer(f, out, f.student, f.sem32), 0);
    for (const id of IDS) {
      const flair = `${f.raw}/HGG/${id}/${id}_flair.nii.gz`;
      const r = await nib(`${out}/${id}.nii.gz`, flair);
      assert.deepEqual(r.shape, SIZE);
      assert.equal(r.dtype, "uint8");
      assert.ok(r.affine, "affine differs from the flair's");
      assert.ok(r.values.every((v) => [0, 1, 2, 4].includes(v)), `labels ${r.values}`);
      assert.ok(r.values.length > 2, `the random model should predict several classes, got ${r.values}`);
      const { lo, hi } = await brainBox(`${f.raw}/HGG/${id}`, id);
      const seg = (await readNifti(`${out}/${id}.nii.gz`)).data;
      for (let z = 0, i = 0; z < SIZE[2]; z++) {
        for (let y = 0; y < SIZE[1]; y++) {
          for (let x = 0; x < SIZE[0]; x++, i++) {
            const inside = [x, y, z].every((c, a) => c >= lo[a] && c <= hi[a]);
            if (!inside) assert.equal(seg[i], 0, `${id}: label ${seg[i]} outside the brain box at (${x},${y},${z})`);
          }
        }
      }
    }
    const log = readJsonl(`${out}/infer.jsonl`);
    assert.deepEqual(log.filter((l) => l.status === "done").map((l) => l.id), IDS);
    assert.equal(log[0].event, "start");
    assert.deepEqual(log[0].semanticsShape, [32, 32, 32]);

    // Finished subjects are skipped unless --force.
    const mtime = Deno.statSync(`${out}/${IDS[0]}.nii.gz`).mtime!.getTime();
    assert.equal(await infer(f, out, f.student, f.sem32, "--ids", IDS[0]), 0);
    assert.equal(Deno.statSync(`${out}/${IDS[0]}.nii.gz`).mtime!.getTime(), mtime);
    assert.equal(readJsonl(`${out}/infer.jsonl`).at(-2)!.status, "skipped");
    assert.equal(await infer(f, out, f.student, f.sem32, "--ids", IDS[0], "--force"), 0);
    assert.equal(readJsonl(`${out}/infer.jsonl`).at(-2)!.status, "done");
    await assert.rejects(
      infer(f, out, f.student, f.sem32, "--ids", `${IDS[0]},BraTS19_NOPE_1`),
      /no subject BraTS19_NOPE_1/,
    );

    // A model that says ET everywhere: exactly the brain box is 4, minus the z slices the 16-deep semantics cut.
    const cut = `${f.dir}/cut`;
    assert.equal(await infer(f, cut, f.studentEt, f.sem16, "--ids", IDS[0]), 0);
    const { lo, hi } = await brainBox(`${f.raw}/HGG/${IDS[0]}`, IDS[0]);
    const depth = hi[2] - lo[2] + 1, from = lo[2] - Math.floor((16 - depth) / 2);
    assert.ok(depth > 16, `the test needs a cut: depth ${depth}`);
    const seg = (await readNifti(`${cut}/${IDS[0]}.nii.gz`)).data;
    for (let z = 0, i = 0; z < SIZE[2]; z++) {
      for (let y = 0; y < SIZE[1]; y++) {
        for (let x = 0; x < SIZE[0]; x++, i++) {
          const inside = [x, y, z].every((c, a) => c >= lo[a] && c <= hi[a]) && z >= from && z < from + 16;
          assert.equal(seg[i], inside ? 4 : 0, `(${x},${y},${z})`);
        }
      }
    }
    const warned = readJsonl(`${cut}/infer.jsonl`)[1].warnings as string[];
    assert.match(warned.join("\n"), /exceeds the semantics size \[16,32,32\] in dim 0; centre-cropped/);

    // BraTS 2023 names (flat layout) keep ET as label 3.
    const id23 = "BraTS-GLI-00001-000", raw23 = `${f.dir}/raw23`;
    await Deno.mkdir(`${raw23}/${id23}`, { recursive: true });
    for (const [ours, theirs] of [["flair", "t2f"], ["t1", "t1n"], ["t1ce", "t1c"], ["t2", "t2w"]]) {
      await Deno.copyFile(
        `${f.raw}/HGG/${IDS[0]}/${IDS[0]}_${ours}.nii.gz`,
        `${raw23}/${id23}/${id23}-${theirs}.nii.gz`,
      );
    }
    const out23 = `${f.dir}/out23`;
    assert.equal(await main(["infer", raw23, out23, "--model", f.studentEt, "--semantics", f.sem32]), 0);
    assert.deepEqual((await nib(`${out23}/${id23}.nii.gz`, `${raw23}/${id23}/${id23}-t2f.nii.gz`)).values, [0, 3]);
  });
});

Deno.test("infer: --patch covering the padded volume equals whole-volume inference; smaller windows run", async () => {
  await withFixture(async (f) => {
    const id = IDS[1];
    const read = async (dir: string) => (await readNifti(`${f.dir}/${dir}/${id}.nii.gz`)).data;
    assert.equal(await infer(f, `${f.dir}/whole`, f.student, f.sem32, "--ids", id), 0);
    assert.equal(await infer(f, `${f.dir}/one`, f.student, f.sem32, "--ids", id, "--patch", "32,48,32"), 0);
    assert.deepEqual(await read("one"), await read("whole"));
    // The same weights as a PyTorch state dict (torch.save) give the same labels.
    await python(
      "import sys,json,struct,numpy as np,torch\n" +
        "b=open(sys.argv[1],'rb').read();n=struct.unpack('<Q',b[:8])[0];h=json.loads(b[8:8+n]);d=b[8+n:]\n" +
        "t=lambda v:torch.from_numpy(np.frombuffer(d[v['data_offsets'][0]:v['data_offsets'][1]],'<f4')" +
        ".reshape(v['shape']).copy())\n" +
        "torch.save({k:t(v) for k,v in h.items() if k!='__metadata__'},sys.argv[2])",
      f.student,
      `${f.dir}/student.pth`,
    );
    assert.equal(await infer(f, `${f.dir}/pth`, `${f.dir}/student.pth`, f.sem32, "--ids", id), 0);
    assert.deepEqual(await read("pth"), await read("whole"));
    const args = ["--ids", id, "--patch", "16,32,16", "--uncertainty", "entropy"];
    assert.equal(await infer(f, `${f.dir}/win`, f.student, f.sem32, ...args), 0);
    const seg = await read("win");
    assert.ok(seg.every((v) => [0, 1, 2, 4].includes(v)));
    for (const r of ["whole", "core", "enhance"]) {
      const u = (await readNifti(`${f.dir}/win/${id}_unc_${r}.nii.gz`)).data;
      assert.ok(u.every((v) => v >= 0 && v <= 100));
    }
    await assert.rejects(infer(f, `${f.dir}/bad`, f.student, f.sem32, "--patch", "16,20,16"), /multiples of 16/);
  });
});

Deno.test("infer --f16: the same labels where the classes are far apart; windows and entropy run; not with MC", async () => {
  const g = await testGpuF16();
  await withFixture(async (f) => {
    // An adapter without shader-f16 (this one, its feature hidden) is one error before any subject is touched.
    const plain = new Gpu(g.device, "a plain adapter", false, new Set());
    const o = { input: f.raw, out: `${f.dir}/none`, model: f.student, semantics: f.sem32, role: "student" as const };
    const rest = { force: false, overlap: 0.5, mcSamples: 1, dropout: 0.2, seed: 0, f16: true };
    await assert.rejects(runInference(plain, { ...o, ...rest }), /--f16 needs .*shader-f16.*a plain adapter lacks/);
    const id = IDS[0];
    const read = async (dir: string) => (await readNifti(`${f.dir}/${dir}/${id}.nii.gz`)).data;
    // The ET-biased student's logits are ~1000 apart, far beyond f16's rounding: every label must agree.
    assert.equal(await infer(f, `${f.dir}/f32`, f.studentEt, f.sem32, "--ids", id), 0);
    assert.equal(await infer(f, `${f.dir}/f16`, f.studentEt, f.sem32, "--ids", id, "--f16"), 0);
    assert.ok((await read("f32")).includes(4));
    assert.deepEqual(await read("f16"), await read("f32"));
    // Sliding windows with the entropy maps: the same labels as in f32, and the maps in range.
    const args = ["--ids", id, "--patch", "16,32,16", "--uncertainty", "entropy"];
    assert.equal(await infer(f, `${f.dir}/win32`, f.studentEt, f.sem32, ...args), 0);
    assert.equal(await infer(f, `${f.dir}/win16`, f.studentEt, f.sem32, ...args, "--f16"), 0);
    assert.deepEqual(await read("win16"), await read("win32"));
    const unc = (await readNifti(`${f.dir}/win16/${id}_unc_enhance.nii.gz`)).data;
    assert.ok(unc.every((v) => v >= 0 && v <= 100));
    await assert.rejects(
      infer(f, `${f.dir}/mc`, f.student, f.sem32, "--f16", "--uncertainty", "mc"),
      /--f16 does not combine with --uncertainty mc/,
    );
  });
});

Deno.test("infer: entropy and MC-dropout uncertainty maps (uint8 0..100, named as BraTS), seeded MC", async () => {
  await withFixture(async (f) => {
    const id = IDS[0];
    const flair = `${f.raw}/HGG/${id}/${id}_flair.nii.gz`;
    const regions = ["whole", "core", "enhance"];
    for (const mode of ["entropy", "mc"]) {
      const out = `${f.dir}/${mode}`;
      const args = ["--ids", id, "--uncertainty", mode, "--mc-samples", "2", "--seed", "5"];
      assert.equal(await infer(f, out, f.student, f.sem32, ...args), 0);
      const names = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) => n.endsWith(".nii.gz")).sort();
      assert.deepEqual(names, [`${id}.nii.gz`, ...regions.map((r) => `${id}_unc_${r}.nii.gz`)].sort());
      for (const r of regions) {
        const n = await nib(`${out}/${id}_unc_${r}.nii.gz`, flair);
        assert.equal(n.dtype, "uint8");
        assert.deepEqual(n.shape, SIZE);
        assert.ok(n.affine);
        assert.ok(n.values.every((v) => v >= 0 && v <= 100), `${mode} ${r}: ${n.values}`);
        assert.ok(n.values.some((v) => v > 0), `${mode} ${r}: all certain`);
      }
      if (mode === "mc") {
        // Same seed, same maps; the label map stays the eval-mode one.
        const again = `${f.dir}/mc2`;
        assert.equal(await infer(f, again, f.student, f.sem32, ...args), 0);
        for (const r of regions) {
          const a = (await readNifti(`${out}/${id}_unc_${r}.nii.gz`)).data;
          assert.deepEqual((await readNifti(`${again}/${id}_unc_${r}.nii.gz`)).data, a);
        }
        const entropySeg = (await readNifti(`${f.dir}/entropy/${id}.nii.gz`)).data;
        assert.deepEqual((await readNifti(`${out}/${id}.nii.gz`)).data, entropySeg);
      }
    }
  });
});

Deno.test("infer: a model of the wrong sequence count or k is one error; a failing subject does not stop the rest", async () => {
  await withFixture(async (f) => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "infer", f.raw, `${f.dir}/o`, "--model", f.teacher, "--semantics", f.sem32],
      cwd: ROOT,
    }).output();
    const stderr = new TextDecoder().decode(r.stderr).trimEnd();
    assert.equal(r.code, 1, stderr);
    assert.equal(stderr.split("\n").length, 1, stderr);
    assert.match(
      stderr,
      /^hadnet: .*teacher\.safetensors: model does not fit: it takes 4 sequences but a student takes 3$/,
    );
    await assert.rejects(
      infer(f, `${f.dir}/o`, f.student, f.sem32, "--k", "4"),
      /student\.safetensors: model does not fit: it has k = 2 but --k 4 was asked for/,
    );
    // The teacher model takes the teacher role; a subject without t2 fails on its own.
    const broken = `${f.raw}/HGG/BraTS19_SYN_0009_1`;
    await Deno.mkdir(broken);
    for (const s of ["flair", "t1", "t1ce"]) {
      await Deno.copyFile(`${f.raw}/HGG/${IDS[0]}/${IDS[0]}_${s}.nii.gz`, `${broken}/BraTS19_SYN_0009_1_${s}.nii.gz`);
    }
    const out = `${f.dir}/teacher`;
    assert.equal(await infer(f, out, f.teacher, f.sem32, "--role", "teacher"), 1);
    for (const id of IDS) Deno.statSync(`${out}/${id}.nii.gz`);
    const failed = readJsonl(`${out}/infer.jsonl`).filter((l) => l.status === "failed");
    assert.equal(failed.length, 1);
    assert.match(String(failed[0].reason), /^subject BraTS19_SYN_0009_1: missing t2/);
  });
});

/** Four tiny uint16 NIfTIs [X, Y, Z] with the given non-zero voxels (value 7) per sequence. */
function tinyImages(dims: [number, number, number], voxels: Record<"flr" | "t1c" | "t1p" | "t2w", number[][]>) {
  const out = {} as Record<"flr" | "t1c" | "t1p" | "t2w", NiftiImage>;
  for (const [s, vs] of Object.entries(voxels)) {
    const data = new Uint16Array(dims[0] * dims[1] * dims[2]);
    for (const [x, y, z] of vs) data[x + dims[0] * (y + dims[1] * z)] = 7;
    out[s as keyof typeof out] = parseNifti(encodeNifti(data, dims, synthGeometry(dims), "uint16"));
  }
  return out;
}

Deno.test("marginMeta: the original's max leading/trailing zero margins place the box; a disagreeing mask fails", () => {
  // Source dims [7, 6, 5]. Supports: x from 1 (t1 from 2) to 4, y from 2 (t2 from 1) to 3, z from 0 to 3 (flair to 4).
  const dims: [number, number, number] = [7, 6, 5];
  const box = (x0: number, x1: number, y0: number, y1: number, z0: number, z1: number) => {
    const v: number[][] = [];
    for (let z = z0; z <= z1; z++) for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) v.push([x, y, z]);
    return v;
  };
  const images = tinyImages(dims, {
    flr: box(1, 4, 2, 3, 0, 4),
    t1c: box(1, 4, 2, 3, 0, 3),
    t1p: box(2, 4, 2, 3, 0, 3),
    t2w: box(1, 4, 1, 3, 0, 3),
  });
  // Brain box x 2..4, y 2..3, z 0..3: leading margins (max) x 2, y 2, z 0; trailing x 2, y 2, z 1.
  const meta = marginMeta("S", "unknown", images, [4, 2, 3], {}, false);
  assert.deepEqual(meta.originalShape, [7, 6, 5]);
  // [z lead, y trail (the y flip), x lead].
  assert.deepEqual(meta.cropStart, [0, 2, 2]);
  assert.deepEqual(meta.cropStop, [4, 4, 5]);
  assert.deepEqual(meta.classLabels, [0, 1, 2, 4]);
  const p = preprocessImages("S", "unknown", images, undefined, {});
  assert.deepEqual(meta.cropStart, p.meta.cropStart);
  // Class 3 over the whole crop comes back as label 4 exactly on the brain box.
  const back = restoreToOriginal(new Uint8Array(24).fill(3), meta);
  for (let z = 0, i = 0; z < 5; z++) {
    for (let y = 0; y < 6; y++) {
      for (let x = 0; x < 7; x++, i++) {
        assert.equal(back[i], x >= 2 && x <= 4 && y >= 2 && y <= 3 && z <= 3 ? 4 : 0, `(${x},${y},${z})`);
      }
    }
  }
  assert.deepEqual(marginMeta("S", "unknown", images, [4, 2, 3], {}, true).classLabels, [0, 1, 2, 3]);
  // Each sequence spans x 1..4 and y 2..3 but they share only (2,2,2): the mask's box is one voxel while the
  // margins still enclose [1, 2, 4] ([z, y, x]); the original's shape check fails, and so does this.
  const odd = tinyImages(dims, {
    flr: [[1, 2, 2], [2, 2, 2], [4, 3, 2]],
    t1c: [[1, 3, 2], [2, 2, 2], [4, 2, 2]],
    t1p: [[1, 3, 2], [2, 2, 2], [4, 2, 2]],
    t2w: [[1, 3, 2], [2, 2, 2], [4, 2, 2]],
  });
  const cropped = preprocessImages("S", "unknown", odd, undefined, {}).meta.croppedShape;
  assert.deepEqual(cropped, [1, 1, 1]);
  assert.throws(
    () => marginMeta("S", "unknown", odd, cropped, { flr: "S_flair.nii.gz" }, false),
    /^Error: subject S: the raw images' zero margins give a \[1,2,4\] brain box but the preprocessed arrays are \[1,1,1\]/,
  );
});

Deno.test("infer --preprocessed: hadnet's layout (hadnet.json) and the original's (LGG_or_HGG, --raw) equal raw inference", async () => {
  await withFixture(async (f) => {
    const read = async (path: string) => (await readNifti(path)).data;
    // The 16-deep semantics cut every subject: the centre-crop path runs too.
    assert.equal(await infer(f, `${f.dir}/ref`, f.student, f.sem16), 0);
    for (const id of IDS) assert.ok(new Set(await read(`${f.dir}/ref/${id}.nii.gz`)).size > 2, `${id}: few labels`);
    const proc = `${f.dir}/proc`;
    const pre = await preprocessDataset({
      input: f.raw,
      output: proc,
      workers: 1,
      force: false,
      withSeg: false,
      write: () => {},
    });
    assert.deepEqual(pre.processed, IDS);
    const run = (input: string, out: string, ...rest: string[]) =>
      main(["infer", input, out, "--preprocessed", "--model", f.student, "--semantics", f.sem16, ...rest]);
    // 1. hadnet's own preprocessing, given as the output root: the crop box from hadnet.json.
    assert.equal(await run(proc, `${f.dir}/pre`), 0);
    for (const id of IDS) {
      assert.deepEqual(await read(`${f.dir}/pre/${id}.nii.gz`), await read(`${f.dir}/ref/${id}.nii.gz`), id);
    }
    // 2. The original's data_preprocessor_inference.py layout: <proc>/BRATS/<id>/LGG_or_HGG, no hadnet.json.
    const id = IDS[1], orig = `${f.dir}/orig`, subj = `${orig}/BRATS/${id}/LGG_or_HGG`;
    await Deno.mkdir(subj, { recursive: true });
    for (const n of ["flr", "t1c", "t1p", "t2w", "mask"]) {
      await Deno.copyFile(`${proc}/BRATS/${id}/HGG/${n}.npy`, `${subj}/${n}.npy`);
    }
    const noRaw = `${f.dir}/noraw`;
    assert.equal(await run(orig, noRaw), 1);
    const reason = String(readJsonl(`${noRaw}/infer.jsonl`).find((l) => l.status === "failed")!.reason);
    assert.match(reason, new RegExp(`^subject ${id}: .*LGG_or_HGG has no hadnet\\.json .*give --raw`));
    assert.equal(await run(orig, `${f.dir}/orig_out`, "--raw", f.raw), 0);
    const out = `${f.dir}/orig_out/${id}.nii.gz`;
    const r = await nib(out, `${f.raw}/HGG/${id}/${id}_flair.nii.gz`);
    assert.deepEqual(r.shape, SIZE);
    assert.ok(r.affine, "affine differs from the flair's");
    // Synthetic sequences share one support, so the margin rule and the mask's box coincide.
    assert.deepEqual(await read(out), await read(`${f.dir}/ref/${id}.nii.gz`));
    // 3. The raw folder lacks the subject: one error naming it; --raw without --preprocessed is a usage error.
    const partial = `${f.dir}/partial/HGG`;
    await Deno.mkdir(partial, { recursive: true });
    await Deno.symlink(`${f.raw}/HGG/${IDS[0]}`, `${partial}/${IDS[0]}`);
    const missing = `${f.dir}/missing`;
    assert.equal(await run(orig, missing, "--raw", `${f.dir}/partial`), 1);
    const failed = readJsonl(`${missing}/infer.jsonl`).filter((l) => l.status === "failed");
    assert.equal(failed.length, 1);
    assert.equal(
      failed[0].reason,
      `subject ${id}: not found in the raw folder ${f.dir}/partial (--raw), needed to place its prediction ` +
        `(${subj} has no hadnet.json)`,
    );
    await assert.rejects(
      main(["infer", f.raw, `${f.dir}/x`, "--raw", f.raw, "--model", f.student]),
      /--raw is only used with --preprocessed/,
    );
  });
});
