// PyTorch .pth import. The golden teacher/student files were saved by PyTorch 2.11 (zip root named after the stem,
// with a byteorder record); tests/fixtures/pth was made with Debian's PyTorch 1.13 (no byteorder record) by:
//
//   import collections, json, torch
//   torch.manual_seed(0)
//   base = torch.arange(24, dtype=torch.float32) * 0.5 - 3
//   mixed = collections.OrderedDict()
//   mixed["lin.weight"] = torch.randn(3, 4)
//   mixed["transposed"] = torch.randn(2, 3, 4).permute(2, 0, 1)  # strides (1, 12, 4)
//   mixed["view.a"] = base[2:8].view(2, 3)                      # shares base's storage at offset 2
//   mixed["view.b"] = base[10:].view(7, 2)[:, 1]                # offset 11, stride 2
//   mixed["double"] = torch.tensor([[0.1, -2.5], [1e-3, 7.0]], dtype=torch.float64)
//   mixed["half"] = torch.tensor([1.0, -0.333, 65504.0], dtype=torch.float16)
//   mixed["steps"] = torch.tensor(12345, dtype=torch.int64)
//   mixed["scalar"] = torch.tensor(2.5)
//   torch.save(mixed, "mixed.pth")
//   plain = {"w": torch.randn(2, 3), "p": torch.nn.Parameter(torch.tensor([1.5, -2.0]))}
//   torch.save(plain, "plain.pth")
//   torch.save(plain, "legacy.pth", _use_new_zipfile_serialization=False)
//   flat = lambda sd: {k: {"shape": list(v.shape), "data": v.detach().float().contiguous().view(-1).tolist()}
//                      for k, v in sd.items()}
//   json.dump({"mixed": flat(mixed), "plain": flat(plain)}, open("expected.json", "w"))
//   torch.save(torch.nn.Linear(2, 2), "module.pth")  # a whole pickled module, not a state dict
import assert from "node:assert/strict";
import { unzipSync, zipSync } from "fflate";
import { readPth } from "../src/nn/pth.ts";
import { readSafetensors, type Weights } from "../src/nn/safetensors.ts";
import { checkWeights, convertPth, loadWeights } from "../src/nn/checkpoint.ts";

const golden = "/work/shared/fixtures/pytorch-golden";
const fixtures = new URL("./fixtures/pth/", import.meta.url).pathname;
const expected: Record<string, Record<string, { shape: number[]; data: number[] }>> = JSON.parse(
  Deno.readTextFileSync(`${fixtures}expected.json`),
);

function assertSame(got: Weights, want: Record<string, { shape: number[]; data: ArrayLike<number> }>, what: string) {
  assert.deepEqual([...got.keys()], Object.keys(want), what);
  for (const [k, t] of got) {
    assert.deepEqual(t.shape, want[k].shape, `${what} ${k}`);
    assert.deepEqual(Array.from(t.data), Array.from(want[k].data), `${what} ${k}`);
  }
}

/** Rewrites the zip's entries (name -> bytes) through `edit`. */
function rezip(bytes: Uint8Array, edit: (files: Record<string, Uint8Array>) => Record<string, Uint8Array>) {
  return zipSync(edit(unzipSync(bytes)), { level: 0 });
}

Deno.test("pth: PyTorch 2.11 golden state dicts equal their safetensors twins exactly", () => {
  for (const n of ["teacher", "student"]) {
    const pth = readPth(Deno.readFileSync(`${golden}/${n}.pth`), `${n}.pth`);
    const st = readSafetensors(Deno.readFileSync(`${golden}/${n}.safetensors`)).tensors;
    assert.equal(pth.size, st.size);
    assertSame(pth, Object.fromEntries([...pth.keys()].map((k) => [k, st.get(k)!])), n);
  }
});

Deno.test("pth: strided, transposed, shared-storage, float64/half/int64 and 0-d tensors (PyTorch 1.13)", () => {
  const m = readPth(Deno.readFileSync(`${fixtures}mixed.pth`), "mixed.pth");
  assertSame(m, expected.mixed, "mixed");
  assert.deepEqual(Array.from(m.get("view.b")!.data), [2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]);
});

