import assert from "node:assert/strict";
import { BENCH_MODES, benchCommand, convCases, runBench } from "../../src/train/bench.ts";
import { UsageError } from "../../src/command.ts";
import { poolReserve } from "../../src/kernels/device.ts";
import { planGpu } from "../../src/kernels/null_device.ts";
import { testGpu } from "../util.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

// The fields of ../shared/anchors/torch_reference.py bench, which hadnet's lines must share.
const REFERENCE_FIELDS = ["impl", "device", "mode", "size", "k", "ms_median", "ms_all", "peak_gib"];

/** Runs the command as the CLI does and returns its stdout lines parsed as JSON. */
async function cli(args: Record<string, unknown>): Promise<Record<string, unknown>[]> {
  const lines: string[] = [];
  const log = console.log;
  console.log = (s: string) => lines.push(s);
  try {
    assert.equal(await benchCommand.run(args, []), 0);
  } finally {
    console.log = log;
  }
  return lines.map((l) => JSON.parse(l));
}

for (const mode of BENCH_MODES) {
  Deno.test(`bench --mode ${mode} prints JSON lines with the reference's fields (32^3, k=2)`, async () => {
    await testGpu();
    const rows = await cli({ mode, size: "32,32,32", k: "2", iters: "1", warmup: "0" });
    // conv: three passes per shape, plus the channels-last ones where they apply: at k=2, the passes whose padded
    // channels stay at least a quarter real (levels 3 and 4: 8 or 16 of 16 in x 16 or 32 of 32 out; the stride-2
    // convolutions from 8 x 8 channels of x's space-to-depth; disc_1's input gradient, 8 of 16 in x 8 x 7 of 64 out),
    // and the weight gradients whose GEMM tile would be at least a quarter busy.
    const cl = rows.filter((r) => r.variant === "channels-last");
    assert.equal(rows.length, mode === "conv" ? convCases([32, 32, 32], 2).length * 3 + cl.length : 1);
    if (mode === "conv") {
      assert.deepEqual(cl.filter((r) => r.pass === "weight_grad").map((r) => r.conv), [
        "unet L3 4k->8k (d4.conv1)", // 8 x 27 rows, 16 columns: 84% x 50% of a 256 x 32 tile
        "unet L3 8k->8k (d4.conv2, u4)",
        "unet L4 8k->16k (c5.conv1)",
        "unet L4 16k->8k (c5.conv2)",
        "disc_2 8k->8k /2",
        "disc_3 16k->16k /2",
        "disc_4 32k->32k /2",
      ]);
      assert.deepEqual(cl.filter((r) => r.pass !== "weight_grad").map((r) => [r.conv, r.pass]), [
        ["unet L3 4k->8k (d4.conv1)", "forward"],
        ["unet L3 4k->8k (d4.conv1)", "input_grad"],
        ["unet L3 8k->8k (d4.conv2, u4)", "forward"],
        ["unet L3 8k->8k (d4.conv2, u4)", "input_grad"],
        ["unet L3 8k->4k (u4.conv_out)", "forward"],
        ["unet L3 8k->4k (u4.conv_out)", "input_grad"],
        ["unet L4 8k->16k (c5.conv1)", "forward"],
        ["unet L4 8k->16k (c5.conv1)", "input_grad"],
        ["unet L4 16k->8k (c5.conv2)", "forward"],
        ["unet L4 16k->8k (c5.conv2)", "input_grad"],
        ["disc_1 7->4k /2", "input_grad"],
        ["disc_2 8k->8k /2", "forward"],
        ["disc_2 8k->8k /2", "input_grad"],
        ["disc_3 16k->16k /2", "forward"],
        ["disc_3 16k->16k /2", "input_grad"],
        ["disc_4 32k->32k /2", "forward"],
        ["disc_4 32k->32k /2", "input_grad"],
      ]);
    }
    for (const r of rows) {
      for (const f of [...REFERENCE_FIELDS, "adapter", "features", "dispatches", "reserved_gib", "buffers_made"]) {
        assert.ok(f in r, `field ${f} in ${JSON.stringify(r)}`);
      }
      assert.equal(r.impl, "hadnet");
      assert.equal(r.mode, mode);
      assert.deepEqual(r.size, [32, 32, 32]);
      assert.equal(r.k, 2);
      const all = r.ms_all as number[];
      assert.equal(all.length, 1);
      assert.equal(r.ms_median, all[0]);
      assert.ok(all[0] > 0);
      assert.ok((r.peak_gib as number) > 0);
      assert.ok((r.dispatches as number) >= 1);
      assert.ok((r.buffers_made as number) >= 0);
      assert.equal(r.pool_reserve, poolReserve());
      if (mode === "conv") {
        assert.ok(["forward", "input_grad", "weight_grad"].includes(r.pass as string));
        assert.ok((r.tflops as number) > 0);
        // Calls per timed sample (a sync through Deno would swamp one kernel); ms and dispatches are per call.
        assert.ok(Number.isInteger(r.reps) && (r.reps as number) >= 1 && (r.reps as number) <= 16, `reps ${r.reps}`);
      }
    }
  });
}

