// CLI commands for model files.
import { type Command, intOpt, UsageError } from "../command.ts";

export const nnCommands: Record<string, Command> = {
  import: {
    summary: "convert a PyTorch .pth state dict to hadnet's safetensors",
    usage: "hadnet import <model.pth> <out.safetensors> [--k K] [--sequences N] [--classes C]\n\n" +
      "Converts a generator state dict saved by torch.save (such as the original release's models). k, sequences " +
      "and classes are read off the weights and recorded in the file's metadata; when given, they must agree.",
    options: { k: { type: "string" }, sequences: { type: "string" }, classes: { type: "string" } },
    run: async (v, pos) => {
      if (pos.length !== 2) throw new UsageError("import takes <model.pth> <out.safetensors>");
      const { convertPth } = await import("./checkpoint.ts");
      const { generatorMeta } = await import("./unet.ts");
      const { metadata } = await convertPth(pos[0], pos[1], (w) =>
        generatorMeta(w, pos[0], {
          k: intOpt(v.k, "--k"),
          sequences: intOpt(v.sequences, "--sequences"),
          classes: intOpt(v.classes, "--classes"),
        }));
      console.log(JSON.stringify({ wrote: pos[1], ...metadata }));
      return 0;
    },
  },
};
