// safetensors: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, ...,
// "__metadata__": {string: string}}, then the tensor bytes (offsets relative to the end of the header), little-endian,
// row-major. hadnet writes F32 only; it reads F32, F16, BF16, F64, I64, I32, I16, I8, U8 and BOOL, converting to
// float32. Metadata carries hadnet's own fields (k, sequences, classes, kind, ...) as strings.

export type Weights = Map<string, { shape: number[]; data: Float32Array }>;

/** Bytes per element of each dtype readable as float32 (also used for PyTorch storages, see pth.ts). */
export const DTYPE_SIZES: Record<string, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  F64: 8,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

function half(h: number): number {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Converts `n` little-endian elements of `dtype` (a DTYPE_SIZES key) to float32. */
export function decodeF32(dtype: string, b: Uint8Array, n: number): Float32Array {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = new Float32Array(n);
  switch (dtype) {
    case "F32":
      new Uint8Array(out.buffer).set(b);
      break;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = half(v.getUint16(2 * i, true));
      break;
    case "BF16": {
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = v.getUint16(2 * i, true) << 16;
      break;
    }
    case "F64":
      for (let i = 0; i < n; i++) out[i] = v.getFloat64(8 * i, true);
      break;
    case "I64":
      for (let i = 0; i < n; i++) out[i] = Number(v.getBigInt64(8 * i, true));
      break;
    case "I32":
      for (let i = 0; i < n; i++) out[i] = v.getInt32(4 * i, true);
      break;
    case "I16":
      for (let i = 0; i < n; i++) out[i] = v.getInt16(2 * i, true);
      break;
    case "I8":
      for (let i = 0; i < n; i++) out[i] = v.getInt8(i);
      break;
    default: // U8, BOOL
      out.set(b);
  }
  return out;
}

export function readSafetensors(
  bytes: Uint8Array,
  name = "<safetensors>",
): { tensors: Weights; metadata: Record<string, string> } {
  const fail = (why: string): never => {
    throw new Error(`${name}: not a valid safetensors file: ${why}`);
  };
  if (bytes.length < 8) fail(`${bytes.length} bytes, shorter than the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > bytes.length - 8) fail(`header length ${n} exceeds the ${bytes.length - 8} bytes after it`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    return fail(`header is not JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) fail("header is not a JSON object");
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const tensors: Weights = new Map();
  const spans: [number, number, string][] = [];
  for (const [key, entry] of Object.entries(header)) {
    if (key === "__metadata__") {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) fail("__metadata__ is not an object");
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`metadata value ${k} is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const { dtype, shape, data_offsets: offs } = (entry ?? {}) as Record<string, any>;
    const size = Object.hasOwn(DTYPE_SIZES, dtype) ? DTYPE_SIZES[dtype] : 0;
    if (!size) fail(`tensor ${key} has unsupported dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
      fail(`tensor ${key} has bad shape ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || offs.some((o) => !Number.isInteger(o) || o < 0)) {
      fail(`tensor ${key} has bad data_offsets ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as number[];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end < begin || end > data.length) {
      fail(`tensor ${key} data_offsets [${begin}, ${end}] fall outside the ${data.length} data bytes`);
    }
    if (end - begin !== count * size) {
      fail(
        `tensor ${key} ${dtype}[${shape}] needs ${count * size} bytes but data_offsets [${begin}, ${end}] span ${
          end - begin
        }`,
      );
    }
    spans.push([begin, end, key]);
    tensors.set(key, { shape: [...shape], data: decodeF32(dtype, data.subarray(begin, end), count) });
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) fail(`tensors ${spans[i - 1][2]} and ${spans[i][2]} overlap`);
  }
  return { tensors, metadata };
}

/** Encodes float32 tensors in the map's order; the header is padded with spaces to a multiple of 8 bytes. */
export function writeSafetensors(tensors: Weights, metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [key, t] of tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new Error(
        `writeSafetensors: tensor ${key} shape [${t.shape}] holds ${count} values but has ${t.data.length}`,
      );
    }
    header[key] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + 4 * count] };
    offset += 4 * count;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of tensors.values()) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

export async function loadSafetensors(path: string): Promise<{ tensors: Weights; metadata: Record<string, string> }> {
  return readSafetensors(await Deno.readFile(path), path);
}

/** Writes to a temporary name beside `path`, then renames, so a reader never sees a half-written checkpoint. */
export async function saveSafetensors(path: string, tensors: Weights, metadata: Record<string, string> = {}) {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, writeSafetensors(tensors, metadata));
  await Deno.rename(tmp, path);
}
