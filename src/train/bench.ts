// `hadnet bench`: timings comparable line for line with ../shared/anchors/torch_reference.py bench.
//
// Modes: conv (every convolution shape of the networks: forward, input and weight gradients, with TFLOP/s),
// infer (teacher forward without gradients + argmax), pretrain (student forward, backward, AdamW step), hadnet (one
// HadnetTrainer step). One JSON line per result with the reference's fields (impl, device, mode, size, k, ms_median,
// ms_all, peak_gib) plus the adapter and dispatches per iteration. Each iteration is bracketed by `gpu.sync()` so
// the time covers the GPU work (in conv mode a sample runs several calls before its sync, see time()); peak_gib is the
// peak of live storage buffers (parameters included), reserved_gib the peak of all the pool's buffers, buffers_made the
// storage buffers the pool had to make per iteration (HADNET_POOL_RESERVE trades these for reserved memory).
// --profile adds GPU time per kernel from timestamp queries (src/kernels/profile.ts). --plan runs the mode on the null
// device (src/kernels/null_device.ts): no kernel runs, so it reports only the memory plan's peak and the dispatch
// count, at any size, without a GPU.

import { choiceOpt, type Command, CONV_KERNEL_HELP, intOpt, UsageError } from "../command.ts";
import * as K from "../kernels/conv3d.ts";
import {
  channelsLastApplies,
  CONV_KERNELS,
  CONV_PASSES,
  type ConvKernels,
  convKernels,
  runConvPass,
  sampleMs,
  setConvKernels,
  syncCost,
  tuneConvs,
  tuneReps,
} from "../kernels/conv_select.ts";
import { type Gpu, gpu } from "../kernels/device.ts";
import { planGpu } from "../kernels/null_device.ts";
import { median, Profiler } from "../kernels/profile.ts";
import { argmax, crossEntropy } from "../nn/ops/loss.ts";
import { AdamW } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { backward, noGrad, scope, Tensor } from "../nn/tensor.ts";
import { UNet } from "../nn/unet.ts";
import { CE_WEIGHTS } from "./common.ts";
import { HadnetTrainer } from "./hadnet.ts";

export const BENCH_MODES = ["conv", "infer", "pretrain", "hadnet"] as const;
export type BenchMode = typeof BENCH_MODES[number];

export interface BenchOptions {
  mode: BenchMode;
  size: [number, number, number];
  k: number;
  iters: number;
  warmup: number;
  profile: boolean;
  /** Run on the null device: peak memory and dispatches only, no timings. */
  plan: boolean;
  /** infer only: activations stored as f16. */
  f16?: boolean;
  /** conv only: the convolutions whose name contains this text (all when absent). */
  conv?: string;
  /** infer, pretrain, hadnet: how convolution kernels are picked (conv_select.ts; default gather). */
  convKernels?: ConvKernels;
}

/** One convolution of the networks: name, channels, kernel, stride, pad and input size. */
export interface ConvCase {
  name: string;
  cin: number;
  cout: number;
  kernel: 1 | 3 | 4;
  stride: 1 | 2;
  pad: number;
  dims: [number, number, number];
}

