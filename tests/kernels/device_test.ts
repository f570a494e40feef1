// The device's buffer pool: reuse of a freed size, and the bound on what it holds (free buffers of sizes a past phase
// used are destroyed, after a submit, once the pool would exceed 3x the live bytes), with data intact across it.
import assert from "node:assert/strict";
import { planGpu } from "../../src/kernels/null_device.ts";
import { Gpu } from "../../src/kernels/device.ts";
import { scale } from "../../src/kernels/elementwise.ts";
import { testGpu } from "../util.ts";

const MIB = 2 ** 20;

/** Runs f with HADNET_POOL_RESERVE set to v (undefined: unset), then puts back what the caller had. */
function withReserve<T>(v: string | undefined, f: () => T): T {
  const before = Deno.env.get("HADNET_POOL_RESERVE");
  const set = (x: string | undefined) =>
    x === undefined ? Deno.env.delete("HADNET_POOL_RESERVE") : Deno.env.set("HADNET_POOL_RESERVE", x);
  set(v);
  try {
    return f();
  } finally {
    set(before);
  }
}

Deno.test("the pool reuses a freed buffer of the same size and destroys stale sizes past 3x the live bytes", () => {
  const g = withReserve(undefined, planGpu); // bookkeeping only: the same pool code as on an adapter
  assert.equal(g.poolReserve, 3);
  const a = g.alloc(8 * MIB);
  g.free(a);
  assert.equal(g.alloc(8 * MIB), a, "same bucket: the freed buffer comes back");
  g.free(a);
  assert.deepEqual(g.memory(), { live: 0, peak: 8 * MIB, reserved: 8 * MIB, reservedPeak: 8 * MIB, made: 1 });
  // 8 MiB free + 3 MiB new > 3 x 3 MiB live: the free 8 MiB buffer goes before the new one is made.
  const b = g.alloc(3 * MIB);
  assert.notEqual(b, a);
  assert.equal(g.memory().reserved, 3 * MIB);
  // With b live, c (1 MiB, then freed) and d (2 MiB) are made under the bound (6 MiB held for 5 live).
  const c = g.alloc(MIB);
  g.free(c);
  const d = g.alloc(2 * MIB);
  assert.deepEqual([g.memory().reserved, g.memory().made], [6 * MIB, 4]);
  // All free, then 1 MiB reuses c; 0.5 MiB new would hold 6.5 MiB for 1.5 live (over 4.5): the largest free buffer
  // (b's 3 MiB) goes, d's 2 MiB stays.
  for (const x of [b, d]) g.free(x);
  assert.equal(g.alloc(MIB), c);
  g.alloc(MIB / 2);
  assert.deepEqual([g.memory().reserved, g.memory().live, g.memory().made], [3.5 * MIB, 1.5 * MIB, 5]);
});

Deno.test("HADNET_POOL_RESERVE sets the pool's bound (a number >= 1), and anything else is an error naming it", () => {
  withReserve("1.5", () => {
    const g = planGpu();
    assert.equal(g.poolReserve, 1.5);
    const a = g.alloc(8 * MIB);
    g.free(a);
    g.alloc(10 * MIB); // 8 MiB free + 10 MiB new > 1.5 x 10 MiB live: a goes (at the default 3 it would stay)
    assert.deepEqual([g.memory().reserved, g.memory().made], [10 * MIB, 2]);
  });
  for (const bad of ["0.5", "abc", "", "Infinity"]) {
    assert.throws(
      () => withReserve(bad, planGpu),
      new RegExp(`HADNET_POOL_RESERVE must be a number >= 1, got "${bad}"`),
    );
  }
});

Deno.test("values survive a pool trim in the middle of recorded work", async () => {
  const t = await testGpu();
  // The same device, an empty pool of its own, with the default bound.
  const g = withReserve(undefined, () => new Gpu(t.device, t.adapterName, t.isFallback, t.features));
  const n = 1 << 20; // 4 MiB of f32
  const x = g.alloc(64 * MIB), y = g.alloc(4 * n);
  g.write(x, new Float32Array(n).fill(1.5));
  scale(g, x, y, n, 2); // recorded, not yet submitted
  g.free(x); // back to the pool while the recorded dispatch still reads it
  const other = g.alloc(MIB); // 68 MiB held + 1 new > 3 x 5 MiB live: submits, then destroys x's buffer
  assert.equal(g.memory().reserved, 5 * MIB);
  const [out] = await g.read([{ buffer: y, size: 4 * n }]);
  const v = new Float32Array(out);
  assert.deepEqual([v[0], v[n >> 1], v[n - 1]], [3, 3, 3]);
  for (const b of [y, other]) g.free(b);
});
