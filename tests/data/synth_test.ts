import assert from "node:assert/strict";
import { gzipSync } from "fflate";
import { encodeNifti, readNifti } from "../../src/data/nifti.ts";
import {
  CSF,
  GM,
  loadTemplate,
  SEQUENCES,
  type Size3,
  synthGeometry,
  type SynthSubject,
  synthSubject,
  WM,
  writeSynthDataset,
} from "../../src/data/synth.ts";
import { Rng } from "../../src/nn/rng.ts";

const SIZE: Size3 = [36, 42, 30];

function mean(vol: ArrayLike<number>, pred: (i: number) => boolean): number {
  let s = 0, n = 0;
  for (let i = 0; i < vol.length; i++) {
    if (pred(i)) {
      s += vol[i];
      n++;
    }
  }
  assert.ok(n > 0, "empty region");
  return s / n;
}

function checkSubject(s: SynthSubject) {
  const n = s.size[0] * s.size[1] * s.size[2];
  assert.equal(s.seg.length, n);
  const labels = new Set(s.seg);
  assert.deepEqual([...labels].sort(), [0, 1, 2, 4]);
  for (let i = 0; i < n; i++) {
    const inside = s.tissue[i] > 0;
    for (const q of SEQUENCES) assert.ok(inside ? s[q][i] >= 1 : s[q][i] === 0, `${q}[${i}] = ${s[q][i]}`);
    if (!inside) assert.equal(s.seg[i], 0, `tumour outside the brain at ${i}`);
  }
}

Deno.test("synthSubject is deterministic for a seed and differs across seeds", () => {
  const a = synthSubject(new Rng(3), SIZE), b = synthSubject(new Rng(3), SIZE);
  assert.deepEqual(a, b);
  const c = synthSubject(new Rng(4), SIZE);
  assert.notDeepEqual(a.t1, c.t1);
  assert.notDeepEqual(a.seg, c.seg);
});

Deno.test("synthetic subjects: labels 0/1/2/4 all present, zero outside the brain, tumours inside it", () => {
  for (let seed = 0; seed < 6; seed++) checkSubject(synthSubject(new Rng(seed), SIZE));
});

Deno.test("synthetic tissue contrasts are plausible and ET is bright in t1ce only", () => {
  for (let seed = 10; seed < 14; seed++) {
    const s = synthSubject(new Rng(seed), SIZE);
    const healthy = (t: number) => (i: number) => s.seg[i] === 0 && s.tissue[i] === t;
    const m = (q: typeof SEQUENCES[number]) => [CSF, GM, WM].map((t) => mean(s[q], healthy(t)));
    const [t1c, t1g, t1w] = m("t1"), [t2c, t2g, t2w] = m("t2"), [fc, fg, fw] = m("flair");
    assert.ok(t1w > t1g && t1g > t1c, `T1 WM ${t1w} > GM ${t1g} > CSF ${t1c}`);
    assert.ok(t2c > t2g && t2g > t2w, `T2 CSF ${t2c} > GM ${t2g} > WM ${t2w}`);
    assert.ok(fc < fg && fc < fw, `FLAIR CSF ${fc} dark (GM ${fg}, WM ${fw})`);
    assert.ok(mean(s.flair, (i) => s.seg[i] === 2) > 1.5 * fw, "FLAIR oedema bright");
    // ET against the rest of the tumour (core and oedema).
    const ratio = (q: typeof SEQUENCES[number]) =>
      mean(s[q], (i) => s.seg[i] === 4) / mean(s[q], (i) => s.seg[i] === 1 || s.seg[i] === 2);
    assert.ok(ratio("t1ce") > 1.6, `t1ce ET ratio ${ratio("t1ce")}`);
    for (const q of ["t1", "t2", "flair"] as const) {
      assert.ok(Math.abs(ratio(q) - 1) < 0.2, `${q} ET ratio ${ratio(q)} should be near 1`);
    }
  }
});

Deno.test("writeSynthDataset writes the BraTS 2019 layout, readable, identical bytes for a seed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const size: Size3 = [32, 36, 28];
    const dirs = await writeSynthDataset({ out: `${dir}/a`, n: 3, size, seed: 7 });
    assert.equal(dirs.length, 3);
    for (let k = 0; k < 3; k++) {
      const id = `BraTS19_SYN_000${k + 1}_1`;
      const s = synthSubject(new Rng(7 + k), size);
      assert.equal(dirs[k], `${dir}/a/${s.grade}/${id}`);
      for (const name of [...SEQUENCES, "seg"] as const) {
        const img = await readNifti(`${dirs[k]}/${id}_${name}.nii.gz`);
        assert.deepEqual(img.header.dims, size);
        assert.equal(img.header.datatype, name === "seg" ? 2 : 4);
        assert.deepEqual(img.header.pixdim.slice(1, 4), [1, 1, 1]);
        assert.deepEqual(Array.from(img.data), Array.from(s[name]));
      }
    }
    await writeSynthDataset({ out: `${dir}/b`, n: 3, size, seed: 7 });
    for (const d of dirs) {
      for (const f of Deno.readDirSync(d)) {
        const again = d.replace(`${dir}/a/`, `${dir}/b/`) + "/" + f.name;
        assert.deepEqual(Deno.readFileSync(`${d}/${f.name}`), Deno.readFileSync(again), f.name);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a template brain hosts the tumours: tissues from its T1 intensities, zero outside it", async () => {
  // A brain-extracted "real" T1 at another size: a synthetic subject's T1 with its own noise.
  const src = synthSubject(new Rng(21), [40, 46, 34]);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/brain.nii.gz`;
    Deno.writeFileSync(path, gzipSync(encodeNifti(src.t1, [40, 46, 34], synthGeometry([40, 46, 34]), "int16")));
    const template = await loadTemplate(path, SIZE);
    assert.deepEqual(template.size, SIZE);
    const s = synthSubject(new Rng(5), SIZE, { template });
    checkSubject(s);
    for (let i = 0; i < s.seg.length; i++) assert.equal(s.tissue[i] > 0, template.t1[i] > 0);
    const healthy = (t: number) => (i: number) => s.seg[i] === 0 && s.tissue[i] === t;
    const t1 = [CSF, GM, WM].map((t) => mean(s.t1, healthy(t))), t2 = [CSF, GM, WM].map((t) => mean(s.t2, healthy(t)));
    assert.ok(t1[2] > t1[1] && t1[1] > t1[0], `T1 ${t1}`);
    assert.ok(t2[0] > t2[1] && t2[1] > t2[2], `T2 ${t2}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("synthSubject rejects tiny sizes and a template of another size", () => {
  assert.throws(() => synthSubject(new Rng(1), [8, 40, 40]), /size \[8,40,40\] must be >= 16/);
  const template = { size: [20, 20, 20] as Size3, t1: new Float32Array(8000) };
  assert.throws(() => synthSubject(new Rng(1), SIZE, { template }), /template size \[20,20,20\] differs.*\[36,42,30\]/);
});
