// NIfTI-1 and NIfTI-2 images (.nii, .nii.gz) to and from arrays.
//
// Layout: voxel data in NIfTI's own order, x fastest (index = x + X * (y + Y * z) [+ X*Y*Z * t ...]).
// Reading: header fields through nifti-reader-js, either byte order, datatypes uint8/int8/int16/uint16/int32/uint32/
// float32/float64, scl_slope/scl_inter applied as nibabel does (slope 0 or not finite = unscaled; otherwise
// raw * slope + inter in float64). Data that float32 holds exactly (unscaled 8/16-bit integers and float32) comes
// back as Float32Array, everything else as Float64Array. `affine` is nibabel's best affine: sform when
// sform_code > 0, else qform when qform_code > 0, else the pixdim-scaled, centred, x-flipped base affine.
// Writing: little-endian NIfTI-1 (vox_offset 352, no extensions) carrying a source image's geometry, gzipped (no
// timestamp: identical images give identical bytes) when the name ends in .gz, via a temporary name and a rename.
import * as niftiReader from "nifti-reader-js";
import { gunzipSync, gzipSync } from "fflate";

/** What a written image needs to land in the same space as its source. */
export interface NiftiGeometry {
  /** pixdim[0..7]; pixdim[0] is qfac (0 read as 1). */
  pixdim: number[];
  qformCode: number;
  sformCode: number;
  /** quatern_b, quatern_c, quatern_d. */
  quatern: number[];
  /** qoffset_x, qoffset_y, qoffset_z. */
  qoffset: number[];
  /** srow_x, srow_y, srow_z (3 rows of 4). */
  srow: number[][];
  xyztUnits: number;
}

export interface NiftiHeader extends NiftiGeometry {
  version: 1 | 2;
  littleEndian: boolean;
  datatype: number;
  bitpix: number;
  /** dim[1..dim[0]]. */
  dims: number[];
  voxOffset: number;
  sclSlope: number;
  sclInter: number;
  description: string;
  extensions: { code: number; data: Uint8Array }[];
  /** 4x4 voxel-to-world matrix, rows. */
  affine: number[][];
}

export interface NiftiImage {
  header: NiftiHeader;
  data: Float32Array | Float64Array;
  /** The file's bytes before the voxel data (header, extender, extensions), decompressed. */
  rawHeader: Uint8Array;
}

interface DtypeInfo {
  name: string;
  size: number;
  get: (v: DataView, off: number, le: boolean) => number;
  /** Float32 holds every value exactly. */
  f32: boolean;
}

const DTYPES: Record<number, DtypeInfo> = {
  2: { name: "uint8", size: 1, get: (v, o) => v.getUint8(o), f32: true },
  4: { name: "int16", size: 2, get: (v, o, le) => v.getInt16(o, le), f32: true },
  8: { name: "int32", size: 4, get: (v, o, le) => v.getInt32(o, le), f32: false },
  16: { name: "float32", size: 4, get: (v, o, le) => v.getFloat32(o, le), f32: true },
  64: { name: "float64", size: 8, get: (v, o, le) => v.getFloat64(o, le), f32: false },
  256: { name: "int8", size: 1, get: (v, o) => v.getInt8(o), f32: true },
  512: { name: "uint16", size: 2, get: (v, o, le) => v.getUint16(o, le), f32: true },
  768: { name: "uint32", size: 4, get: (v, o, le) => v.getUint32(o, le), f32: false },
};

