// hadnet's one entrypoint: `deno task hadnet <command> [options]` (commands in src/cli.ts). Any error ends the run
// with one line naming what was wrong and a non-zero exit (HADNET_DEBUG=1 adds the stack, for debugging).

import { runCommand } from "./src/cli.ts";
import { UsageError } from "./src/command.ts";
import { PREPROCESS_WORKER } from "./src/data/preprocess.ts";

/** Runs one command line; kept as main() for tests. */
export const main = runCommand;

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
