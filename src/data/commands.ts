// CLI commands of the data stage.
import type { Command } from "../command.ts";

export const dataCommands: Record<string, Command> = {};
