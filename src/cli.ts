// The command registry and argument parsing behind main.ts (and the demo, which runs the other commands in turn).
import { parseArgs } from "node:util";
import { type Command, UsageError } from "./command.ts";
import { dataCommands } from "./data/commands.ts";
import { demoCommand } from "./demo.ts";
import { inferCommands } from "./infer/commands.ts";
import { nnCommands } from "./nn/commands.ts";
import { benchCommand } from "./train/bench.ts";
import { trainCommands } from "./train/commands.ts";

export const commands: Record<string, Command> = {
  demo: demoCommand,
  ...dataCommands,
  ...nnCommands,
  ...trainCommands,
  ...inferCommands,
  bench: benchCommand,
};

export function help(): string {
  const w = Math.max(...Object.keys(commands).map((c) => c.length));
  return "hadnet: brain-tumour segmentation without post-contrast MRI (HAD-Net) on WebGPU\n\n" +
    "usage: deno task hadnet <command> [options]   (--help after a command for its options)\n\n" +
    Object.entries(commands).map(([n, c]) => `  ${n.padEnd(w)}  ${c.summary}`).join("\n");
}

/** Runs one command line (without the program name); returns the exit status. */
export async function runCommand(argv: string[]): Promise<number> {
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
