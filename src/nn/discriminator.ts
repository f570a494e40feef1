// The HAD-Net hierarchical discriminator (and, without feature pairs, the AD-Net ablation).
//
// Input: concat(segmentation logits, student sequences) -> 4x4x4/2 conv (4k) + LeakyReLU 0.2 (no norm). At each of
// three scales: concat [x, fine feature, coarse feature nearest-resized to the fine one] -> 4x4x4/2 conv + instance
// norm (no affine) + LeakyReLU 0.2 (8k, 16k, 32k channels out). Then a 4x4x4/1 pad-1 conv to one channel, no bias.
// Without the hierarchy each scale sees only x, so the three blocks take 4k, 8k, 16k channels in.

import type { Gpu } from "../kernels/device.ts";
import { type Backend, gpuBackend } from "./backend.ts";
import { defaultConvBias, kaimingUniformDefaultConv } from "./init.ts";
import { Params } from "./module.ts";
import type { Rng } from "./rng.ts";
import type { Tensor } from "./tensor.ts";
import type { FeaturePairs } from "./unet.ts";

export interface DiscriminatorConfig {
  /** Input channels: classes + student sequences (7 for HAD-Net). */
  inChannels: number;
  k: number;
  /** false: the AD-Net ablation without feature pairs. */
  hierarchical: boolean;
}

const SLOPE = 0.2;

export class Discriminator {
  readonly config: DiscriminatorConfig;
  readonly params: Params;

  /** PyTorch's default Conv3d init (Kaiming uniform a = sqrt 5, bias U(+-1/sqrt(fan_in))), as HAD_Net.py leaves it. */
  constructor(g: Gpu, config: DiscriminatorConfig, rng: Rng) {
    const { inChannels, k, hierarchical } = config;
    if (!Number.isInteger(inChannels) || inChannels < 1) {
      throw new Error(`Discriminator: inChannels must be a positive integer, got ${inChannels}`);
    }
    if (!Number.isInteger(k) || k < 1) throw new Error(`Discriminator: k must be a positive integer, got ${k}`);
    this.config = { ...config };
    const p = this.params = new Params(g);
    const conv = (name: string, cin: number, cout: number, bias: boolean) => {
      const shape = [cout, cin, 4, 4, 4];
      p.add(`${name}.weight`, shape, kaimingUniformDefaultConv(rng, shape));
      if (bias) p.add(`${name}.bias`, [cout], defaultConvBias(rng, cin * 64, cout));
    };
    const widen = hierarchical ? 2 : 1; // each scale's input doubles with the feature pair
    conv("disc_1.0", inChannels, 4 * k, true);
    conv("disc_2.0", 4 * k * widen, 8 * k, true);
    conv("disc_3.0", 8 * k * widen, 16 * k, true);
    conv("disc_4.0", 16 * k * widen, 32 * k, true);
    conv("disc_5", 32 * k, 1, false);
  }

  /** D(segmentation, sequences, feature pairs or null); `trace` collects the LeakyReLU outputs (parity check). */
  forward(seg: Tensor, sequences: Tensor, features: FeaturePairs | null, trace?: Tensor[]): Tensor {
    return discForward(gpuBackend(this.params, { training: false, trace }), seg, sequences, features, this.config);
  }
}

/** The discriminator's forward on any backend (parameters by state-dict name). */
export function discForward<T>(
  b: Backend<T>,
  seg: T,
  sequences: T,
  features: FeaturePairs<T> | null,
  config: DiscriminatorConfig,
): T {
  const { hierarchical, inChannels } = config;
  if (hierarchical !== (features !== null)) {
    throw new Error(`Discriminator: ${hierarchical ? "needs" : "takes no"} feature pairs`);
  }
  const [ss, qs] = [b.shape(seg), b.shape(sequences)];
  if (ss[1] + qs[1] !== inChannels) {
    throw new Error(`Discriminator: segmentation [${ss}] + sequences [${qs}] must have ${inChannels} channels`);
  }
  // Each value is released after its last use (Backend.release); the inputs and features are the caller's.
  const input = b.concat([seg, sequences]);
  const c1 = b.conv(input, "disc_1.0.weight", "disc_1.0.bias", 2, 1);
  b.release(input);
  let x = b.leakyRelu(c1, SLOPE);
  b.release(c1);
  ["disc_2.0", "disc_3.0", "disc_4.0"].forEach((name, i) => {
    if (features) {
      const [fine, coarse] = features[i];
      const fs = b.shape(fine);
      const resized = b.resize(coarse, [fs[2], fs[3], fs[4]]);
      const joined = b.concat([x, fine, resized]);
      b.release(x, resized);
      x = joined;
    }
    const c = b.conv(x, `${name}.weight`, `${name}.bias`, 2, 1);
    b.release(x);
    x = b.normAct(c, null, null, SLOPE);
    b.release(c);
  });
  const out = b.conv(x, "disc_5.weight", null, 1, 1);
  b.release(x);
  return out;
}
