// hadnet's one entrypoint: `deno task hadnet <command> [options]`. Parses arguments, validates them once, runs one
// command. Any error ends the run with one line naming what was wrong and a non-zero exit (HADNET_DEBUG=1 adds the
// stack, for debugging).

import { parseArgs, type ParseArgsConfig } from "node:util";

interface Command {
  summary: string;
  usage: string;
  options: ParseArgsConfig["options"];
  run: (values: Record<string, unknown>, positionals: string[]) => Promise<number>;
}

const commands: Record<string, Command> = {
  parity: {
    summary: "compare hadnet's networks with a PyTorch golden fixture folder",
    usage: "hadnet parity <fixture-dir>\n\nPrints one JSON object with the max relative error per tensor and exits " +
      "non-zero when a tolerance (forward 1e-4, gradients 1e-3) is exceeded.",
    options: {},
    run: async (_v, pos) => {
      if (pos.length !== 1) throw new UsageError("parity takes exactly one fixture folder");
      const { runParity } = await import("./src/train/parity.ts");
      const report = await runParity(pos[0]);
      console.log(JSON.stringify(report));
      return report.ok ? 0 : 1;
    },
  },
  import: {
    summary: "convert a PyTorch .pth state dict to hadnet's safetensors",
    usage: "hadnet import <model.pth> <out.safetensors> [--k K] [--sequences N] [--classes C]\n\n" +
      "k, sequences and classes are inferred from the weights when omitted and recorded in the file's metadata.",
    options: { k: { type: "string" }, sequences: { type: "string" }, classes: { type: "string" } },
    run: async (v, pos) => {
      if (pos.length !== 2) throw new UsageError("import takes <model.pth> <out.safetensors>");
      const { convertPth } = await import("./src/nn/checkpoint.ts");
      const { generatorMeta } = await import("./src/nn/unet.ts");
      const { metadata } = await convertPth(pos[0], pos[1], (w) =>
        generatorMeta(w, pos[0], {
          k: optInt(v.k, "--k"),
          sequences: optInt(v.sequences, "--sequences"),
          classes: optInt(v.classes, "--classes"),
        }));
      console.log(JSON.stringify({ wrote: pos[1], ...metadata }));
      return 0;
    },
  },
};

class UsageError extends Error {}

function optInt(v: unknown, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${name} must be a positive integer, got "${v}"`);
  return n;
}

function help(): string {
  const w = Math.max(...Object.keys(commands).map((c) => c.length));
  return "hadnet: brain-tumour segmentation without post-contrast MRI (HAD-Net) on WebGPU\n\n" +
    "usage: deno task hadnet <command> [options]   (--help after a command for its options)\n\n" +
    Object.entries(commands).map(([n, c]) => `  ${n.padEnd(w)}  ${c.summary}`).join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(help());
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(`hadnet: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`${cmd.usage}`);
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

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    const err = e as Error;
    console.error(`hadnet: ${err.message}`);
    if (Deno.env.get("HADNET_DEBUG")) console.error(err.stack);
    Deno.exit(err instanceof UsageError ? 2 : 1);
  }
}
