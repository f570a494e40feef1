// conv3d's weight gradient as an implicit GEMM, the channels-last family's (conv3d_cl.ts) third pass: the alternative
// to the split-K gather kernel (conv3d.ts, conv3d_dw) that `--conv-kernel channels-last|tuned` runs (conv_select.ts)
// and `bench --mode conv` times beside it (`variant: "channels-last"`). Its CPU reference is conv3dBackwardRef.
//
// dw[co][ci][tap] = sum over (n, output voxel o) of x[n][ci][o s - pad + tap] dy[n][co][o]: a GEMM whose rows are
// (ci, tap) (R = Cin k^3, ci-major as in dw), whose columns are co, and whose reduction runs over the output voxels.
// That reduction axis is the contiguous one of both NCDHW tensors, so unlike the forward it needs no transposes: the
// kernel reads x and dy where they are. Any k, stride and pad; any channel counts (the row and column tails masked)
// that keep a quarter of the tile busy.
//
// Layouts: x [N,Cin,D,H,W], dy [N,Cout,OD,OH,OW] (NCDHW); dw [Cout,Cin,k,k,k], assigned. A workgroup (256 threads, or
// 128 for NB = 32) takes 256 rows x the NB columns of one block (registerTile, named vec4s) over a chunk of output
// rows (n, od, oh): each output row in steps of 16 voxels along OW (the last one masked), staged in workgroup memory
// as As [16 voxels][256 rows] (a thread loads 4 consecutive rows at 4 or 8 of the voxels, writing whole vec4s: each
// row's (ci, kd, kh, kw) is decoded once, so a load costs an add and bounds checks) and Bs [16 voxels][NB + 4] (dy, 4
// channels at a time; padded against bank conflicts).
// Split-K: the output rows go in chunks (grid z) whose partials [chunks][Cout][R] conv3d_sum_parts sums into dw; with
// one chunk the kernel writes dw itself. Nothing is saved; the scratch is the partials, at most DW_PARTS bytes.

import { type Conv3dShape, sumParts } from "./conv3d.ts";
import { BK, BM, registerTile } from "./conv3d_cl.ts";
import { type Gpu, type Kernel, vec4Lanes } from "./device.ts";

/** Workgroups wanted in all (row tiles x column blocks x chunks): several waves on a large GPU. */
const DW_WORKGROUPS = 1024;
/** The fewest 16-voxel steps per chunk: fewer would leave a workgroup mostly storing partials. */
const DW_MIN_STEPS = 32;
/** Workgroups a large GPU runs at once, about (an H100: 132 SMs, one or two of these each): what parallelism buys. */
const DW_CONCURRENT = 256;
/** Tests set `unit` to run one reduction unit whatever the plan's score says. */
export const DW_UNIT: { unit: "rows" | "planes" | null } = { unit: null };
/** The most partials held at once. */
const DW_PARTS = 256 * 2 ** 20;
/**
 * The least share of a workgroup's 256 x NB tile that must hold real outputs: below it (a 1x1x1 convolution to 4
 * classes uses 32 x 4 of 256 x 32, 1.6%) the gather kernel is the one to run.
 */
const DW_MIN_USE = 0.25;

/** How the weight gradient of one convolution runs. */
export interface DwPlan {
  nb: number; // columns (output channels) per block, a multiple of 32, at most 128
  rowTiles: number; // 256-row tiles of R = Cin k^3
  blocks: number; // column blocks
  planes: boolean; // the reduction's unit: output planes (n, od) of OH x OW voxels, or else rows (n, od, oh) of OW
  units: number; // units in all
  chunks: number; // chunks of units (split-K); 1: dw written directly
  unitsPer: number; // units per chunk
}

