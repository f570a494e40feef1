// Loading against numpy running the original data generator's steps in float32, and each detail pinned alone:
// semantics rounding, channel order, clip/min/rescale, floor(diff/2) padding, labels, the pickled semantics file.
import assert from "node:assert/strict";
import {
  computeSemantics,
  gradeDir,
  loadSemantics,
  loadSubject,
  normalizeSequence,
  padStart,
  saveSemantics,
  type Semantics,
  semanticsFromSizes,
} from "../../src/data/loader.ts";
import { saveNpy } from "../../src/data/npy.ts";
import { Rng } from "../../src/nn/rng.ts";
import { python } from "../util.ts";

/** A preprocessed subject: random uint16 sequences, zero outside a random mask, labels 0..3. */
async function makeProcessed(root: string, id: string, grade: string, shape: number[], seed: number) {
  const dir = `${root}/${id}/${grade}`;
  await Deno.mkdir(dir, { recursive: true });
  const rng = new Rng(seed);
  const n = shape[0] * shape[1] * shape[2];
  const mask = Uint8Array.from({ length: n }, () => (rng.uniform() < 0.7 ? 1 : 0));
  for (const [s, scale] of [["flr", 900], ["t1c", 3000], ["t1p", 60000], ["t2w", 7]] as const) {
    const v = Uint16Array.from(mask, (m) => (m ? 1 + rng.int(scale) : 0));
    await saveNpy(`${dir}/${s}.npy`, { dtype: "<u2", shape, data: v });
  }
  await saveNpy(`${dir}/mask.npy`, { dtype: "|u1", shape, data: mask });
  const seg = Uint8Array.from(mask, (m) => (m ? rng.int(4) : 0));
  await saveNpy(`${dir}/seg.npy`, { dtype: "|u1", shape, data: seg });
}

Deno.test("semantics: max cropped size, rounded up to 16, dims 0 and 2 set to their max", () => {
  const s = semanticsFromSizes([[130, 170, 120], [100, 177, 150], [129, 60, 7]]);
  assert.deepEqual(s, { shape: [160, 192, 160], teacherChannels: 4, studentChannels: 3 });
  assert.deepEqual(semanticsFromSizes([[16, 16, 1]]).shape, [16, 16, 16]);
});

