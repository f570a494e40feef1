// A GPUDevice that runs nothing, for planning: buffers are sizes only, shader modules, pipelines, bind groups and
// passes are inert, submits do nothing and readbacks return zeros. A `Gpu` over it goes through the same allocation,
// chunking and dispatch code as a real one, so `hadnet bench --plan` can report a mode's peak pool memory and its
// dispatch count at sizes no adapter here could run (160x192x160, k=32 on a machine without a GPU).
//
// Its limits are the ones Deno's WebGPU reports for an NVIDIA H100 through Vulkan (../shared/device/README.md):
// a 2 GiB storage binding and 4 GiB buffers.

import { Gpu } from "./device.ts";

const GIB = 2 ** 30;
const LIMITS = {
  maxBufferSize: 4 * GIB,
  maxStorageBufferBindingSize: 2 * GIB - 4,
  minStorageBufferOffsetAlignment: 256,
  maxComputeWorkgroupStorageSize: 49152,
  maxComputeWorkgroupsPerDimension: 65535,
};

/** An inert object whose every method returns another inert object (passes, encoders, layouts). */
function inert(): unknown {
  const self: unknown = new Proxy(() => {}, { get: (_t, key) => key === "then" ? undefined : () => self });
  return self;
}

class NullBuffer {
  readonly size: number;
  constructor(size: number) {
    this.size = size;
  }
  mapAsync(): Promise<void> {
    return Promise.resolve();
  }
  getMappedRange(): ArrayBuffer {
    return new ArrayBuffer(this.size);
  }
  unmap() {}
  destroy() {}
}

function nullDevice(): GPUDevice {
  const device = {
    limits: LIMITS,
    createBuffer: (d: GPUBufferDescriptor) => new NullBuffer(d.size),
    createShaderModule: inert,
    createComputePipeline: inert,
    createBindGroup: inert,
    createCommandEncoder: inert,
    createQuerySet: inert,
    queue: { submit() {}, writeBuffer() {}, onSubmittedWorkDone: () => Promise.resolve() },
    addEventListener() {},
  };
  return device as unknown as GPUDevice;
}

/**
 * A Gpu that records allocations and dispatches but computes nothing (every value reads back as zero); it offers
 * shader-f16, as the H100 does.
 */
export function planGpu(): Gpu {
  return new Gpu(nullDevice(), "null device (plan only: no kernel runs)", false, new Set(["shader-f16"]));
}
