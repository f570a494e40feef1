// The HAD-Net generator: the original release's 3D U-Net (teacher: 4 sequences, student: 3).
//
// Down x4: Dropout3d on the input, two conv3x3-instance-norm-LeakyReLU(0.01) blocks, max-pool 2 (the skip is the
// pre-pool map). Center: Dropout3d, two blocks (16k then 8k). Up x4: nearest resize of the coarse input to the skip's
// size, Dropout3d on skip and resized input (independent masks), conv_left(skip, no bias) + conv_up(up, bias), norm,
// LeakyReLU, one block. 1x1x1 output conv to the classes. Dropout p applies only in blocks whose in_channels >= k.
// forward returns the logits and the feature pairs the discriminator sees: [[d2, u3], [d3, u4], [d4, c5]].
// Every other value is released right after its last use (the activation plan; see Backend.release).

import type { Gpu } from "../kernels/device.ts";
import { type Backend, type ForwardMode, gpuBackend } from "./backend.ts";
import { kaimingNormal } from "./init.ts";
import { Params } from "./module.ts";
import type { Rng } from "./rng.ts";
import type { Weights } from "./safetensors.ts";
import { cast } from "./ops/elementwise.ts";
import type { Tensor } from "./tensor.ts";

export type { ForwardMode } from "./backend.ts";

export interface UNetConfig {
  /** Input sequences: 4 for the teacher, 3 for the student. */
  inChannels: number;
  /** Filters of the first level (k); levels have k, 2k, 4k, 8k, 16k. */
  k: number;
  classes: number;
  /** Dropout3d probability in training mode. */
  dropout: number;
}

export type FeaturePairs<T = Tensor> = [[T, T], [T, T], [T, T]];

export interface GeneratorOutput<T = Tensor> {
  logits: T;
  features: FeaturePairs<T>;
}

const SLOPE = 0.01;

/**
 * hadnet's metadata for a generator's weights: k, sequences and classes read off the first and last convolutions;
 * values given explicitly must agree with them.
 */
export function generatorMeta(
  w: Weights,
  file: string,
  given: { k?: number; sequences?: number; classes?: number } = {},
): Record<string, string> {
  const first = w.get("conv_d1.conv1.conv.weight"), last = w.get("conv_out.weight");
  if (!first || !last) {
    throw new Error(`${file}: not a HAD-Net generator (no conv_d1.conv1.conv.weight / conv_out.weight)`);
  }
  const found = { k: first.shape[0], sequences: first.shape[1], classes: last.shape[0] };
  for (const key of ["k", "sequences", "classes"] as const) {
    const v = given[key];
    if (v !== undefined && v !== found[key]) {
      throw new Error(`${file}: --${key} ${v} but the weights have ${found[key]}`);
    }
  }
  return { kind: "generator", k: String(found.k), sequences: String(found.sequences), classes: String(found.classes) };
}

export function validateUNetConfig(c: UNetConfig): UNetConfig {
  const int = (v: number, name: string, min: number) => {
    if (!Number.isInteger(v) || v < min) throw new Error(`UNet: ${name} must be an integer >= ${min}, got ${v}`);
  };
  int(c.inChannels, "inChannels", 1);
  int(c.k, "k", 1);
  int(c.classes, "classes", 2);
  if (!(c.dropout >= 0 && c.dropout < 1)) throw new Error(`UNet: dropout must be in [0, 1), got ${c.dropout}`);
  return { ...c };
}

export class UNet {
  readonly config: UNetConfig;
  readonly params: Params;

  /** Initialised as the original's init_weights: Kaiming-normal conv weights, zero conv biases, norm 1/0. */
  constructor(g: Gpu, config: UNetConfig, rng: Rng) {
    this.config = validateUNetConfig(config);
    const { inChannels: m, k, classes } = this.config;
    const p = this.params = new Params(g);
    const conv = (name: string, cin: number, cout: number, size: number, bias: boolean) => {
      const shape = [cout, cin, size, size, size];
      p.add(`${name}.weight`, shape, kaimingNormal(rng, shape));
      if (bias) p.add(`${name}.bias`, [cout], new Float32Array(cout));
    };
    const norm = (name: string, c: number) => {
      p.add(`${name}.weight`, [c], new Float32Array(c).fill(1));
      p.add(`${name}.bias`, [c], new Float32Array(c));
    };
    const block = (name: string, cin: number, cout: number) => {
      conv(`${name}.conv`, cin, cout, 3, true);
      norm(`${name}.inst`, cout);
    };
    const down = (name: string, cin: number, c1: number, c2: number) => {
      block(`${name}.conv1`, cin, c1);
      block(`${name}.conv2`, c1, c2);
    };
    const up = (name: string, cin: number, c1: number, c2: number) => {
      conv(`${name}.conv_up`, cin, c1, 3, true);
      conv(`${name}.conv_left`, cin, c1, 3, false);
      norm(`${name}.inst`, c1);
      block(`${name}.conv_out`, c1, c2);
    };
    down("conv_d1", m, k, k);
    down("conv_d2", k, 2 * k, 2 * k);
    down("conv_d3", 2 * k, 4 * k, 4 * k);
    down("conv_d4", 4 * k, 8 * k, 8 * k);
    down("conv_c5", 8 * k, 16 * k, 8 * k);
    up("conv_u4", 8 * k, 8 * k, 4 * k);
    up("conv_u3", 4 * k, 4 * k, 2 * k);
    up("conv_u2", 2 * k, 2 * k, k);
    up("conv_u1", k, k, k);
    conv("conv_out", k, classes, 1, true);
  }