/** Every distinct convolution of the teacher U-Net and the hierarchical discriminator at this size and k. */
export function convCases(size: [number, number, number], k: number): ConvCase[] {
  const level = (l: number) => size.map((v) => Math.floor(v / 2 ** l)) as [number, number, number];
  const c3 = (name: string, cin: number, cout: number, l: number): ConvCase => ({
    name,
    cin,
    cout,
    kernel: 3,
    stride: 1,
    pad: 1,
    dims: level(l),
  });
  const d4 = (name: string, cin: number, cout: number, l: number, stride: 1 | 2): ConvCase => ({
    name,
    cin,
    cout,
    kernel: 4,
    stride,
    pad: 1,
    dims: level(l),
  });
  return [
    c3("unet L0 4->k (d1.conv1)", 4, k, 0),
    c3("unet L0 k->k (d1.conv2, u1)", k, k, 0),
    c3("unet L1 k->2k (d2.conv1)", k, 2 * k, 1),
    c3("unet L1 2k->2k (d2.conv2, u2)", 2 * k, 2 * k, 1),
    c3("unet L1 2k->k (u2.conv_out)", 2 * k, k, 1),
    c3("unet L2 2k->4k (d3.conv1)", 2 * k, 4 * k, 2),
    c3("unet L2 4k->4k (d3.conv2, u3)", 4 * k, 4 * k, 2),
    c3("unet L2 4k->2k (u3.conv_out)", 4 * k, 2 * k, 2),
    c3("unet L3 4k->8k (d4.conv1)", 4 * k, 8 * k, 3),
    c3("unet L3 8k->8k (d4.conv2, u4)", 8 * k, 8 * k, 3),
    c3("unet L3 8k->4k (u4.conv_out)", 8 * k, 4 * k, 3),
    c3("unet L4 8k->16k (c5.conv1)", 8 * k, 16 * k, 4),
    c3("unet L4 16k->8k (c5.conv2)", 16 * k, 8 * k, 4),
    { name: "unet L0 1x1x1 k->4 (conv_out)", cin: k, cout: 4, kernel: 1, stride: 1, pad: 0, dims: level(0) },
    d4("disc_1 7->4k /2", 7, 4 * k, 0, 2),
    d4("disc_2 8k->8k /2", 8 * k, 8 * k, 1, 2),
    d4("disc_3 16k->16k /2", 16 * k, 16 * k, 2, 2),
    d4("disc_4 32k->32k /2", 32 * k, 32 * k, 3, 2),
    d4("disc_5 32k->1 /1", 32 * k, 1, 4, 1),
  ];
}

const GIB = 2 ** 30;

/**
 * Times `step` (warmup, then iters), each bracketed by gpu.sync(); returns ms per iteration and dispatches.
 * `afterFirst` runs after the first warmup iteration (convolution tuning). `amortize` is for single kernels, whose time
 * a sync (10 ms or more through Deno) would swamp: as in tuning, each timed sample runs the step `reps` times before
 * its sync (tuneReps of one call's time), and ms are per call with an empty sync's cost taken off.
 */
async function time(
  g: Gpu,
  o: BenchOptions,
  step: () => void | Promise<void>,
  profiler: Profiler | null,
  afterFirst?: () => Promise<void>,
  amortize = false,
) {
  for (let i = 0; i < o.warmup; i++) {
    await step();
    await g.sync();
    if (i === 0) await afterFirst?.();
  }
  const syncMs = amortize ? await syncCost(g) : 0;
  const reps = amortize ? tuneReps(await sampleMs(g, step, 1, syncMs)) : 1;
  const ms: number[] = [];
  const [d0, made0] = [g.dispatches, g.memory().made];
  profiler?.start();
  for (let i = 0; i < o.iters; i++) {
    await g.sync();
    ms.push(await sampleMs(g, step, reps, syncMs));
  }
  const kernels = profiler ? await profiler.stop() : null;
  const calls = o.iters * reps;
  return { ms, reps, dispatches: (g.dispatches - d0) / calls, made: (g.memory().made - made0) / calls, kernels };
}

function baseFields(g: Gpu, o: BenchOptions) {
  return {
    impl: "hadnet",
    deno: Deno.version.deno,
    device: g.adapterName,
    adapter: `WebGPU ${g.adapterName}${g.isFallback ? " (fallback adapter)" : ""}`,
    // Tells adapters with one name apart (llvmpipe through GL has no shader-f16; lavapipe, through Vulkan, has).
    features: ["shader-f16", "timestamp-query"].filter((f) => g.features.has(f)),
    mode: o.mode,
    size: o.size,
    k: o.k,
    ...(o.f16 ? { storage: "f16" } : {}),
    ...(o.mode === "conv" ? {} : { conv_kernels: convKernels(g) }), // conv mode times every kernel
    pool_reserve: g.poolReserve,
  };
}

/**
 * Runs one benchmark mode and returns its result records (one per line of output); `emit` receives each as soon as
 * it is measured (so a run cut short has printed what it measured). `device` replaces the process GPU (or the null
 * device of --plan), e.g. a null device with a lowered binding limit in a test.
 */
