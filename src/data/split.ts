// Subject id lists: the original's .npy string arrays (np.save of a list of ids) or text files (one id per line),
// a seeded train/validation/test split, and the checks the original runs before training (no id in two lists),
// plus: no id twice in one list, and every id has preprocessed data.
import { gradeDir } from "./loader.ts";
import { loadNpy, saveNpy } from "./npy.ts";
import { Rng } from "../nn/rng.ts";

export interface Split {
  train: string[];
  validation: string[];
  test: string[];
}

/** Reads ids from a .npy string array or a text file (blank lines and surrounding spaces ignored). */
export async function readIdList(path: string): Promise<string[]> {
  if (path.endsWith(".npy")) {
    const a = await loadNpy(path);
    if (!Array.isArray(a.data) || a.shape.length !== 1) {
      throw new Error(`${path}: expected a 1-D array of strings, got ${a.dtype} of shape (${a.shape})`);
    }
    return a.data;
  }
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read id list (${(e as Error).message})`);
  }
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
}

/** Writes ids as a .npy string array (loadable by the original) or as text, one per line. */
export async function writeIdList(path: string, ids: string[]): Promise<void> {
  if (path.endsWith(".npy")) return saveNpy(path, { dtype: "<U", shape: [ids.length], data: ids });
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, ids.map((id) => id + "\n").join(""));
  await Deno.rename(tmp, path);
}

/**
 * Shuffles `ids` with `seed` and cuts it by `ratios` (train, validation, test; normalised to sum 1): validation and
 * test get round(n * ratio) ids, train the rest. Each list comes back sorted.
 */
export function makeSplit(ids: string[], ratios: [number, number, number], seed: number): Split {
  if (ratios.length !== 3 || ratios.some((r) => !(r >= 0)) || !(ratios[0] + ratios[1] + ratios[2] > 0)) {
    throw new Error(`makeSplit: ratios [${ratios}] must be three non-negative numbers with a positive sum`);
  }
  checkSplit({ ids });
  const total = ratios[0] + ratios[1] + ratios[2];
  const n = ids.length;
  const nVal = Math.round((n * ratios[1]) / total);
  const nTest = Math.min(n - nVal, Math.round((n * ratios[2]) / total));
  const order = new Rng(seed).shuffle([...ids].sort());
  const sorted = (xs: string[]) => xs.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    validation: sorted(order.slice(0, nVal)),
    test: sorted(order.slice(nVal, nVal + nTest)),
    train: sorted(order.slice(nVal + nTest)),
  };
}

/**
 * Throws, naming every offending id, when an id appears twice in one list, in two lists, or (with `procRoot`) has no
 * preprocessed folder under procRoot.
 */
export function checkSplit(lists: Record<string, string[]>, procRoot?: string): void {
  const problems: string[] = [];
  const where = new Map<string, string[]>();
  for (const [name, ids] of Object.entries(lists)) {
    const seen = new Set<string>(), twice = new Set<string>();
    for (const id of ids) {
      if (seen.has(id)) twice.add(id);
      seen.add(id);
    }
    if (twice.size > 0) problems.push(`${name} lists ${[...twice].sort().join(", ")} more than once`);
    for (const id of seen) where.set(id, [...(where.get(id) ?? []), name]);
  }
  const shared = [...where].filter(([, names]) => names.length > 1).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (shared.length > 0) {
    problems.push(`data leak: ${shared.map(([id, names]) => `${id} is in ${names.join(" and ")}`).join("; ")}`);
  }
  if (procRoot !== undefined) {
    const missing = [...where.keys()].filter((id) => {
      try {
        gradeDir(procRoot, id);
        return false;
      } catch {
        return true;
      }
    }).sort();
    if (missing.length > 0) problems.push(`no preprocessed data under ${procRoot} for ${missing.join(", ")}`);
  }
  if (problems.length > 0) throw new Error(`id lists: ${problems.join("; ")}`);
}
