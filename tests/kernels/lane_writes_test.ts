// WGSL lets a write to one component of a vector in memory read and write the whole vector ("Component Reference from
// Vector Memory View"), so threads writing their own components of one vector in workgroup memory race. Vulkan's and
// llvmpipe's compilers store the one component, so no result test here can see it; Apple's compiler is known to take
// that leave. Every kernel stages whole vectors: this scans the kernels' WGSL (their TypeScript source, templates
// included) for a component written into a workgroup array of vectors.
import assert from "node:assert/strict";

/** `name[i][c] = ...` or `name[i].x = ...` for each workgroup array of vectors declared in `text`. */
function laneWrites(text: string): string[] {
  const found: string[] = [];
  for (const [, name] of text.matchAll(/var<workgroup>\s+(\w+)\s*:\s*array<vec/g)) {
    const write = new RegExp(`\\b${name}\\[[^\\]\\n]*\\](\\[[^\\]\\n]*\\]|\\.[xyzwrgba]+)\\s*=(?!=)`, "g");
    for (const [w] of text.matchAll(write)) found.push(w);
  }
  return found;
}

Deno.test("laneWrites finds a component written into a workgroup vector, and nothing else", () => {
  const decl = "var<workgroup> ws: array<vec4f, 64>;\nvar<workgroup> red: array<f32, 256>;\n";
  assert.deepEqual(laneWrites(decl + "ws[e / 4u][q] = v;"), ["ws[e / 4u][q] ="]);
  assert.deepEqual(laneWrites(decl + "ws[${j * 64}u + t].y = a;"), ["ws[${j * 64}u + t].y ="]);
  const fine = "ws[e] = vec4f(a, b, c, d); let x = ws[e][q]; if (ws[e][q] == 0.0) {} a.x = ws[e].x; red[lid] = s;";
  assert.deepEqual(laneWrites(decl + fine), []);
});

Deno.test("no kernel writes one component of a vector in workgroup memory", async () => {
  const dir = new URL("../../src/kernels/", import.meta.url);
  const found: string[] = [];
  let arrays = 0;
  for await (const f of Deno.readDir(dir)) {
    if (!f.name.endsWith(".ts")) continue;
    const text = await Deno.readTextFile(new URL(f.name, dir));
    arrays += [...text.matchAll(/var<workgroup>\s+\w+\s*:\s*array<vec/g)].length;
    found.push(...laneWrites(text).map((w) => `${f.name}: ${w}`));
  }
  assert.ok(arrays >= 9, `the scan saw ${arrays} workgroup arrays of vectors`); // the GEMMs', the gathers', norm's
  assert.deepEqual(found, []);
});
