// Prefetching order and overlap, the subject cache's bound, and the student's view of a teacher sample.
import assert from "node:assert/strict";
import type { Sample } from "../../src/data/augment.ts";
import { forEachPrefetched, studentView } from "../../src/train/data.ts";

Deno.test("forEachPrefetched: items in order; the next load starts when the body asks, before the body ends", async () => {
  const events: string[] = [];
  const load = async (id: string) => {
    events.push(`load ${id}`);
    await new Promise((r) => setTimeout(r, 1));
    events.push(`loaded ${id}`);
    return id.toUpperCase();
  };
  const seen: string[] = [];
  await forEachPrefetched(["a", "b", "c"], load, async (id, item, prefetchNext) => {
    seen.push(item);
    events.push(`step ${id}`);
    prefetchNext();
    prefetchNext(); // a second call does not load twice
    await new Promise((r) => setTimeout(r, 5)); // the "GPU step"
    events.push(`done ${id}`);
  });
  assert.deepEqual(seen, ["A", "B", "C"]);
  assert.deepEqual(events.filter((e) => e.startsWith("load ")), ["load a", "load b", "load c"]);
  // b loaded while a's step was running.
  assert.ok(events.indexOf("loaded b") < events.indexOf("done a"), events.join(", "));
});

Deno.test("forEachPrefetched: loads follow when the body never asks, and a failed load surfaces", async () => {
  const seen: string[] = [];
  await forEachPrefetched(["x", "y"], (id) => Promise.resolve(id), (_id, item) => {
    seen.push(item);
    return Promise.resolve();
  });
  assert.deepEqual(seen, ["x", "y"]);
  const failing = (id: string) =>
    id === "bad" ? Promise.reject(new Error(`subject ${id}: missing`)) : Promise.resolve(id);
  await assert.rejects(
    () => forEachPrefetched(["ok", "bad"], failing, (_id, _item, next) => Promise.resolve(next())),
    /subject bad: missing/,
  );
});

Deno.test("studentView drops t1c (channel 1) and shares labels and mask", () => {
  const n = 2 * 3 * 2;
  const s: Sample = {
    input: Float32Array.from({ length: 4 * n }, (_, i) => i),
    shape: [4, 2, 3, 2],
    labels: new Uint8Array(n),
    mask: new Uint8Array(n),
  };
  const v = studentView(s);
  assert.deepEqual(v.shape, [3, 2, 3, 2]);
  assert.deepEqual([...v.input.subarray(0, n)], [...s.input.subarray(0, n)]);
  assert.deepEqual([...v.input.subarray(n)], [...s.input.subarray(2 * n)]);
  assert.equal(v.labels, s.labels);
  assert.throws(() => studentView(v), /4 sequences/);
});
