// WGSL lets a write to one component of a vector in memory read and write the whole vector ("Component Reference from
// Vector Memory View"), so threads writing their own components of one shared vector race. Vulkan's and llvmpipe's
// compilers store the one component, so no result test here can see it; Apple's compiler is known to take that leave.
// Every kernel writes whole vectors into workgroup memory and read_write storage: these tests scan the WGSL of every
// kernel the networks and the bench dispatch (captured on the null device, so it is the generated text) for a
// component written into an array of vectors, and for pointers into one (which could hide such a write).
import assert from "node:assert/strict";
import { Gpu } from "../../src/kernels/device.ts";
import { benchCommand } from "../../src/train/bench.ts";

/** Component writes (`a[i][c] = `, `a[i].x += `, `a[i][c]++`) and pointers into arrays of vectors declared in wgsl. */
function laneWrites(wgsl: string): string[] {
  const found: string[] = [];
  const decl = /var<(?:workgroup|storage,\s*read_write)>\s+(\w+)\s*:\s*array<(?:vec|mat)/g;
  const index = String.raw`\[(?:[^\[\]]|\[[^\[\]]*\])*\]`; // one level of nested brackets
  const assign = String.raw`(?:(?:[-+*/%&|^]|<<|>>)?=(?!=)|\+\+|--)`;
  for (const [, name] of wgsl.matchAll(decl)) {
    const write = new RegExp(String.raw`\b${name}\s*${index}\s*(?:${index}|\.[xyzwrgba]+)\s*${assign}`, "g");
    for (const [w] of wgsl.matchAll(write)) found.push(w);
    for (const [p] of wgsl.matchAll(new RegExp(String.raw`&\s*${name}\b`, "g"))) found.push(p);
  }
  return found;
}

Deno.test("laneWrites finds a component written into an array of vectors, and nothing else", () => {
  const decl = "var<workgroup> ws: array<vec4f, 64>;\nvar<storage, read_write> P: array<vec4f>;\n" +
    "var<workgroup> red: array<f32, 256>;\n";
  const bad = ["ws[e / 4u][q] = v;", "ws[i + 64u].y = a;", "P[p][t % 4u] += a;", "ws[idx[0]].x++;", "let p = &ws[i];"];
  for (const b of bad) assert.equal(laneWrites(decl + b).length, 1, b);
  const fine = "ws[e] = vec4f(a, b, c, d); let x = ws[e][q]; if (ws[e][q] == 0.0) {} a.x = ws[e].x; red[lid] = s;";
  assert.deepEqual(laneWrites(decl + fine), []);
});

Deno.test("no kernel writes one component of a vector in memory (every mode and kernel choice, on the null device)", async () => {
  const seen = new Map<string, string>(), dispatch = Gpu.prototype.dispatch, log = console.log;
  Gpu.prototype.dispatch = function (k, ...rest) {
    seen.set(`${k.name}|${k.wgsl}`, k.wgsl);
    return dispatch.call(this, k, ...rest);
  };
  console.log = () => {};
  try {
    // k=16 at 32^3: channels up to 512 (blocks of 32 to 128 in the GEMMs), stride 1 and 2, every pass.
    const base = { plan: true, size: "32,32,32", k: "16", iters: "1", warmup: "1" };
    for (const mode of ["hadnet", "pretrain", "infer"]) {
      for (const kernels of ["gather", "channels-last"]) {
        await benchCommand.run({ ...base, mode, "conv-kernel": kernels }, []);
      }
    }
    for (const kernels of ["gather", "channels-last"]) {
      await benchCommand.run({ ...base, mode: "infer", f16: true, "conv-kernel": kernels }, []);
    }
  } finally {
    Gpu.prototype.dispatch = dispatch;
    console.log = log;
  }
  const names = new Set([...seen.keys()].map((k) => k.split("|")[0].replace(/_.*/, "")));
  for (const n of ["conv3d", "inorm", "adam"]) {
    assert.ok([...names].some((m) => m.startsWith(n)), `${n} in ${[...names]}`);
  }
  assert.ok([...seen.keys()].some((k) => /^conv3d_cl_gemm[^|]*_f16\|/.test(k)), "the f16 GEMMs were scanned");
  const found = [...seen].flatMap(([key, wgsl]) => laneWrites(wgsl).map((w) => `${key.split("|")[0]}: ${w}`));
  assert.deepEqual(found, [], `of ${seen.size} kernels`);
});