/** The plan for this convolution's weight gradient, or null when the GEMM does not take it. */
export function dwGemmPlan(g: Gpu, s: Conv3dShape): DwPlan | null {
  const r = s.cin * s.k ** 3;
  let nb = 128;
  while (nb >= 32 && (BK * BM + BK * (nb + 4)) * 4 > g.maxWorkgroupStorage) nb -= 32; // staged x and dy
  if (nb < 32) return null;
  const blocks = Math.ceil(s.cout / nb);
  nb = 32 * Math.ceil(s.cout / blocks / 32); // as few idle columns as the block count allows
  const rowTiles = Math.ceil(r / BM), wBytes = s.cout * r * 4;
  if ((r / (rowTiles * BM)) * (s.cout / (blocks * nb)) < DW_MIN_USE) return null;
  const tensors = [s.n * s.cin * s.d * s.h * s.w, s.n * s.cout * s.od * s.oh * s.ow].map((e) => e * 4);
  if (![...tensors, wBytes].every((b) => b <= g.maxBinding)) return null; // each bound whole
  if (rowTiles > g.maxWorkgroupsPerDim || blocks > g.maxWorkgroupsPerDim) return null;
  const byMemory = Math.floor(Math.min(DW_PARTS, g.maxBinding) / wBytes);
  const wanted = Math.ceil(DW_WORKGROUPS / (rowTiles * blocks));
  // The reduction's unit. Steps of 16 voxels along OW waste the last one's tail, most of a short row (OW = 10 or 20
  // at full size: the deep levels, the discriminator's last convolutions); steps over whole planes waste little (each
  // voxel's (oh, ow) is then a division by a constant) but a plane cannot be split, so there are fewer chunks to
  // spread. Each is scored by its useful share of the steps x the workgroups a GPU can run at once; the better wins,
  // and on a tie (neither reaches DW_CONCURRENT: the same useful work either way) the one with less waste, then rows.
  const unit = (planes: boolean) => {
    const [units, len] = planes ? [s.n * s.od, s.oh * s.ow] : [s.n * s.od * s.oh, s.ow];
    const steps = Math.ceil(len / BK), byWork = Math.floor(units / Math.ceil(DW_MIN_STEPS / steps));
    const unitsPer = Math.ceil(units / Math.max(1, Math.min(wanted, byWork, byMemory, g.maxWorkgroupsPerDim)));
    const chunks = Math.ceil(units / unitsPer);
    const use = len / (steps * BK), score = use * Math.min(chunks * rowTiles * blocks, DW_CONCURRENT);
    return { planes, units, chunks, unitsPer, score, use };
  };
  const [rows, planes] = [unit(false), unit(true)];
  const better = Math.abs(planes.score - rows.score) > 0.01 * rows.score
    ? planes.score > rows.score
    : planes.use > rows.use;
  const { score: _s, use: _u, ...u } = (DW_UNIT.unit ?? (better ? "planes" : "rows")) === "planes" ? planes : rows;
  return { nb, rowTiles, blocks, ...u };
}

