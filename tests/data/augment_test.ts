import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  type AffineParams,
  applyAffine,
  applyAugment,
  augment,
  type AugmentDraw,
  drawAugment,
  flipLast,
  HADNET_AUGMENT,
  type Sample,
  type Shape4,
} from "../../src/data/augment.ts";
import { Rng } from "../../src/nn/rng.ts";
import { assertClose, rand } from "../util.ts";

// Made by tests/fixtures/augment/make_reference.py (PyTorch grid_sample/affine_grid in float64, MONAI 0.3 conventions).
interface RefCase {
  shape: Shape4;
  draw: { flip: boolean; affine: AffineParams };
  input: string;
  labels: string;
  mask: string;
  resampled: string;
  outLabels: string;
  outMask: string;
  augmented: string;
}
const REF: { cases: RefCase[] } = JSON.parse(
  Deno.readTextFileSync(new URL("../fixtures/augment/reference.json", import.meta.url)),
);

const bytes = (b64: string) => new Uint8Array(Buffer.from(b64, "base64"));
const f32 = (b64: string) => new Float32Array(bytes(b64).slice().buffer);
const f64 = (b64: string) => new Float64Array(bytes(b64).slice().buffer);

function refSample(c: RefCase): Sample {
  return { input: f32(c.input), shape: c.shape, labels: bytes(c.labels), mask: bytes(c.mask) };
}

Deno.test("applyAffine matches PyTorch grid_sample with MONAI 0.3 conventions (odd, non-cubic shapes)", () => {
  assert.ok(REF.cases.length >= 3);
  for (const c of REF.cases) {
    const s = refSample(c);
    const src = c.draw.flip ? flipLast(s) : s;
    const out = applyAffine(src, c.draw.affine);
    assertClose(out.input, f64(c.resampled), 1e-5, `resampled ${c.shape}`);
    assert.deepEqual(out.labels, bytes(c.outLabels), `labels ${c.shape}`);
    assert.deepEqual(out.mask, bytes(c.outMask), `mask ${c.shape}`);
    // The references do leave their volumes and keep some labels: the comparison is not vacuous.
    assert.ok(out.mask.some((m) => m === 0) && out.labels.some((l) => l === 4));
  }
});

Deno.test("applyAugment (flip, affine, mask multiply) matches the reference", () => {
  for (const c of REF.cases) {
    const out = applyAugment(refSample(c), c.draw);
    assertClose(out.input, f64(c.augmented), 1e-5, `augmented ${c.shape}`);
    assert.deepEqual(out.labels, bytes(c.outLabels));
    assert.deepEqual(out.mask, bytes(c.outMask));
  }
});

function testSample(shape: Shape4, seed: number): Sample {
  const [C, D, H, W] = shape;
  const n = D * H * W;
  const r = rand(n, seed + 1);
  return {
    shape,
    input: rand(C * n, seed),
    labels: Uint8Array.from(r, (v) => [0, 1, 2, 4][Math.floor((v + 1) * 2)]),
    mask: Uint8Array.from(r, (v) => (v > -0.6 ? 1 : 0)),
  };
}

Deno.test("identity parameters and double flips leave a sample unchanged; inputs are not modified", () => {
  const s = testSample([3, 5, 8, 7], 3);
  const before = s.input.slice();
  const id = applyAffine(s, { rotate: [0, 0, 0], shear: [0, 0, 0], scale: [1, 1, 1] });
  assert.deepEqual(id.input, s.input);
  assert.deepEqual(id.labels, s.labels);
  assert.deepEqual(id.mask, s.mask);
  const ff = flipLast(flipLast(s));
  assert.deepEqual(ff.input, s.input);
  assert.deepEqual(ff.labels, s.labels);
  assert.deepEqual(flipLast(s).mask.subarray(0, 7), s.mask.subarray(0, 7).slice().reverse());
  assert.deepEqual(s.input, before);
});

Deno.test("without flip or affine, augment only masks the sequences", () => {
  const s = testSample([2, 4, 5, 6], 5);
  const out = applyAugment(s, { flip: false, affine: null });
  const n = 4 * 5 * 6;
  for (let c = 0; c < 2; c++) {
    // x * 0 may be -0 (as in PyTorch); compare with === so that -0 counts as zero.
    for (let i = 0; i < n; i++) assert.ok(out.input[c * n + i] === (s.mask[i] ? s.input[c * n + i] : 0));
  }
  assert.deepEqual(out.labels, s.labels);
});

Deno.test("drawAugment: seeded, within HAD-Net's ranges, probabilities 0.5 and 0.8, 11 uniforms per draw", () => {
  const a = new Rng(11), b = new Rng(11);
  const draws: AugmentDraw[] = [];
  for (let i = 0; i < 4000; i++) draws.push(drawAugment(a));
  assert.deepEqual(drawAugment(b), draws[0]);
  const flips = draws.filter((d) => d.flip).length / draws.length;
  const affines = draws.filter((d) => d.affine).length / draws.length;
  assert.ok(Math.abs(flips - 0.5) < 0.03, `flip rate ${flips}`);
  assert.ok(Math.abs(affines - 0.8) < 0.03, `affine rate ${affines}`);
  for (const d of draws) {
    if (!d.affine) continue;
    for (const v of d.affine.rotate) assert.ok(Math.abs(v) <= HADNET_AUGMENT.rotate);
    for (const v of d.affine.shear) assert.ok(Math.abs(v) <= 0.04);
    for (const v of d.affine.scale) assert.ok(Math.abs(v - 1) <= 0.04);
  }
  const c = new Rng(5), e = new Rng(5);
  drawAugment(c);
  for (let i = 0; i < 11; i++) e.uniform();
  assert.equal(c.uniform(), e.uniform());
});

Deno.test("augment: same seed, same result; masked voxels are zero in every channel", () => {
  const s = testSample([3, 9, 10, 11], 7);
  const x = augment(new Rng(2), s), y = augment(new Rng(2), s);
  assert.deepEqual(x.input, y.input);
  assert.deepEqual(x.labels, y.labels);
  const n = 9 * 10 * 11;
  for (let i = 0; i < n; i++) {
    if (!x.mask[i]) { for (let c = 0; c < 3; c++) assert.ok(x.input[c * n + i] === 0); }
  }
});

Deno.test("augment rejects inconsistent shapes and sizes below 2", () => {
  const s = testSample([2, 3, 4, 5], 1);
  assert.throws(() => applyAffine({ ...s, shape: [2, 3, 4, 6] }, HADNET_PARAMS), /\[2,3,4,6\].*input 144/);
  const flat = testSample([1, 1, 4, 5], 1);
  assert.throws(() => applyAffine(flat, HADNET_PARAMS), /spatial sizes must be >= 2/);
});

const HADNET_PARAMS: AffineParams = { rotate: [0.01, 0.02, 0.03], shear: [0, 0, 0], scale: [1, 1, 1] };
