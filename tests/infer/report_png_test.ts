// PNG report images: decode the chunks (checking every CRC), the header, and the inflated pixels.
import assert from "node:assert/strict";
import { unzlibSync } from "fflate";
import {
  boxPlotPng,
  crc32,
  encodePng,
  LABEL_COLOURS,
  lineChartPng,
  SERIES_COLOURS,
  seriesRange,
  sliceOverlayPng,
} from "../../src/infer/report_png.ts";

function decodePng(png: Uint8Array): { width: number; height: number; rgb: Uint8Array } {
  assert.deepEqual(Array.from(png.subarray(0, 8)), [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const chunks: { type: string; data: Uint8Array }[] = [];
  for (let o = 8; o < png.length;) {
    const len = dv.getUint32(o);
    const type = String.fromCharCode(...png.subarray(o + 4, o + 8));
    assert.equal(dv.getUint32(o + 8 + len), crc32(png.subarray(o + 4, o + 8 + len)), `${type} CRC`);
    chunks.push({ type, data: png.subarray(o + 8, o + 8 + len) });
    o += 12 + len;
  }
  assert.deepEqual(chunks.map((c) => c.type), ["IHDR", "IDAT", "IEND"]);
  const h = new DataView(chunks[0].data.buffer, chunks[0].data.byteOffset, 13);
  const width = h.getUint32(0), height = h.getUint32(4);
  assert.deepEqual(Array.from(chunks[0].data.subarray(8)), [8, 2, 0, 0, 0]);
  const raw = unzlibSync(chunks[1].data);
  assert.equal(raw.length, height * (1 + 3 * width));
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    assert.equal(raw[y * (1 + 3 * width)], 0, "filter type");
    rgb.set(raw.subarray(y * (1 + 3 * width) + 1, (y + 1) * (1 + 3 * width)), y * width * 3);
  }
  return { width, height, rgb };
}

Deno.test("crc32 and encodePng round trip", () => {
  assert.equal(crc32(new TextEncoder().encode("IEND")), 0xae426082);
  const rgb = Uint8Array.from({ length: 5 * 3 * 3 }, (_, i) => (i * 37) & 255);
  const d = decodePng(encodePng(rgb, 5, 3));
  assert.deepEqual([d.width, d.height], [5, 3]);
  assert.deepEqual(d.rgb, rgb);
  assert.throws(() => encodePng(rgb, 4, 3), /45 bytes for 4 x 3 RGB \(36\)/);
});

Deno.test("sliceOverlayPng: slice size, orientation, grey window and label colours", () => {
  const dims = [4, 3, 2] as const;
  const n = 24;
  const vol = Float32Array.from({ length: n }, (_, i) => i);
  const labels = new Uint8Array(n);
  labels[1 + 4 * 0 + 12 * 1] = 4; // x=1, y=0, z=1
  // Axial slice z = 1: 4 x 3, row 0 is y = 2.
  const d = decodePng(sliceOverlayPng(vol, labels, dims, 2, 1));
  assert.deepEqual([d.width, d.height], [4, 3]);
  const px = (u: number, r: number) => Array.from(d.rgb.subarray(3 * (u + d.width * r), 3 * (u + d.width * r) + 3));
  // Grey runs 12..23 through the 0.5th / 99.5th percentiles of the slice (12.055, 22.945).
  const lo = 12 + 11 * 0.005, hi = 23 - 11 * 0.005;
  const grey = (v: number) => Math.round(Math.min(255, Math.max(0, ((v - lo) * 255) / (hi - lo))));
  assert.deepEqual(px(0, 2), [0, 0, 0]); // x=0, y=0: value 12, below the window
  assert.deepEqual(px(3, 0), [255, 255, 255]); // x=3, y=2: value 23
  assert.deepEqual(px(2, 1), [grey(18), grey(18), grey(18)]); // x=2, y=1
  const g = ((13 - lo) * 255) / (hi - lo);
  assert.deepEqual(px(1, 2), LABEL_COLOURS.ET.map((c) => Math.round(0.5 * g + 0.5 * c)));
  // Sagittal slice x = 2: Y x Z = 3 x 2.
  const s = decodePng(sliceOverlayPng(vol, null, dims, 0, 2));
  assert.deepEqual([s.width, s.height], [3, 2]);
  assert.throws(() => sliceOverlayPng(vol, labels, dims, 2, 2), /slice 2 outside 0..1 on axis 2/);
});

Deno.test("boxPlotPng: requested size, boxes in their colours", () => {
  const d = decodePng(
    boxPlotPng({ ET: [0.5, 0.7, NaN, 0.9], TC: [0.8, 0.85, 0.9], WT: [0.9, 0.95] }, { width: 120, height: 80 }),
  );
  assert.deepEqual([d.width, d.height], [120, 80]);
  const colours = new Set<string>();
  for (let i = 0; i < d.rgb.length; i += 3) colours.add(d.rgb.subarray(i, i + 3).join(","));
  for (const c of ["255,255,255", "128,128,128", "0,0,0", "0,113,188", "216,82,24", "236,176,31"]) {
    assert.ok(colours.has(c), `colour ${c} drawn`);
  }
  // First box at x = 20 over the data range [0.5, 0.95] mapped to rows 69..10: row(v) = round(69 - (v - 0.5) / 0.45 * 59).
  // ET (NaN skipped) [0.5, 0.7, 0.9]: quartiles 0.6 / 0.8 -> rows 56 / 30, median 0.7 -> row 43.
  const at = (x: number, y: number) => d.rgb.subarray(3 * (x + 120 * y), 3 * (x + 120 * y) + 3).join(",");
  assert.equal(at(20, 43), "0,0,0");
  assert.equal(at(20, 36), "0,113,188");
  assert.equal(at(20, 57), "0,113,188"); // whisker below the box
  assert.equal(at(25, 57), "255,255,255");
  assert.throws(() => boxPlotPng({}), /no series/);
});

Deno.test("lineChartPng: points and segments in series colours, NaN breaks the line, explicit ranges", () => {
  const series = { a: { x: [1, 2, 3], y: [0, 1, 0.5] }, b: { x: [1, 2, 3], y: [NaN, 0.2, 0.2] } };
  assert.deepEqual(seriesRange(series, "x"), [1, 3]);
  assert.deepEqual(seriesRange(series, "y"), [0, 1]);
  const d = decodePng(lineChartPng(series, { width: 120, height: 80 }));
  assert.deepEqual([d.width, d.height], [120, 80]);
  const at = (x: number, y: number) => d.rgb.subarray(3 * (x + 120 * y), 3 * (x + 120 * y) + 3).join(",");
  const [ca, cb] = [SERIES_COLOURS[0].join(","), SERIES_COLOURS[1].join(",")];
  // x [1, 3] -> columns 10..109, y [0, 1] -> rows 69..10.
  assert.equal(at(10, 69), ca); // a at (1, 0)
  assert.equal(at(60, 10), ca); // a at (2, 1)
  assert.equal(at(35, 39), ca); // on the segment between them: step 30 of 59
  assert.equal(at(85, 57), cb); // b between (2, 0.2) and (3, 0.2), row round(69 - 0.2 * 59) = 57
  assert.equal(at(10, 57), "255,255,255"); // b's first value is NaN: nothing at x = 1
  assert.equal(at(0, 40), "128,128,128");
  const e = decodePng(lineChartPng(series, { width: 120, height: 80, yMin: 0, yMax: 2 }));
  assert.equal(e.rgb.subarray(3 * (60 + 120 * 40), 3 * (60 + 120 * 40) + 3).join(","), ca); // y = 1 of [0, 2]
  assert.throws(() => lineChartPng({ a: { x: [1, 2], y: [1] } }), /series a has 2 x and 1 y/);
  assert.throws(() => lineChartPng({}), /no series/);
});
