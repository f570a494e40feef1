// The data-stage CLI commands end to end on tiny synthetic data: in-process through main() where only files and
// stdout matter, as a spawned `deno run -A main.ts` where exit codes and stderr do.
import assert from "node:assert/strict";
import { main } from "../../main.ts";
import { dataCommands } from "../../src/data/commands.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const TINY = ["--n", "3", "--size", "28,28,24"]; // below ~28 per axis some seeds leave no room for a tumour
const IDS = ["BraTS19_SYN_0001_1", "BraTS19_SYN_0002_1", "BraTS19_SYN_0003_1"];

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", "main.ts", ...args], cwd: ROOT }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs main() and returns its exit code and what it printed with console.log. */
async function run(...args: string[]): Promise<{ code: number; stdout: string }> {
  const log = console.log, lines: string[] = [];
  console.log = (...xs: unknown[]) => lines.push(xs.join(" "));
  try {
    return { code: await main(args), stdout: lines.join("\n") };
  } finally {
    console.log = log;
  }
}

/** Every file under `dir`, relative, sorted. */
function files(dir: string, rel = ""): string[] {
  return [...Deno.readDirSync(`${dir}/${rel}`)].flatMap((e) => {
    const p = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory ? files(dir, p) : [p];
  }).sort();
}

async function withTemp(f: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "hadnet-data-cmd-" });
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function oneLineError(r: { code: number; stderr: string }, code: number, pattern: RegExp) {
  assert.equal(r.code, code, r.stderr);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], pattern);
}

Deno.test("--help of each data command prints its usage with every option and exits 0", async () => {
  for (const [name, cmd] of Object.entries(dataCommands)) {
    const r = await run(name, "--help");
    assert.equal(r.code, 0);
    assert.equal(r.stdout, cmd.usage);
    assert.ok(r.stdout.startsWith(`hadnet ${name} `), r.stdout);
    for (const opt of Object.keys(cmd.options)) assert.ok(r.stdout.includes(`--${opt}`), `${name}: --${opt}`);
  }
});

Deno.test("unknown options, stray arguments and missing or bad values exit 2 with one line", async () => {
  oneLineError(await cli("synth", "--out", "x", "--bogus"), 2, /^hadnet: synth: .*--bogus/);
  oneLineError(
    await cli("synth", "--out", "x", "extra"),
    2,
    /^hadnet: synth takes no positional arguments, got "extra"$/,
  );
  oneLineError(await cli("synth", "--n", "2"), 2, /^hadnet: --out is required$/);
  oneLineError(await cli("synth", "--out", "x", "--size", "24,24"), 2, /^hadnet: --size must be 3 comma-separated/);
  oneLineError(await cli("synth", "--out", "x", "--size", "24,8,24"), 2, /--size .* got "24,8,24"$/);
  oneLineError(await cli("preprocess", "--input", "x"), 2, /^hadnet: --output is required$/);
  oneLineError(await cli("preprocess", "--input", "x", "--output", "y", "--workers", "0"), 2, /--workers must be/);
  oneLineError(await cli("split", "--data", "x"), 2, /^hadnet: --out is required$/);
  oneLineError(await cli("split", "--check"), 2, /needs one or more id list files/);
  oneLineError(await cli("split", "--check", "a.txt", "--seed", "1"), 2, /split --check does not take --seed/);
});

Deno.test("synth: the BraTS 2019 layout, one summary line, byte-identical files for a seed", async () => {
  await withTemp(async (dir) => {
    const a = await run("synth", "--out", `${dir}/a`, ...TINY, "--seed", "5");
    assert.equal(a.code, 0);
    assert.match(
      a.stdout,
      new RegExp(`^synth: wrote 3 subjects \\(\\d HGG, \\d LGG\\) of 28x28x24 voxels, seed 5, to `),
    );
    const listed = files(`${dir}/a`);
    assert.equal(listed.length, 15);
    for (const id of IDS) {
      const grade = listed.find((f) => f.includes(`/${id}/`))!.split("/")[0];
      assert.ok(grade === "HGG" || grade === "LGG", grade);
      for (const s of ["flair", "t1", "t1ce", "t2", "seg"]) {
        assert.ok(listed.includes(`${grade}/${id}/${id}_${s}.nii.gz`));
      }
    }
    await new Promise((r) => setTimeout(r, 1100)); // a gzip timestamp would now differ
    assert.equal((await run("synth", "--out", `${dir}/b`, ...TINY, "--seed", "5")).code, 0);
    assert.deepEqual(files(`${dir}/b`), listed);
    for (const f of listed) {
      const bytes = Deno.readFileSync(`${dir}/a/${f}`);
      assert.deepEqual(bytes.subarray(4, 8), new Uint8Array(4), `${f}: gzip mtime`);
      assert.deepEqual(Deno.readFileSync(`${dir}/b/${f}`), bytes, f);
    }
    assert.equal((await run("synth", "--out", `${dir}/c`, ...TINY, "--seed", "6")).code, 0);
    const flair = listed.find((f) => f.endsWith("_0001_1_flair.nii.gz"))!;
    const other = files(`${dir}/c`).find((f) => f.endsWith("_0001_1_flair.nii.gz"))!;
    assert.notDeepEqual(Deno.readFileSync(`${dir}/c/${other}`), Deno.readFileSync(`${dir}/a/${flair}`));
  });
});

