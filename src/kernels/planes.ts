// Shared dispatch helpers for kernels that work plane by plane (one plane = one (n, c) volume of an NCDHW tensor) on
// several tensors whose planes differ in size (pooling, resizing): the planes are split into chunks that fit one
// storage binding for the largest plane size, and each tensor gets its own aligned window over the same planes.
// Chunks also hold at most maxWorkgroupsPerDim planes so kernels can put the plane on the grid's z axis.

import { bindingWindow, type Gpu, planeChunks } from "./device.ts";

/** A window of one tensor over a chunk of planes: bind at byte `offset` with `size`; `shift` is the element offset of
 * the chunk's first plane inside the window. */
export interface Window {
  offset: number;
  shift: number;
  size: number;
}

export interface PlaneChunk {
  first: number;
  count: number;
  /** One window per entry of planeElems, in order. */
  win: Window[];
}

/**
 * Splits `planes` planes into chunks; tensor k has `planeElems[k]` (> 0) elements per plane, of `elemBytes[k]` bytes
 * (4 unless given: 2 for f16 storage).
 */
export function planeWindows(g: Gpu, planes: number, planeElems: number[], elemBytes?: number[]): PlaneChunk[] {
  const bytes = planeElems.map((pe, k) => pe * (elemBytes?.[k] ?? 4));
  const largest = Math.max(...bytes);
  if (planes === 0 || largest === 0) return [];
  const out: PlaneChunk[] = [];
  for (const c of planeChunks(g, planes, largest, 1)) {
    for (let first = c.first; first < c.first + c.count; first += g.maxWorkgroupsPerDim) {
      const count = Math.min(g.maxWorkgroupsPerDim, c.first + c.count - first);
      const win = planeElems.map((pe, k) => bindingWindow(g, first * pe, count * pe, elemBytes?.[k] ?? 4));
      out.push({ first, count, win });
    }
  }
  return out;
}
