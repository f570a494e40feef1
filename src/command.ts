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