Deno.test("bench --profile prints per-kernel GPU times where the adapter has timestamps, else says why not", async () => {
  const g = await testGpu();
  const errors: string[] = [];
  const err = console.error;
  console.error = (s: string) => errors.push(s);
  let rows;
  try {
    rows = await runBench({ mode: "infer", size: [16, 16, 16], k: 2, iters: 1, warmup: 1, profile: true, plan: false });
  } finally {
    console.error = err;
  }
  const kernels = rows.filter((r) => "kernel" in r);
  if (!g.device.features.has("timestamp-query")) {
    assert.match(errors[0], /--profile unavailable: /);
    assert.equal(kernels.length, 0);
  } else {
    assert.ok(kernels.some((r) => String(r.kernel).startsWith("conv3d_gather")));
    const shares = kernels.map((r) => r.share as number);
    assert.ok(Math.abs(shares.reduce((a, b) => a + b, 0) - 1) < 1e-6);
    assert.deepEqual(shares, [...shares].sort((a, b) => b - a));
  }
});

// The memory targets at 160x192x160, k=32, against PyTorch 2.11 fp32 on an H100 (torch.cuda max allocated):
// a HAD-Net step within its 13.25 GiB, a pre-training step within its 11.05 GiB, one teacher inference within 4 GiB.
// The null device goes through the same pool and allocation code, so its peak is the plan's, without a GPU.
const MEMORY_TARGETS_GIB = { hadnet: 13.25, pretrain: 11.05, infer: 4 };

for (const [mode, target] of Object.entries(MEMORY_TARGETS_GIB)) {
  Deno.test(`bench --plan: the ${mode} peak at 160x192x160, k=32 stays within ${target} GiB`, async () => {
    const [r] = await cli({ mode, plan: true, iters: "1", warmup: "1" });
    assert.equal(r.ms_median, null);
    assert.match(String(r.device), /null device/);
    assert.ok((r.peak_gib as number) > 1, `peak ${r.peak_gib} GiB is implausibly small`);
    assert.ok((r.peak_gib as number) <= target, `peak ${r.peak_gib} GiB over ${target} GiB`);
    // What the pool holds (free buffers too) also stays within the target with the default kernels on a GPU (the
    // null device's auto), and never below what is live. (The gather kernels' HAD-Net step holds 19.3 GiB at the
    // default bound: docs/performance.md.)
    assert.equal(r.conv_kernels, "auto");
    assert.ok((r.reserved_gib as number) <= target, `reserved ${r.reserved_gib} GiB over ${target} GiB`);
    assert.ok((r.reserved_gib as number) >= (r.peak_gib as number));
  });
}