Deno.test("pth: plain dicts, nn.Parameter, any zip root name, absent or big-endian byteorder", () => {
  const bytes = Deno.readFileSync(`${fixtures}plain.pth`);
  assertSame(readPth(bytes, "plain.pth"), expected.plain, "plain");
  // Same content under root "archive" with an explicit little-endian record.
  const renamed = rezip(bytes, (f) => {
    const out = Object.fromEntries(Object.entries(f).map(([k, v]) => [k.replace(/^plain\//, "archive/"), v]));
    return { ...out, "archive/byteorder": new TextEncoder().encode("little") };
  });
  assertSame(readPth(renamed, "renamed.pth"), expected.plain, "renamed");
  // Big-endian: every storage here is float32, so swap each 4-byte group.
  const big = rezip(bytes, (f) => {
    const out: Record<string, Uint8Array> = { "plain/byteorder": new TextEncoder().encode("big") };
    for (const [k, v] of Object.entries(f)) {
      out[k] = /\/data\/\d+$/.test(k) ? v.map((_, i) => v[(i & ~3) + 3 - (i & 3)]) : v;
    }
    return out;
  });
  assertSame(readPth(big, "big.pth"), expected.plain, "big-endian");
});

Deno.test("pth: checkpoint dicts with one nested state dict use it", () => {
  // {"epoch": 3, "state_dict": {...}} built by splicing plain.pth's pickle: PROTO 2, EMPTY_DICT, "epoch" 3, then
  // "state_dict" and the original dict (without its PROTO and STOP), SETITEMS inside a MARK, STOP.
  const bytes = Deno.readFileSync(`${fixtures}plain.pth`);
  const wrapped = rezip(bytes, (f) => {
    const inner = f["plain/data.pkl"];
    const key = (s: string) => [0x58, s.length, 0, 0, 0, ...new TextEncoder().encode(s)];
    const pkl = Uint8Array.from([
      0x80,
      2,
      0x7d,
      0x28,
      ...key("epoch"),
      0x4b,
      3,
      ...key("state_dict"),
      ...inner.subarray(2, inner.length - 1),
      0x75,
      0x2e,
    ]);
    return { ...f, "plain/data.pkl": pkl };
  });
  assertSame(readPth(wrapped, "wrapped.pth"), expected.plain, "wrapped");
});

Deno.test("pth: one clear error naming the file for legacy, truncated, garbage or unsupported files", () => {
  const bytes = Deno.readFileSync(`${fixtures}plain.pth`);
  const bad = (b: Uint8Array, re: RegExp) => assert.throws(() => readPth(b, "m.pth"), re);
  bad(Deno.readFileSync(`${fixtures}legacy.pth`), /^Error: m\.pth: legacy \(pre-1\.6, non-zip\) PyTorch format/);
  bad(bytes.subarray(0, bytes.length - 30), /^Error: m\.pth: not a readable PyTorch checkpoint \(zip: /);
  bad(new TextEncoder().encode("hello world"), /^Error: m\.pth: not a PyTorch checkpoint \(not a zip archive\)/);
  bad(new Uint8Array(0), /^Error: m\.pth: not a PyTorch checkpoint/);
  bad(
    Deno.readFileSync(`${fixtures}module.pth`),
    /^Error: m\.pth: module\/data\.pkl holds no dict of tensors \(a whole/,
  );
  const edit = (fn: (f: Record<string, Uint8Array>) => Record<string, Uint8Array>) => rezip(bytes, fn);
  bad(
    edit((f) => ({ ...f, "plain/data.pkl": f["plain/data.pkl"].subarray(0, 100) })),
    /^Error: m\.pth: cannot read plain\/data\.pkl \(/,
  );
  bad(
    edit((f) => ({ ...f, "plain/data.pkl": new Uint8Array([0x80, 2, 0xff]) })),
    /^Error: m\.pth: cannot read plain\/data\.pkl/,
  );
  bad(
    edit((f) => ({ "plain/data/0": f["plain/data/0"] })),
    /^Error: m\.pth: no <root>\/data\.pkl in the zip \(entries: plain\/data\/0\)/,
  );
  bad(edit(({ "plain/data.pkl": _, ...f }) => ({ ...f, "plain/constants.pkl": new Uint8Array(1) })), /TorchScript/);
  bad(
    edit((f) => ({ ...f, "plain/data/0": f["plain/data/0"].subarray(0, 20) })),
    /^Error: m\.pth: tensor w: size \[2,3\] stride \[3,1\] offset 0 reaches past its storage of 5/,
  );
  bad(
    edit((f) => ({ ...f, "plain/data/0": f["plain/data/0"].subarray(0, 22) })),
    /^Error: m\.pth: tensor w: storage 0 has 22 bytes, not a multiple of 4/,
  );
  bad(
    edit(({ "plain/data/1": _, ...f }) => f),
    /^Error: m\.pth: tensor p: storage plain\/data\/1 is missing from the zip/,
  );
  bad(
    edit((f) => ({ ...f, "plain/byteorder": new TextEncoder().encode("middle") })),
    /unknown byteorder record "middle"/,
  );
  const complex = edit((f) => {
    const pkl = String.fromCharCode(...f["plain/data.pkl"]).replace("FloatStorage", "CFloatStorage");
    return { ...f, "plain/data.pkl": Uint8Array.from(pkl, (c) => c.charCodeAt(0)) };
  });
  bad(complex, /^Error: m\.pth: tensor w: unsupported storage torch\.CFloatStorage/);
});

Deno.test("checkpoint: loadWeights by extension, convertPth, and one error listing every mismatch", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${fixtures}plain.pth`;
    const meta = { k: "4", kind: "student", sequences: "flair,t1,t2", classes: "4" };
    await convertPth(src, `${dir}/plain.safetensors`, meta);
    const fromPth = await loadWeights(src);
    assert.deepEqual(fromPth.metadata, {});
    assert.deepEqual(await loadWeights(`${dir}/plain.safetensors`), { tensors: fromPth.tensors, metadata: meta });
    await assert.rejects(() => loadWeights(`${dir}/plain.onnx`), /plain\.onnx: unknown weight file type/);
    await assert.rejects(() => loadWeights(`${dir}/absent.pth`), /absent\.pth/);

    checkWeights(fromPth.tensors, new Map([["w", [2, 3]], ["p", [2]]]), "plain.pth");
    const want = new Map([["w", [3, 2]], ["p", [2]], ["conv.weight", [4, 4, 3, 3, 3]], ["conv.bias", [4]]]);
    const tensors = new Map([...fromPth.tensors, ["extra", { shape: [1], data: new Float32Array(1) }]]);
    assert.throws(
      () => checkWeights(tensors, want, "plain.pth"),
      (e: Error) => {
        assert.equal(
          e.message,
          "plain.pth: weights do not fit the network:\n" +
            "  missing: conv.weight, conv.bias\n" +
            "  unexpected: extra\n" +
            "  w: file has [2,3], network expects [3,2]",
        );
        return true;
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
