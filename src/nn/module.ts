// Named parameters of a network, in PyTorch state-dict order and naming, so checkpoints move between hadnet and
// PyTorch unchanged.

import type { Gpu } from "../kernels/device.ts";
import { readAll, Tensor } from "./tensor.ts";

export interface HostTensor {
  shape: number[];
  data: Float32Array;
}
export type StateDict = Map<string, HostTensor>;

export class Params {
  readonly gpu: Gpu;
  readonly #map = new Map<string, Tensor>();

  constructor(g: Gpu) {
    this.gpu = g;
  }

  /** Registers a parameter with its initial values. */
  add(name: string, shape: number[], init: Float32Array): Tensor {
    if (this.#map.has(name)) throw new Error(`parameter ${name} registered twice`);
    const t = Tensor.from(this.gpu, shape, init).asParameter(name);
    this.#map.set(name, t);
    return t;
  }

  get(name: string): Tensor {
    const t = this.#map.get(name);
    if (!t) throw new Error(`no parameter ${name}`);
    return t;
  }

  list(): Tensor[] {
    return [...this.#map.values()];
  }

  names(): string[] {
    return [...this.#map.keys()];
  }

  /** Expected name -> shape, for checking a checkpoint before loading it. */
  shapes(): Map<string, number[]> {
    return new Map([...this.#map].map(([n, t]) => [n, [...t.shape]]));
  }

  /** Copies every parameter to the host in one readback. */
  async stateDict(): Promise<StateDict> {
    const ts = this.list();
    const data = await readAll(ts);
    return new Map(ts.map((t, i) => [t.name, { shape: [...t.shape], data: data[i] }]));
  }

  /** Loads a state dict whose names and shapes must match exactly (one error listing every difference). */
  load(sd: StateDict, source: string) {
    const problems: string[] = [];
    for (const [name, t] of this.#map) {
      const h = sd.get(name);
      if (!h) problems.push(`missing ${name} [${t.shape}]`);
      else if (h.shape.length !== t.shape.length || h.shape.some((d, i) => d !== t.shape[i])) {
        problems.push(`${name}: file has [${h.shape}], network expects [${t.shape}]`);
      }
    }
    for (const name of sd.keys()) if (!this.#map.has(name)) problems.push(`unexpected ${name}`);
    if (problems.length) throw new Error(`${source} does not fit this network: ${problems.join("; ")}`);
    for (const [name, t] of this.#map) this.gpu.write(t.buffer, sd.get(name)!.data);
  }

  zeroGrad() {
    for (const t of this.#map.values()) t.zeroGrad();
  }

  dispose() {
    for (const t of this.#map.values()) {
      t.zeroGrad();
      t.dispose();
    }
    this.#map.clear();
  }
}
