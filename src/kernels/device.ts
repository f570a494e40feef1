// The GPU contract: the only module that touches navigator.gpu.
//
// A kernel is data (`Kernel`: a name, WGSL source, an optional cache key); `gpu.dispatch` binds buffer windows and a
// uniform block and records the dispatch into the step's single command encoder. Nothing is submitted until
// `flush()` (or a readback, or a pool trim) so a training step is one submit or a few. Storage buffers come from a
// size-bucketed pool: a disposed tensor's buffer is reused at once, never left to GC; when a new buffer must be made and
// the pool would hold more than 3x (RESERVE) the live bytes, free ones are destroyed first (after a submit), so sizes a
// past phase used do not pile up. (Between steps, freed buffers stay until the next new one is needed.) Readbacks are
// batched into one staging buffer and one mapAsync (each costs >= 10 ms: Deno resolves it on a poll, ~11 ms here and
// on the H100).
//
// Tensors larger than the adapter's max storage binding: kernels bind windows of a buffer (`Binding.offset/size`)
// and split their dispatches over channel planes (`planeChunks`). `setMaxBindingForTests` lowers the limit so the
// split path is tested on small tensors.

export interface Kernel {
  /** Pipeline label and cache key prefix, e.g. "conv3d_fwd". */
  name: string;
  /** Full WGSL module; entry point is `main`. */
  wgsl: string;
  /** Distinguishes variants of `name` (shapes baked in as constants, etc.); defaults to the WGSL text itself. */
  key?: string;
}

/** A window of a storage buffer. offset and size in bytes; offset must be a multiple of `gpu.offsetAlign`. */
export interface Binding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

export type Grid = [number, number, number];

export class NoAdapterError extends Error {}

/** Consulted for each compute pass while attached (src/kernels/profile.ts): a descriptor with timestamp writes. */
export interface PassTimer {
  pass(name: string): GPUComputePassDescriptor | undefined;
}

const STORAGE = 0x0080 | 0x0008 | 0x0004; // STORAGE | COPY_DST | COPY_SRC (constants so this loads without a GPU)
const UNIFORM = 0x0040 | 0x0008; // UNIFORM | COPY_DST
const MAP_READ = 0x0001 | 0x0008; // MAP_READ | COPY_DST

export class Gpu {
  readonly device: GPUDevice;
  readonly adapterName: string;
  readonly isFallback: boolean;
  readonly features: ReadonlySet<string>;
  readonly maxBuffer: number;
  readonly offsetAlign: number;
  readonly maxWorkgroupStorage: number;
  #maxWorkgroupsPerDim: number;
  readonly #adapterMaxWorkgroupsPerDim: number;
  #maxBinding: number;
  readonly #adapterMaxBinding: number;
  #encoder: GPUCommandEncoder | null = null;
  #pipelines = new Map<string, GPUComputePipeline>();
  #pool = new Map<number, GPUBuffer[]>();
  #uniformPool: GPUBuffer[] = [];
  #uniformsInFlight: GPUBuffer[] = [];
  #live = 0;
  #peak = 0;
  #reserved = 0; // bytes of every storage buffer the pool holds, live or free
  #reservedPeak = 0;
  #made = 0;
  dispatches = 0;
  /** Timestamp hook of the profiler; null when not profiling. */
  passTimer: PassTimer | null = null;

  /** The pool's bound: free buffers are trimmed to keep what it holds within this multiple of the live bytes. */
  readonly poolReserve = poolReserve();
  constructor(device: GPUDevice, adapterName: string, isFallback: boolean, features: ReadonlySet<string>) {
    this.device = device;
    this.adapterName = adapterName;
    this.isFallback = isFallback;
    this.features = features;
    const l = device.limits;
    this.maxBuffer = l.maxBufferSize;
    this.#maxBinding = this.#adapterMaxBinding = l.maxStorageBufferBindingSize;
    this.offsetAlign = l.minStorageBufferOffsetAlignment;
    this.maxWorkgroupStorage = l.maxComputeWorkgroupStorageSize;
    this.#maxWorkgroupsPerDim = this.#adapterMaxWorkgroupsPerDim = l.maxComputeWorkgroupsPerDimension;
  }