Deno.test("preprocess: output layout, skips finished subjects unless --force, --no-seg", async () => {
  await withTemp(async (dir) => {
    assert.equal((await run("synth", "--out", `${dir}/raw`, ...TINY)).code, 0);
    const grades = Object.fromEntries(files(`${dir}/raw`).map((f) => [f.split("/")[1], f.split("/")[0]]));
    const r = await cli("preprocess", "--input", `${dir}/raw`, "--output", `${dir}/proc`, "--workers", "1");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /preprocess: 3 processed, 0 already done, 0 failed, 0 warnings \(of 3 subjects\)\n$/);
    const want = IDS.flatMap((id) =>
      ["flr", "t1c", "t1p", "t2w", "seg", "mask"].map((s) => `BRATS/${id}/${grades[id]}/${s}.npy`)
        .concat(`BRATS/${id}/${grades[id]}/hadnet.json`)
    ).sort();
    assert.deepEqual(files(`${dir}/proc`), want);

    // A finished subject is left alone (its clobbered mask stays) until --force redoes it.
    const mask = `${dir}/proc/BRATS/${IDS[1]}/${grades[IDS[1]]}/mask.npy`;
    const good = Deno.readFileSync(mask);
    Deno.writeFileSync(mask, new Uint8Array([1, 2, 3]));
    const again = await cli("preprocess", "--input", `${dir}/raw`, "--output", `${dir}/proc`);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /preprocess: 0 processed, 3 already done, 0 failed/);
    assert.deepEqual(Deno.readFileSync(mask), new Uint8Array([1, 2, 3]));
    const forced = await cli("preprocess", "--input", `${dir}/raw`, "--output", `${dir}/proc`, "--force");
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stderr, /preprocess: 3 processed, 0 already done, 0 failed/);
    assert.deepEqual(Deno.readFileSync(mask), good);

    // Inference data: no seg files at all, none stored.
    for (const f of files(`${dir}/raw`)) if (f.endsWith("_seg.nii.gz")) Deno.removeSync(`${dir}/raw/${f}`);
    assert.equal((await run("preprocess", "--input", `${dir}/raw`, "--output", `${dir}/inf`, "--no-seg")).code, 0);
    assert.deepEqual(files(`${dir}/inf`), want.filter((f) => !f.endsWith("/seg.npy")));
  });
});

Deno.test("preprocess: a failing subject is reported by name, the others are processed, exit status 1", async () => {
  await withTemp(async (dir) => {
    assert.equal((await run("synth", "--out", `${dir}/raw`, ...TINY)).code, 0);
    const t1ce = files(`${dir}/raw`).find((f) => f.endsWith(`${IDS[1]}_t1ce.nii.gz`))!;
    Deno.removeSync(`${dir}/raw/${t1ce}`);
    const r = await cli("preprocess", "--input", `${dir}/raw`, "--output", `${dir}/proc`, "--workers", "2");
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /preprocess: 2 processed, 0 already done, 1 failed, 0 warnings \(of 3 subjects\)\n/);
    assert.match(r.stderr, new RegExp(`\n  failed ${IDS[1]}: subject ${IDS[1]}: missing t1ce .*\n$`));
    const done = files(`${dir}/proc`);
    assert.deepEqual([...new Set(done.map((f) => f.split("/")[1]))], [IDS[0], IDS[2]]);
    assert.equal(done.length, 14);
  });
});

/** A preprocessed-looking dataset: <dir>/BRATS/<id>/HGG for each id (split needs only the folders). */
function fakeProc(dir: string, ids: string[]) {
  for (const id of ids) Deno.mkdirSync(`${dir}/BRATS/${id}/HGG`, { recursive: true });
}

