// CLI commands of the training stage.
import { type Command, UsageError } from "../command.ts";

export const trainCommands: Record<string, Command> = {
  parity: {
    summary: "compare hadnet's networks with a PyTorch golden fixture folder",
    usage:
      "hadnet parity <fixture-dir>\n\nRuns the networks on a folder laid out as ../shared/fixtures/pytorch-golden " +
      "and prints one JSON object with the max relative error per tensor; exits non-zero when a tolerance " +
      "(forward 1e-4, gradients 1e-3) is exceeded.",
    options: {},
    run: async (_v, pos) => {
      if (pos.length !== 1) throw new UsageError("parity takes exactly one fixture folder");
      const { runParity } = await import("./parity.ts");
      const report = await runParity(pos[0]);
      console.log(JSON.stringify(report));
      return report.ok ? 0 : 1;
    },
  },
};
