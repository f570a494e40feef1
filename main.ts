// hadnet's one entrypoint: `deno task hadnet <command> [options]`. Parses arguments, validates them once, runs one
// command from the tables of src/*/commands.ts. Any error ends the run with one line naming what was wrong and a
// non-zero exit (HADNET_DEBUG=1 adds the stack, for debugging).

import { parseArgs } from "node:util";
import { type Command, UsageError } from "./src/command.ts";
import { dataCommands } from "./src/data/commands.ts";
import { PREPROCESS_WORKER } from "./src/data/preprocess.ts";
import { inferCommands } from "./src/infer/commands.ts";
import { nnCommands } from "./src/nn/commands.ts";
import { trainCommands } from "./src/train/commands.ts";

const commands: Record<string, Command> = { ...dataCommands, ...nnCommands, ...trainCommands, ...inferCommands };

function help(): string {
  const w = Math.max(...Object.keys(commands).map((c) => c.length));
  return "hadnet: brain-tumour segmentation without post-contrast MRI (HAD-Net) on WebGPU\n\n" +
    "usage: deno task hadnet <command> [options]   (--help after a command for its options)\n\n" +
    Object.entries(commands).map(([n, c]) => `  ${n.padEnd(w)}  ${c.summary}`).join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(help());
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) throw new UsageError(`unknown command "${name}" (deno task hadnet --help lists them)`);
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(cmd.usage);
    return 0;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: cmd.options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${name}: ${(e as Error).message}`);
  }
  return await cmd.run(parsed.values as Record<string, unknown>, parsed.positionals);
}

if (import.meta.main && self.name === PREPROCESS_WORKER) {
  // A preprocessing worker started from the bundle (dist/hadnet.js), which holds the worker's code too.
  await import("./src/data/preprocess_worker.ts");
} else if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    const err = e as Error;
    console.error(`hadnet: ${err.message}`);
    if (Deno.env.get("HADNET_DEBUG")) console.error(err.stack);
    Deno.exit(err instanceof UsageError ? 2 : 1);
  }
}
