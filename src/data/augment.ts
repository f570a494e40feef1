// Pre-training augmentation, as HAD-Net's (MONAI 0.3 RandFlipd(spatial_axis=2, prob 0.5), then RandAffined(prob 0.8,
// rotate_range 3 x 4 deg, shear_range 3 x 0.04, scale_range 3 x 0.04, modes bilinear/nearest/nearest, zeros padding),
// then sequences *= mask), applied to the normalised, padded volume.
//
// Layouts: input [C, D, H, W] float32 row-major; labels and mask [D, H, W] uint8. Spatial dim k of MONAI's matrices
// is array axis k of [D, H, W].
//
// Conventions reproduced from MONAI 0.3 (AffineGrid + Resample without the compiled backend):
// - the grid holds centred voxel coordinates p - c, c = (size - 1) / 2;
// - A = R * Sh * Sc (create_rotate(angles) * create_shear(coefs padded to 6) * create_scale(factors), no translation),
//   with R = Rx(a0) * Ry(a1) * Rz(a2) as in create_rotate;
// - output voxel p samples the input at A (p - c) + c (grid_sample, align_corners=True, output size = input size);
// - bilinear = trilinear over the 8 neighbours, corners outside the volume contributing 0 ("zeros" padding);
//   nearest rounds half to even (torch's nearbyint) and reads 0 outside.
// MONAI computes the grid in float32; here coordinates are float64 (differences are float32 rounding only).
//
// Draw order per sample from one Rng (MONAI draws from separate streams; this order is ours and fixed):
//   1. flip: uniform() < flipProb;
//   2. affine: uniform() < affineProb;
//   3. rotate angles a0, a1, a2: range(-r, r) each; 4. shear c0, c1, c2: range(-s, s) each;
//   5. scale factors 1 + range(-z, z) each.
// Steps 3-5 are drawn whether or not the affine applies (as MONAI's RandAffine.randomize), so the stream advances by
// the same 11 uniforms for every sample. A sample without the affine is not resampled (MONAI resamples it on the
// identity grid, which only adds float32 rounding).

import type { Rng } from "../nn/rng.ts";

export type Shape4 = [number, number, number, number];

export interface Sample {
  /** Sequences [C, D, H, W]. */
  input: Float32Array;
  shape: Shape4;
  /** Segmentation [D, H, W]. */
  labels: Uint8Array;
  /** Brain mask [D, H, W], 0 or 1. */
  mask: Uint8Array;
}

export interface AffineParams {
  /** Radians about spatial dims 0, 1, 2 (create_rotate's radians). */
  rotate: [number, number, number];
  /** The first three of create_shear's six coefficients (the rest are 0). */
  shear: [number, number, number];
  /** Per-dim scale factors (create_scale). */
  scale: [number, number, number];
}

export interface AugmentDraw {
  flip: boolean;
  /** null when the affine is not applied. */
  affine: AffineParams | null;
}

export interface AugmentOptions {
  flipProb: number;
  affineProb: number;
  /** Half-widths of the uniform ranges. */
  rotate: number;
  shear: number;
  scale: number;
}

/** HAD-Net's pre-training settings. */
export const HADNET_AUGMENT: AugmentOptions = {
  flipProb: 0.5,
  affineProb: 0.8,
  rotate: (4 * Math.PI) / 180,
  shear: 0.04,
  scale: 0.04,
};

/** 3x3 row-major A = R * Sh * Sc in MONAI 0.3's order (the translation column is zero). */
export function affineMatrix(p: AffineParams): Float64Array {
  const [a0, a1, a2] = p.rotate;
  const rx = [1, 0, 0, 0, Math.cos(a0), -Math.sin(a0), 0, Math.sin(a0), Math.cos(a0)];
  const ry = [Math.cos(a1), 0, Math.sin(a1), 0, 1, 0, -Math.sin(a1), 0, Math.cos(a1)];
  const rz = [Math.cos(a2), -Math.sin(a2), 0, Math.sin(a2), Math.cos(a2), 0, 0, 0, 1];
  const [c0, c1, c2] = p.shear;
  const sh = [1, c0, c1, c2, 1, 0, 0, 0, 1];
  const sc = [p.scale[0], 0, 0, 0, p.scale[1], 0, 0, 0, p.scale[2]];
  return Float64Array.from(mul3(mul3(mul3(rx, ry), rz), mul3(sh, sc)));
}

function mul3(a: ArrayLike<number>, b: ArrayLike<number>): number[] {
  const out = new Array<number>(9);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) out[i * 3 + j] = a[i * 3] * b[j] + a[i * 3 + 1] * b[3 + j] + a[i * 3 + 2] * b[6 + j];
  }
  return out;
}

/** Draws one sample's augmentation (see the draw order above). */
export function drawAugment(rng: Rng, o: AugmentOptions = HADNET_AUGMENT): AugmentDraw {
  const flip = rng.uniform() < o.flipProb;
  const doAffine = rng.uniform() < o.affineProb;
  const three = (f: () => number): [number, number, number] => [f(), f(), f()];
  const rotate = three(() => rng.range(-o.rotate, o.rotate));
  const shear = three(() => rng.range(-o.shear, o.shear));
  const scale = three(() => 1 + rng.range(-o.scale, o.scale));
  return { flip, affine: doAffine ? { rotate, shear, scale } : null };
}

