import { Rng } from "../src/nn/rng.ts";
import assert from "node:assert/strict";

Deno.test("Rng streams are reproducible and restorable from their state", () => {
  const a = new Rng(7), b = new Rng(7);
  const xs = Array.from({ length: 5 }, () => a.normal());
  assert.deepEqual(Array.from({ length: 5 }, () => b.normal()), xs);
  const st = a.state();
  const next = [a.uniform(), a.normal(), a.int(10)];
  const c = new Rng(0);
  c.setState(st);
  assert.deepEqual([c.uniform(), c.normal(), c.int(10)], next);
  assert.notDeepEqual(
    Array.from({ length: 5 }, () => new Rng(8).uniform()),
    Array.from({ length: 5 }, () => new Rng(7).uniform()),
  );
});

Deno.test("Rng normal has mean 0 and variance 1, uniform lies in [0, 1)", () => {
  const r = new Rng(1);
  let s = 0, s2 = 0, lo = 1, hi = 0;
  const n = 200000;
  for (let i = 0; i < n; i++) {
    const v = r.normal();
    s += v;
    s2 += v * v;
    const u = r.uniform();
    lo = Math.min(lo, u);
    hi = Math.max(hi, u);
  }
  assert.ok(Math.abs(s / n) < 0.01, `mean ${s / n}`);
  assert.ok(Math.abs(s2 / n - 1) < 0.02, `variance ${s2 / n}`);
  assert.ok(lo >= 0 && hi < 1 && lo < 0.001 && hi > 0.999);
});