export async function runBench(
  o: BenchOptions,
  device?: Gpu,
  emit?: (record: Record<string, unknown>) => void,
): Promise<Record<string, unknown>[]> {
  if (o.plan && o.profile) throw new UsageError("--plan runs no kernel, so it cannot --profile");
  if (o.f16 && o.mode !== "infer") throw new UsageError("--f16 applies to --mode infer only (f16 is for inference)");
  if (o.conv !== undefined && o.mode !== "conv") throw new UsageError("--conv applies to --mode conv only");
  if (!convCases(o.size, o.k).some((c) => c.name.includes(o.conv ?? ""))) {
    throw new UsageError(`--conv "${o.conv}" names no convolution of the networks`);
  }
  if (o.convKernels && o.mode === "conv") {
    throw new UsageError("--conv-kernel applies to --mode infer, pretrain and hadnet (--mode conv times every kernel)");
  }
  if (o.convKernels === "tuned" && o.plan) {
    throw new UsageError("--plan runs no kernel, so it cannot time them to tune");
  }
  if (o.convKernels === "tuned" && o.warmup < 1) throw new UsageError("--conv-kernel tuned needs --warmup >= 1");
  const g = device ?? (o.plan ? planGpu() : await gpu());
  setConvKernels(g, o.convKernels ?? "auto");
  let profiler: Profiler | null = null;
  if (o.profile) {
    profiler = Profiler.create(g);
    if (!profiler) console.error(`hadnet bench: --profile unavailable: ${Profiler.unavailable(g)}`);
  }
  try {
    return await benchMode(g, o, profiler, emit);
  } finally {
    profiler?.dispose();
  }
}

