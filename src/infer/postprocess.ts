// Post-processing of a prediction on the host: 26-connected components, relabelling of small enhancing-tumour
// components, and region uncertainty maps in the BraTS uncertainty-challenge format.
//
// Volumes are row-major [D, H, W]; class indices as the network's (0 background, 1 NET, 2 ED, 3 ET); probabilities
// [C, D, H, W] with C = 4.

/** Class indices of the BraTS evaluation regions: whole tumour, tumour core, enhancing tumour. */
export const UNCERTAINTY_REGIONS = { whole: [1, 2, 3], core: [1, 3], enhance: [3] } as const;
export type UncertaintyRegion = keyof typeof UNCERTAINTY_REGIONS;

/**
 * Labels the 26-connected components of the non-zero voxels of `mask`: 0 outside, 1..n inside (in order of their
 * first voxel). `sizes[c]` is the voxel count of component c (sizes[0] = 0).
 */
export function components26(
  mask: ArrayLike<number>,
  shape: readonly number[],
): { labels: Int32Array; sizes: number[] } {
  const [D, H, W] = shape;
  if (shape.length !== 3 || mask.length !== D * H * W) {
    throw new Error(`components26: mask of ${mask.length} voxels does not match shape [${shape}]`);
  }
  const labels = new Int32Array(mask.length);
  const sizes = [0];
  const stack: number[] = [];
  for (let seed = 0; seed < mask.length; seed++) {
    if (!mask[seed] || labels[seed]) continue;
    const id = sizes.length;
    let size = 0;
    labels[seed] = id;
    stack.push(seed);
    while (stack.length) {
      const v = stack.pop()!;
      size++;
      const w = v % W, h = ((v - w) / W) % H, d = (v - w - h * W) / (W * H);
      for (let dd = Math.max(d - 1, 0); dd <= Math.min(d + 1, D - 1); dd++) {
        for (let hh = Math.max(h - 1, 0); hh <= Math.min(h + 1, H - 1); hh++) {
          const row = (dd * H + hh) * W;
          for (let ww = Math.max(w - 1, 0); ww <= Math.min(w + 1, W - 1); ww++) {
            const u = row + ww;
            if (mask[u] && !labels[u]) {
              labels[u] = id;
              stack.push(u);
            }
          }
        }
      }
    }
    sizes.push(size);
  }
  return { labels, sizes };
}

/**
 * Relabels, in place, every 26-connected component of class `et` (default 3, enhancing tumour) smaller than
 * `minSize` voxels as class `to` (default 1, necrosis). Returns the number of voxels changed.
 */
export function relabelSmallEt(pred: Uint8Array, shape: readonly number[], minSize: number, et = 3, to = 1): number {
  const { labels, sizes } = components26(pred.map((c) => (c === et ? 1 : 0)), shape);
  let changed = 0;
  for (let i = 0; i < pred.length; i++) {
    if (labels[i] && sizes[labels[i]] < minSize) {
      pred[i] = to;
      changed++;
    }
  }
  return changed;
}

/**
 * Region uncertainty from class probabilities [C, S]: for each region, q = the sum of its classes' probabilities and
 * u = round(100 * H(q) / ln 2) with H(q) = -q ln q - (1 - q) ln(1 - q), so 0 when certain (q = 0 or 1) and 100 at
 * q = 1/2. uint8 [S] per region.
 */
export function regionUncertainty(probs: Float32Array, voxels: number): Record<UncertaintyRegion, Uint8Array> {
  const C = probs.length / voxels;
  if (!Number.isInteger(C) || C < 4) {
    throw new Error(`regionUncertainty: ${probs.length} probabilities are not 4 or more classes of ${voxels} voxels`);
  }
  const h = (q: number) => {
    const p = Math.min(Math.max(q, 0), 1);
    const e = (p > 0 ? -p * Math.log(p) : 0) + (p < 1 ? -(1 - p) * Math.log(1 - p) : 0);
    return Math.round((100 * e) / Math.LN2);
  };
  const out = {} as Record<UncertaintyRegion, Uint8Array>;
  for (const [name, classes] of Object.entries(UNCERTAINTY_REGIONS) as [UncertaintyRegion, readonly number[]][]) {
    const u = new Uint8Array(voxels);
    for (let s = 0; s < voxels; s++) {
      let q = 0;
      for (const c of classes) q += probs[c * voxels + s];
      u[s] = h(q);
    }
    out[name] = u;
  }
  return out;
}
