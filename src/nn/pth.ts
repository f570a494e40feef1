// Import of PyTorch state dicts written by torch.save (the zip format, PyTorch >= 1.6).
//
// The zip holds <root>/data.pkl (the pickled dict), <root>/data/<key> (one raw storage per key) and, since about
// PyTorch 2.0, <root>/byteorder ("little" or "big"; absent means little). <root> is "archive" or the file's stem,
// depending on the version. In data.pkl each tensor is the call
//   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)
// whose storage is a persistent id ('storage', torch.<Type>Storage, key, location, numel). Tensors are read as
// views of their storage (offset and strides honoured, so transposed or shared storages work) and copied out as
// contiguous float32. Float, double, half, bfloat16 and integer/bool storages are converted; others are an error.

import { unzipSync } from "fflate";
import { NameRegistry, Parser } from "pickleparser";
import { decodeF32, DTYPE_SIZES, type Weights } from "./safetensors.ts";

const STORAGE_DTYPES: Record<string, string> = {
  FloatStorage: "F32",
  DoubleStorage: "F64",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

class StorageType {
  constructor(readonly name: string) {}
}

class StorageRef {
  constructor(readonly type: StorageType, readonly key: string) {}
}

/** A tensor as data.pkl describes it, materialised after parsing so that errors can name its key. */
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** Copies the strided view (offset, shape, stride) of `src` into a contiguous array. */
function gather(src: Float32Array, offset: number, shape: number[], stride: number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  let contiguous = true;
  for (let d = shape.length - 1, s = 1; d >= 0; s *= shape[d--]) {
    if (shape[d] > 1 && stride[d] !== s) contiguous = false;
  }
  if (contiguous) return src.slice(offset, offset + n);
  const out = new Float32Array(n);
  const idx = new Array(shape.length).fill(0);
  let pos = offset;
  for (let i = 0; i < n; i++) {
    out[i] = src[pos];
    for (let d = shape.length - 1; d >= 0; d--) {
      pos += stride[d];
      if (++idx[d] < shape[d]) break;
      pos -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

function isTensorDict(v: unknown): v is Map<unknown, unknown> {
  return v instanceof Map && [...v.values()].some((x) => x instanceof TensorRef);
}

/** Reads the tensors of a state dict saved with torch.save; non-tensor entries are skipped. */
export function readPth(bytes: Uint8Array, name = "<pth>"): Weights {
  const fail = (why: string): never => {
    throw new Error(`${name}: ${why}`);
  };
  if (bytes[0] === 0x80) {
    fail(
      "legacy (pre-1.6, non-zip) PyTorch format; re-save it with torch.save(torch.load(path), path) in PyTorch >= 1.6",
    );
  }
  if (!(bytes[0] === 0x50 && bytes[1] === 0x4b)) fail("not a PyTorch checkpoint (not a zip archive)");
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes);
  } catch (e) {
    return fail(`not a readable PyTorch checkpoint (zip: ${(e as Error).message})`);
  }
  const pkl = Object.keys(files).find((f) => /^[^/]+\/data\.pkl$/.test(f));
  if (!pkl) {
    const names = Object.keys(files);
    const script = names.some((f) => /^[^/]+\/constants\.pkl$/.test(f));
    fail(
      script
        ? "a TorchScript archive (torch.jit.save), not a state dict; save model.state_dict() with torch.save"
        : `no <root>/data.pkl in the zip (entries: ${names.slice(0, 8).join(", ")})`,
    );
  }
  const root = pkl!.slice(0, -"data.pkl".length);
  const order = files[`${root}byteorder`] ? new TextDecoder().decode(files[`${root}byteorder`]).trim() : "little";
  if (order !== "little" && order !== "big") fail(`unknown byteorder record ${JSON.stringify(order)}`);

  const generic = new NameRegistry();
  const parser = new Parser({
    unpicklingTypeOfDictionary: "Map",
    nameResolver: {
      resolve: (module: string, cls: string): any => {
        const fqn = `${module}.${cls}`;
        if (fqn === "collections.OrderedDict") return () => new Map();
        if (fqn === "torch._utils._rebuild_tensor_v2") {
          return (s: unknown, offset: number, shape: number[], stride: number[]) => {
            if (!(s instanceof StorageRef)) throw new Error("a tensor whose storage is not a persistent storage id");
            const ints = (a: unknown) => Array.isArray(a) && a.every((d) => Number.isInteger(d) && d >= 0);
            if (!Number.isInteger(offset) || !ints(shape) || !ints(stride) || shape.length !== stride.length) {
              throw new Error(`malformed tensor: offset ${offset}, size ${shape}, stride ${stride}`);
            }
            return new TensorRef(s, offset, shape, stride);
          };
        }
        if (fqn === "torch._utils._rebuild_parameter" || fqn === "torch._utils._rebuild_parameter_with_state") {
          return (t: unknown) => t;
        }
        if (module === "torch" && cls.endsWith("Storage")) return new StorageType(cls);
        // Anything else (optimizer state, argparse namespaces, ...) becomes pickleparser's inert generic object.
        return generic.onMissingName(module, cls);
      },
    },
    persistentResolver: {
      resolve: (pid: any) => {
        if (!Array.isArray(pid) || pid[0] !== "storage" || !(pid[1] instanceof StorageType)) {
          throw new Error(`unsupported persistent id ${JSON.stringify(pid)}`);
        }
        return new StorageRef(pid[1], String(pid[2]));
      },
    },
  });
  let obj: unknown;
  try {
    obj = parser.parse(files[pkl!]);
  } catch (e) {
    return fail(`cannot read ${pkl} (${(e as Error).message})`);
  }
  // A checkpoint dict such as {epoch, state_dict} with exactly one dict of tensors inside: take that one.
  if (obj instanceof Map && !isTensorDict(obj)) {
    const inner = [...obj.values()].filter(isTensorDict);
    if (inner.length === 1) obj = inner[0];
  }
  if (!isTensorDict(obj)) {
    fail(`${pkl} holds no dict of tensors (a whole pickled model? save model.state_dict() instead)`);
  }

  const storages = new Map<string, Float32Array>();
  const load = (ref: StorageRef, key: string): Float32Array => {
    const cached = storages.get(ref.key);
    if (cached) return cached;
    const dtype = STORAGE_DTYPES[ref.type.name];
    if (!Object.hasOwn(STORAGE_DTYPES, ref.type.name)) {
      fail(`tensor ${key}: unsupported storage torch.${ref.type.name}`);
    }
    const raw = files[`${root}data/${ref.key}`];
    if (!raw) fail(`tensor ${key}: storage ${root}data/${ref.key} is missing from the zip`);
    const size = DTYPE_SIZES[dtype];
    if (raw.length % size) fail(`tensor ${key}: storage ${ref.key} has ${raw.length} bytes, not a multiple of ${size}`);
    let le = raw;
    if (order === "big" && size > 1) {
      le = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i += size) for (let j = 0; j < size; j++) le[i + j] = raw[i + size - 1 - j];
    }
    const data = decodeF32(dtype, le, raw.length / size);
    storages.set(ref.key, data);
    return data;
  };
  const out: Weights = new Map();
  for (const [k, v] of obj as Map<unknown, unknown>) {
    if (!(v instanceof TensorRef)) continue;
    const key = String(k);
    const src = load(v.storage, key);
    const { offset, shape, stride } = v;
    const last = shape.reduce((p, d, i) => p + (d - 1) * stride[i], offset);
    if (shape.every((d) => d > 0) && last >= src.length) {
      fail(
        `tensor ${key}: size [${shape}] stride [${stride}] offset ${offset} reaches past its storage of ${src.length}`,
      );
    }
    out.set(key, { shape: [...shape], data: gather(src, offset, shape, stride) });
  }
  return out;
}
