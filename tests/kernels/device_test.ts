// The device's buffer pool: reuse of a freed size, and the bound on what it holds (free buffers of sizes a past phase
// used are destroyed, after a submit, once the pool would exceed 1.5x the live bytes), with data intact across it.
import assert from "node:assert/strict";
import { planGpu } from "../../src/kernels/null_device.ts";
import { scale } from "../../src/kernels/elementwise.ts";
import { testGpu } from "../util.ts";

const MIB = 2 ** 20;

Deno.test("the pool reuses a freed buffer of the same size and destroys stale sizes past 1.5x the live bytes", () => {
  const g = planGpu(); // bookkeeping only: the same pool code as on an adapter
  const a = g.alloc(8 * MIB);
  g.free(a);
  assert.equal(g.alloc(8 * MIB), a, "same bucket: the freed buffer comes back");
  g.free(a);
  assert.deepEqual(g.memory(), { live: 0, peak: 8 * MIB, reserved: 8 * MIB, reservedPeak: 8 * MIB, made: 1 });
  // 8 MiB free + 10 MiB new > 1.5 x 10 MiB live: the free 8 MiB buffer goes before the new one is made.
  const b = g.alloc(10 * MIB);
  assert.notEqual(b, a);
  assert.equal(g.memory().reserved, 10 * MIB);
  // c (2 MiB) finds b's 10 MiB free, over 1.5 x 2 MiB: b goes. Then d and e fit under the bound with c's 2 MiB
  // kept free (2 + 4 + 4 MiB held for 8 MiB live).
  g.free(b);
  const c = g.alloc(2 * MIB), d = g.alloc(4 * MIB);
  g.free(c);
  const e = g.alloc(4 * MIB);
  assert.equal(g.memory().reserved, 10 * MIB, "the 10 MiB buffer was destroyed for c; c's 2 MiB is kept");
  assert.equal(g.memory().live, 8 * MIB);
  for (const x of [d, e]) g.free(x);
});

Deno.test("HADNET_POOL_RESERVE sets the pool's bound (a number >= 1), and anything else is an error naming it", () => {
  const withReserve = <T>(v: string, f: () => T): T => {
    Deno.env.set("HADNET_POOL_RESERVE", v);
    try {
      return f();
    } finally {
      Deno.env.delete("HADNET_POOL_RESERVE");
    }
  };
  withReserve("2.5", () => {
    const g = planGpu();
    const a = g.alloc(8 * MIB);
    g.free(a);
    g.alloc(10 * MIB); // 8 MiB free + 10 MiB new <= 2.5 x 10 MiB live: nothing is destroyed
    assert.deepEqual([g.memory().reserved, g.memory().made], [18 * MIB, 2]);
    assert.equal(g.alloc(8 * MIB), a, "the kept buffer is reused");
  });
  for (const bad of ["0.5", "abc", "", "Infinity"]) {
    assert.throws(
      () => withReserve(bad, planGpu),
      new RegExp(`HADNET_POOL_RESERVE must be a number >= 1, got "${bad}"`),
    );
  }
});

Deno.test("values survive a pool trim in the middle of recorded work", async () => {
  const g = await testGpu();
  const n = 1 << 22; // 16 MiB of f32
  const x = g.alloc(4 * n), y = g.alloc(4 * n);
  g.write(x, new Float32Array(n).fill(1.5));
  scale(g, x, y, n, 2); // recorded, not yet submitted
  g.free(x); // back to the pool while the recorded dispatch still reads it
  const reserved = g.memory().reserved;
  const other = g.alloc(8 * MIB); // 32 MiB held + 8 new > 1.5 x 24 MiB live: submits, then destroys x's buffer
  assert.equal(g.memory().reserved, reserved - 16 * MIB + 8 * MIB);
  const [out] = await g.read([{ buffer: y, size: 4 * n }]);
  const v = new Float32Array(out);
  assert.deepEqual([v[0], v[n >> 1], v[n - 1]], [3, 3, 3]);
  for (const b of [y, other]) g.free(b);
});
