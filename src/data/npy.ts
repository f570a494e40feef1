// NumPy .npy arrays (format versions 1.0, 2.0, 3.0), C order only.
//
// Layout: "\x93NUMPY", major, minor, header length (u16 LE for 1.x, u32 LE for 2.x/3.x), then a Python dict literal
// {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with spaces and '\n', then the raw elements.
// Read values are native (little-endian) numbers whatever the file's byte order, and `dtype` is reported in its
// little-endian spelling ('<f4', '|u1', '|b1', '<U17', ...). int64/uint64 come back as Float64Array (exact up to
// 2^53; larger values are an error). '<U' arrays come back as string[] with trailing NULs removed.

export type TypedArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array;

export type Npy = { dtype: string; shape: number[]; data: TypedArray | string[] };

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

interface Kind {
  size: number;
  make: (n: number) => TypedArray;
  get: (v: DataView, off: number, le: boolean) => number;
  set: (v: DataView, off: number, x: number, le: boolean) => void;
}

const KINDS: Record<string, Kind> = {
  u1: { size: 1, make: (n) => new Uint8Array(n), get: (v, o) => v.getUint8(o), set: (v, o, x) => v.setUint8(o, x) },
  b1: { size: 1, make: (n) => new Uint8Array(n), get: (v, o) => v.getUint8(o), set: (v, o, x) => v.setUint8(o, x) },
  i1: { size: 1, make: (n) => new Int8Array(n), get: (v, o) => v.getInt8(o), set: (v, o, x) => v.setInt8(o, x) },
  u2: {
    size: 2,
    make: (n) => new Uint16Array(n),
    get: (v, o, le) => v.getUint16(o, le),
    set: (v, o, x, le) => v.setUint16(o, x, le),
  },
  i2: {
    size: 2,
    make: (n) => new Int16Array(n),
    get: (v, o, le) => v.getInt16(o, le),
    set: (v, o, x, le) => v.setInt16(o, x, le),
  },
  u4: {
    size: 4,
    make: (n) => new Uint32Array(n),
    get: (v, o, le) => v.getUint32(o, le),
    set: (v, o, x, le) => v.setUint32(o, x, le),
  },
  i4: {
    size: 4,
    make: (n) => new Int32Array(n),
    get: (v, o, le) => v.getInt32(o, le),
    set: (v, o, x, le) => v.setInt32(o, x, le),
  },
  i8: {
    size: 8,
    make: (n) => new Float64Array(n),
    get: (v, o, le) => Number(v.getBigInt64(o, le)),
    set: (v, o, x, le) => v.setBigInt64(o, BigInt(x), le),
  },
  u8: {
    size: 8,
    make: (n) => new Float64Array(n),
    get: (v, o, le) => Number(v.getBigUint64(o, le)),
    set: (v, o, x, le) => v.setBigUint64(o, BigInt(x), le),
  },
  f4: {
    size: 4,
    make: (n) => new Float32Array(n),
    get: (v, o, le) => v.getFloat32(o, le),
    set: (v, o, x, le) => v.setFloat32(o, x, le),
  },
  f8: {
    size: 8,
    make: (n) => new Float64Array(n),
    get: (v, o, le) => v.getFloat64(o, le),
    set: (v, o, x, le) => v.setFloat64(o, x, le),
  },
};

/** Splits a descr like '<f4', '>i8', '|b1', '<U17' into byte order, kind code and item count/size. */
function parseDescr(descr: string, name: string): { le: boolean; code: string; width: number } {
  if (/^[<>|=]?O\d*$/.test(descr)) {
    throw new Error(
      `${name}: .npy holds an object array (dtype '${descr}', pickled Python objects), which is not supported`,
    );
  }
  const m = /^([<>|=]?)([a-zA-Z])(\d+)$/.exec(descr);
  if (!m) throw new Error(`${name}: unsupported .npy dtype '${descr}' (structured or unknown)`);
  const [, order, letter, digits] = m;
  if (letter === "U") return { le: order !== ">", code: "U", width: Number(digits) };
  const code = letter + digits;
  if (!KINDS[code]) {
    throw new Error(
      `${name}: unsupported .npy dtype '${descr}' (supported: u1 i1 b1 u2 i2 u4 i4 i8 u8 f4 f8 and U strings)`,
    );
  }
  return { le: order !== ">", code, width: 1 };
}

function canonical(code: string, width: number): string {
  if (code === "U") return `<U${width}`;
  return (KINDS[code].size === 1 ? "|" : "<") + code;
}

