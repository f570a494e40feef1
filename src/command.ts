// The shape of a CLI command: each folder (data, train, infer) exports a table of these and main.ts dispatches.
import type { ParseArgsConfig } from "node:util";

export interface Command {
  summary: string;
  /** Full --help text: usage line, then what it does and every option with its default. */
  usage: string;
  options: NonNullable<ParseArgsConfig["options"]>;
  run: (values: Record<string, unknown>, positionals: string[]) => Promise<number>;
}

/** A mistake in how the command was called: exit status 2. */
export class UsageError extends Error {}

/** Parses an integer option (undefined when absent) with bounds, naming the option on error. */
export function intOpt(v: unknown, name: string, min = 1, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`${name} must be an integer in [${min}, ${max}], got "${v}"`);
  }
  return n;
}

/** Parses a number option (undefined when absent) in [min, max]. */
export function numOpt(v: unknown, name: string, min = -Infinity, max = Infinity): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
  }
  return n;
}

/** A required string option. */
export function reqOpt(v: unknown, name: string): string {
  if (typeof v !== "string" || v === "") throw new UsageError(`${name} is required`);
  return v;
}

/** A string option that must be one of `choices` (undefined when absent), naming the option and the choices. */
export function choiceOpt<T extends string>(v: unknown, name: string, choices: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (!choices.includes(v as T)) throw new UsageError(`${name} must be one of ${choices.join(", ")}, got "${v}"`);
  return v as T;
}

/** Help for --conv-kernel (training, inference and bench share it; src/kernels/conv_select.ts). */
export const CONV_KERNEL_HELP =
  "  --conv-kernel K       convolution kernels: auto (the default: channels-last on a GPU where channel padding is\n" +
  "                        at most half of the reduction, else gather; gather on a CPU adapter),\n" +
  "                        gather, channels-last (GEMMs, wherever they apply: weight gradients, and the 3x3x3 and\n" +
  "                        4x4x4 stride-2 forward and input gradient, where channels padded to multiples of 16 in and\n" +
  "                        32 out leave a quarter of the work real; they hold up to 256 MiB of scratch and a\n" +
  "                        reordered copy of the weights while they run) or tuned (both timed on this GPU for each\n" +
  "                        shape and pass after the first step it appears in, the faster kept and logged as a\n" +
  '                        "tune" event)';
