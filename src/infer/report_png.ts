// Report images: a minimal PNG encoder (8-bit RGB, filter 0 on every row, zlib from fflate), one grey slice of a
// volume with BraTS labels blended over it, a box plot of per-subject values per region, and a line chart of values
// per epoch (no text: the caller names the file, the order of the series and the axis ranges).
//
// Volumes are flat in NIfTI order (x fastest) with dims [X, Y, Z]. A slice through `axis` keeps the other two axes
// (u, v) in increasing order; image column = u and image row = size_v - 1 - v, so v grows upward (anterior up for an
// axial RAS slice).

import { zlibSync } from "fflate";
import { type Dims3, percentileLinear } from "./metrics.ts";

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 as PNG chunks use it (ISO 3309). */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** PNG bytes of an 8-bit RGB image given row-major as width * height * 3 bytes. */
export function encodePng(rgb: Uint8Array, width: number, height: number): Uint8Array {
  if (!(width > 0 && height > 0 && Number.isInteger(width) && Number.isInteger(height))) {
    throw new Error(`encodePng: image size ${width} x ${height}`);
  }
  if (rgb.length !== width * height * 3) {
    throw new Error(`encodePng: ${rgb.length} bytes for ${width} x ${height} RGB (${width * height * 3})`);
  }
  const raw = new Uint8Array(height * (1 + width * 3)); // each row: filter byte 0, then the pixels
  for (let y = 0; y < height; y++) raw.set(rgb.subarray(y * width * 3, (y + 1) * width * 3), y * (1 + width * 3) + 1);
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr.set([8, 2, 0, 0, 0], 8); // bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace
  const parts = [
    Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a),
    chunk("IHDR", ihdr),
    chunk("IDAT", zlibSync(raw)),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Overlay colours: NET red, ED green, ET yellow (the usual BraTS figure colours). */
export const LABEL_COLOURS: Readonly<Record<"NET" | "ED" | "ET", readonly [number, number, number]>> = {
  NET: [255, 0, 0],
  ED: [0, 200, 0],
  ET: [255, 220, 0],
};

export interface OverlayOptions {
  labelET?: number;
  /** Weight of the label colour over the grey value (default 0.5). */
  alpha?: number;
}

/**
 * PNG of slice `index` through `axis` of `volume`, grey from the slice's 0.5th to 99.5th percentile, with `labels`
 * (when given) blended in their colours.
 */
export function sliceOverlayPng(
  volume: ArrayLike<number>,
  labels: Uint8Array | null,
  dims: Dims3,
  axis: 0 | 1 | 2,
  index: number,
  opts: OverlayOptions = {},
): Uint8Array {
  const n = dims[0] * dims[1] * dims[2];
  if (volume.length !== n || (labels && labels.length !== n)) {
    throw new Error(`sliceOverlayPng: volume ${volume.length}, labels ${labels?.length} voxels for dims [${dims}]`);
  }
  if (!(Number.isInteger(index) && index >= 0 && index < dims[axis])) {
    throw new Error(`sliceOverlayPng: slice ${index} outside 0..${dims[axis] - 1} on axis ${axis}`);
  }
  const [ua, va] = [0, 1, 2].filter((a) => a !== axis);
  const W = dims[ua], H = dims[va];
  const stride = [1, dims[0], dims[0] * dims[1]];
  const voxel = (u: number, v: number) => u * stride[ua] + v * stride[va] + index * stride[axis];
  const grey = new Float64Array(W * H);
  for (let v = 0; v < H; v++) for (let u = 0; u < W; u++) grey[u + W * v] = volume[voxel(u, v)];
  const sorted = grey.slice();
  const lo = percentileLinear(sorted, 0.5), hi = percentileLinear(sorted, 99.5);
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  const alpha = opts.alpha ?? 0.5, et = opts.labelET ?? 4;
  const rgb = new Uint8Array(W * H * 3);
  for (let v = 0; v < H; v++) {
    for (let u = 0; u < W; u++) {
      const g = Math.min(255, Math.max(0, (grey[u + W * v] - lo) * scale));
      const l = labels ? labels[voxel(u, v)] : 0;
      const c = l === 1 ? LABEL_COLOURS.NET : l === 2 ? LABEL_COLOURS.ED : l === et ? LABEL_COLOURS.ET : null;
      const o = 3 * (u + W * (H - 1 - v));
      for (let k = 0; k < 3; k++) rgb[o + k] = Math.round(c ? (1 - alpha) * g + alpha * c[k] : g);
    }
  }
  return encodePng(rgb, W, H);
}

const MARGIN = 10;

/** A white W x H RGB image with a grey frame, and a clipped rectangle fill on it (corners in either order). */
function canvas(W: number, H: number) {
  if (!(Number.isInteger(W) && Number.isInteger(H) && W > 2 * MARGIN && H > 2 * MARGIN)) {
    throw new Error(`chart size ${W} x ${H} must be integers above ${2 * MARGIN}`);
  }
  const rgb = new Uint8Array(W * H * 3).fill(255);
  const fill = (x0: number, y0: number, x1: number, y1: number, c: readonly number[]) => {
    for (let y = Math.max(0, Math.min(y0, y1)); y <= Math.min(H - 1, Math.max(y0, y1)); y++) {
      for (let x = Math.max(0, Math.min(x0, x1)); x <= Math.min(W - 1, Math.max(x0, x1)); x++) {
        rgb.set(c, 3 * (x + W * y));
      }
    }
  };
  fill(0, 0, W - 1, 0, [128, 128, 128]);
  fill(0, H - 1, W - 1, H - 1, [128, 128, 128]);
  fill(0, 0, 0, H - 1, [128, 128, 128]);
  fill(W - 1, 0, W - 1, H - 1, [128, 128, 128]);
  return { rgb, fill };
}

/** Pixel coordinate of v on an axis mapping [min, max] to [p0, p1]; the middle when the range is empty. */
function scaleTo(v: number, min: number, max: number, p0: number, p1: number): number {
  return max > min ? Math.round(p0 + ((v - min) / (max - min)) * (p1 - p0)) : Math.round((p0 + p1) / 2);
}

export interface BoxPlotOptions {
  width?: number;
  height?: number;
  /** Value range of the vertical axis; default: the range of the data. */
  min?: number;
  max?: number;
}

/** Colours of the boxes and lines, in series order (cycled). */
export const SERIES_COLOURS: readonly (readonly [number, number, number])[] = [
  [0, 113, 188],
  [216, 82, 24],
  [236, 176, 31],
  [125, 46, 141],
  [118, 171, 47],
];

/**
 * PNG box plot, one box per entry of `values` in insertion order (NaN skipped): box from the 25th to the 75th
 * percentile, black median line, whiskers to the minimum and maximum, on white with a grey frame.
 */
export function boxPlotPng(values: Record<string, number[]>, opts: BoxPlotOptions = {}): Uint8Array {
  const W = opts.width ?? 400, H = opts.height ?? 300;
  const series = Object.values(values).map((v) => Float64Array.from(v.filter((x) => !Number.isNaN(x))).sort());
  if (series.length === 0) throw new Error("boxPlotPng: no series");
  const all = series.flatMap((s) => Array.from(s));
  const min = opts.min ?? Math.min(...all), max = opts.max ?? Math.max(...all);
  const { rgb, fill } = canvas(W, H);
  const row = (v: number) => scaleTo(v, min, max, H - 1 - MARGIN, MARGIN);
  const slot = W / series.length;
  series.forEach((s, i) => {
    if (s.length === 0) return;
    const c = SERIES_COLOURS[i % SERIES_COLOURS.length];
    const mid = Math.round(slot * (i + 0.5)), half = Math.max(1, Math.round(slot * 0.3));
    const q = (p: number) => row(percentileLinear(s, p));
    fill(mid, row(s[0]), mid, row(s[s.length - 1]), c); // whisker
    fill(mid - (half >> 1), row(s[0]), mid + (half >> 1), row(s[0]), c);
    fill(mid - (half >> 1), row(s[s.length - 1]), mid + (half >> 1), row(s[s.length - 1]), c);
    fill(mid - half, q(75), mid + half, q(25), c); // box
    fill(mid - half, q(50), mid + half, q(50), [0, 0, 0]); // median
  });
  return encodePng(rgb, W, H);
}

export interface LineSeries {
  x: ArrayLike<number>;
  y: ArrayLike<number>;
}

export interface LineChartOptions {
  width?: number;
  height?: number;
  /** Axis ranges; default: the range of the finite data. */
  xMin?: number;
  xMax?: number;
  yMin?: number;
  yMax?: number;
}

/** [min, max] of the finite values of `key` over all series ([NaN, NaN] when there are none). */
export function seriesRange(series: Record<string, LineSeries>, key: "x" | "y"): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const s of Object.values(series)) {
    for (let i = 0; i < s[key].length; i++) {
      const v = s[key][i];
      if (!Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : [NaN, NaN];
}

/**
 * PNG line chart, one line per entry of `series` in insertion order (colours of SERIES_COLOURS): 2-pixel segments
 * between consecutive points with finite x and y (a non-finite value breaks the line), a 3 x 3 dot on every point, on
 * white with a grey frame.
 */
export function lineChartPng(series: Record<string, LineSeries>, opts: LineChartOptions = {}): Uint8Array {
  const W = opts.width ?? 400, H = opts.height ?? 300;
  const list = Object.entries(series);
  if (list.length === 0) throw new Error("lineChartPng: no series");
  for (const [name, s] of list) {
    if (s.x.length !== s.y.length) {
      throw new Error(`lineChartPng: series ${name} has ${s.x.length} x and ${s.y.length} y`);
    }
  }
  const [dx0, dx1] = seriesRange(series, "x"), [dy0, dy1] = seriesRange(series, "y");
  const xMin = opts.xMin ?? dx0, xMax = opts.xMax ?? dx1, yMin = opts.yMin ?? dy0, yMax = opts.yMax ?? dy1;
  const { rgb, fill } = canvas(W, H);
  const col = (x: number) => scaleTo(x, xMin, xMax, MARGIN, W - 1 - MARGIN);
  const row = (y: number) => scaleTo(y, yMin, yMax, H - 1 - MARGIN, MARGIN);
  list.forEach(([, s], i) => {
    const c = SERIES_COLOURS[i % SERIES_COLOURS.length];
    let prev: [number, number] | null = null;
    for (let k = 0; k < s.x.length; k++) {
      if (!Number.isFinite(s.x[k]) || !Number.isFinite(s.y[k])) {
        prev = null;
        continue;
      }
      const p: [number, number] = [col(s.x[k]), row(s.y[k])];
      if (prev && (p[0] !== prev[0] || p[1] !== prev[1])) {
        // Step along the longer axis so the segment has no gaps.
        const n = Math.max(Math.abs(p[0] - prev[0]), Math.abs(p[1] - prev[1]));
        for (let t = 0; t <= n; t++) {
          const x = Math.round(prev[0] + ((p[0] - prev[0]) * t) / n),
            y = Math.round(prev[1] + ((p[1] - prev[1]) * t) / n);
          fill(x, y, x + 1, y + 1, c);
        }
      }
      fill(p[0] - 1, p[1] - 1, p[0] + 1, p[1] + 1, c);
      prev = p;
    }
  });
  return encodePng(rgb, W, H);
}
