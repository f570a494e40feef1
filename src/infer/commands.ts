// CLI commands of the inference stage.
import type { Command } from "../command.ts";

export const inferCommands: Record<string, Command> = {};
