// Shared test helpers: the GPU (a test that needs an adapter fails when none is found), seeded data, comparisons,
// float64 central finite differences, and a Python runner for numpy/nibabel oracles.
import { CL_SPLIT } from "../src/kernels/conv3d_cl.ts";
import { type ConvKernels, setConvKernels } from "../src/kernels/conv_select.ts";
import { type Gpu, gpu, type Grid } from "../src/kernels/device.ts";
import { relErr } from "../src/train/parity.ts";

export function testGpu(): Promise<Gpu> {
  return gpu();
}

/** The GPU, which must offer shader-f16 (f16 storage tests fail without it, naming what to install). */
export async function testGpuF16(): Promise<Gpu> {
  const g = await gpu();
  if (!g.features.has("shader-f16")) {
    throw new Error(
      `${g.adapterName} has no shader-f16: f16 storage needs it (Debian: apt-get install mesa-vulkan-drivers gives ` +
        "lavapipe, which has it)",
    );
  }
  return g;
}

/**
 * Runs f with each of these CL_SPLIT settings (src/kernels/conv3d_cl.ts), then restores the shipped ones. By default
 * 512 workgroups wanted per dispatch and splits as short as 16 channels x 1 tap (small test volumes make one or a few
 * voxel tiles, so several blocks per dispatch and up to one tap per split), then 1 wanted (a block per dispatch, no
 * split).
 */
export async function withSplit(
  f: () => void | Promise<void>,
  settings = [{ workgroups: 512, minK: 16 }, { workgroups: 1, minK: 16 }],
) {
  const saved = { ...CL_SPLIT };
  try {
    for (const t of settings) {
      Object.assign(CL_SPLIT, t);
      await f();
    }
  } finally {
    Object.assign(CL_SPLIT, saved);
  }
}

/** Runs f and returns the kernels it dispatched on g, each with its grid. */
export async function recordDispatches(g: Gpu, f: () => Promise<void>): Promise<{ name: string; grid: Grid }[]> {
  const out: { name: string; grid: Grid }[] = [], dispatch = g.dispatch.bind(g);
  g.dispatch = (k, bindings, uniforms, grid) => {
    out.push({ name: k.name, grid });
    return dispatch(k, bindings, uniforms, grid);
  };
  try {
    await f();
  } finally {
    Reflect.deleteProperty(g, "dispatch");
  }
  return out;
}

/** Runs f with g's convolutions picked by `kernels` (then the default, auto); returns the kernels it dispatched. */
export async function dispatchedWith(g: Gpu, kernels: ConvKernels, f: () => Promise<void>): Promise<string[]> {
  setConvKernels(g, kernels);
  try {
    return (await recordDispatches(g, f)).map((d) => d.name);
  } finally {
    setConvKernels(g, "auto");
  }
}

/** Deterministic pseudo-random numbers in [-1, 1) (mulberry32). */
export function rand(n: number, seed = 1): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

/** Throws unless got matches want within tol, relative to max |want| (the parity check's measure, relErr). */
export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what = "values") {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} values, expected ${want.length}`);
  const e = relErr(got, want);
  if (!(e <= tol)) throw new Error(`${what}: max relative error ${e.toExponential(3)} exceeds ${tol}`);
}

/**
 * Gradient of sum(f(x) * w) with respect to x by float64 central differences, where f maps a float64 input to a
 * float64 output; w weights the outputs (a fixed random "upstream gradient").
 */
export function finiteDiff(
  f: (x: Float64Array) => ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  h = 1e-6,
): Float64Array {
  const xv = Float64Array.from(x);
  const grad = new Float64Array(xv.length);
  const dot = (y: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * w[i];
    return s;
  };
  for (let i = 0; i < xv.length; i++) {
    const v = xv[i];
    xv[i] = v + h;
    const up = dot(f(xv));
    xv[i] = v - h;
    const dn = dot(f(xv));
    xv[i] = v;
    grad[i] = (up - dn) / (2 * h);
  }
  return grad;
}

/** Debian's python3 (numpy, nibabel, torch); the `python3` on PATH where that is absent. */
export const PYTHON = (() => {
  try {
    Deno.statSync("/usr/bin/python3");
    return "/usr/bin/python3";
  } catch {
    return "python3";
  }
})();

/** Runs `PYTHON -c code ...args`; resolves to its trimmed stdout, throws with its stderr when it fails. */
export async function python(code: string, ...args: string[]): Promise<string> {
  const r = await new Deno.Command(PYTHON, { args: ["-c", code, ...args] }).output();
  if (!r.success) throw new Error(`${PYTHON} failed: ${new TextDecoder().decode(r.stderr)}`);
  return new TextDecoder().decode(r.stdout).trim();
}
