// `deno task bundle`: one self-contained JavaScript file, dist/hadnet.js, that runs every command with a bare
// `deno run -A dist/hadnet.js <command>` (npm dependencies inlined; preprocessing workers run the bundle itself).
// `deno task compile`: one executable, dist/hadnet, through `deno compile`. That needs Deno's runtime binary
// (denort), which deno compile downloads from Deno's release server unless DENORT_BIN names a local copy; where
// that server cannot be reached, this says so in one line instead of a stack of network errors.

const target = Deno.args[0];
if (target !== "bundle" && target !== "compile") {
  console.error("usage: deno run -A build.ts bundle|compile");
  Deno.exit(2);
}
await Deno.mkdir("dist", { recursive: true });
const args = target === "bundle"
  ? ["bundle", "--platform", "deno", "--quiet", "-o", "dist/hadnet.js", "main.ts"]
  : ["compile", "-A", "--quiet", "-o", "dist/hadnet", "main.ts"];
const out = await new Deno.Command(Deno.execPath(), { args, stdout: "inherit", stderr: "piped" }).output();
const err = new TextDecoder().decode(out.stderr);
if (out.code === 0) {
  console.log(`wrote dist/${target === "bundle" ? "hadnet.js" : "hadnet"}`);
} else if (target === "compile" && !Deno.env.get("DENORT_BIN") && /dns error|download|connect|denort/i.test(err)) {
  console.error(
    "hadnet compile: deno compile could not download Deno's runtime (denort) from Deno's release server; " +
      `download denort for Deno ${Deno.version.deno} and your platform elsewhere (the denort-<target>.zip of that ` +
      "release), unzip it, and run again with DENORT_BIN=/path/to/denort",
  );
} else {
  console.error(err.trim());
}
Deno.exit(out.code);
