// Weight files by extension: hadnet's own .safetensors (with metadata) and PyTorch .pth state dicts (imported, no
// metadata), plus the one-error check of names and shapes against what a network expects.

import { readPth } from "./pth.ts";
import { loadSafetensors, saveSafetensors, type Weights } from "./safetensors.ts";

export async function loadWeights(path: string): Promise<{ tensors: Weights; metadata: Record<string, string> }> {
  const ext = path.slice(path.lastIndexOf(".")).toLowerCase();
  if (ext === ".safetensors") return await loadSafetensors(path);
  if (ext === ".pth" || ext === ".pt") return { tensors: readPth(await Deno.readFile(path), path), metadata: {} };
  throw new Error(`${path}: unknown weight file type (expected .safetensors, or .pth/.pt from torch.save)`);
}

/** Throws one error listing every missing name, unexpected name and shape mismatch, or returns quietly. */
export function checkWeights(tensors: Weights, expected: Map<string, number[]>, file: string): void {
  const problems: string[] = [];
  const missing = [...expected.keys()].filter((k) => !tensors.has(k));
  const unexpected = [...tensors.keys()].filter((k) => !expected.has(k));
  if (missing.length) problems.push(`missing: ${missing.join(", ")}`);
  if (unexpected.length) problems.push(`unexpected: ${unexpected.join(", ")}`);
  for (const [k, shape] of expected) {
    const t = tensors.get(k);
    if (t && (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))) {
      problems.push(`${k}: file has [${t.shape}], network expects [${shape}]`);
    }
  }
  if (problems.length) {
    throw new Error(`${file}: weights do not fit the network:\n  ${problems.join("\n  ")}`);
  }
}

/** `hadnet import`: a PyTorch state dict to safetensors with hadnet's metadata (given, or derived from the weights). */
export async function convertPth(
  src: string,
  dst: string,
  metadata: Record<string, string> | ((w: Weights) => Record<string, string>),
): Promise<{ tensors: Weights; metadata: Record<string, string> }> {
  const tensors = readPth(await Deno.readFile(src), src);
  const meta = typeof metadata === "function" ? metadata(tensors) : metadata;
  await saveSafetensors(dst, tensors, meta);
  return { tensors, metadata: meta };
}
