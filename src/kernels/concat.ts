// Channel concatenation and channel slicing of NCDHW tensors, and their backwards (split, zero-padded embed).
//
// Layouts: every tensor is [N,C_i,D,H,W] f32 with the same N, D, H, W. Channels c..c+k of sample n are one contiguous
// run of k*D*H*W values, so each op is N buffer-to-buffer copies per operand, recorded in the step's encoder: no
// kernel and no storage binding is involved, so tensors larger than one binding need no splitting. Nothing is saved
// for the backward; outputs are assigned (the slice backward zero-fills the channels outside the slice).

import { type Gpu } from "./device.ts";

/** Checks that all shapes are [N,C,D,H,W] agreeing except in C; returns N and the plane size D*H*W. */
export function checkChannels(op: string, shapes: readonly (readonly number[])[]): { N: number; L: number } {
  const [s0] = shapes;
  const ok = s0 && shapes.every((s) => s.length === 5 && s.every((d, i) => i === 1 || d === s0[i]));
  if (!ok) throw new Error(`${op}: shapes ${shapes.map((s) => `[${s}]`).join(", ")} must be [N,C,D,H,W] alike but C`);
  return { N: s0[0], L: s0[2] * s0[3] * s0[4] };
}

/**
 * For each sample n: copies channels [srcStart, srcStart + count) of src (srcC channels) to channels
 * [dstStart, dstStart + count) of dst (dstC channels); L values per channel plane.
 */
export function copyChannels(
  g: Gpu,
  src: GPUBuffer,
  srcC: number,
  srcStart: number,
  dst: GPUBuffer,
  dstC: number,
  dstStart: number,
  count: number,
  N: number,
  L: number,
) {
  if (srcStart + count > srcC || dstStart + count > dstC) {
    throw new Error(`copyChannels: ${count} channels from ${srcStart} of ${srcC} to ${dstStart} of ${dstC}`);
  }
  if (!count || !L) return;
  for (let n = 0; n < N; n++) {
    g.copy(src, (n * srcC + srcStart) * L * 4, dst, (n * dstC + dstStart) * L * 4, count * L * 4);
  }
}

// CPU references.

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

export function concatRef(xs: ArrayLike<number>[], shapes: readonly (readonly number[])[]): Float64Array {
  const { N, L } = checkChannels("concatRef", shapes);
  const C = shapes.reduce((a, s) => a + s[1], 0);
  const y = new Float64Array(N * C * L);
  for (let i = 0, off = 0; i < xs.length; off += shapes[i++][1]) {
    const x = Float64Array.from(xs[i]), Ci = shapes[i][1];
    for (let n = 0; n < N; n++) y.set(x.subarray(n * Ci * L, (n + 1) * Ci * L), (n * C + off) * L);
  }
  return y;
}

export function sliceChannelsRef(x: ArrayLike<number>, shape: readonly number[], start: number, count: number) {
  const { N, L } = checkChannels("sliceChannelsRef", [shape]);
  const C = shape[1];
  const y = new Float64Array(N * count * L);
  for (let n = 0; n < N; n++) {
    y.set(Array.from(x).slice((n * C + start) * L, (n * C + start + count) * L), n * count * L);
  }
  return y;
}

/** The concat backward: dy split into one gradient per input. */
export function concatBackwardRef(dy: ArrayLike<number>, shapes: readonly (readonly number[])[]): Float64Array[] {
  const C = shapes.reduce((a, s) => a + s[1], 0);
  const starts = shapes.map((_, i) => shapes.slice(0, i).reduce((a, s) => a + s[1], 0));
  return shapes.map((s, i) => sliceChannelsRef(dy, [s[0], C, s[2], s[3], s[4]], starts[i], s[1]));
}

/** The slice backward: dy embedded at channels [start, start + count) of zeros shaped like x. */
export function sliceChannelsBackwardRef(dy: ArrayLike<number>, shape: readonly number[], start: number): Float64Array {
  const [N, C, D, H, W] = shape;
  const count = dy.length / (N * D * H * W);
  const parts = [[N, start, D, H, W], [N, count, D, H, W], [N, C - start - count, D, H, W]];
  return concatRef([new Float64Array(size(parts[0])), dy, new Float64Array(size(parts[2]))], parts);
}