/** Parses the fields numpy writes into the header dict literal. */
function parseHeader(text: string, name: string): { descr: string; fortran: boolean; shape: number[] } {
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(text);
  if (!descr) {
    const list = /['"]descr['"]\s*:\s*\[/.test(text);
    throw new Error(`${name}: ${list ? "structured .npy dtypes are not supported" : `bad .npy header ${text.trim()}`}`);
  }
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(text);
  const shape = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(text);
  if (!fortran || !shape) throw new Error(`${name}: bad .npy header ${text.trim()}`);
  const dims = shape[1].split(",").map((s) => s.trim().replace(/L$/, "")).filter((s) => s !== "");
  const out = dims.map(Number);
  if (out.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`${name}: bad .npy shape (${shape[1]})`);
  return { descr: descr[1], fortran: fortran[1] === "True", shape: out };
}

export function readNpy(bytes: Uint8Array, name = "<npy>"): Npy {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error(`${name}: not a .npy file`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number, start: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error(`${name}: truncated .npy header`);
    headerLen = view.getUint32(8, true);
    start = 12;
  } else {
    throw new Error(`${name}: unsupported .npy format version ${major}.${bytes[7]}`);
  }
  if (start + headerLen > bytes.length) throw new Error(`${name}: truncated .npy header`);
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + headerLen));
  const { descr, fortran, shape } = parseHeader(text, name);
  if (fortran) {
    throw new Error(`${name}: .npy is in Fortran order (fortran_order True); save it with np.ascontiguousarray`);
  }
  const { le, code, width } = parseDescr(descr, name);
  const n = shape.reduce((a, b) => a * b, 1);
  const dataStart = start + headerLen;
  const itemSize = code === "U" ? 4 * width : KINDS[code].size;
  const need = n * itemSize;
  if (bytes.length - dataStart < need) {
    throw new Error(
      `${name}: truncated .npy data: shape (${shape}) of ${descr} needs ${need} bytes, file has ${
        bytes.length - dataStart
      }`,
    );
  }
  const dtype = canonical(code, width);
  if (code === "U") {
    const data: string[] = new Array(n);
    const cps: number[] = [];
    for (let i = 0; i < n; i++) {
      cps.length = 0;
      for (let j = 0; j < width; j++) {
        const c = view.getUint32(dataStart + (i * width + j) * 4, le);
        if (c === 0) break; // numpy pads with NULs
        cps.push(c);
      }
      data[i] = String.fromCodePoint(...cps);
    }
    return { dtype, shape, data };
  }
  const kind = KINDS[code];
  const data = kind.make(n);
  const wide = code === "i8" || code === "u8"; // held as float64, so converted one by one
  if ((le || kind.size === 1) && !wide) {
    new Uint8Array(data.buffer).set(bytes.subarray(dataStart, dataStart + need));
  } else {
    for (let i = 0; i < n; i++) data[i] = kind.get(view, dataStart + i * kind.size, le);
  }
  if (wide) {
    for (let i = 0; i < n; i++) {
      if (!Number.isSafeInteger(data[i])) {
        throw new Error(`${name}: ${descr} value at index ${i} does not fit a JS number exactly`);
      }
    }
  }
  return { dtype, shape, data };
}

/**
 * Encodes a C-order array. `dtype` is a numpy descr ('<f4', '|u1', '|b1', '<i8', '<U17', ...); '<U' without a width
 * uses the longest string. Written little-endian, format 1.0 (2.0 when the header needs it), header padded to 64.
 */
export function writeNpy(arr: Npy): Uint8Array {
  const n = arr.shape.reduce((a, b) => a * b, 1);
  if (arr.data.length !== n) {
    throw new Error(`writeNpy: shape (${arr.shape}) holds ${n} elements but data has ${arr.data.length}`);
  }
  let code: string, width: number;
  if (/^[<>|=]?U$/.test(arr.dtype)) {
    code = "U";
    width = (arr.data as string[]).reduce((w, s) => Math.max(w, [...s].length), 1);
  } else {
    ({ code, width } = parseDescr(arr.dtype, "writeNpy"));
  }
  const isStr = code === "U";
  if (isStr !== Array.isArray(arr.data)) {
    throw new Error(`writeNpy: dtype ${arr.dtype} needs ${isStr ? "a string[]" : "a typed array"} of data`);
  }
  const dims = arr.shape.length === 1 ? `${arr.shape[0]},` : arr.shape.join(", ");
  let header = `{'descr': '${canonical(code, width)}', 'fortran_order': False, 'shape': (${dims}), }`;
  const v1 = header.length + 11 <= 65535;
  const pre = v1 ? 10 : 12;
  header = header.padEnd(Math.ceil((pre + header.length + 1) / 64) * 64 - pre - 1, " ") + "\n";
  const itemSize = isStr ? 4 * width : KINDS[code].size;
  const out = new Uint8Array(pre + header.length + n * itemSize);
  const view = new DataView(out.buffer);
  out.set(MAGIC);
  out[6] = v1 ? 1 : 2;
  if (v1) view.setUint16(8, header.length, true);
  else view.setUint32(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[pre + i] = header.charCodeAt(i);
  const at = pre + header.length;
  if (isStr) {
    (arr.data as string[]).forEach((s, i) => {
      const cps = [...s];
      if (cps.length > width) throw new Error(`writeNpy: string ${JSON.stringify(s)} longer than ${arr.dtype}`);
      cps.forEach((c, j) => view.setUint32(at + (i * width + j) * 4, c.codePointAt(0)!, true));
    });
  } else {
    const kind = KINDS[code];
    const data = arr.data as TypedArray;
    for (let i = 0; i < n; i++) kind.set(view, at + i * kind.size, data[i], true);
  }
  return out;
}

export async function loadNpy(path: string): Promise<Npy> {
  return readNpy(await Deno.readFile(path), path);
}

/** Writes to a temporary name beside `path`, then renames, so a reader never sees a half-written file. */
export async function saveNpy(path: string, arr: Npy): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, writeNpy(arr));
  await Deno.rename(tmp, path);
}