  /** Largest storage binding in bytes (the adapter's, or lower while a test forces the split path). */
  get maxBinding(): number {
    return this.#maxBinding;
  }

  /** Lowers the binding limit (bytes, a multiple of offsetAlign) to exercise split dispatches; null restores it. */
  setMaxBindingForTests(bytes: number | null) {
    if (bytes !== null && (bytes % this.offsetAlign || bytes <= 0 || bytes > this.#adapterMaxBinding)) {
      throw new Error(`setMaxBindingForTests: ${bytes} must be a positive multiple of ${this.offsetAlign}`);
    }
    this.#maxBinding = bytes ?? this.#adapterMaxBinding;
  }

  /** Workgroups per grid dimension (the adapter's, or lower while a test forces 2D grids at small sizes). */
  get maxWorkgroupsPerDim(): number {
    return this.#maxWorkgroupsPerDim;
  }

  /** Lowers the workgroups allowed per grid dimension; null restores the adapter's. */
  setMaxWorkgroupsPerDimForTests(n: number | null) {
    if (n !== null && !(Number.isInteger(n) && n >= 1 && n <= this.#adapterMaxWorkgroupsPerDim)) {
      throw new Error(
        `setMaxWorkgroupsPerDimForTests: ${n} must be an integer in 1..${this.#adapterMaxWorkgroupsPerDim}`,
      );
    }
    this.#maxWorkgroupsPerDim = n ?? this.#adapterMaxWorkgroupsPerDim;
  }

  /**
   * Bytes held by live (not pooled) storage buffers and their peak since the last reset (PyTorch's allocated), bytes
   * of all the pool's storage buffers, live or free (what the device holds; PyTorch's reserved), and their peak, and
   * the storage buffers made so far.
   */
  memory(): { live: number; peak: number; reserved: number; reservedPeak: number; made: number } {
    const [live, peak, reserved, reservedPeak] = [this.#live, this.#peak, this.#reserved, this.#reservedPeak];
    return { live, peak, reserved, reservedPeak, made: this.#made };
  }
  resetPeak() {
    this.#peak = this.#live;
    this.#reservedPeak = this.#reserved;
  }

  pipeline(k: Kernel): GPUComputePipeline {
    const key = `${k.name}|${k.key ?? k.wgsl}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ label: k.name, code: k.wgsl });
      p = this.device.createComputePipeline({ label: k.name, layout: "auto", compute: { module, entryPoint: "main" } });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  /** A storage buffer of at least `bytes` (rounded up to a size bucket), from the pool when possible. */
  alloc(bytes: number): GPUBuffer {
    const size = bucket(Math.max(bytes, 16));
    if (size > this.maxBuffer) {
      throw new Error(`a tensor of ${bytes} bytes exceeds this adapter's largest buffer (${this.maxBuffer} bytes)`);
    }
    let buf = this.#pool.get(size)?.pop();
    if (!buf) {
      // Free buffers of other sizes (an earlier phase's) would pile up: past poolReserve x what is live, the largest
      // go back to the driver first.
      const over = this.#reserved + size - this.poolReserve * (this.#live + size);
      if (over > 0) this.#trim(over);
      buf = this.device.createBuffer({ size, usage: STORAGE });
      this.#made++;
      this.#reserved += size;
      this.#reservedPeak = Math.max(this.#reservedPeak, this.#reserved);
    }
    this.#live += size;
    this.#peak = Math.max(this.#peak, this.#live);
    return buf;
  }

  /**
   * Destroys free pooled buffers, largest first, until `bytes` are released or none is left. Submits first: the
   * commands recorded so far may still use them (destroying a buffer that submitted work uses is allowed).
   */
  #trim(bytes: number) {
    const sizes = [...this.#pool.keys()].filter((s) => this.#pool.get(s)!.length).sort((a, b) => b - a);
    if (!sizes.length) return;
    this.flush();
    for (const s of sizes) {
      const list = this.#pool.get(s)!;
      while (list.length && bytes > 0) {
        list.pop()!.destroy();
        this.#reserved -= s;
        bytes -= s;
      }
    }
  }

  /** Returns a buffer to the pool. Safe mid-step: later dispatches in the same encoder run after earlier ones. */
  free(buf: GPUBuffer) {
    this.#live -= buf.size;
    const list = this.#pool.get(buf.size) ?? [];
    list.push(buf);
    this.#pool.set(buf.size, list);
  }

  /** Uploads data into a buffer. Flushes pending work first: queue writes run before the encoder's commands. */
  write(buf: GPUBuffer, data: ArrayBufferView, byteOffset = 0) {
    if (this.#encoder) this.flush();
    this.device.queue.writeBuffer(buf, byteOffset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  }

  /** Fills a buffer range with zeros (recorded in order with dispatches). size: bytes, multiple of 4. */
  zero(buf: GPUBuffer, offset = 0, size = buf.size - offset) {
    this.#enc().clearBuffer(buf, offset, size);
  }

  /** Copies bytes between buffers, in order with dispatches. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number) {
    this.#enc().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  /**
   * Records one dispatch. Bindings are 0..n-1 in order; when `uniforms` is given it is bound last, at binding n, as a
   * uniform block (pad the array to 16 bytes; pass u32/i32/f32 through a Uint32Array or an ArrayBuffer).
   */
  dispatch(k: Kernel, bindings: Binding[], uniforms: ArrayBuffer | ArrayBufferView | null, grid: Grid) {
    for (const g of grid) {
      if (!(g >= 1 && g <= this.maxWorkgroupsPerDim && Number.isInteger(g))) {
        throw new Error(`${k.name}: dispatch grid [${grid}] outside 1..${this.maxWorkgroupsPerDim} per dimension`);
      }
    }
    const pipe = this.pipeline(k);
    const entries: GPUBindGroupEntry[] = bindings.map((b, i) => {
      const offset = b.offset ?? 0;
      const size = b.size ?? b.buffer.size - offset;
      if (offset % this.offsetAlign) throw new Error(`${k.name}: binding ${i} offset ${offset} is not aligned`);
      if (size > this.#maxBinding) {
        throw new Error(`${k.name}: binding ${i} of ${size} bytes exceeds the max storage binding ${this.#maxBinding}`);
      }
      return { binding: i, resource: { buffer: b.buffer, offset, size } };
    });
    if (uniforms) {
      const bytes = ArrayBuffer.isView(uniforms)
        ? new Uint8Array(uniforms.buffer, uniforms.byteOffset, uniforms.byteLength)
        : new Uint8Array(uniforms);
      const ub = this.#uniformPool.pop() ?? this.device.createBuffer({ size: 256, usage: UNIFORM });
      if (bytes.byteLength > 256) throw new Error(`${k.name}: uniform block over 256 bytes`);
      // Written at once; each in-flight dispatch has its own uniform buffer until the next submit.
      this.device.queue.writeBuffer(ub, 0, bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength);
      this.#uniformsInFlight.push(ub);
      entries.push({ binding: bindings.length, resource: { buffer: ub } });
    }
    const bg = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
    const pass = this.#enc().beginComputePass(this.passTimer?.pass(k.name));
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    pass.end();
    this.dispatches++;
  }

  /** Submits everything recorded so far. */
  flush() {
    if (!this.#encoder) return;
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    this.#uniformPool.push(...this.#uniformsInFlight);
    this.#uniformsInFlight = [];
  }

  /** Reads several buffer windows back with one submit and one mapAsync. */
  async read(windows: { buffer: GPUBuffer; offset?: number; size: number }[]): Promise<ArrayBuffer[]> {
    const offs: number[] = [];
    let total = 0;
    for (const w of windows) {
      offs.push(total);
      total += Math.ceil(w.size / 8) * 8;
    }
    const staging = this.device.createBuffer({ size: Math.max(total, 8), usage: MAP_READ });
    const enc = this.#enc();
    // Copies are whole 4-byte words (an odd count of f16 values reads 2 bytes more, inside the pooled buffer).
    windows.forEach((w, i) =>
      enc.copyBufferToBuffer(w.buffer, w.offset ?? 0, staging, offs[i], Math.ceil(w.size / 4) * 4)
    );
    this.flush();
    await staging.mapAsync(1 /* GPUMapMode.READ */);
    const mapped = staging.getMappedRange();
    const out = windows.map((w, i) => mapped.slice(offs[i], offs[i] + w.size));
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Waits until the GPU has finished all submitted work. */
  async sync() {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
  }

  #enc(): GPUCommandEncoder {
    return this.#encoder ??= this.device.createCommandEncoder();
  }
}

/**
 * Before making a new buffer, the pool trims its free buffers, largest first, to at most this multiple of the live
 * bytes (Gpu.alloc); HADNET_POOL_RESERVE sets it (a number >= 1). Making buffers is what costs: on an H100 (160x192x160,
 * k=32, tuned kernels) a HAD-Net step that made 68 buffers took 1500 ms at 1.5, and 1006 ms making 8 at 3 (a
 * pre-training step 387 against 327 ms). On the null device with channels-last kernels a HAD-Net step holds 12.25 GiB
 * and makes 50 buffers (14.6 GiB) a step at 1.5, 13.11 GiB and none at 3, around 11.0 GiB live; the gather kernels'
 * phases differ more (19.3 GiB at 3), as without a bound.
 */
const RESERVE = 3;

/** The pool's bound (RESERVE), or HADNET_POOL_RESERVE's. */
export function poolReserve(): number {
  const v = Deno.env.get("HADNET_POOL_RESERVE");
  if (v === undefined) return RESERVE;
  const r = Number(v);
  if (!(r >= 1) || !Number.isFinite(r)) throw new Error(`HADNET_POOL_RESERVE must be a number >= 1, got "${v}"`);
  return r;
}

/** Pool bucket: exact multiples of 256 B up to 1 MiB, then steps of 1/8 of the next power of two. */
function bucket(bytes: number): number {
  if (bytes <= 1 << 20) return Math.ceil(bytes / 256) * 256;
  const step = 2 ** Math.ceil(Math.log2(bytes)) / 8;
  return Math.ceil(bytes / step) * step;
}

let current: Promise<Gpu> | null = null;

/** The process-wide GPU: the high-performance adapter with its own limits requested. */
export function gpu(): Promise<Gpu> {
  return current ??= open();
}

/**
 * Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" twice on headless Linux (containers, CI), which
 * would break hadnet's one-line errors. hadnet never presents to a window, so a private directory will do.
 */
function quietVulkanLoader() {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/hadnet-runtime-${Deno.uid() ?? "user"}`;
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  Deno.env.set("XDG_RUNTIME_DIR", dir);
}

async function open(): Promise<Gpu> {
  quietVulkanLoader();
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  const adapter = nav?.gpu ? await nav.gpu.requestAdapter({ powerPreference: "high-performance" }) : null;
  if (!adapter) {
    throw new NoAdapterError(
      "no WebGPU adapter found: install a GPU driver with Vulkan support, or Mesa's software drivers " +
        "(Debian: apt-get install mesa-vulkan-drivers libgl1-mesa-dri libegl1)",
    );
  }
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: (["shader-f16", "timestamp-query"] as const).filter((f) => adapter.features.has(f)),
    requiredLimits: {
      maxBufferSize: l.maxBufferSize,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    },
  });
  device.addEventListener("uncapturederror", (e) => {
    console.error(`WebGPU error: ${(e as GPUUncapturedErrorEvent).error.message}`);
  });
  const info = adapter.info;
  return new Gpu(
    device,
    info.description || info.vendor || "unknown adapter",
    info.isFallbackAdapter ?? false,
    new Set(adapter.features),
  );
}

/**
 * Splits `planes` consecutive planes of `planeElems` f32 values (starting at plane 0 of a buffer) into chunks that
 * each fit one storage binding. Each chunk binds from an aligned byte offset; `shift` is the element offset of the
 * chunk's first plane inside that window (pass it to the kernel).
 */
export function planeChunks(
  g: Gpu,
  planes: number,
  planeElems: number,
  elemBytes = 4,
): { first: number; count: number; offset: number; shift: number; size: number }[] {
  const planeBytes = planeElems * elemBytes;
  const usable = g.maxBinding - g.offsetAlign; // room for the alignment shift
  const per = Math.floor(usable / planeBytes);
  if (per < 1) {
    throw new Error(
      `one channel of ${planeBytes} bytes (its plane, or the weights bound with it) exceeds the max storage binding ` +
        `(${g.maxBinding})`,
    );
  }
  const out = [];
  for (let first = 0; first < planes; first += per) {
    const count = Math.min(per, planes - first);
    out.push({ first, count, ...bindingWindow(g, first * planeElems, count * planeElems, elemBytes) });
  }
  return out;
}

/**
 * The binding window over elements [start, start + count) of a buffer of `elemBytes`-byte elements: it starts at the
 * aligned byte `offset` below, `shift` elements before the range, and its size is whole 4-byte words.
 */
export function bindingWindow(g: Gpu, start: number, count: number, elemBytes = 4) {
  const offset = Math.floor((start * elemBytes) / g.offsetAlign) * g.offsetAlign;
  const shift = start - offset / elemBytes;
  return { offset, shift, size: Math.ceil(((shift + count) * elemBytes) / 4) * 4 };
}

/** Element types of activation storage: f16 needs the adapter's shader-f16 feature (arithmetic stays f32). */
export type Storage = "f32" | "f16";
export const STORAGE_BYTES: Record<Storage, number> = { f32: 4, f16: 2 };
/** A convolution's source and result storage: f32 unless an inference forward stores f16. */
export type StoragePair = [x: Storage, y: Storage];
export const F32_PAIR: StoragePair = ["f32", "f32"];

/** Bytes of n values stored as t, rounded up to whole 4-byte words (as bindings and allocations take them). */
export function wordBytes(n: number, t: Storage): number {
  return Math.ceil((n * STORAGE_BYTES[t]) / 4) * 4;
}

/**
 * WGSL filling the lanes of the vec4 variable `v`: lane q, where its `[condition, value]` holds. Kernels build whole
 * vectors this way before one write to workgroup memory: WGSL lets a write to one component of a vector in memory
 * rewrite the whole vector, so threads writing their own components of one vec4 would race.
 */
export function vec4Lanes(v: string, lane: (q: number) => [string, string]): string {
  return [0, 1, 2, 3].map((q) => {
    const [ok, value] = lane(q);
    return `if (${ok}) { ${v}.${"xyzw"[q]} = ${value}; }`;
  }).join("\n");
}

/**
 * WGSL storing the f32 expression `e` as type t. f16 saturates at its largest finite value, 65504: an overflow
 * becomes a large number, never an infinity that would turn into NaN downstream.
 */
export function toStorage(t: Storage, e: string): string {
  return t === "f16" ? `f16(clamp(${e}, -65504.0, 65504.0))` : `f32(${e})`;
}

/** The WGSL module prefix for these storage types: `enable f16;` when any is f16. */
export function enables(...types: Storage[]): string {
  return types.includes("f16") ? "enable f16;\n" : "";
}

/**
 * Windows of at most one binding over a flat range of n elements (elementwise kernels, reductions, Adam). Unlike
 * planeChunks, windows start at multiples of 128 elements, so every operand's window starts 256-byte aligned (the
 * largest offset alignment WebGPU allows) whether it stores f32 or f16, and needs no shift. `window` gives an
 * operand's binding for a chunk.
 */
export function flatChunks(g: Gpu, n: number) {
  const per = Math.floor(g.maxBinding / 512) * 128;
  const out = [];
  for (let first = 0; first < n; first += per) {
    const count = Math.min(per, n - first);
    const window = (elemBytes = 4) => ({ offset: first * elemBytes, size: Math.ceil((count * elemBytes) / 256) * 256 });
    out.push({ first, count, ...window(), window });
  }
  return out;
}

/** A 2D grid covering `n` workgroups (x <= maxWorkgroupsPerDim). Kernels index wg.x + wg.y * gridX. */
export function grid1d(g: Gpu, n: number): Grid {
  const x = Math.min(Math.max(n, 1), g.maxWorkgroupsPerDim);
  return [x, Math.ceil(Math.max(n, 1) / x), 1];
}
