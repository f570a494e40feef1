// Named parameters of a network, in PyTorch state-dict order and naming, so checkpoints move between hadnet and
// PyTorch unchanged.

import type { Gpu } from "../kernels/device.ts";
import { checkWeights } from "./checkpoint.ts";
import type { Weights } from "./safetensors.ts";
import { readAll, Tensor } from "./tensor.ts";

/** Parameter name -> host copy, in PyTorch state-dict naming. */
export type StateDict = Weights;

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
    checkWeights(sd, this.shapes(), source);
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
