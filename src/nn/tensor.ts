// GPU tensors and reverse-mode autodiff (micrograd-sized).
//
// A Tensor is a dense row-major array (NCDHW for volumes) in one pooled GPU buffer. An op that needs gradients
// calls `record(out, inputs, backward, saved)`: the node keeps its inputs, a closure that maps the output's gradient
// to one gradient per input (null where an input needs none), and the tensors that closure reads. `backward(loss)`
// sorts the graph iteratively, runs the closures in reverse, checks each gradient's shape against its tensor, sums
// gradients that meet, and accumulates into `.grad` of leaves that require grad (parameters). Like PyTorch without
// retain_graph, a graph is backpropagated once: its nodes are then spent and their saved tensors let go.
//
// GPU memory is freed explicitly. Every tensor is registered with the innermost `scope`, which disposes, when it
// ends, everything created inside it except what it returns and what was `keep()`-ed (parameters, their grads).
// Within a scope, `release()` frees a tensor its creator is done with as soon as no pending backward reads it (the
// activation plan: an op's temporaries, and every intermediate of a forward without gradients, go at once).

import { Gpu, type Storage } from "../kernels/device.ts";
import { addInto } from "../kernels/elementwise.ts";

/** Element types: f16 is activation storage for inference (no gradients; see record). */
export type DType = "f32" | "f16" | "u32";

interface Node {
  inputs: Tensor[];
  backward: (grad: Tensor) => (Tensor | null)[];
  /** What backward reads besides its gradient: held (not freed by release) until it has run. */
  saved: Tensor[];
}

/** The node of a tensor whose graph was already backpropagated (its saved tensors may be gone). */
const SPENT: Node = { inputs: [], backward: () => [], saved: [] };

const scopes: Set<Tensor>[] = [];
let gradEnabled = true;
/** Per tensor, how many recorded nodes that have not run their backward yet save it. */
const holds = new WeakMap<Tensor, number>();
/** Tensors whose creator called release(): disposed when their hold count reaches zero. */
const released = new WeakSet<Tensor>();

function unhold(t: Tensor) {
  const n = (holds.get(t) ?? 0) - 1;
  if (n > 0) return void holds.set(t, n);
  holds.delete(t);
  if (released.has(t)) t.dispose();
}

export class Tensor {
  readonly gpu: Gpu;
  readonly shape: readonly number[];
  readonly size: number;
  readonly dtype: DType;
  #buffer: GPUBuffer | null;
  requiresGrad = false;
  grad: Tensor | null = null;
  node: Node | null = null;
  name = "";

