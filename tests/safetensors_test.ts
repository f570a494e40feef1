import assert from "node:assert/strict";
import { readSafetensors, saveSafetensors, type Weights, writeSafetensors } from "../src/nn/safetensors.ts";
import { loadWeights } from "../src/nn/checkpoint.ts";

const golden = "/work/shared/fixtures/pytorch-golden/teacher.safetensors";

/** A safetensors file from a literal header and data, independent of writeSafetensors. */
function raw(header: unknown, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

Deno.test("safetensors: reads the Python-written golden file and writes it back byte for byte", () => {
  const bytes = Deno.readFileSync(golden);
  const { tensors, metadata } = readSafetensors(bytes, golden);
  assert.deepEqual(metadata, {});
  const w = tensors.get("conv_c5.conv1.conv.weight")!;
  assert.deepEqual(w.shape, [64, 32, 3, 3, 3]);
  assert.equal(w.data.length, 64 * 32 * 27);
  assert.deepEqual(writeSafetensors(tensors), bytes);
});

Deno.test("safetensors: round-trips tensors and hadnet metadata; saveSafetensors renames into place", async () => {
  const tensors: Weights = new Map([
    ["b", { shape: [3], data: new Float32Array([1, -2, 3.5]) }],
    ["a.weight", { shape: [2, 1, 2], data: new Float32Array([0.25, -0, NaN, Infinity]) }],
    ["scalar", { shape: [], data: new Float32Array([7]) }],
    ["empty", { shape: [0, 4], data: new Float32Array(0) }],
  ]);
  const metadata = { k: "4", sequences: "flair,t1ce,t1,t2", classes: "4", kind: "teacher" };
  const bytes = writeSafetensors(tensors, metadata);
  assert.equal(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
  assert.deepEqual(readSafetensors(bytes), { tensors, metadata });
  const dir = await Deno.makeTempDir();
  try {
    await saveSafetensors(`${dir}/m.safetensors`, tensors, metadata);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
    assert.deepEqual(await loadWeights(`${dir}/m.safetensors`), { tensors, metadata });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: converts F16, BF16, F64, I64, I32, I16, I8, U8 and BOOL to float32", () => {
  const parts: [string, ArrayBufferView, number[]][] = [
    ["F16", new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00, 0x3555]), [1, -2, 2 ** -24, Infinity, 0.333251953125]],
    ["BF16", new Uint16Array([0x3f80, 0xc0a0]), [1, -5]],
    ["F64", new Float64Array([0.1, -1e300]), [Math.fround(0.1), -Infinity]],
    ["I64", new BigInt64Array([-3n, 1n << 40n]), [-3, 2 ** 40]],
    ["I32", new Int32Array([-7, 9]), [-7, 9]],
    ["I16", new Int16Array([-32768, 5]), [-32768, 5]],
    ["I8", new Int8Array([-128, 127]), [-128, 127]],
    ["U8", new Uint8Array([0, 255]), [0, 255]],
    ["BOOL", new Uint8Array([1, 0]), [1, 0]],
  ];
  const header: Record<string, unknown> = {};
  const chunks: Uint8Array[] = [];
  let off = 0;
  for (const [dtype, arr, want] of parts) {
    header[dtype] = { dtype, shape: [want.length], data_offsets: [off, off + arr.byteLength] };
    chunks.push(bytesOf(arr));
    off += arr.byteLength;
  }
  const data = new Uint8Array(off);
  chunks.reduce((at, c) => (data.set(c, at), at + c.length), 0);
  const { tensors } = readSafetensors(raw(header, data));
  for (const [dtype, , want] of parts) assert.deepEqual(Array.from(tensors.get(dtype)!.data), want, dtype);
});

Deno.test("safetensors: one clear error naming the file and tensor for broken files", () => {
  const f32 = bytesOf(new Float32Array([1, 2, 3, 4]));
  const bad = (bytes: Uint8Array, re: RegExp) => assert.throws(() => readSafetensors(bytes, "m.safetensors"), re);
  const one = (entry: unknown, data = f32) => raw({ w: entry }, data);
  bad(
    one({ dtype: "F32", shape: [2, 2], data_offsets: [0, 20] }),
    /m\.safetensors: .*tensor w data_offsets \[0, 20\] fall outside the 16 data bytes/,
  );
  bad(
    one({ dtype: "F32", shape: [3], data_offsets: [0, 16] }),
    /m\.safetensors: .*tensor w F32\[3\] needs 12 bytes but data_offsets \[0, 16\] span 16/,
  );
  bad(one({ dtype: "F32", shape: [2], data_offsets: [8, 0] }), /tensor w data_offsets \[8, 0\]/);
  bad(one({ dtype: "C64", shape: [2], data_offsets: [0, 16] }), /tensor w has unsupported dtype "C64"/);
  bad(one({ dtype: "F32", shape: [-1], data_offsets: [0, 16] }), /tensor w has bad shape/);
  bad(one({ dtype: "F32", shape: [2] }), /tensor w has bad data_offsets/);
  bad(
    raw({
      a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
      b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
    }, f32),
    /m\.safetensors: .*tensors a and b overlap/,
  );
  bad(raw({ __metadata__: { k: 4 } }, f32), /metadata value k is not a string/);
  bad(raw({ __metadata__: "k=4" }, f32), /__metadata__ is not an object/);
  const good = writeSafetensors(new Map([["w", { shape: [4], data: new Float32Array(4) }]]));
  bad(good.subarray(0, 40), /m\.safetensors: not a valid safetensors file: header length \d+ exceeds the 32 bytes/);
  bad(good.subarray(0, good.length - 1), /tensor w data_offsets \[0, 16\] fall outside the 15 data bytes/);
  bad(good.subarray(0, 5), /m\.safetensors: .*5 bytes/);
  const garbage = new Uint8Array(64).fill(0x20);
  garbage.set([16, 0, 0, 0, 0, 0, 0, 0]);
  garbage.set([0x7b, 0x22, 0x61], 8); // '{"a' then spaces
  bad(garbage, /m\.safetensors: not a valid safetensors file: header is not JSON/);
  bad(raw([1, 2], f32), /header is not a JSON object/);
  assert.throws(
    () => writeSafetensors(new Map([["w", { shape: [3], data: new Float32Array(2) }]])),
    /tensor w shape \[3\] holds 3 values but has 2/,
  );
});
