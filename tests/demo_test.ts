// The README's first command: the whole workflow on synthetic data, at the demo's default settings. The floors
// below are what training reaches and an untrained network cannot; the untrained student is evaluated in the same
// run, so the test also shows it stays under them. Measured on llvmpipe (seed 0, 2 held-out subjects), ET/TC/WT:
// untrained student 0.020/0.019/0.079, student 0.588/0.718/0.901, teacher 0.764/0.857/0.902,
// HAD-Net student 0.587/0.716/0.885 (an earlier conv3d summation order gave 0.489/0.519/0.901 for the student and
// 0.571/0.630/0.882 for HAD-Net: the floors leave room for such float32 differences).
import assert from "node:assert/strict";
import { DEMO_DEFAULTS, runDemo } from "../src/demo.ts";

/** Mean Dice on the held-out subjects that each trained model must reach. */
const FLOORS = {
  student: { WT: 0.6, TC: 0.3, ET: 0.25 },
  teacher: { WT: 0.6, TC: 0.5, ET: 0.5 },
  "HAD-Net student": { WT: 0.6, TC: 0.3, ET: 0.25 },
} as const;

Deno.test("demo: every stage runs and the trained models clear Dice floors an untrained student cannot", async () => {
  const out = await Deno.makeTempDir({ prefix: "hadnet-demo-" });
  try {
    const r = await runDemo({ ...DEMO_DEFAULTS, out });
    console.log(JSON.stringify(r.rows));
    for (const [model, floor] of Object.entries(FLOORS)) {
      for (const [region, min] of Object.entries(floor)) {
        const got = r.rows[model as keyof typeof FLOORS][region as "WT"];
        assert.ok(got >= min, `${model} ${region} Dice ${got.toFixed(3)} < ${min}`);
        const untrained = r.rows["untrained student"][region as "WT"];
        assert.ok(untrained < min, `untrained student ${region} Dice ${untrained.toFixed(3)} reaches ${min}`);
      }
    }
    for (const dir of ["untrained", "student", "teacher", "hadnet"]) {
      await Deno.stat(`${out}/pred/${dir}/evaluation/report.html`);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
