// Id lists in the original's .npy format (checked with numpy) and as text, the seeded split, and the leak and
// missing-data checks.
import assert from "node:assert/strict";
import { checkSplit, makeSplit, readIdList, writeIdList } from "../../src/data/split.ts";
import { python } from "../util.ts";

Deno.test("id lists: numpy's np.save of ids reads back, ours loads in numpy, text files too", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const ids = ["BraTS19_2013_10_1", "BraTS19_CBICA_AAB_1", "BraTS-GLI-00000-000", "é"];
    await python(`import sys,numpy as np;np.save(sys.argv[1], ${JSON.stringify(ids)})`, `${tmp}/np.npy`);
    assert.deepEqual(await readIdList(`${tmp}/np.npy`), ids);
    await writeIdList(`${tmp}/ours.npy`, ids);
    const back = await python(
      `import sys,json,numpy as np;a=np.load(sys.argv[1]);print(json.dumps([a.dtype.kind,a.tolist()]))`,
      `${tmp}/ours.npy`,
    );
    assert.deepEqual(JSON.parse(back), ["U", ids]);
    await writeIdList(`${tmp}/ids.txt`, ids);
    assert.deepEqual(await readIdList(`${tmp}/ids.txt`), ids);
    await Deno.writeTextFile(`${tmp}/crlf.txt`, " a \r\n\r\nb\r\n");
    assert.deepEqual(await readIdList(`${tmp}/crlf.txt`), ["a", "b"]);
    await python(`import sys,numpy as np;np.save(sys.argv[1], np.arange(3))`, `${tmp}/int.npy`);
    await assert.rejects(readIdList(`${tmp}/int.npy`), /int\.npy: expected a 1-D array of strings, got <i8/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("makeSplit: seeded, disjoint, covering, sized by the ratios", () => {
  const ids = Array.from({ length: 23 }, (_, i) => `S${String(i).padStart(2, "0")}`);
  const a = makeSplit(ids, [0.7, 0.2, 0.1], 5);
  assert.deepEqual([a.train.length, a.validation.length, a.test.length], [16, 5, 2]);
  assert.deepEqual([...a.train, ...a.validation, ...a.test].sort(), ids);
  checkSplit({ train: a.train, validation: a.validation, test: a.test });
  assert.deepEqual(makeSplit([...ids].reverse(), [7, 2, 1], 5), a, "same seed, same split, whatever the input order");
  assert.notDeepEqual(makeSplit(ids, [0.7, 0.2, 0.1], 6), a);
  assert.deepEqual(makeSplit(ids, [1, 0, 0], 1).train, ids);
  assert.throws(() => makeSplit(ids, [0, 0, 0], 1), /ratios \[0,0,0\]/);
  assert.throws(() => makeSplit(["a", "b", "a"], [1, 1, 0], 1), /ids lists a more than once/);
});

Deno.test("checkSplit names every shared id and every id without data", async () => {
  assert.throws(
    () => checkSplit({ train: ["a", "b", "c"], validation: ["c", "d", "a"], test: ["d", "e"] }),
    (e: Error) => {
      assert.equal(
        e.message,
        "id lists: data leak: a is in train and validation; c is in train and validation; d is in validation and test",
      );
      return true;
    },
  );
  const tmp = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${tmp}/a/HGG`, { recursive: true });
    await Deno.mkdir(`${tmp}/b/LGG`, { recursive: true });
    checkSplit({ train: ["a"], validation: ["b"] }, tmp);
    assert.throws(
      () => checkSplit({ train: ["a", "x"], validation: ["b", "w"] }, tmp),
      /no preprocessed data under .* for w, x$/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
