// Dataset access for training: the preprocessed root, an in-memory cache of loaded (normalised, padded, unaugmented)
// subjects under a byte bound, the student's view of a teacher sample, and a prefetching loop so that loading and
// augmenting the next sample run on the CPU while the GPU computes the current step.
//
// The cache never evicts: with the order reshuffled every epoch, any fixed subset that fits gives the same expected
// hit rate as LRU, without the churn. Samples handed out are shared: callers must not write into them (augment copies).

import type { Sample } from "../data/augment.ts";
import { BRATS_DIR } from "../data/preprocess.ts";
import { loadSubject, type Role, type Semantics } from "../data/loader.ts";

/** The subjects' root: `data` itself, or `data/BRATS` when `data` is a preprocessing output folder. */
export function resolveDataRoot(data: string): string {
  try {
    if (Deno.statSync(`${data}/${BRATS_DIR}`).isDirectory) return `${data}/${BRATS_DIR}`;
  } catch {
    // not a preprocessing output folder: the subjects sit directly under data
  }
  try {
    if (Deno.statSync(data).isDirectory) return data;
  } catch {
    // reported below
  }
  throw new Error(`--data ${data}: no such folder`);
}

/** Default cache bound: a quarter of the machine's memory, at most 16 GiB. */
export function defaultCacheBytes(): number {
  let total = 8 * 2 ** 30;
  try {
    total = Deno.systemMemoryInfo().total;
  } catch {
    // no permission to read it: assume 8 GiB
  }
  return Math.min(16 * 2 ** 30, Math.floor(total / 4));
}

function sampleBytes(s: Sample): number {
  return s.input.byteLength + s.labels.byteLength + s.mask.byteLength;
}

/** Loads subjects of one role with labels, keeping them in memory while the total stays under `boundBytes`. */
export class SubjectCache {
  readonly root: string;
  readonly semantics: Semantics;
  readonly role: Role;
  readonly boundBytes: number;
  readonly #cache = new Map<string, Sample>();
  #bytes = 0;
  hits = 0;
  misses = 0;

  constructor(root: string, semantics: Semantics, role: Role, boundBytes = defaultCacheBytes()) {
    this.root = root;
    this.semantics = semantics;
    this.role = role;
    this.boundBytes = boundBytes;
  }

  get bytes(): number {
    return this.#bytes;
  }

  async get(id: string): Promise<Sample> {
    const hit = this.#cache.get(id);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const l = await loadSubject(this.root, id, this.semantics, this.role, true);
    const [D, H, W] = this.semantics.shape;
    const s: Sample = { input: l.input, shape: [l.meta.channels.length, D, H, W], labels: l.labels!, mask: l.mask };
    if (this.#bytes + sampleBytes(s) <= this.boundBytes) {
      this.#cache.set(id, s);
      this.#bytes += sampleBytes(s);
    }
    return s;
  }
}

/** The student's channels (flr, t1p, t2w) of a teacher sample (flr, t1c, t1p, t2w): drops t1c. */
export function studentView(s: Sample): Sample {
  const [C, D, H, W] = s.shape;
  if (C !== 4) throw new Error(`studentView: a teacher sample has 4 sequences, got shape [${s.shape}]`);
  const n = D * H * W;
  const input = new Float32Array(3 * n);
  input.set(s.input.subarray(0, n), 0);
  input.set(s.input.subarray(2 * n), n);
  return { input, shape: [3, D, H, W], labels: s.labels, mask: s.mask };
}

/**
 * Runs `body` on each id's item in order. The item for id i + 1 starts loading when `body` for id i calls
 * `prefetchNext()` — call it right after the step's GPU work is submitted, before awaiting its readback — or when
 * `body` returns. A failed load surfaces when its item is awaited.
 */
export async function forEachPrefetched<T>(
  ids: readonly string[],
  load: (id: string) => Promise<T>,
  body: (id: string, item: T, prefetchNext: () => void) => Promise<void>,
): Promise<void> {
  const start = (i: number): Promise<T> | null => {
    if (i >= ids.length) return null;
    const p = load(ids[i]);
    p.catch(() => {}); // awaited below; this only stops an early rejection from counting as unhandled
    return p;
  };
  let pending = start(0);
  for (let i = 0; i < ids.length; i++) {
    const item = await pending!;
    pending = null;
    let started = false;
    const prefetchNext = () => {
      if (!started) pending = start(i + 1);
      started = true;
    };
    await body(ids[i], item, prefetchNext);
    prefetchNext();
  }
}