Deno.test("bench --plan reports the same peak and dispatches as a real run of the same mode", async () => {
  await testGpu();
  // Each in a fresh process, so that the real run's peak counts only its own buffers. At this size no limit splits
  // anything, so this mainly checks that nothing in the modes depends on values read back from the GPU.
  // The kernels are named: by default the null device (an H100's stand-in) runs channels-last, a CPU adapter gather.
  const run = async (mode: string, kernels: string, plan: boolean) => {
    const args = ["run", "-A", MAIN, "bench", "--mode", mode, "--size", "32,32,32", "--k", "2", "--iters", "1"];
    args.push("--conv-kernel", kernels, ...(plan ? ["--plan"] : []));
    const out = await new Deno.Command(Deno.execPath(), { args }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    return JSON.parse(new TextDecoder().decode(out.stdout));
  };
  for (const mode of ["infer", "pretrain", "hadnet"]) {
    for (const kernels of ["gather", "channels-last"]) {
      const [real, plan] = await Promise.all([run(mode, kernels, false), run(mode, kernels, true)]);
      assert.equal(plan.peak_gib, real.peak_gib, `${mode}, ${kernels}`);
      assert.equal(plan.dispatches, real.dispatches, `${mode}, ${kernels}`);
    }
  }
});

Deno.test("bench --plan: a HAD-Net step at 160x192x160, k=32 also plans within WebGPU's default 128 MiB bindings", async () => {
  // The discriminator's largest weight (1024 x 1024 x 4^3 floats, 256 MiB) and its gradient exceed such a binding:
  // convolutions window them by whole channels. Every dispatch's bindings and grid are checked against the limits.
  const g = planGpu();
  g.setMaxBindingForTests(128 * 2 ** 20);
  const o = { mode: "hadnet" as const, size: [160, 192, 160] as [number, number, number], k: 32 };
  const [r] = await runBench({ ...o, iters: 1, warmup: 0, profile: false, plan: true }, g);
  assert.ok((r.peak_gib as number) <= MEMORY_TARGETS_GIB.hadnet, `peak ${r.peak_gib} GiB`);
});

Deno.test("bench --plan --f16: teacher inference at 160x192x160, k=32 in less memory than f32; infer only", async () => {
  const [f32] = await cli({ mode: "infer", plan: true, iters: "1", warmup: "1" });
  const [f16] = await cli({ mode: "infer", plan: true, f16: true, iters: "1", warmup: "1" });
  assert.equal(f16.storage, "f16");
  // Activations halve; the parameters, the input and the f32 logits do not.
  assert.ok((f16.peak_gib as number) < 0.6 * (f32.peak_gib as number), `${f16.peak_gib} vs ${f32.peak_gib} GiB`);
  await assert.rejects(() => benchCommand.run({ mode: "pretrain", f16: true }, []), /--f16 applies to --mode infer/);
});

Deno.test("bench --plan --mode conv at 160x192x160, k=32: every case and candidate plans within the limits", async () => {
  // 4.9 M voxels at level 0: the channels-last transposes need more tiles than one grid dimension holds.
  const rows = await cli({ mode: "conv", plan: true, iters: "1", warmup: "0" });
  assert.equal(rows.filter((r) => r.variant !== "channels-last").length, convCases([160, 192, 160], 32).length * 3);
  const level0 = rows.filter((r) => r.variant === "channels-last" && r.conv === "unet L0 k->k (d1.conv2, u1)");
  assert.deepEqual(level0.map((r) => r.pass), ["forward", "input_grad", "weight_grad"]);
  // The weight-gradient GEMM takes every shape at full size (its partials bounded, x and dy bound whole) but the two
  // with 4 and 1 output channels, which would leave its tile almost idle.
  const dw = rows.filter((r) => r.variant === "channels-last" && r.pass === "weight_grad").map((r) => r.conv);
  const idle = ["unet L0 1x1x1 k->4 (conv_out)", "disc_5 32k->1 /1"];
  assert.deepEqual(dw, convCases([160, 192, 160], 32).map((c) => c.name).filter((n) => !idle.includes(n)));
});

Deno.test("bench --plan refuses --profile", async () => {
  await assert.rejects(() => benchCommand.run({ plan: true, profile: true }, []), /--plan runs no kernel/);
});

Deno.test("convCases covers every convolution shape of the networks", () => {
  const cs = convCases([160, 192, 160], 32);
  assert.equal(cs.filter((c) => c.kernel === 3).length, 13);
  assert.deepEqual(cs.find((c) => c.name.startsWith("unet L4 16k"))?.dims, [10, 12, 10]);
  assert.deepEqual(cs.filter((c) => c.kernel === 4).map((c) => [c.cin, c.cout, c.stride]), [
    [7, 128, 2],
    [256, 256, 2],
    [512, 512, 2],
    [1024, 1024, 2],
    [1024, 1, 1],
  ]);
});

Deno.test("bench rejects a bad mode or size with a usage error", async () => {
  await assert.rejects(() => benchCommand.run({ mode: "train" }, []), UsageError);
  await assert.rejects(() => benchCommand.run({ size: "32,32" }, []), UsageError);
  await assert.rejects(() => benchCommand.run({ size: "8,32,32" }, []), UsageError);
});

Deno.test("bench --plan --conv-kernel channels-last: every peak stays within its target", async () => {
  // Channels-last holds reordered weights, and the partials of a reduction split over taps, while it runs.
  for (const mode of ["hadnet", "pretrain", "infer"] as const) {
    const [r] = await cli({ mode, plan: true, iters: "1", warmup: "1", "conv-kernel": "channels-last" });
    const [gather] = await cli({ mode, plan: true, iters: "1", warmup: "1", "conv-kernel": "gather" });
    assert.equal(r.conv_kernels, "channels-last");
    // Channels-last ran: it reorders weights before each GEMM, and sums split partials after it.
    assert.ok((r.dispatches as number) > (gather.dispatches as number), `${r.dispatches} vs ${gather.dispatches}`);
    const target = MEMORY_TARGETS_GIB[mode];
    assert.ok((r.peak_gib as number) <= target && (r.reserved_gib as number) <= target, JSON.stringify(r));
  }
});

/**
 * The tune lines of a tuned bench run (`--iters 1 --warmup 1`), each checked: both kernels timed, the faster kept;
 * then the one result line, in tuned mode and timed.
 */
function tunesOf(rows: Record<string, unknown>[]): Record<string, unknown>[] {
  const tunes = rows.filter((r) => "tune" in r).map((r) => r.tune as Record<string, unknown>);
  for (const t of tunes) {
    assert.ok((t.gather_ms as number) > 0 && (t.channels_last_ms as number) > 0);
    assert.equal(t.variant, (t.channels_last_ms as number) < (t.gather_ms as number) ? "channels-last" : "gather");
  }
  assert.equal(rows.length, tunes.length + 1);
  assert.equal(rows.at(-1)!.conv_kernels, "tuned");
  assert.ok((rows.at(-1)!.ms_median as number) > 0);
  return tunes;
}

Deno.test("bench --conv-kernel tuned prints one line per measured choice, then the result", async () => {
  await testGpu();
  // At k=2 channels-last takes the forward and input gradient of levels 3 and 4 (the student has no discriminator),
  // and the weight gradients from level 3 down but the up path's 8k -> 4k.
  const rows = await cli({
    mode: "pretrain",
    size: "32,32,32",
    k: "2",
    iters: "1",
    warmup: "1",
    "conv-kernel": "tuned",
  });
  const tunes = tunesOf(rows);
  const dw = tunes.filter((t) => String(t.conv).startsWith("weight_grad"));
  assert.deepEqual(tunes.filter((t) => !dw.includes(t)).map((t) => t.conv), [
    "forward [1,8,4,4,4] -> 16, k3 s1 p1",
    "forward [1,16,4,4,4] -> 16, k3 s1 p1",
    "forward [1,16,2,2,2] -> 32, k3 s1 p1",
    "forward [1,32,2,2,2] -> 16, k3 s1 p1",
    "forward [1,16,4,4,4] -> 8, k3 s1 p1",
    "input_grad [1,16,4,4,4] -> 8, k3 s1 p1",
    "input_grad [1,16,4,4,4] -> 16, k3 s1 p1",
    "input_grad [1,32,2,2,2] -> 16, k3 s1 p1",
    "input_grad [1,16,2,2,2] -> 32, k3 s1 p1",
    "input_grad [1,8,4,4,4] -> 16, k3 s1 p1",
  ]);
  assert.deepEqual(dw.map((t) => t.conv).sort(), [
    "weight_grad [1,16,2,2,2] -> 32, k3 s1 p1",
    "weight_grad [1,16,4,4,4] -> 16, k3 s1 p1",
    "weight_grad [1,32,2,2,2] -> 16, k3 s1 p1",
    "weight_grad [1,8,4,4,4] -> 16, k3 s1 p1",
  ]);
});

Deno.test("bench --mode infer --f16 --conv-kernel tuned times the f16 forwards, each a choice of its own", async () => {
  await testGpu();
  const rows = await cli({
    mode: "infer",
    size: "32,32,32",
    k: "2",
    iters: "1",
    warmup: "1",
    f16: true,
    "conv-kernel": "tuned",
  });
  const tunes = tunesOf(rows);
  // The teacher's levels 3 and 4 at k=2 (16 and 32 channels), their activations f16.
  assert.deepEqual(tunes.map((t) => t.conv), [
    "forward f16->f16 [1,8,4,4,4] -> 16, k3 s1 p1",
    "forward f16->f16 [1,16,4,4,4] -> 16, k3 s1 p1",
    "forward f16->f16 [1,16,2,2,2] -> 32, k3 s1 p1",
    "forward f16->f16 [1,32,2,2,2] -> 16, k3 s1 p1",
    "forward f16->f16 [1,16,4,4,4] -> 8, k3 s1 p1",
  ]);
  assert.equal(rows.at(-1)!.storage, "f16");
});

Deno.test("bench refuses --conv-kernel where it cannot apply, and --conv outside conv mode or naming nothing", async () => {
  const run = (args: Record<string, unknown>) => benchCommand.run(args, []);
  for (const kernels of ["tuned", "gather"]) {
    await assert.rejects(() => run({ mode: "conv", "conv-kernel": kernels }), /--mode conv times every kernel/);
  }
  await assert.rejects(() => run({ plan: true, "conv-kernel": "tuned" }), /cannot time them to tune/);
  await assert.rejects(() => run({ warmup: "0", "conv-kernel": "tuned" }), /needs --warmup >= 1/);
  await assert.rejects(
    () => run({ "conv-kernel": "fast" }),
    /--conv-kernel must be one of auto, gather, channels-last, tuned/,
  );
  await assert.rejects(() => run({ mode: "infer", conv: "disc" }), /--conv applies to --mode conv only/);
  await assert.rejects(() => run({ mode: "conv", conv: "disc_9" }), /--conv "disc_9" names no convolution/);
});

Deno.test("bench --mode conv --conv runs only the convolutions it names", async () => {
  const rows = await cli({ mode: "conv", plan: true, conv: "disc_", iters: "1", warmup: "0" });
  assert.deepEqual([...new Set(rows.map((r) => r.conv))], [
    "disc_1 7->4k /2",
    "disc_2 8k->8k /2",
    "disc_3 16k->16k /2",
    "disc_4 32k->32k /2",
    "disc_5 32k->1 /1",
  ]);
});