  constructor(g: Gpu, shape: readonly number[], dtype: DType = "f32", buffer?: GPUBuffer) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape}]`);
    }
    this.gpu = g;
    this.shape = [...shape];
    this.size = shape.reduce((a, b) => a * b, 1);
    this.dtype = dtype;
    this.#buffer = buffer ?? g.alloc(this.bytes);
    scopes.at(-1)?.add(this);
  }

  static empty(g: Gpu, shape: readonly number[], dtype: DType = "f32"): Tensor {
    return new Tensor(g, shape, dtype);
  }

  static zeros(g: Gpu, shape: readonly number[], dtype: DType = "f32"): Tensor {
    const t = new Tensor(g, shape, dtype);
    if (t.size) g.zero(t.buffer, 0, t.wordBytes);
    return t;
  }

  static from(g: Gpu, shape: readonly number[], data: Float32Array | Uint32Array | ArrayLike<number>): Tensor {
    const dtype: DType = data instanceof Uint32Array ? "u32" : "f32";
    const t = new Tensor(g, shape, dtype);
    if (data.length !== t.size) {
      throw new Error(`Tensor.from: ${data.length} values do not fill shape [${shape}] (${t.size})`);
    }
    const arr = data instanceof Float32Array || data instanceof Uint32Array ? data : Float32Array.from(data);
    if (t.size) g.write(t.buffer, arr);
    return t;
  }

  get buffer(): GPUBuffer {
    if (!this.#buffer) throw new Error(`tensor ${this.name || `[${this.shape}]`} used after dispose`);
    return this.#buffer;
  }
  get disposed(): boolean {
    return this.#buffer === null;
  }
  get bytes(): number {
    return this.size * (this.dtype === "f16" ? 2 : 4);
  }
  /** bytes rounded up to whole 4-byte words, as buffer clears and copies take them (an odd count of f16 values). */
  get wordBytes(): number {
    return Math.ceil(this.bytes / 4) * 4;
  }

  /** Marks this tensor (and later its grad) as outliving the current scope. */
  keep(): this {
    for (const s of scopes) s.delete(this);
    return this;
  }

  /** A parameter: kept, requires grad, named as in the PyTorch state dict. */
  asParameter(name: string): this {
    this.name = name;
    this.requiresGrad = true;
    return this.keep();
  }

  /**
   * The creator is done with this tensor: it is disposed now, or once the last backward that reads it has run (a
   * graph never backpropagated keeps it until its scope ends).
   */
  release() {
    released.add(this);
    if (!holds.has(this)) this.dispose();
  }

  /** Cuts this tensor from its graph in place (PyTorch's detach_): no node, no gradient; the node's saves go. */
  detach_(): this {
    if (this.node && this.node !== SPENT) { for (const t of this.node.saved) unhold(t); }
    this.node = null;
    this.requiresGrad = false;
    return this;
  }

  /** Frees the buffer. The node stays: a released intermediate's gradient still flows through it. */
  dispose() {
    if (!this.#buffer) return;
    this.gpu.free(this.#buffer);
    this.#buffer = null;
    for (const s of scopes) s.delete(this);
  }

  /** A tensor sharing nothing with the graph: same values, no node (copies the buffer). */
  detach(): Tensor {
    const t = new Tensor(this.gpu, this.shape, this.dtype);
    if (this.size) this.gpu.copy(this.buffer, 0, t.buffer, 0, this.wordBytes);
    return t;
  }

  async toArray(): Promise<Float32Array> {
    return (await readAll([this]))[0] as Float32Array;
  }

  async toU32(): Promise<Uint32Array> {
    const [buf] = await this.gpu.read([{ buffer: this.buffer, size: this.bytes }]);
    return new Uint32Array(buf);
  }

  /** Zeroes the gradient of a parameter (drops it; the next backward allocates a fresh one). */
  zeroGrad() {
    this.grad?.dispose();
    this.grad = null;
  }
}

/** The storage type of a float tensor, for kernels (which take f32 or f16); `op` names the caller in the error. */
export function storageOf(t: Tensor, op: string): Storage {
  if (t.dtype === "u32") throw new Error(`${op}: [${t.shape}] holds u32 values, not floats`);
  return t.dtype;
}

/** Throws unless every tensor stores f32: ops without f16 kernels name themselves and the offending shape. */
export function f32Only(op: string, ...ts: Tensor[]) {
  for (const t of ts) {
    if (t.dtype === "f16") throw new Error(`${op}: [${t.shape}] is stored as f16; ${op} takes f32 tensors only`);
  }
}

/** Reads several f32 or f16 tensors (as f32 values) with one GPU round trip. */
export async function readAll(ts: Tensor[]): Promise<Float32Array[]> {
  if (!ts.length) return [];
  const bufs = await ts[0].gpu.read(ts.map((t) => ({ buffer: t.buffer, size: t.bytes })));
  return bufs.map((b, i) => ts[i].dtype === "f16" ? Float32Array.from(new Float16Array(b)) : new Float32Array(b));
}

/** Runs fn with gradient recording off. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    const r = fn();
    if (r instanceof Promise) {
      throw new Error("noGrad takes a synchronous function");
    }
    return r;
  } finally {
    gradEnabled = prev;
  }
}

/**
 * Registers out as produced from inputs; backward maps out's gradient to one gradient (or null) per input and reads
 * exactly the tensors in `saved` (inputs or the op's own temporaries, which the op then release()s).
 */
export function record(
  out: Tensor,
  inputs: Tensor[],
  backward: (grad: Tensor) => (Tensor | null)[],
  saved: Tensor[],
) {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return;
  if (out.dtype === "f16" || inputs.some((t) => t.dtype === "f16")) {
    throw new Error("f16 storage is for inference: run the forward under noGrad (its kernels have no backward)");
  }
  out.requiresGrad = true;
  out.node = { inputs, backward, saved };
  for (const t of saved) holds.set(t, (holds.get(t) ?? 0) + 1);
}

type Kept = Tensor | Tensor[] | Record<string, unknown> | unknown;

function collect(v: Kept, into: Set<Tensor>, depth = 0) {
  if (depth > 4 || v === null || typeof v !== "object") return;
  if (v instanceof Tensor) into.add(v);
  else if (Array.isArray(v)) { for (const x of v) collect(x, into, depth + 1); }
  else for (const x of Object.values(v as Record<string, unknown>)) collect(x, into, depth + 1);
}

/**
 * Runs fn; afterwards disposes every tensor created inside that is not part of the result (tensors found in the
 * returned value, arrays and plain objects up to 4 levels deep) and was not kept. Returned tensors move to the
 * enclosing scope.
 */
export function scope<T>(fn: () => T): T {
  const s = new Set<Tensor>();
  scopes.push(s);
  const end = (r: T) => {
    scopes.splice(scopes.lastIndexOf(s), 1);
    const keep = new Set<Tensor>();
    collect(r, keep);
    for (const t of s) if (!keep.has(t)) t.dispose();
    for (const t of keep) if (s.has(t)) scopes.at(-1)?.add(t);
    return r;
  };
  let r: T;
  try {
    r = fn();
  } catch (e) {
    end(undefined as T);
    throw e;
  }
  if (r instanceof Promise) {
    return r.then(end, (e) => {
      end(undefined as T);
      throw e;
    }) as T;
  }
  return end(r);
}

/**
 * Backpropagates from `root` (whose gradient is `seed`, or ones for a scalar). Leaves with requiresGrad receive their
 * gradient in `.grad` (accumulated when one is already there). Intermediate gradients are freed as soon as used.
 */
export function backward(root: Tensor, seed?: Tensor) {
  const g = root.gpu;
  if (!root.requiresGrad) throw new Error("backward: the tensor does not depend on anything that requires grad");
  if (!seed && root.size !== 1) throw new Error(`backward: a non-scalar root [${root.shape}] needs a seed gradient`);
  // Iterative post-order DFS for a topological order.
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    if (i === 0) {
      if (seen.has(t)) {
        stack.pop();
        continue;
      }
      seen.add(t);
      if (t.node === SPENT) {
        throw new Error(
          `backward: ${t.name || `[${t.shape}]`} belongs to a graph that was already backpropagated (its saved ` +
            "tensors are freed); run the forward again, or detach_() what is reused",
        );
      }
    }
    const ins = t.node?.inputs ?? [];
    if (i < ins.length) {
      top[1]++;
      if (ins[i].requiresGrad && !seen.has(ins[i])) stack.push([ins[i], 0]);
    } else {
      stack.pop();
      order.push(t);
    }
  }
  const grads = new Map<Tensor, Tensor>();
  grads.set(root, seed ?? Tensor.from(g, root.shape, [1]));
  const owned = new Set<Tensor>(seed ? [] : [grads.get(root)!]);
  // gt is always a fresh tensor of this pass (an op's new gradient, or a copy), so it is ours to dispose.
  const accumulate = (t: Tensor, gt: Tensor) => {
    const prev = grads.get(t);
    if (prev) {
      addInto(g, prev.buffer, gt.buffer, t.size);
      gt.dispose();
    } else {
      grads.set(t, gt);
      owned.add(gt);
    }
  };
  for (let j = order.length - 1; j >= 0; j--) {
    const t = order[j];
    const gt = grads.get(t);
    const node = t.node;
    if (node && gt) {
      const gins = node.backward(gt);
      node.inputs.forEach((inp, k) => {
        const gi = gins[k];
        if (!gi || !inp.requiresGrad) {
          if (gi && gi !== gt) gi.dispose();
          return;
        }
        if (
          gi.size !== inp.size || gi.shape.length !== inp.shape.length || gi.shape.some((d, q) => d !== inp.shape[q])
        ) {
          throw new Error(`backward: gradient [${gi.shape}] does not match its tensor [${inp.shape}] ${inp.name}`);
        }
        accumulate(inp, gi === gt ? gt.detach() : gi);
      });
      if (owned.has(gt)) gt.dispose();
      grads.delete(t);
    }
    if (node) {
      for (const s of node.saved) unhold(s);
      t.node = SPENT;
    } else if (gt) {
      // A leaf (parameter or input that requires grad).
      if (t.grad) {
        addInto(g, t.grad.buffer, gt.buffer, t.size);
        if (owned.has(gt)) gt.dispose();
      } else {
        t.grad = owned.has(gt) ? gt : gt.detach();
        t.grad.keep();
        t.grad.name = t.name ? `${t.name}.grad` : "";
      }
      grads.delete(t);
    }
  }
}