const lines = (path: string) => Deno.readTextFileSync(path).split("\n").filter((l) => l !== "");

Deno.test("split: ratios and seed decide the three lists; PROC or PROC/BRATS; bad ratios exit 2", async () => {
  await withTemp(async (dir) => {
    const ids = Array.from({ length: 10 }, (_, i) => `S${String(i).padStart(2, "0")}`);
    fakeProc(`${dir}/proc`, ids);
    const r = await run("split", "--data", `${dir}/proc`, "--out", `${dir}/a`);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^split: 6 train, 2 validation, 2 test \(of 10 subjects in .*\/proc\/BRATS, seed 0\)/);
    const a = ["train", "validation", "test"].map((n) => lines(`${dir}/a/${n}.txt`));
    assert.deepEqual(a.map((l) => l.length), [6, 2, 2]);
    assert.deepEqual(a.flat().sort(), ids);
    for (const l of a) assert.deepEqual(l, [...l].sort());

    // The BRATS folder itself gives the same lists; another seed other lists; other ratios other sizes.
    assert.equal((await run("split", "--data", `${dir}/proc/BRATS`, "--out", `${dir}/b`)).code, 0);
    for (const n of ["train", "validation", "test"]) {
      assert.deepEqual(lines(`${dir}/b/${n}.txt`), lines(`${dir}/a/${n}.txt`));
    }
    assert.equal((await run("split", "--data", `${dir}/proc`, "--out", `${dir}/c`, "--seed", "1")).code, 0);
    assert.notDeepEqual(["train", "validation", "test"].map((n) => lines(`${dir}/c/${n}.txt`)), a);
    assert.equal((await run("split", "--data", `${dir}/proc`, "--out", `${dir}/d`, "--ratios", "5,3,2")).code, 0);
    assert.deepEqual(["train", "validation", "test"].map((n) => lines(`${dir}/d/${n}.txt`).length), [5, 3, 2]);

    const split = (ratios: string) => cli("split", "--data", `${dir}/proc`, "--out", `${dir}/e`, "--ratios", ratios);
    oneLineError(await split("0.6,0.4"), 2, /^hadnet: --ratios must be 3 comma-separated non-negative numbers/);
    oneLineError(await split("0.6,-0.2,0.6"), 2, /--ratios .* got "0.6,-0.2,0.6"$/);
    oneLineError(await split("0,0,0"), 2, /^hadnet: --ratios "0,0,0" must not sum to 0$/);
    oneLineError(
      await cli("split", "--data", `${dir}/nothing`, "--out", `${dir}/e`),
      1,
      /^hadnet: .*nothing: cannot list preprocessed subjects/,
    );
  });
});

Deno.test("split --check: passes good lists, reports every leak, duplicate and missing subject in one error", async () => {
  await withTemp(async (dir) => {
    fakeProc(`${dir}/proc`, ["A", "B", "C", "D"]);
    const write = (name: string, ids: string[]) => Deno.writeTextFileSync(`${dir}/${name}`, ids.join("\n") + "\n");
    write("train.txt", ["A", "B"]);
    write("test.txt", ["C"]);
    const ok = await run("split", "--check", `${dir}/train.txt`, `${dir}/test.txt`, "--data", `${dir}/proc`);
    assert.equal(ok.code, 0);
    assert.match(ok.stdout, /^split --check: 2 lists, 3 ids, no duplicates or leaks, all preprocessed under .*BRATS$/);

    write("validation.txt", ["B", "C", "D", "D", "Z"]);
    const lists = ["train.txt", "validation.txt", "test.txt"].map((n) => `${dir}/${n}`);
    const bad = await cli("split", "--check", ...lists, "--data", `${dir}/proc`);
    oneLineError(bad, 1, /^hadnet: id lists: /);
    assert.ok(bad.stderr.includes(`${lists[1]} lists D more than once`), bad.stderr);
    assert.ok(
      bad.stderr.includes(`data leak: B is in ${lists[0]} and ${lists[1]}; C is in ${lists[1]} and ${lists[2]}`),
    );
    assert.ok(bad.stderr.includes(`no preprocessed data under ${dir}/proc/BRATS for Z`), bad.stderr);
    // Without --data only the lists themselves are checked.
    const noData = await cli("split", "--check", ...lists);
    oneLineError(noData, 1, /data leak/);
    assert.ok(!noData.stderr.includes("no preprocessed data"));
  });
});
