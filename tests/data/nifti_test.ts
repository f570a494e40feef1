// NIfTI reading against what nibabel reads from the same real files (tests/fixtures/nifti/expected.json, made by
// make_fixtures.py), and writing checked by reading our output back with nibabel itself.
import assert from "node:assert/strict";
import { encodeNifti, geometryOf, type NiftiImage, parseNifti, readNifti, writeNifti } from "../../src/data/nifti.ts";
import { python } from "../util.ts";

const FIX = new URL("../fixtures/nifti/", import.meta.url).pathname;
const expected: Record<string, any> = JSON.parse(Deno.readTextFileSync(FIX + "expected.json"));

function assertNear(got: number, want: number, tol: number, what: string) {
  if (!(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)))) {
    throw new Error(`${what}: got ${got}, want ${want}`);
  }
}

function assertAffine(got: number[][], want: number[][], tol: number, what: string) {
  for (let r = 0; r < 4; r++) {
    for (let c = 0; c < 4; c++) assertNear(got[r][c], want[r][c], tol, `${what} [${r}][${c}]`);
  }
}

function stats(data: ArrayLike<number>) {
  let sum = 0, sumSq = 0, min = Infinity, max = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    sum += x;
    sumSq += x * x;
    min = Math.min(min, x);
    max = Math.max(max, x);
  }
  return { sum, sumSq, min, max };
}

for (const [name, e] of Object.entries(expected)) {
  Deno.test(`nifti reads ${name} as nibabel does`, async () => {
    const img = await readNifti(FIX + name);
    const h = img.header;
    assert.equal(h.version, e.version);
    assert.equal(h.littleEndian, e.littleEndian);
    assert.equal(h.datatype, e.datatype);
    assert.deepEqual(h.dims, e.dims);
    // nibabel reports pixdim[0] (qfac) as stored; we read 0 as 1.
    assert.deepEqual(h.pixdim.slice(1), e.pixdim.slice(1));
    assert.equal(h.qformCode, e.qformCode);
    assert.equal(h.sformCode, e.sformCode);
    assert.equal(h.xyztUnits, e.xyztUnits);
    assert.deepEqual(h.extensions.map((x) => x.code), e.extensionCodes);
    assertAffine(h.affine, e.affine, 1e-6, `${name} affine`);
    assert.equal(img.data.length, e.dims.reduce((a: number, b: number) => a * b, 1));
    if (e.data) {
      assert.deepEqual(Array.from(img.data), e.data);
    } else {
      for (const [i, x] of e.samples) assert.equal(img.data[i], x, `${name} voxel ${i}`);
    }
    const s = stats(img.data);
    assert.equal(s.min, e.min);
    assert.equal(s.max, e.max);
    assertNear(s.sum, e.sum, 1e-12, `${name} sum`);
    assertNear(s.sumSq, e.sumSq, 1e-12, `${name} sum of squares`);
  });
}

Deno.test("nifti returns float32 only where float32 holds every value exactly", async () => {
  assert.ok((await readNifti(FIX + "dtype_i2_be.nii")).data instanceof Float32Array);
  assert.ok((await readNifti(FIX + "dtype_u2_le.nii")).data instanceof Float32Array);
  assert.ok((await readNifti(FIX + "dtype_i4_le.nii")).data instanceof Float64Array);
  assert.ok((await readNifti(FIX + "dtype_f8_be.nii")).data instanceof Float64Array);
  const scaled = await readNifti(FIX + "scaled_ext_be.nii.gz");
  assert.ok(scaled.data instanceof Float64Array);
  assert.equal(scaled.header.sclSlope, 2.5);
  assert.equal(scaled.header.sclInter, -7.25);
});

Deno.test("nifti keeps the header bytes before the data, extensions included", async () => {
  const img = await readNifti(FIX + "scaled_ext_be.nii.gz");
  assert.equal(img.header.voxOffset, 384);
  assert.equal(img.rawHeader.length, 384);
  const text = new TextDecoder().decode(img.header.extensions[0].data);
  assert.ok(text.startsWith("hadnet fixture comment"), text);
});

