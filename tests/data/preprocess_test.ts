// Preprocessing against numpy + nibabel running the original's steps (transpose, flip axis 1, mask of voxels
// non-zero in every sequence, bounding-box crop, 4 -> 3, abs of negatives, astype), the inverse bit-exact, and the
// dataset runner's skipping, failures and workers.
import assert from "node:assert/strict";
import { discoverSubjects, type Key } from "../../src/data/brats.ts";
import { geometryOf, readNifti, writeNifti } from "../../src/data/nifti.ts";
import { loadNpy } from "../../src/data/npy.ts";
import {
  type DatasetOptions,
  preprocessDataset,
  readMeta,
  restoreToOriginal,
  subjectDir,
} from "../../src/data/preprocess.ts";
import { formatDuration, JsonlLog, Progress, readJsonl } from "../../src/data/progress.ts";
import { Rng } from "../../src/nn/rng.ts";
import { python } from "../util.ts";

const FIX = new URL("../fixtures/nifti/", import.meta.url).pathname;
const GEOM = geometryOf((await readNifti(FIX + "anatomical.nii")).header);
const NAMES_2019: Record<Key, string> = { flr: "flair", t1c: "t1ce", t1p: "t1", t2w: "t2", seg: "seg" };
const NAMES_2023: Record<Key, string> = { flr: "t2f", t1c: "t1c", t1p: "t1n", t2w: "t2w", seg: "seg" };

interface SubjectSpec {
  shape: number[];
  /** Inclusive brain box [x0,x1,y0,y1,z0,z1]. */
  box: number[];
  seed: number;
  labels: number[];
  negatives?: boolean;
}

/** Writes one subject: a box of brain with holes in t2, FLAIR as float32 with fractions (and negatives). */
async function makeSubject(dir: string, id: string, sep: string, names: Record<Key, string>, spec: SubjectSpec) {
  await Deno.mkdir(dir, { recursive: true });
  const [X, Y, Z] = spec.shape;
  const n = X * Y * Z;
  const rng = new Rng(spec.seed);
  const vols: Record<Key, number[]> = { flr: [], t1c: [], t1p: [], t2w: [], seg: [] };
  const [x0, x1, y0, y1, z0, z1] = spec.box;
  for (let i = 0; i < n; i++) {
    const x = i % X, y = Math.floor(i / X) % Y, z = Math.floor(i / (X * Y));
    const inBox = x >= x0 && x <= x1 && y >= y0 && y <= y1 && z >= z0 && z <= z1;
    const hole = inBox && rng.uniform() < 0.15;
    const flr = Math.fround(rng.uniform() * 900 + 0.5) * (spec.negatives && rng.uniform() < 0.2 ? -1 : 1);
    vols.flr.push(inBox ? flr : 0);
    vols.t1c.push(inBox ? 1 + rng.int(60000) : 0);
    vols.t1p.push(inBox ? 1 + rng.int(30000) : 0);
    vols.t2w.push(inBox && !hole ? 1 + rng.int(4000) : 0);
    vols.seg.push(inBox && !hole ? spec.labels[rng.int(spec.labels.length)] : 0);
  }
  const dtype = { flr: "float32", t1c: "uint16", t1p: "int16", t2w: "uint16", seg: "uint8" } as const;
  for (const k of Object.keys(vols) as Key[]) {
    await writeNifti(`${dir}/${id}${sep}${names[k]}.nii.gz`, vols[k], spec.shape, GEOM, dtype[k]);
  }
}

/** The original's steps in numpy on the same files; writes <out>/<key>.npy. */
async function numpyOracle(files: Record<string, string>, out: string) {
  const code = `import json,sys,numpy as np,nibabel as nib
files=json.loads(sys.argv[1]);out=sys.argv[2]
vols={k:np.transpose(nib.load(p).get_fdata())[:,::-1,:] for k,p in files.items()}
mask=np.ones(vols["flr"].shape)
for k in ("flr","t1c","t1p","t2w"): mask[vols[k]==0]=0
nz=np.nonzero(mask);box=tuple(slice(a.min(),a.max()+1) for a in nz)
for k,v in vols.items():
  if k=="seg": v[v==4]=3
  v=v[box]
  if k=="seg": v=v.astype(np.uint8)
  else:
    if (v<0).any(): v=np.absolute(v)
    v=v.astype(np.uint16)
  np.save(out+"/"+k+".npy",v)
np.save(out+"/mask.npy",mask[box].astype(np.uint8))`;
  await python(code, JSON.stringify(files), out);
}

function sourceFiles(dir: string, id: string, sep: string, names: Record<Key, string>): Record<string, string> {
  return Object.fromEntries((Object.keys(names) as Key[]).map((k) => [k, `${dir}/${id}${sep}${names[k]}.nii.gz`]));
}

