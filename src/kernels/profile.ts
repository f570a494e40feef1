// GPU time per kernel from timestamp queries, for `hadnet bench --profile`.
//
// Every compute pass that Gpu.dispatch records while a Profiler is attached gets a begin/end timestamp pair
// (`timestampWrites`), through the hook `gpu.passTimer` that dispatch consults when beginning its pass. Queries live
// in sets of QUERIES; `stop()` resolves them with one extra submit and one readback and sums end - begin per kernel
// name. Needs the adapter's 'timestamp-query' feature enabled on the device.

import type { Gpu, PassTimer } from "./device.ts";

/** The median of timings (the mean of the middle two for an even count). */
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const QUERIES = 4096; // per query set (WebGPU's limit), two per pass
const QUERY_RESOLVE = 0x0200, COPY_SRC = 0x0004;

export interface KernelTime {
  name: string;
  /** Summed GPU time in milliseconds. */
  ms: number;
  count: number;
}

export class Profiler implements PassTimer {
  readonly #g: Gpu;
  #sets: GPUQuerySet[] = [];
  #names: string[] = [];

  private constructor(g: Gpu) {
    this.#g = g;
  }

  /** Why this Gpu cannot be profiled, or null when it can. */
  static unavailable(g: Gpu): string | null {
    if (!g.device.features.has("timestamp-query")) {
      return `the adapter ${g.adapterName} does not offer (or the device was opened without) 'timestamp-query'`;
    }
    return null;
  }

  /** A profiler for g, or null when unavailable (see `unavailable`). */
  static create(g: Gpu): Profiler | null {
    return Profiler.unavailable(g) ? null : new Profiler(g);
  }

  /** Attaches to the GPU: every later dispatch is timed until `stop`. */
  start() {
    this.#g.flush();
    this.#names = [];
    this.#g.passTimer = this;
  }

  pass(name: string): GPUComputePassDescriptor {
    const i = this.#names.length, set = Math.floor((2 * i) / QUERIES);
    if (set === this.#sets.length) {
      this.#sets.push(this.#g.device.createQuerySet({ type: "timestamp", count: QUERIES }));
    }
    this.#names.push(name);
    const q = (2 * i) % QUERIES;
    return {
      label: name,
      timestampWrites: { querySet: this.#sets[set], beginningOfPassWriteIndex: q, endOfPassWriteIndex: q + 1 },
    };
  }

  /** Detaches, reads the timestamps back and returns GPU time per kernel name, largest first. */
  async stop(): Promise<KernelTime[]> {
    this.#g.passTimer = null;
    const n = this.#names.length;
    if (!n) return [];
    const g = this.#g;
    g.flush();
    const used = Math.ceil((2 * n) / QUERIES);
    const resolve = g.device.createBuffer({ size: used * QUERIES * 8, usage: QUERY_RESOLVE | COPY_SRC });
    const enc = g.device.createCommandEncoder();
    for (let s = 0; s < used; s++) {
      enc.resolveQuerySet(this.#sets[s], 0, Math.min(QUERIES, 2 * n - s * QUERIES), resolve, s * QUERIES * 8);
    }
    g.device.queue.submit([enc.finish()]);
    const [raw] = await g.read([{ buffer: resolve, size: 2 * n * 8 }]);
    resolve.destroy();
    const ts = new BigUint64Array(raw);
    const by = new Map<string, KernelTime>();
    this.#names.forEach((name, i) => {
      const e = by.get(name) ?? { name, ms: 0, count: 0 };
      // A pass whose end precedes its begin (a reset or unsupported counter) counts as zero.
      e.ms += ts[2 * i + 1] > ts[2 * i] ? Number(ts[2 * i + 1] - ts[2 * i]) / 1e6 : 0;
      e.count++;
      by.set(name, e);
    });
    return [...by.values()].sort((a, b) => b.ms - a.ms);
  }

  dispose() {
    for (const s of this.#sets) s.destroy();
    this.#sets = [];
  }
}
