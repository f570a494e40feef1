// The golden parity check against PyTorch: the shared fixtures (PyTorch 2.11, k = 4, 32x48x32) and a second fixture
// made here by Debian's PyTorch 1.13 (k = 3, not a multiple of 4; 40x32x48, not a multiple of 16, so the U-Net's
// nearest resizes see non-integer ratios; .pth files written by an older torch.save).
import assert from "node:assert/strict";
import { gpu } from "../../src/kernels/device.ts";
import { F16_TOL, runParity } from "../../src/train/parity.ts";
import { dispatchedWith } from "../util.ts";

const SHARED = new URL("../../../shared/fixtures/pytorch-golden", import.meta.url).pathname;
const ANCHOR = new URL("../../../shared/anchors/torch_reference.py", import.meta.url).pathname;

function assertParity(r: Awaited<ReturnType<typeof runParity>>) {
  assert.deepEqual(r.failed, [], `entries over tolerance: ${r.failed.map((n) => `${n} = ${r.errors[n]}`).join("; ")}`);
  assert.ok(r.ok);
  // Every kind of check ran and held: forward, losses, the optimiser, both float64 twin comparisons.
  for (const kind of ["teacher_logits (pth)", "student_feat_c5 (safetensors)", "gen_loss", "disc_loss", "disc_real"]) {
    assert.ok(r.errors[kind] <= 1e-4, `${kind}: ${r.errors[kind]}`);
  }
  const held = (tag: string) => Object.keys(r.errors).filter((n) => n.includes(tag) && r.tolerances[n] === 1e-3);
  assert.equal(held("(float64 twin vs fixture)").length, held("(vs float64 twin on the GPU's pattern)").length);
  assert.ok(held("(float64 twin vs fixture)").length > 60, "student and discriminator gradients are held to 1e-3");
  assert.ok(Object.keys(r.errors).some((n) => n.includes("(reference grads, update)") && r.tolerances[n] === 1e-4));
  // A gradient comparison left without a verdict must be explained by a kink crossed in that pass.
  const unheld = Object.keys(r.tolerances).filter((n) => r.tolerances[n] === null);
  if (unheld.some((n) => n.startsWith("student"))) {
    assert.ok(r.kinkCrossings.teacher + r.kinkCrossings.generatorStep > 0);
  }
  if (unheld.some((n) => n.startsWith("disc"))) assert.ok(r.kinkCrossings.discriminatorStep > 0);
  // The f16-storage option (inference): both networks' logits held to F16_TOL; label agreement reported.
  assert.ok(r.f16LabelAgreement, `f16 storage unchecked: ${r.adapter} has no shader-f16 (Debian: mesa-vulkan-drivers)`);
  for (const who of ["teacher", "student"]) assert.equal(r.tolerances[`${who}_logits (f16 storage)`], F16_TOL);
}

Deno.test("parity with the shared PyTorch golden fixtures (.pth and .safetensors)", async () => {
  assertParity(await runParity(SHARED));
});

Deno.test("parity through the channels-last GEMMs: forward, both gradients, and f16 inference", async () => {
  // The same fixtures with every eligible pass on the GEMMs (conv3d_cl.ts, conv3d_cl_dw.ts) instead of the gather
  // kernels: the same tolerances hold.
  const names = await dispatchedWith(await gpu(), "channels-last", async () => assertParity(await runParity(SHARED)));
  const ran = (re: RegExp) => names.some((n) => re.test(n));
  for (
    const re of [
      /^conv3d_cl_gemm_m0.*_f32_f32$/,
      /^conv3d_cl_gemm_m[02].*_f16$/,
      /^conv3d_cl_gemm_m[13]/,
      /^conv3d_cl_dw/,
    ]
  ) {
    assert.ok(ran(re), `${re} in ${[...new Set(names)]}`);
  }
});

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** Runs `hadnet parity DIR`; returns its exit code and the one JSON object it prints. */
async function parityCommand(dir: string) {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", MAIN, "parity", dir], stdout: "piped" })
    .output();
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  assert.equal(lines.length, 1, "one JSON object on stdout");
  return { code: out.code, report: JSON.parse(lines[0]) };
}

Deno.test("parity command on a fixture made by Debian's PyTorch 1.13: k = 3, 40x32x48", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hadnet-fixture-" });
  try {
    const out = await new Deno.Command("/usr/bin/python3", {
      args: [ANCHOR, "make", dir, "--seed", "3", "--k", "3", "--size", "40,32,48"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, `torch_reference.py make failed: ${new TextDecoder().decode(out.stderr)}`);
    assert.equal(JSON.parse(await Deno.readTextFile(`${dir}/golden.json`)).k, 3);
    const { code, report } = await parityCommand(dir);
    assertParity(report);
    assert.equal(code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parity command exits non-zero and names what is off when a reference value disagrees", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hadnet-fixture-" });
  try {
    for await (const e of Deno.readDir(SHARED)) await Deno.copyFile(`${SHARED}/${e.name}`, `${dir}/${e.name}`);
    const golden = JSON.parse(await Deno.readTextFile(`${dir}/golden.json`));
    golden.disc_loss *= 1.001;
    await Deno.writeTextFile(`${dir}/golden.json`, JSON.stringify(golden));
    const { code, report } = await parityCommand(dir);
    assert.equal(code, 1);
    assert.deepEqual(report.failed, ["disc_loss"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