/** preprocessDataset of tmp/in into tmp/out: one worker, no force, with seg, quiet; `o` overrides. */
function preprocessTmp(tmp: string, o: Partial<DatasetOptions> = {}) {
  return preprocessDataset({
    input: `${tmp}/in`,
    output: `${tmp}/out`,
    workers: 1,
    force: false,
    withSeg: true,
    write: () => {},
    ...o,
  });
}

Deno.test("preprocess matches the original's numpy steps and its inverse gives seg.nii.gz back bit-exactly", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const specs: [string, "HGG" | "LGG", SubjectSpec][] = [
      // Brain touching the x = 0, y = Y-1 and z = Z-1 borders; odd crop sizes; negatives in FLAIR.
      ["BraTS19_A_1", "HGG", {
        shape: [9, 7, 5],
        box: [0, 6, 2, 6, 1, 4],
        seed: 1,
        labels: [0, 1, 2, 4],
        negatives: true,
      }],
      ["BraTS19_B_1", "LGG", { shape: [8, 11, 6], box: [3, 7, 0, 4, 0, 2], seed: 2, labels: [1, 2, 4] }],
    ];
    for (const [id, grade, spec] of specs) await makeSubject(`${tmp}/in/${grade}/${id}`, id, "_", NAMES_2019, spec);
    const lines: string[] = [];
    const sum = await preprocessTmp(tmp, { write: (t) => lines.push(t) });
    assert.deepEqual(sum.processed, ["BraTS19_A_1", "BraTS19_B_1"]);
    assert.deepEqual(sum.failed, []);
    assert.equal(sum.warnings.length, 1);
    assert.match(sum.warnings[0], /subject BraTS19_A_1: sequence flr .*flair\.nii\.gz\) has negative values/);
    for (const [id, grade] of specs) {
      const dir = subjectDir(`${tmp}/out`, id, grade);
      assert.equal(dir, `${tmp}/out/BRATS/${id}/${grade}`);
      const files = sourceFiles(`${tmp}/in/${grade}/${id}`, id, "_", NAMES_2019);
      await Deno.mkdir(`${tmp}/np/${id}`, { recursive: true });
      await numpyOracle(files, `${tmp}/np/${id}`);
      for (const k of ["flr", "t1c", "t1p", "t2w", "seg", "mask"]) {
        const ours = await loadNpy(`${dir}/${k}.npy`), theirs = await loadNpy(`${tmp}/np/${id}/${k}.npy`);
        assert.equal(ours.dtype, theirs.dtype, `${id} ${k} dtype`);
        assert.deepEqual(ours.shape, theirs.shape, `${id} ${k} shape`);
        assert.deepEqual(Array.from(ours.data as Uint16Array), Array.from(theirs.data as Uint16Array), `${id} ${k}`);
      }
      const meta = await readMeta(dir);
      assert.equal(meta.grade, grade);
      assert.deepEqual(meta.classLabels, [0, 1, 2, 4]);
      const seg = await loadNpy(`${dir}/seg.npy`);
      const back = restoreToOriginal(seg.data as Uint8Array, meta);
      const orig = await readNifti(files.seg);
      assert.deepEqual(Array.from(back), Array.from(orig.data));
    }
    // The crop of subject A in [Z,Y,X]: z 1..4, flipped y 0..4 (source y 2..6), x 0..6.
    const a = await readMeta(subjectDir(`${tmp}/out`, "BraTS19_A_1", "HGG"));
    assert.deepEqual([a.cropStart, a.cropStop, a.croppedShape], [[1, 0, 0], [5, 5, 7], [4, 5, 7]]);
    assert.match(lines.join(""), /2 processed, 0 already done, 0 failed, 1 warnings \(of 2 subjects\)/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("preprocess reads the flat BraTS 2023 layout: grade unknown under HGG, labels 1/2/3 kept", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const id = "BraTS-GLI-00000-000";
    const spec = { shape: [7, 9, 5], box: [1, 5, 2, 8, 0, 4], seed: 3, labels: [0, 1, 2, 3] };
    await makeSubject(`${tmp}/in/${id}`, id, "-", NAMES_2023, spec);
    const subjects = discoverSubjects(`${tmp}/in`);
    assert.equal(subjects.length, 1);
    assert.equal(subjects[0].grade, "unknown");
    assert.ok(subjects[0].brats2023);
    const sum = await preprocessTmp(tmp);
    assert.deepEqual(sum.processed, [id]);
    const dir = `${tmp}/out/BRATS/${id}/HGG`;
    const meta = await readMeta(dir);
    assert.equal(meta.grade, "unknown");
    assert.deepEqual(meta.classLabels, [0, 1, 2, 3]);
    const back = restoreToOriginal((await loadNpy(`${dir}/seg.npy`)).data as Uint8Array, meta);
    assert.deepEqual(Array.from(back), Array.from((await readNifti(`${tmp}/in/${id}/${id}-seg.nii.gz`)).data));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("preprocess skips finished subjects, redoes them with force, and reports each failure on one line", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const spec = { shape: [6, 5, 4], box: [1, 4, 1, 3, 0, 3], seed: 4, labels: [0, 1, 2, 4] };
    for (const id of ["S1", "S2", "S3", "S4", "S5"]) {
      await makeSubject(`${tmp}/in/${id}`, id, "_", NAMES_2019, { ...spec, seed: id.charCodeAt(1) });
    }
    await Deno.remove(`${tmp}/in/S2/S2_t1ce.nii.gz`);
    await writeNifti(`${tmp}/in/S3/S3_t2.nii.gz`, new Array(6 * 5 * 5).fill(1), [6, 5, 5], GEOM, "uint8");
    await Deno.writeFile(`${tmp}/in/S4/S4_t1.nii.gz`, new Uint8Array([0x1f, 0x8b, 8, 0, 1, 2, 3]));
    const lines: string[] = [];
    const first = await preprocessTmp(tmp, { workers: 2, write: (t) => lines.push(t) });
    assert.deepEqual(first.processed, ["S1", "S5"]);
    assert.deepEqual(first.failed.map((f) => f.id), ["S2", "S3", "S4"]);
    assert.match(first.failed[0].reason, /^subject S2: missing t1ce \(no file ending in _t1ce\.nii\[\.gz\]/);
    assert.match(
      first.failed[1].reason,
      /^subject S3: shape mismatch: t2w \(.*S3_t2\.nii\.gz\) has dims \[6,5,5\] but flr/,
    );
    assert.match(first.failed[2].reason, /S4_t1\.nii\.gz: cannot decompress/);
    const out = lines.join("");
    for (const id of ["S2", "S3", "S4"]) {
      assert.equal(out.split("\n").filter((l) => l.startsWith(`failed: subject ${id}`)).length, 1, out);
    }
    const again = await preprocessTmp(tmp, { workers: 2 });
    assert.deepEqual(again.skipped, ["S1", "S5"]);
    assert.deepEqual(again.processed, []);
    const forced = await preprocessTmp(tmp, { force: true });
    assert.deepEqual(forced.processed, ["S1", "S5"]);
    assert.deepEqual(forced.skipped, []);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("preprocess without seg (inference) stores no seg and needs none", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const spec = { shape: [5, 6, 7], box: [0, 4, 1, 5, 2, 6], seed: 9, labels: [0, 1] };
    await makeSubject(`${tmp}/in/P1`, "P1", "_", NAMES_2019, spec);
    await Deno.remove(`${tmp}/in/P1/P1_seg.nii.gz`);
    const sum = await preprocessTmp(tmp, { withSeg: false });
    assert.deepEqual(sum.processed, ["P1"]);
    const names = [...Deno.readDirSync(`${tmp}/out/BRATS/P1/HGG`)].map((e) => e.name).sort();
    assert.deepEqual(names, ["flr.npy", "hadnet.json", "mask.npy", "t1c.npy", "t1p.npy", "t2w.npy"]);
    const meta = await readMeta(`${tmp}/out/BRATS/P1/HGG`);
    assert.deepEqual(meta.classLabels, [0, 1, 2, 4]);
    assert.deepEqual(meta.originalShape, [5, 6, 7]);
    assert.throws(
      () => restoreToOriginal(new Uint8Array(3), meta),
      /subject P1: got 3 voxels, crop \[5,5,5\] needs 125/,
    );
    const withSeg = await preprocessTmp(tmp, { output: `${tmp}/out2` });
    assert.match(withSeg.failed[0].reason, /subject P1: missing seg/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("progress: bar with elapsed time and ETA; a line per interval when not on a terminal; JSON lines", async () => {
  let t = 0;
  const out: string[] = [];
  const bar = new Progress(4, "preprocess", {
    write: (s) => out.push(s),
    inPlace: false,
    intervalMs: 5000,
    now: () => t,
  });
  t = 10_000;
  bar.tick(1, "S1");
  t = 12_000;
  bar.tick(1, "S2"); // within 5 s of the last line: silent
  t = 40_000;
  bar.tick(2, "S4");
  assert.deepEqual(out, [
    "preprocess [######..................] 1/4 25% 10s elapsed, ETA 30s S1\n",
    "preprocess [########################] 4/4 100% 40s elapsed, ETA 0s S4\n",
  ]);
  assert.equal(formatDuration(3725), "1h02m");
  const tmp = await Deno.makeTempDir();
  try {
    const log = await JsonlLog.open(`${tmp}/log.jsonl`);
    log.write({ step: 1, loss: 0.5 });
    log.write({ step: 2, loss: 0.25 });
    log.close();
    const recs = readJsonl(`${tmp}/log.jsonl`);
    assert.deepEqual(recs.map((r) => [r.step, r.loss]), [[1, 0.5], [2, 0.25]]);
    assert.ok(typeof recs[0].time === "string" && !Number.isNaN(Date.parse(recs[0].time as string)));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
