// `deno task bundle` makes one self-contained dist/hadnet.js that runs every command with a bare `deno run`:
// synthetic data, parallel preprocessing (its workers run the bundle itself) and a small inference.
import assert from "node:assert/strict";
import { saveSemantics } from "../src/data/loader.ts";
import { readNifti } from "../src/data/nifti.ts";
import { Rng } from "../src/nn/rng.ts";
import { UNet } from "../src/nn/unet.ts";
import { saveModel } from "../src/train/common.ts";
import { testGpu } from "./util.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function run(args: string[], cwd: string) {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `deno ${args.join(" ")} failed:\n${text}`);
  return text;
}

Deno.test("the bundle runs synth, parallel preprocess and infer with a bare deno run", async () => {
  const g = await testGpu();
  const dir = await Deno.makeTempDir({ prefix: "hadnet-bundle-" });
  try {
    await run(["task", "bundle"], ROOT);
    const bundle = `${dir}/hadnet.js`;
    await Deno.copyFile(`${ROOT}/dist/hadnet.js`, bundle); // runs from anywhere, alone
    await run(["run", "-A", bundle, "synth", "--out", "raw", "--n", "2", "--size", "32,36,32"], dir);
    const pre = await run(
      ["run", "-A", bundle, "preprocess", "--input", "raw", "--output", "proc", "--workers", "2"],
      dir,
    );
    assert.match(pre, /2 processed/);
    const net = new UNet(g, { inChannels: 3, k: 2, classes: 4, dropout: 0.2 }, new Rng(1));
    await saveModel(`${dir}/model.safetensors`, net.params, { kind: "generator", k: 2, sequences: 3, classes: 4 });
    net.params.dispose();
    await saveSemantics(`${dir}/semantics.json`, { shape: [32, 32, 32], teacherChannels: 4, studentChannels: 3 });
    await run([
      "run",
      "-A",
      bundle,
      "infer",
      "raw",
      "pred",
      "--model",
      "model.safetensors",
      "--semantics",
      "semantics.json",
    ], dir);
    for (const id of ["BraTS19_SYN_0001_1", "BraTS19_SYN_0002_1"]) {
      const pred = await readNifti(`${dir}/pred/${id}.nii.gz`);
      assert.deepEqual(pred.header.dims, [32, 36, 32]);
      assert.ok(pred.data.every((v) => v === 0 || v === 1 || v === 2 || v === 4));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