function isGzip(b: Uint8Array): boolean {
  return b.length > 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/** nibabel's qform: rotation from the quaternion (a >= 0), columns scaled by pixdim[1..3], the third by qfac. */
export function qformAffine(g: NiftiGeometry): number[][] {
  const [b, c, d] = g.quatern;
  const a = Math.sqrt(Math.max(0, 1 - (b * b + c * c + d * d)));
  const qfac = g.pixdim[0] < 0 ? -1 : 1;
  const R = [
    [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
    [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
  ];
  const s = [g.pixdim[1], g.pixdim[2], g.pixdim[3] * qfac];
  const m = R.map((row, i) => [...row.map((r, j) => r * s[j]), g.qoffset[i]]);
  return [...m, [0, 0, 0, 1]];
}

/** nibabel's best affine for a header with these dims. */
export function bestAffine(g: NiftiGeometry, dims: number[]): number[][] {
  if (g.sformCode > 0) return [...g.srow.map((r) => [...r]), [0, 0, 0, 1]];
  if (g.qformCode > 0) return qformAffine(g);
  // Analyze-style: voxel centre at the origin, x flipped.
  const z = [-g.pixdim[1], g.pixdim[2], g.pixdim[3]];
  const shape = [0, 1, 2].map((i) => dims[i] ?? 1);
  return [
    [z[0], 0, 0, -((shape[0] - 1) / 2) * z[0]],
    [0, z[1], 0, -((shape[1] - 1) / 2) * z[1]],
    [0, 0, z[2], -((shape[2] - 1) / 2) * z[2]],
    [0, 0, 0, 1],
  ];
}

/** The geometry fields alone (a plain, JSON-safe object). */
export function geometryOf(h: NiftiGeometry): NiftiGeometry {
  return {
    pixdim: [...h.pixdim],
    qformCode: h.qformCode,
    sformCode: h.sformCode,
    quatern: [...h.quatern],
    qoffset: [...h.qoffset],
    srow: h.srow.map((r) => [...r]),
    xyztUnits: h.xyztUnits,
  };
}

/** Parses a .nii (or gzipped .nii) file's bytes; `name` is used in error messages. */
export function parseNifti(fileBytes: Uint8Array, name = "<nifti>"): NiftiImage {
  let bytes: Uint8Array;
  try {
    bytes = isGzip(fileBytes) ? gunzipSync(fileBytes) : fileBytes;
  } catch (e) {
    throw new Error(`${name}: cannot decompress (${(e as Error).message})`);
  }
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  if (!niftiReader.isNIFTI(buf)) throw new Error(`${name}: not a NIfTI-1 or NIfTI-2 file (bad magic)`);
  const h = niftiReader.readHeader(buf);
  const version: 1 | 2 = h instanceof niftiReader.NIFTI2 ? 2 : 1;
  const le = h.littleEndian;
  const view = new DataView(buf);
  const info = DTYPES[h.datatypeCode];
  if (!info) throw new Error(`${name}: unsupported NIfTI datatype ${h.datatypeCode} (${h.numBitsPerVoxel} bits)`);
  const ndim = h.dims[0];
  if (!(ndim >= 1 && ndim <= 7)) throw new Error(`${name}: bad dim[0] ${ndim}`);
  const dims = h.dims.slice(1, 1 + ndim);
  if (dims.some((d) => !(d >= 1))) throw new Error(`${name}: bad dims [${dims}]`);
  const n = dims.reduce((a, b) => a * b, 1);
  const hdrSize = version === 1 ? 348 : 540;
  // Single files only (isNIFTI refuses .hdr/.img pairs); a vox_offset inside the header means the first free byte.
  const offset = Math.max(Number(h.vox_offset), hdrSize + 4);
  const nbytes = n * info.size;
  if (offset + nbytes > bytes.length) {
    throw new Error(
      `${name}: truncated: dims [${dims}] of ${info.name} need ${nbytes} bytes from offset ${offset}, file has ${
        bytes.length - offset
      }`,
    );
  }
  const srow = [0, 1, 2].map((r) =>
    [0, 1, 2, 3].map((c) =>
      version === 1 ? view.getFloat32(280 + (r * 4 + c) * 4, le) : view.getFloat64(400 + (r * 4 + c) * 8, le)
    )
  );
  const pixdim = h.pixDims.slice(0, 8);
  if (pixdim[0] === 0) pixdim[0] = 1;
  const slope = h.scl_slope, inter = h.scl_inter;
  const scaled = Number.isFinite(slope) && slope !== 0 && !(slope === 1 && inter === 0);
  if (scaled && !Number.isFinite(inter)) throw new Error(`${name}: scl_slope ${slope} with invalid scl_inter ${inter}`);
  const header: NiftiHeader = {
    version,
    littleEndian: le,
    datatype: h.datatypeCode,
    bitpix: h.numBitsPerVoxel,
    dims,
    pixdim,
    voxOffset: offset,
    sclSlope: slope,
    sclInter: inter,
    qformCode: h.qform_code,
    sformCode: h.sform_code,
    quatern: [h.quatern_b, h.quatern_c, h.quatern_d],
    qoffset: [h.qoffset_x, h.qoffset_y, h.qoffset_z],
    srow,
    xyztUnits: h.xyzt_units,
    description: h.description,
    extensions: h.extensions.map((e) => ({ code: e.ecode, data: new Uint8Array(e.edata) })),
    affine: [],
  };
  header.affine = bestAffine(header, dims);
  const data = scaled || !info.f32 ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0, o = offset; i < n; i++, o += info.size) data[i] = info.get(view, o, le);
  if (scaled) { for (let i = 0; i < n; i++) data[i] = data[i] * slope + inter; }
  return { header, data, rawHeader: bytes.slice(0, offset) };
}

export async function readNifti(path: string): Promise<NiftiImage> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  return parseNifti(bytes, path);
}

export type NiftiDtype = "uint8" | "int16" | "uint16" | "float32";

const WRITE: Record<NiftiDtype, { code: number; bits: number; lo: number; hi: number }> = {
  uint8: { code: 2, bits: 8, lo: 0, hi: 255 },
  int16: { code: 4, bits: 16, lo: -32768, hi: 32767 },
  uint16: { code: 512, bits: 16, lo: 0, hi: 65535 },
  float32: { code: 16, bits: 32, lo: -Infinity, hi: Infinity },
};

/**
 * Encodes an uncompressed little-endian NIfTI-1 file: `data` in x-fastest order with `dims`, in the space of
 * `geometry`. Integer dtypes take only integers in range; anything else is an error naming the voxel.
 */
export function encodeNifti(
  data: ArrayLike<number>,
  dims: number[],
  geometry: NiftiGeometry,
  dtype: NiftiDtype,
  description = "hadnet",
): Uint8Array {
  const n = dims.reduce((a, b) => a * b, 1);
  if (dims.length < 1 || dims.length > 7 || dims.some((d) => !Number.isInteger(d) || d < 1 || d > 32767)) {
    throw new Error(`encodeNifti: dims [${dims}] must be 1 to 7 integers in 1..32767`);
  }
  if (data.length !== n) throw new Error(`encodeNifti: dims [${dims}] hold ${n} voxels but data has ${data.length}`);
  const w = WRITE[dtype];
  const out = new Uint8Array(352 + n * (w.bits / 8));
  const v = new DataView(out.buffer);
  v.setInt32(0, 348, true);
  v.setInt16(40, dims.length, true);
  dims.forEach((d, i) => v.setInt16(42 + 2 * i, d, true));
  for (let i = dims.length; i < 7; i++) v.setInt16(42 + 2 * i, 1, true);
  v.setInt16(70, w.code, true);
  v.setInt16(72, w.bits, true);
  for (let i = 0; i < 8; i++) v.setFloat32(76 + 4 * i, geometry.pixdim[i] ?? (i === 0 ? 1 : 0), true);
  v.setFloat32(108, 352, true);
  v.setFloat32(112, 1, true); // scl_slope 1, scl_inter 0: values as stored
  out[123] = geometry.xyztUnits & 0xff;
  const desc = new TextEncoder().encode(description).subarray(0, 79);
  out.set(desc, 148);
  v.setInt16(252, geometry.qformCode, true);
  v.setInt16(254, geometry.sformCode, true);
  geometry.quatern.forEach((q, i) => v.setFloat32(256 + 4 * i, q, true));
  geometry.qoffset.forEach((q, i) => v.setFloat32(268 + 4 * i, q, true));
  geometry.srow.forEach((row, r) => row.forEach((x, c) => v.setFloat32(280 + (r * 4 + c) * 4, x, true)));
  out.set([0x6e, 0x2b, 0x31, 0], 344); // "n+1\0"
  for (let i = 0; i < n; i++) {
    const x = data[i];
    if (dtype !== "float32" && !(Number.isInteger(x) && x >= w.lo && x <= w.hi)) {
      throw new Error(`encodeNifti: voxel ${i} holds ${x}, which ${dtype} cannot store`);
    }
  }
  const body = out.subarray(352);
  if (dtype === "uint8") body.set(data);
  else if (dtype === "int16") new Int16Array(out.buffer, 352).set(data); // host order is little-endian (x86, ARM)
  else if (dtype === "uint16") new Uint16Array(out.buffer, 352).set(data);
  else new Float32Array(out.buffer, 352).set(data);
  return out;
}

/** Writes a NIfTI-1 file (gzipped when `path` ends in .gz) via a temporary name and a rename. */
export async function writeNifti(
  path: string,
  data: ArrayLike<number>,
  dims: number[],
  geometry: NiftiGeometry,
  dtype: NiftiDtype,
  description?: string,
): Promise<void> {
  const raw = encodeNifti(data, dims, geometry, dtype, description);
  // mtime 0: the gzip header carries no timestamp, so the same image always gives the same bytes.
  const bytes = path.endsWith(".gz") ? gzipSync(raw, { level: 6, mtime: 0 }) : raw;
  const tmp = `${path}.tmp-${Deno.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: cannot write (${(e as Error).message})`);
  }
}