Deno.test("nifti names the file and the problem for broken input", () => {
  const good = Deno.readFileSync(FIX + "dtype_u1_le.nii");
  assert.throws(() => parseNifti(good.slice(0, 400), "cut.nii"), /cut\.nii: truncated: dims \[5,4,3\] of uint8/);
  const bad = good.slice();
  new DataView(bad.buffer).setInt16(70, 32, true); // complex64
  assert.throws(() => parseNifti(bad, "c.nii"), /c\.nii: unsupported NIfTI datatype 32/);
  assert.throws(() => parseNifti(new Uint8Array(400), "z.nii"), /z\.nii: not a NIfTI/);
});

Deno.test("encodeNifti refuses values its integer dtype cannot store", () => {
  const g = geometryOf(parseNifti(Deno.readFileSync(FIX + "dtype_u1_le.nii")).header);
  assert.throws(() => encodeNifti([0, 256], [2], g, "uint8"), /voxel 1 holds 256, which uint8 cannot store/);
  assert.throws(() => encodeNifti([0.5], [1], g, "int16"), /voxel 0 holds 0.5/);
  assert.throws(() => encodeNifti([1, 2, 3], [2, 2], g, "float32"), /dims \[2,2\] hold 4 voxels but data has 3/);
});

/** What nibabel reads from a file: shape, affine, codes, units and get_fdata() in x-fastest order. */
async function nibabelLoad(path: string): Promise<any> {
  const code = `import json,sys,nibabel as nib
im=nib.load(sys.argv[1]);h=im.header
print(json.dumps({"shape":list(im.shape),"affine":im.affine.tolist(),"q":int(h["qform_code"]),"s":int(h["sform_code"]),
"units":int(h["xyzt_units"]),"dtype":str(h.get_data_dtype()),"data":im.get_fdata().ravel(order="F").tolist()}))`;
  return JSON.parse(await python(code, path));
}

const SOURCES = ["anatomical.nii", "example_nifti2.nii.gz", "standard.nii.gz", "dtype_f4_be.nii"];
for (const src of SOURCES) {
  Deno.test(`nifti writes what nibabel reads back in ${src}'s space`, async () => {
    const source: NiftiImage = await readNifti(FIX + src);
    const dims = [7, 5, 3]; // odd sizes, not the source's
    const n = 7 * 5 * 3;
    const dir = await Deno.makeTempDir();
    try {
      const cases: [string, "uint8" | "int16" | "uint16" | "float32", number[]][] = [
        ["u1.nii.gz", "uint8", Array.from({ length: n }, (_, i) => (i * 37) % 256)],
        ["i2.nii", "int16", Array.from({ length: n }, (_, i) => (i * 977) % 65536 - 32768)],
        ["u2.nii.gz", "uint16", Array.from({ length: n }, (_, i) => (i * 1231) % 65536)],
        ["f4.nii", "float32", Array.from({ length: n }, (_, i) => Math.fround(Math.sin(i) * 1e3))],
      ];
      for (const [file, dtype, values] of cases) {
        const path = `${dir}/${file}`;
        await writeNifti(path, values, dims, geometryOf(source.header), dtype);
        const nb = await nibabelLoad(path);
        assert.deepEqual(nb.shape, dims);
        assert.equal(nb.dtype, dtype);
        assert.deepEqual(nb.data, values, `${file}: data`);
        assert.equal(nb.q, source.header.qformCode);
        assert.equal(nb.s, source.header.sformCode);
        assert.equal(nb.units, source.header.xyztUnits);
        // Same space as the source, up to float32 storage of NIfTI-2's float64 fields. Without either form the
        // affine is the shape-dependent base affine, so compare against that of our dims.
        const want = source.header.qformCode || source.header.sformCode
          ? source.header.affine
          : (await readNifti(path)).header.affine;
        assertAffine(nb.affine, want, 1e-6, `${file} affine`);
        const back = await readNifti(path);
        assert.deepEqual(Array.from(back.data), values);
      }
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), cases.map((c) => c[0]).sort());
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
