/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
// Deno Worker for preprocessDataset: one subject per message, answered with runJob's reply.
import { runJob } from "./preprocess.ts";

self.onmessage = async (e: MessageEvent) => {
  self.postMessage(await runJob(e.data));
};