function dwKernel(s: Conv3dShape, nb: number, planes: boolean): Kernel {
  const { cin, cout, k, stride, pad, d, h, w, od, oh, ow } = s, r = cin * k ** 3;
  // Bs's rows padded by a vec4: the 16 voxels a B store writes at once would otherwise share one memory bank on GPUs.
  // Staging writes whole vec4s: WGSL lets a write to one component of a vector in workgroup memory rewrite the whole
  // vector, so threads writing their own components of one vec4 would race. Thread t stages As's rows 4 (t % 64) .. + 3
  // (each decoded once) at `vpt` voxels of the step, from jv = vpt (t / 64); Bs 4 channels of one voxel at a time.
  const bRow = nb / 4 + 1, { acc, inner, cgs, nv, threads } = registerTile(nb, bRow), vpt = (BK * 64) / threads;
  const len = planes ? oh * ow : ow; // voxels in a unit
  let decode = "", rowSetup = "", loadA = "", voxels = "";
  for (let q = 0; q < 4; q++) {
    decode += `let row${q} = wg.x * ${BM}u + 4u * (t % 64u) + ${q}u; let ci${q} = row${q} / ${k ** 3}u;
  let kd${q} = i32(row${q} / ${
      k * k
    }u) % ${k}; let kh${q} = i32(row${q} / ${k}u) % ${k}; let kw${q} = i32(row${q} % ${k}u);
`;
    // ci >= Cin: a row past R, never stored, so it loads nothing. A unit's x base: its row's (its plane's).
    const iy = planes ? "" : `let iy${q} = i32(oy) * ${stride} - ${pad} + kh${q};`;
    rowSetup += `let iz${q} = i32(oz) * ${stride} - ${pad} + kd${q}; ${iy}
    let ok${q} = ci${q} < ${cin}u && iz${q} >= 0 && iz${q} < ${d}${planes ? "" : ` && iy${q} >= 0 && iy${q} < ${h}`};
    let xb${q} = (i32(n * ${cin}u + ci${q}) * ${d} + iz${q}) * ${h * w}${planes ? "" : ` + iy${q} * ${w}`};
`;
  }
  for (let jj = 0; jj < vpt; jj++) {
    // The thread's voxel jv + jj of the step (past the unit's end: dy's zeros mask it); in planes its (oh, ow).
    if (planes) {
      voxels += `let oy${jj} = i32((v0 + jv + ${jj}u) / ${ow}u); let ox${jj} = i32((v0 + jv + ${jj}u) % ${ow}u);\n`;
    }
    const a = [0, 1, 2, 3].map((q) => {
      const [ok, at] = planes
        ? [
          `let iy = oy${jj} * ${stride} - ${pad} + kh${q}; let ix = ox${jj} * ${stride} - ${pad} + kw${q};
        if (ok${q} && iy >= 0 && iy < ${h} && ix >= 0 && ix < ${w})`,
          `xb${q} + iy * ${w} + ix`,
        ]
        : [
          `let ix = i32(v0 + jv + ${jj}u) * ${stride} - ${pad} + kw${q}; if (ok${q} && ix >= 0 && ix < ${w})`,
          `xb${q} + ix`,
        ];
      return `{ ${ok} { a.${"xyzw"[q]} = X[u32(${at})]; } }`;
    });
    loadA += `{ var a = vec4f(0.0);\n      ${a.join("\n      ")}\n      As[(jv + ${jj}u) * 64u + t % 64u] = a; }\n`;
  }
  const b = vec4Lanes("b", (q) => [`cb + c + ${q}u < ${cout}u`, `DY[yb + (c + ${q}u) * ${od * oh * ow}u + v0 + j]`]);
  const loadB = `for (var e = t; e < ${4 * nb}u; e += ${threads}u) { // voxel j, channels c .. c + 3
        let j = e % 16u; let c = (e / 16u) * 4u; var b = vec4f(0.0);
        if (v0 + j < ${len}u) { ${b} }
        Bs[j * ${bRow}u + c / 4u] = b;
      }\n`;
  let stores = "";
  for (let rr = 0; rr < 8; rr++) {
    stores += `{ let row = wg.x * ${BM}u + rg * 8u + ${rr}u; if (row < ${r}u) {\n`;
    for (let j = 0; j < nv; j++) {
      for (let q = 0; q < 4; q++) {
        stores += `  { let co = cb + (cg * ${nv}u + ${j}u) * 4u + ${q}u; ` +
          `if (co < ${cout}u) { P[pb + co * ${r}u + row] = c${rr}_${j}.${"xyzw"[q]}; } }\n`;
      }
    }
    stores += "} }\n";
  }
  return {
    name: `conv3d_cl_dw_k${k}s${stride}p${pad}_${cin}x${cout}x${nb}_${d}x${h}x${w}${planes ? "_planes" : ""}`,
    wgsl: `
@group(0) @binding(0) var<storage, read> X: array<f32>; // x [N][Cin][D][H][W]
@group(0) @binding(1) var<storage, read> DY: array<f32>; // dy [N][Cout][OD][OH][OW]
@group(0) @binding(2) var<storage, read_write> P: array<f32>; // partials [chunks][Cout][R], or dw
struct U { units: u32, unitsPer: u32, p0: u32, p1: u32 }
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> As: array<vec4f, ${BK * BM / 4}>; // [16 voxels][256 rows]
var<workgroup> Bs: array<vec4f, ${BK * bRow}>; // [16 voxels][NB + 4]
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  ${decode}
  let cb = wg.y * ${nb}u;
  let rg = t / ${cgs}u;
  let cg = t % ${cgs}u;
  let jv = ${vpt}u * (t / 64u); // this thread's first voxel of As
  ${acc.map((c) => `var ${c} = vec4f(0.0);`).join(" ")}
  let q1 = min((wg.z + 1u) * u.unitsPer, u.units);
  for (var q = wg.z * u.unitsPer; q < q1; q++) { // a unit: output plane (n, oz) or row (n, oz, oy)
    ${
      planes ? `let oz = q % ${od}u; let n = q / ${od}u;` : `let oy = q % ${oh}u; let oz = (q / ${oh}u) % ${od}u;
    let n = q / ${od * oh}u;`
    }
    ${rowSetup}
    let yb = ((n * ${cout}u + cb) * ${od}u + oz) * ${oh * ow}u${planes ? "" : ` + oy * ${ow}u`};
    for (var v0 = 0u; v0 < ${len}u; v0 += ${BK}u) { // the unit's voxels v0 ..
      ${voxels}
      ${loadA}
      ${loadB}
      workgroupBarrier();
      ${inner}
      workgroupBarrier();
    }
  }
  let pb = wg.z * ${cout * r}u;
  ${stores}
}`,
  };
}

/**
 * dw (assigned) from x and dy through the GEMM (see the header); the convolution must be eligible (dwGemmPlan).
 * Partials, where the plan splits the output rows, are freed before it returns.
 */
export function conv3dBackwardWeightChannelsLast(g: Gpu, s: Conv3dShape, x: GPUBuffer, dy: GPUBuffer, dw: GPUBuffer) {
  const p = dwGemmPlan(g, s);
  if (!p) {
    throw new Error(
      `conv3d channels-last weight gradient: [${s.n},${s.cin},${s.d},${s.h},${s.w}] -> ${s.cout}, kernel ${s.k} ` +
        `stride ${s.stride} is not eligible (x, dy and the weight must each fit one binding, and Cin k^3 x Cout ` +
        `fill a quarter of a 256 x 32-128 tile)`,
    );
  }
  const m = s.cout * s.cin * s.k ** 3;
  const parts = p.chunks > 1 ? g.alloc(p.chunks * m * 4) : null;
  try {
    const out = parts ?? dw;
    g.dispatch(
      dwKernel(s, p.nb, p.planes),
      [
        { buffer: x, size: s.n * s.cin * s.d * s.h * s.w * 4 },
        { buffer: dy, size: s.n * s.cout * s.od * s.oh * s.ow * 4 },
        { buffer: out, size: p.chunks * m * 4 },
      ],
      new Uint32Array([p.units, p.unitsPer, 0, 0]),
      [p.rowTiles, p.blocks, p.chunks],
    );
    if (parts) sumParts(g, parts, dw, m, p.chunks);
  } finally {
    if (parts) g.free(parts);
  }
}
