// Parameter initialisers (CPU, seeded), matching torch.nn.init's distributions (not its random stream). Shapes are in
// PyTorch layout; fan_in = shape[1] * prod(shape[2:]) as torch's _calculate_fan_in_and_fan_out computes it (for a
// ConvTranspose weight [in, out, k...] that is out * k^3, as in PyTorch).
import type { Rng } from "./rng.ts";

export function fanIn(shape: readonly number[]): number {
  if (shape.length < 2) throw new Error(`fan_in needs a weight of at least 2 dimensions, got [${shape}]`);
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** kaiming_normal_(w) defaults (a = 0, mode fan_in, leaky_relu): N(0, std^2), std = sqrt(2) / sqrt(fan_in). */
export function kaimingNormal(rng: Rng, shape: readonly number[]): Float32Array {
  const std = Math.SQRT2 / Math.sqrt(fanIn(shape));
  return Float32Array.from({ length: count(shape) }, () => std * rng.normal());
}

/** PyTorch's default Conv weight init, kaiming_uniform_(a = sqrt 5): U(-b, b), b = sqrt(6 / ((1 + 5) fan_in)). */
export function kaimingUniformDefaultConv(rng: Rng, shape: readonly number[]): Float32Array {
  const gain = Math.sqrt(2 / (1 + 5));
  const bound = Math.sqrt(3) * gain / Math.sqrt(fanIn(shape));
  return Float32Array.from({ length: count(shape) }, () => rng.range(-bound, bound));
}

/** PyTorch's default Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for n biases. */
export function defaultConvBias(rng: Rng, fanIn: number, n: number): Float32Array {
  if (!(fanIn > 0)) throw new Error(`defaultConvBias: fan_in ${fanIn} must be positive`);
  const bound = 1 / Math.sqrt(fanIn);
  return Float32Array.from({ length: n }, () => rng.range(-bound, bound));
}