/** Applies a drawn augmentation: flip, affine, then sequences *= mask. Returns a new sample. */
export function applyAugment(s: Sample, draw: AugmentDraw): Sample {
  checkSample(s);
  let out = draw.flip ? flipLast(s) : copySample(s);
  if (draw.affine) out = applyAffine(out, draw.affine);
  const [C, D, H, W] = out.shape;
  const n = D * H * W;
  for (let c = 0; c < C; c++) {
    const x = out.input.subarray(c * n, (c + 1) * n);
    for (let i = 0; i < n; i++) x[i] *= out.mask[i];
  }
  return out;
}

/** Draws and applies one augmentation. */
export function augment(rng: Rng, s: Sample, o: AugmentOptions = HADNET_AUGMENT): Sample {
  return applyAugment(s, drawAugment(rng, o));
}

/** Reverses the last spatial axis (W) of every array. */
export function flipLast(s: Sample): Sample {
  checkSample(s);
  const W = s.shape[3];
  const rev = <T extends Float32Array | Uint8Array>(src: T, dst: T) => {
    for (let row = 0; row < src.length; row += W) {
      for (let w = 0; w < W; w++) dst[row + w] = src[row + W - 1 - w];
    }
    return dst;
  };
  return {
    shape: [...s.shape],
    input: rev(s.input, new Float32Array(s.input.length)),
    labels: rev(s.labels, new Uint8Array(s.labels.length)),
    mask: rev(s.mask, new Uint8Array(s.mask.length)),
  };
}

/**
 * Resamples input (trilinear) and labels and mask (nearest) on the affine grid of `p` (no masking). Every spatial
 * size must be at least 2 (MONAI's normalisation divides by size - 1).
 */
export function applyAffine(s: Sample, p: AffineParams): Sample {
  checkSample(s);
  const [C, D, H, W] = s.shape;
  if (D < 2 || H < 2 || W < 2) throw new Error(`applyAffine: spatial sizes must be >= 2, got shape [${s.shape}]`);
  const a = affineMatrix(p);
  const cd = (D - 1) / 2, ch = (H - 1) / 2, cw = (W - 1) / 2;
  const n = D * H * W, HW = H * W;
  const src = s.input, out = new Float32Array(src.length);
  const labels = new Uint8Array(n), mask = new Uint8Array(n);
  const wt = new Float64Array(8), off = new Int32Array(8);
  let o = 0;
  for (let d = 0; d < D; d++) {
    for (let h = 0; h < H; h++) {
      // Source coordinates are affine in w: start at w = 0 and step by A's last column.
      const pd = d - cd, ph = h - ch;
      let z = a[0] * pd + a[1] * ph - a[2] * cw + cd;
      let y = a[3] * pd + a[4] * ph - a[5] * cw + ch;
      let x = a[6] * pd + a[7] * ph - a[8] * cw + cw;
      for (let w = 0; w < W; w++, o++, z += a[2], y += a[5], x += a[8]) {
        const nz = rint(z), ny = rint(y), nx = rint(x);
        if (nz >= 0 && nz < D && ny >= 0 && ny < H && nx >= 0 && nx < W) {
          const j = nz * HW + ny * W + nx;
          labels[o] = s.labels[j];
          mask[o] = s.mask[j];
        }
        const z0 = Math.floor(z), y0 = Math.floor(y), x0 = Math.floor(x);
        if (z0 < -1 || z0 >= D || y0 < -1 || y0 >= H || x0 < -1 || x0 >= W) continue;
        const fz = z - z0, fy = y - y0, fx = x - x0;
        let k = 0;
        for (let dz = 0; dz < 2; dz++) {
          const zz = z0 + dz, wz = dz ? fz : 1 - fz;
          for (let dy = 0; dy < 2; dy++) {
            const yy = y0 + dy, wzy = wz * (dy ? fy : 1 - fy);
            for (let dx = 0; dx < 2; dx++, k++) {
              const xx = x0 + dx;
              const inside = zz >= 0 && zz < D && yy >= 0 && yy < H && xx >= 0 && xx < W;
              wt[k] = inside ? wzy * (dx ? fx : 1 - fx) : 0;
              off[k] = inside ? zz * HW + yy * W + xx : 0;
            }
          }
        }
        for (let c = 0, base = 0; c < C; c++, base += n) {
          let v = 0;
          for (k = 0; k < 8; k++) v += wt[k] * src[base + off[k]];
          out[base + o] = v;
        }
      }
    }
  }
  return { shape: [...s.shape], input: out, labels, mask };
}

/** Round half to even (torch grid_sample's nearest uses nearbyint). */
function rint(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function copySample(s: Sample): Sample {
  return { shape: [...s.shape], input: s.input.slice(), labels: s.labels.slice(), mask: s.mask.slice() };
}

function checkSample(s: Sample) {
  const [C, D, H, W] = s.shape;
  const n = D * H * W;
  if (s.input.length !== C * n || s.labels.length !== n || s.mask.length !== n) {
    throw new Error(
      `augment: shape [${s.shape}] needs input ${C * n}, labels ${n}, mask ${n}; ` +
        `got input ${s.input.length}, labels ${s.labels.length}, mask ${s.mask.length}`,
    );
  }
}