async function benchMode(
  g: Gpu,
  o: BenchOptions,
  profiler: Profiler | null,
  emit?: (record: Record<string, unknown>) => void,
): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  const push = (r: Record<string, unknown>) => {
    out.push(r);
    emit?.(r);
  };
  /** Tuned kernels: one line per measured choice after the first warmup step; the peak restarts after the scratch. */
  const tune = o.convKernels === "tuned"
    ? async () => {
      for (const c of await tuneConvs(g)) push({ ...baseFields(g, o), tune: c });
      g.resetPeak();
    }
    : undefined;
  /** Appends the result line (with TFLOP/s when flop is given) and, when profiled, one line per kernel. */
  const report = (r: Awaited<ReturnType<typeof time>>, extra: Record<string, unknown> = {}, flop = 0) => {
    const med = median(r.ms);
    push({
      ...baseFields(g, o),
      ...extra,
      ms_median: o.plan ? null : med,
      ms_all: o.plan ? null : r.ms,
      ...(flop && !o.plan ? { tflops: flop / (med * 1e-3) / 1e12 } : {}),
      peak_gib: g.memory().peak / GIB,
      reserved_gib: g.memory().reservedPeak / GIB,
      dispatches: r.dispatches,
      buffers_made: r.made,
    });
    const total = r.kernels?.reduce((a, x) => a + x.ms, 0) ?? 0;
    for (const kr of r.kernels ?? []) {
      push({
        ...baseFields(g, o),
        ...extra,
        kernel: kr.name,
        gpu_ms: kr.ms / (o.iters * r.reps),
        kernel_dispatches: kr.count / (o.iters * r.reps),
        share: kr.ms / total,
      });
    }
  };
  const rng = new Rng(0);
  const uniform = (n: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = rng.uniform();
    return a;
  };

  if (o.mode === "conv") {
    for (const c of convCases(o.size, o.k).filter((c) => c.name.includes(o.conv ?? ""))) {
      await scope(async () => {
        const xs = [1, c.cin, ...c.dims], ws = [c.cout, c.cin, c.kernel, c.kernel, c.kernel];
        const s = K.conv3dShape(xs, ws, [c.cout], c.stride, c.pad);
        const x = Tensor.from(g, xs, uniform(c.cin * s.d * s.h * s.w));
        const w = Tensor.from(g, ws, uniform(ws.reduce((a, b) => a * b)));
        const b = Tensor.zeros(g, [c.cout]);
        const y = Tensor.empty(g, [1, c.cout, s.od, s.oh, s.ow]);
        const dx = Tensor.empty(g, xs), dw = Tensor.empty(g, ws);
        K.conv3dForward(g, s, x.buffer, w.buffer, b.buffer, y.buffer); // y doubles as dy for the gradients
        const flop = 2 * c.cout * c.cin * c.kernel ** 3 * s.od * s.oh * s.ow;
        const bufs = { x: x.buffer, w: w.buffer, b: b.buffer, y: y.buffer, dx: dx.buffer, dw: dw.buffer };
        const shape = { cin: c.cin, cout: c.cout, kernel: c.kernel, stride: c.stride, pad: c.pad, input: c.dims };
        // Each pass with the gather kernel (the weight gradient's is split-K), then with the channels-last one
        // (src/kernels/conv3d_cl.ts, conv3d_cl_dw.ts) where it applies.
        for (const pass of CONV_PASSES) {
          for (const v of ["gather", "channels-last"] as const) {
            if (v === "channels-last" && !channelsLastApplies(g, s, pass)) continue;
            const variant = v === "gather" && pass === "weight_grad" ? "split-k" : v;
            g.resetPeak();
            const fn = () => runConvPass(g, s, pass, v, bufs);
            const r = await time(g, o, fn, profiler, undefined, true);
            report(r, { conv: c.name, shape, pass, variant, reps: r.reps }, flop);
          }
        }
      });
    }
    return out;
  }

  const [D, H, W] = o.size;
  const vox = D * H * W;
  const labels = () => Uint32Array.from({ length: vox }, () => Math.floor(rng.uniform() * 4));
  // torch_reference's inputs: x_teacher uniform [0, 1), x_student its channels 0, 2, 3, labels uniform in 0..3.
  const xtData = uniform(4 * vox);
  const xsData = new Float32Array(3 * vox);
  [0, 2, 3].forEach((c, i) => xsData.set(xtData.subarray(c * vox, (c + 1) * vox), i * vox));
  const xt = Tensor.from(g, [1, 4, D, H, W], xtData).keep();
  const xs = Tensor.from(g, [1, 3, D, H, W], xsData).keep();
  const y = Tensor.from(g, [1, D, H, W], labels()).keep();
  const net = (inChannels: number) => new UNet(g, { inChannels, k: o.k, classes: 4, dropout: 0.2 }, rng);
  try {
    if (o.mode === "infer") {
      const teacher = net(4);
      try {
        g.resetPeak();
        const storage = o.f16 ? "f16" as const : "f32" as const;
        const step = () =>
          scope(() => void noGrad(() => argmax(teacher.forward(xt, { training: false, storage }).logits)));
        report(await time(g, o, step, profiler, tune), {});
      } finally {
        teacher.params.dispose();
      }
    } else if (o.mode === "pretrain") {
      const student = net(3);
      const opt = new AdamW(student.params.list(), { lr: 2e-4, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-5 });
      const dropRng = new Rng(2);
      try {
        g.resetPeak();
        const step = () =>
          scope(() => {
            const { logits } = student.forward(xs, { training: true, rng: dropRng });
            backward(crossEntropy(logits, y, CE_WEIGHTS));
            opt.step();
            student.params.zeroGrad();
          });
        report(await time(g, o, step, profiler, tune), {});
      } finally {
        opt.dispose();
        student.params.dispose();
      }
    } else {
      // Freshly initialised teacher and student; discThreshold 1 so the discriminator steps every time, as in
      // torch_reference (which has no accuracy gate).
      const nets = [net(4), net(3)];
      const [teacher, student] = await Promise.all(nets.map((n) => n.params.stateDict()));
      for (const n of nets) n.params.dispose();
      const t = new HadnetTrainer(g, {
        k: o.k,
        dropout: 0.2,
        lr: 2e-4,
        betas: [0.5, 0.999],
        seed: 0,
        lambdaAdv: 0.2,
        discThreshold: 1,
        classWeights: CE_WEIGHTS,
        teacherEval: false,
        hierarchical: true,
      }, { teacher, student, sources: ["bench teacher", "bench student"] });
      try {
        g.resetPeak();
        const step = () =>
          scope(async () => {
            await t.step(xt, xs, y);
          });
        report(await time(g, o, step, profiler, tune), {});
      } finally {
        t.dispose();
      }
    }
  } finally {
    for (const x of [xt, xs, y]) x.dispose();
  }
  return out;
}