Deno.test("semantics from a training root, saved as JSON and read back", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await makeProcessed(tmp, "A", "HGG", [17, 5, 9], 1);
    await makeProcessed(tmp, "B", "LGG", [3, 20, 33], 2);
    await makeProcessed(tmp, "C", "LGG_or_HGG", [4, 4, 4], 3);
    const s = await computeSemantics(tmp);
    assert.deepEqual(s, { shape: [48, 32, 48], teacherChannels: 4, studentChannels: 3 });
    await saveSemantics(`${tmp}/semantics.json`, s);
    assert.deepEqual(await loadSemantics(`${tmp}/semantics.json`), s);
    await Deno.mkdir(`${tmp}/D/HGG`, { recursive: true });
    await Deno.mkdir(`${tmp}/D/LGG`, { recursive: true });
    assert.throws(
      () => gradeDir(tmp, "D"),
      /subject D: .*D should hold exactly one HGG or LGG folder, found \[HGG, LGG\]/,
    );
    assert.throws(() => gradeDir(tmp, "E"), /subject E: no preprocessed folder/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("semantics from the original's pickled HAD_Net_semantics.npy (numpy int64 scalars inside)", async () => {
  const s = await loadSemantics(new URL("../fixtures/semantics/HAD_Net_semantics.npy", import.meta.url).pathname);
  assert.deepEqual(s, { shape: [144, 176, 144], teacherChannels: 4, studentChannels: 3 });
});

Deno.test("normalisation: float32 mean/std over the mask, clip at 3, min over every voxel, rescale to [0, 1]", () => {
  // mask voxels 0..3 hold 2, 4, 4, 4 (mean 3.5, std sqrt(0.75)); voxel 4 (outside) 100 clips to 3; voxel 5 is 0.
  const out = normalizeSequence([2, 4, 4, 4, 100, 0], [1, 1, 1, 1, 0, 0]);
  const sigma = Math.fround(Math.sqrt(0.75));
  const z = [2, 4, 4, 4, 100, 0].map((v) => Math.min(Math.fround(Math.fround(v - 3.5) / sigma), 3));
  const min = z[5]; // the zero outside the mask is the minimum
  assert.deepEqual(Array.from(out), z.map((v) => Math.fround(Math.fround(v - min) / Math.fround(3 - min))));
  assert.equal(out[4], 1);
  assert.equal(out[5], 0);
  assert.throws(() => normalizeSequence([5, 5, 1], [1, 1, 0], "subject X: t1c"), /subject X: t1c: constant inside/);
});

Deno.test("padding starts at floor(diff / 2) and refuses volumes larger than the semantics size", () => {
  assert.deepEqual(padStart([13, 16, 2], [16, 16, 16]), [1, 0, 7]);
  assert.throws(
    () => padStart([17, 3, 3], [16, 16, 16], "subject Q"),
    /subject Q: size \[17,3,3\] exceeds .*\[16,16,16\]/,
  );
});

Deno.test("loadSubject matches numpy running the original generator, teacher and student", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const shape = [13, 9, 6];
    await makeProcessed(tmp, "S1", "HGG", shape, 11);
    const sem: Semantics = { shape: [16, 16, 16], teacherChannels: 4, studentChannels: 3 };
    const code = `import sys,os,numpy as np
d=sys.argv[1];out=[]
mask=np.load(d+"/mask.npy");bm=np.where(mask==1)
sx,sy,sz=16,16,16;x,y,z=mask.shape
pad=tuple(((s-i)//2,(s-i)-(s-i)//2) for s,i in ((sx,x),(sy,y),(sz,z)))
for f in sorted(os.listdir(d)):
  if f.endswith(".npy") and "mask" not in f and "seg" not in f:
    m=np.float32(np.load(d+"/"+f));mu=m[bm].mean();sd=m[bm].std()
    m=(m-mu)/sd;m=np.clip(m,np.min(m),3);m=(m+(-np.min(m)))/(3-np.min(m))
    out.append(np.pad(m,pad,"constant",constant_values=(0)))
seg=np.load(d+"/seg.npy");seg[np.where(seg==4)]=3
np.save(d+"/../../teacher.npy",np.stack(out).astype(np.float32))
np.save(d+"/../../labels.npy",np.pad(seg,pad).astype(np.uint8))
np.save(d+"/../../pmask.npy",np.pad(mask,pad).astype(np.uint8))`;
    await python(code, `${tmp}/S1/HGG`);
    const { loadNpy } = await import("../../src/data/npy.ts");
    const want = (await loadNpy(`${tmp}/teacher.npy`)).data as Float32Array;
    const t = await loadSubject(tmp, "S1", sem, "teacher", true);
    assert.deepEqual(t.meta.channels, ["flr", "t1c", "t1p", "t2w"]);
    assert.deepEqual(t.meta.padStart, [1, 3, 5]);
    assert.equal(t.input.length, 4 * 16 ** 3);
    // numpy's float32 mean/std use pairwise float32 sums; ours are float64 rounded once, so allow float32 ulps.
    let err = 0;
    for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(t.input[i] - want[i]));
    assert.ok(err <= 4e-7, `teacher max abs error ${err}`);
    assert.deepEqual(Array.from(t.labels!), Array.from((await loadNpy(`${tmp}/labels.npy`)).data as Uint8Array));
    assert.deepEqual(Array.from(t.mask), Array.from((await loadNpy(`${tmp}/pmask.npy`)).data as Uint8Array));
    const s = await loadSubject(tmp, "S1", sem, "student", false);
    assert.equal(s.labels, undefined);
    assert.deepEqual(s.meta.channels, ["flr", "t1p", "t2w"]);
    const v = 16 ** 3;
    assert.deepEqual(s.input.subarray(0, v), t.input.subarray(0, v));
    assert.deepEqual(s.input.subarray(v), t.input.subarray(2 * v));
    await assert.rejects(
      loadSubject(tmp, "S1", { ...sem, shape: [16, 16, 4] }, "teacher", true),
      /subject S1: size \[13,9,6\] exceeds the semantics size \[16,16,4\]/,
    );
    await Deno.remove(`${tmp}/S1/HGG/t2w.npy`);
    await assert.rejects(loadSubject(tmp, "S1", sem, "student", false), /subject S1: cannot load t2w\.npy/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