  /** With f16 storage (inference), the logits come back as f32; the features stay f16. */
  forward(x: Tensor, mode: ForwardMode): GeneratorOutput {
    if (mode.storage === "f16") {
      if (mode.training) throw new Error("UNet: f16 storage is for inference (eval mode), not training");
      if (!x.gpu.features.has("shader-f16")) {
        throw new Error(`UNet: f16 storage needs the adapter's shader-f16 feature, which ${x.gpu.adapterName} lacks`);
      }
    }
    const out = unetForward(gpuBackend(this.params, mode), x, this.config);
    if (mode.storage !== "f16") return out;
    const logits = cast(out.logits, "f32");
    out.logits.dispose();
    return { logits, features: out.features };
  }
}

/** The U-Net's forward on any backend (parameters by state-dict name). */
export function unetForward<T>(b: Backend<T>, x: T, config: UNetConfig): GeneratorOutput<T> {
  const { inChannels, k, dropout } = config;
  const xs = b.shape(x);
  if (xs.length !== 5 || xs[1] !== inChannels) {
    throw new Error(`UNet: input [${xs}] must be [N, ${inChannels}, D, H, W]`);
  }
  const drop = (t: T, cin: number) => b.dropout(t, cin >= k ? dropout : 0);
  const block = (name: string, t: T) => {
    const c = b.conv(t, `${name}.conv.weight`, `${name}.conv.bias`, 1, 1);
    const y = b.normAct(c, `${name}.inst.weight`, `${name}.inst.bias`, SLOPE);
    b.release(c);
    return y;
  };
  /** Consumes t (a pooled map, or the caller's input, which the backend never frees). */
  const down = (name: string, t: T) => {
    const dropped = drop(t, b.shape(t)[1]);
    const h = block(`${name}.conv1`, dropped);
    b.release(dropped, t);
    const y = block(`${name}.conv2`, h);
    b.release(h);
    return y;
  };
  /** Keeps skip (a feature, or d1 released by the caller); consumes nothing else of the caller's. */
  const up = (name: string, skip: T, coarse: T) => {
    const cin = b.shape(coarse)[1], ss = b.shape(skip);
    const resized = b.resize(coarse, [ss[2], ss[3], ss[4]]);
    const [left, right] = [drop(skip, cin), drop(resized, cin)];
    const l = b.conv(left, `${name}.conv_left.weight`, null, 1, 1);
    const r = b.conv(right, `${name}.conv_up.weight`, `${name}.conv_up.bias`, 1, 1);
    if (left !== skip) b.release(left);
    b.release(right, resized);
    const sum = b.add(l, r);
    b.release(l, r);
    const n = b.normAct(sum, `${name}.inst.weight`, `${name}.inst.bias`, SLOPE);
    b.release(sum);
    const y = block(`${name}.conv_out`, n);
    b.release(n);
    return y;
  };
  const d1 = down("conv_d1", x);
  const d2 = down("conv_d2", b.maxPool2(d1));
  const d3 = down("conv_d3", b.maxPool2(d2));
  const d4 = down("conv_d4", b.maxPool2(d3));
  const c5 = down("conv_c5", b.maxPool2(d4));
  const u4 = up("conv_u4", d4, c5);
  const u3 = up("conv_u3", d3, u4);
  const u2 = up("conv_u2", d2, u3);
  const u1 = up("conv_u1", d1, u2);
  b.release(d1, u2);
  const logits = b.conv(u1, "conv_out.weight", "conv_out.bias", 1, 0);
  b.release(u1);
  return { logits, features: [[d2, u3], [d3, u4], [d4, c5]] };
}