function parseSize(v: unknown): [number, number, number] {
  const parts = String(v).split(",").map((p) => Number(p.trim()));
  if (parts.length !== 3 || parts.some((p) => !Number.isInteger(p) || p < 16)) {
    throw new UsageError(`--size must be D,H,W with integers >= 16 (four poolings), got "${v}"`);
  }
  return parts as [number, number, number];
}

export const benchCommand: Command = {
  summary: "time convolutions, inference, a pre-training step or a HAD-Net step (JSON lines)",
  usage: "hadnet bench [--mode conv|infer|pretrain|hadnet] [--size D,H,W] [--k K] [--iters N] [--warmup N] " +
    "[--profile] [--plan] [--f16] [--conv TEXT] [--conv-kernel K]\n\n" +
    "Prints one JSON line per result with the fields of ../shared/anchors/torch_reference.py bench (impl, device, " +
    "mode, size, k, ms_median, ms_all, peak_gib) plus adapter and dispatches per iteration; each iteration is timed " +
    "between GPU syncs; peak_gib is the peak of live GPU buffers (as PyTorch's max_memory_allocated), reserved_gib\n" +
    "the peak of all buffers hadnet's pool holds (as PyTorch's reserved memory), buffers_made the buffers it made per\n" +
    "iteration (HADNET_POOL_RESERVE, default 3, bounds the pool to that multiple of the live bytes).\n\n" +
    "  --mode     conv: every convolution of the U-Net and the discriminator, forward, input and weight gradients,\n" +
    "             with TFLOP/s; infer: teacher forward (no gradients) + argmax; pretrain: student forward, backward\n" +
    "             and AdamW step; hadnet: one HAD-Net step (teacher, student and discriminator) (default hadnet)\n" +
    "  --size     volume D,H,W (default 160,192,160)\n" +
    "  --k        filters of the first U-Net level (default 32)\n" +
    "  --iters    timed iterations (default 5)\n" +
    "  --warmup   untimed iterations first (default 2)\n" +
    "  --profile  also print GPU time per kernel (timestamp queries; adapters without them say so)\n" +
    "  --plan     run on a null device that computes nothing: peak_gib and dispatches only (ms null), at any\n" +
    "             size and without a GPU; its limits are an H100's through Vulkan (2 GiB bindings)\n" +
    "  --f16      with --mode infer: activations stored as f16 (needs the adapter's shader-f16)\n" +
    '  --conv     with --mode conv: only the convolutions whose name contains this text (e.g. disc_, "unet L0")\n' +
    CONV_KERNEL_HELP + "\n" +
    '                        (modes infer, pretrain, hadnet; tuned: not with --plan, one "tune" line per choice)',
  options: {
    mode: { type: "string" },
    size: { type: "string" },
    k: { type: "string" },
    iters: { type: "string" },
    warmup: { type: "string" },
    profile: { type: "boolean" },
    plan: { type: "boolean" },
    f16: { type: "boolean" },
    conv: { type: "string" },
    "conv-kernel": { type: "string" },
  },
  run: async (v, pos) => {
    if (pos.length) throw new UsageError(`bench takes no positional arguments, got "${pos.join(" ")}"`);
    const mode = choiceOpt(v.mode, "--mode", BENCH_MODES) ?? "hadnet";
    await runBench(
      {
        mode,
        size: parseSize(v.size ?? "160,192,160"),
        k: intOpt(v.k, "--k") ?? 32,
        iters: intOpt(v.iters, "--iters") ?? 5,
        warmup: intOpt(v.warmup, "--warmup", 0) ?? 2,
        profile: v.profile === true,
        plan: v.plan === true,
        f16: v.f16 === true,
        conv: v.conv as string | undefined,
        convKernels: choiceOpt(v["conv-kernel"], "--conv-kernel", CONV_KERNELS),
      },
      undefined,
      (r) => console.log(JSON.stringify(r)),
    );
    return 0;
  },
};
