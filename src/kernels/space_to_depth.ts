// Space-to-depth by 2 with a front pad, the input side of a stride-2 convolution rewritten as a stride-1 one:
//   xs[n, 8c + 4rd + 2rh + rw, md, mh, mw] = x[n, c, 2md + rd - p, 2mh + rh - p, 2mw + rw - p]   (0 outside x)
// A kernel-k (k even), stride-2, pad-p convolution of x equals a kernel-k/2, stride-1, unpadded convolution of xs
// whose weight for source channel 8c + 4rd + 2rh + rw at tap (a, b, e) is w[., c, 2a + rd, 2b + rh, 2e + rw]: every
// tap of the stride-2 kernel lands on one parity class. conv3d's forward uses it for the discriminator's 4x4x4
// stride-2 layers, so they run the dense stride-1 gather kernel (stride-1 loads, taller register tiles).
//
// Layouts: x [N,C,D,H,W] and xs [N,8C,MD,MH,MW], both of one storage type (f32, or f16 for inference). Forward only:
// the convolution's gradients read x itself.
// Threads: one per (md, mh, mw), which reads its 2x2x2 block of x and writes it to the 8 parity planes; grid x covers
// an (mh, mw) slice, y the depth md, z the channel within a window of channels that fits one storage binding.

import { bindingWindow, enables, type Gpu, type Kernel, type Storage, STORAGE_BYTES } from "./device.ts";
import { planeWindows } from "./planes.ts";

const WG = 256;

const kernel = (t: Storage): Kernel => {
  let body = "";
  for (let q = 0; q < 8; q++) {
    const [rd, rh, rw] = [q >> 2, (q >> 1) & 1, q & 1];
    body += `  { let d = zd + ${rd}; let h = zh + ${rh}; let w = zw + ${rw};
    var v = ${t}(0.0);
    if (d >= 0 && d < i32(u.D) && h >= 0 && h < i32(u.H) && w >= 0 && w < i32(u.W)) {
      v = x[xb + (u32(d) * u.H + u32(h)) * u.W + u32(w)];
    }
    xs[yb + ${q}u * mplane] = v; }\n`;
  }
  return {
    name: t === "f32" ? "space_to_depth2" : `space_to_depth2_${t}`,
    wgsl: `${enables(t)}
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read_write> xs: array<${t}>;
struct U {
  D: u32, H: u32, W: u32, MD: u32, MH: u32, MW: u32, xshift: u32, yshift: u32, pad: i32, md0: u32, p1: u32, p2: u32 }
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x >= u.MH * u.MW) { return; }
  let mh = id.x / u.MW;
  let mw = id.x - mh * u.MW;
  let zd = 2 * i32(id.y + u.md0) - u.pad;
  let zh = 2 * i32(mh) - u.pad;
  let zw = 2 * i32(mw) - u.pad;
  let xb = u.xshift + id.z * u.D * u.H * u.W;
  let mplane = u.MD * u.MH * u.MW;
  let yb = u.yshift + 8u * id.z * mplane + (id.y * u.MH + mh) * u.MW + mw;
${body}}`,
  };
};
const KERNELS = { f32: kernel("f32"), f16: kernel("f16") };

/** Checks x's [N,C,D,H,W] shape, the pad and xs's spatial size m; the error names all three. */
function checkSpaceToDepth(shape: readonly number[], m: readonly number[], pad: number) {
  if (
    shape.length !== 5 || m.length !== 3 || [...shape, ...m].some((v) => !Number.isInteger(v) || v < 1) ||
    !Number.isInteger(pad) || pad < 0
  ) {
    throw new Error(
      `spaceToDepth2: x [${shape}] must be a non-empty [N,C,D,H,W], size [${m}] positive [MD,MH,MW], pad ${pad} >= 0`,
    );
  }
}

/**
 * xs [N,8C,...m] from x [N,C,D,H,W] (both stored as t), as the header's formula; x's planes start at plane `first` of
 * its buffer (a chunk of a larger tensor's channels), and xs holds the depth slices md0 .. md0 + m[0] (a slab).
 */
export function spaceToDepth2(
  g: Gpu,
  x: GPUBuffer,
  xs: GPUBuffer,
  shape: readonly number[],
  m: readonly number[],
  pad: number,
  t: Storage = "f32",
  first = 0,
  md0 = 0,
) {
  checkSpaceToDepth(shape, m, pad);
  const [N, C, D, H, W] = shape;
  const [MD, MH, MW] = m;
  const eb = STORAGE_BYTES[t];
  for (const c of planeWindows(g, N * C, [D * H * W, 8 * MD * MH * MW], [eb, eb])) {
    const xw = bindingWindow(g, (first + c.first) * D * H * W, c.count * D * H * W, eb), yw = c.win[1];
    g.dispatch(
      KERNELS[t],
      [{ buffer: x, offset: xw.offset, size: xw.size }, { buffer: xs, offset: yw.offset, size: yw.size }],
      new Int32Array([D, H, W, MD, MH, MW, xw.shift, yw.shift, pad, md0, 0, 0]),
      [Math.ceil((MH * MW) / WG), MD, c.count],
    );
  }
}

/** CPU reference of spaceToDepth2. */
export function spaceToDepth2Ref(
  x: ArrayLike<number>,
  shape: readonly number[],
  m: readonly number[],
  pad: number,
): Float64Array {
  checkSpaceToDepth(shape, m, pad);
  const [N, C, D, H, W] = shape;
  const [MD, MH, MW] = m;
  const out = new Float64Array(N * C * 8 * MD * MH * MW);
  let i = 0;
  for (let p = 0; p < N * C; p++) {
    for (let q = 0; q < 8; q++) {
      for (let md = 0; md < MD; md++) {
        for (let mh = 0; mh < MH; mh++) {
          for (let mw = 0; mw < MW; mw++, i++) {
            const [d, h, w] = [2 * md + (q >> 2) - pad, 2 * mh + ((q >> 1) & 1) - pad, 2 * mw + (q & 1) - pad];
            if (d >= 0 && d < D && h >= 0 && h < H && w >= 0 && w < W) out[i] = x[((p * D + d) * H + h) * W + w];
          }
        }
      }
    }
  }
  return out;
}
