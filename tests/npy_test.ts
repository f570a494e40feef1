// .npy reading and writing against files numpy 1.24 wrote (tests/fixtures/npy), made with:
//
//   import numpy as np
//   np.save('f4.npy', np.arange(6, dtype='<f4').reshape(2,3) * 0.5 - 1)
//   np.save('f8_be.npy', (np.arange(5, dtype='>f8') / 3))
//   np.save('u1.npy', np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8))
//   np.save('u2.npy', np.array([0, 1, 65535], dtype=np.uint16))
//   np.save('i2_be.npy', np.array([-32768, -1, 0, 32767], dtype='>i2'))
//   np.save('i4.npy', np.array([[-5, 2147483647], [-2147483648, 3]], dtype=np.int32))
//   np.save('i8.npy', np.array([-(2**53) + 1, -1, 0, 2**40, 2**53 - 1], dtype=np.int64))
//   np.save('b1.npy', np.array([True, False, True, True]))
//   np.save('scalar.npy', np.float32(2.5))
//   np.save('empty.npy', np.zeros((0, 3), dtype=np.float32))
//   np.save('ids.npy', np.array(['BraTS19_2013_10_1', 'BraTS19_TCIA01_131_1', 'é✓𝄞']))
//   np.save('fortran.npy', np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
//   np.save('object.npy', np.array([{'a': 1}, None], dtype=object), allow_pickle=True)
//   np.lib.format.write_array(open('v2.npy', 'wb'), np.arange(4, dtype=np.float32), version=(2, 0))
//   np.lib.format.write_array(open('v3.npy', 'wb'), np.arange(4, dtype=np.float32), version=(3, 0))
//   np.save('big_i8.npy', np.array([2**60], dtype=np.int64))
import assert from "node:assert/strict";
import { loadNpy, type Npy, readNpy, saveNpy, writeNpy } from "../src/data/npy.ts";

const dir = new URL("./fixtures/npy/", import.meta.url);
const file = (n: string) => new URL(n, dir).pathname;
const bytes = (n: string) => Deno.readFileSync(file(n));

function check(name: string, dtype: string, shape: number[], values: ArrayLike<number | string>) {
  const a = readNpy(bytes(name), name);
  assert.equal(a.dtype, dtype, name);
  assert.deepEqual(a.shape, shape, name);
  assert.deepEqual(Array.from(a.data as ArrayLike<number | string>), Array.from(values), name);
  return a;
}

Deno.test("npy: reads every supported dtype as numpy wrote it", () => {
  assert.ok(check("f4.npy", "<f4", [2, 3], [-1, -0.5, 0, 0.5, 1, 1.5]).data instanceof Float32Array);
  check("f8_be.npy", "<f8", [5], [0, 1 / 3, 2 / 3, 1, 4 / 3]);
  assert.ok(check("u1.npy", "|u1", [2, 3], [0, 1, 255, 7, 8, 9]).data instanceof Uint8Array);
  assert.ok(check("u2.npy", "<u2", [3], [0, 1, 65535]).data instanceof Uint16Array);
  check("i2_be.npy", "<i2", [4], [-32768, -1, 0, 32767]);
  assert.ok(check("i4.npy", "<i4", [2, 2], [-5, 2147483647, -2147483648, 3]).data instanceof Int32Array);
  check("i8.npy", "<i8", [5], [-(2 ** 53) + 1, -1, 0, 2 ** 40, 2 ** 53 - 1]);
  check("b1.npy", "|b1", [4], [1, 0, 1, 1]);
  check("scalar.npy", "<f4", [], [2.5]);
  check("empty.npy", "<f4", [0, 3], []);
  check("v2.npy", "<f4", [4], [0, 1, 2, 3]);
  check("v3.npy", "<f4", [4], [0, 1, 2, 3]);
  check("ids.npy", "<U20", [3], ["BraTS19_2013_10_1", "BraTS19_TCIA01_131_1", "é✓𝄞"]);
});

Deno.test("npy: writes byte-identical files to numpy's for little-endian arrays", () => {
  for (const n of ["f4.npy", "u1.npy", "u2.npy", "i4.npy", "i8.npy", "b1.npy", "scalar.npy", "empty.npy", "ids.npy"]) {
    assert.deepEqual(writeNpy(readNpy(bytes(n), n)), bytes(n), n);
  }
});

Deno.test("npy: big-endian files round-trip to the same values", () => {
  for (const n of ["f8_be.npy", "i2_be.npy"]) {
    const a = readNpy(bytes(n), n);
    assert.deepEqual(readNpy(writeNpy(a)), a, n);
  }
});

Deno.test("npy: '<U' without a width takes the longest string; large headers use format 2.0", () => {
  const ids: Npy = { dtype: "<U", shape: [2], data: ["a", "BraTS19_2013_10_1"] };
  assert.deepEqual(readNpy(writeNpy(ids)), { ...ids, dtype: "<U17" });
  const shape = new Array(25000).fill(1);
  const big = writeNpy({ dtype: "<f4", shape, data: new Float32Array([3]) });
  assert.equal(big[6], 2);
  assert.deepEqual(readNpy(big), { dtype: "<f4", shape, data: new Float32Array([3]) });
});

Deno.test("npy: saveNpy writes through a temporary name; loadNpy reads it back", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const a: Npy = { dtype: "<f4", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) };
    await saveNpy(`${tmp}/a.npy`, a);
    assert.deepEqual([...Deno.readDirSync(tmp)].map((e) => e.name), ["a.npy"]);
    assert.deepEqual(await loadNpy(`${tmp}/a.npy`), a);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("npy: one clear error naming the file for unsupported or broken input", () => {
  const err = (b: Uint8Array, re: RegExp) => assert.throws(() => readNpy(b, "x/y.npy"), re);
  err(bytes("fortran.npy"), /^Error: x\/y\.npy: .*Fortran order/);
  err(bytes("object.npy"), /^Error: x\/y\.npy: .*object array/);
  err(bytes("big_i8.npy"), /x\/y\.npy: <i8 value at index 0 does not fit/);
  err(
    bytes("f4.npy").subarray(0, 140),
    /x\/y\.npy: truncated \.npy data: shape \(2,3\) of <f4 needs 24 bytes, file has 12/,
  );
  err(bytes("f4.npy").subarray(0, 60), /x\/y\.npy: truncated \.npy header/);
  err(new TextEncoder().encode("garbage, not numpy at all"), /x\/y\.npy: not a \.npy file/);
  assert.throws(() => writeNpy({ dtype: "<f4", shape: [3], data: new Float32Array(2) }), /shape \(3\) holds 3/);
});
