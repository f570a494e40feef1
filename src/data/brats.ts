// BraTS dataset layouts on disk, and the names the original HAD-Net preprocessor gives each sequence.
//
// Accepted inputs:
//   BraTS 2019:       root/{HGG,LGG}/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz   (grade from the folder)
//   BraTS 2020/2021:  root/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz             (grade "unknown")
//   BraTS 2023:       root/<id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz              (grade "unknown"; labels 1/2/3)
// .nii works wherever .nii.gz does.

/** Stored sequence names: FLAIR, T1 post-contrast, T1 pre-contrast, T2. Sorted, which is the teacher's order. */
export const SEQUENCES = ["flr", "t1c", "t1p", "t2w"] as const;
export type Seq = typeof SEQUENCES[number];
export type Key = Seq | "seg";
export type Grade = "HGG" | "LGG" | "unknown";

/** Source-file suffixes per stored name: BraTS 2019-2021 first, then BraTS 2023. */
export const SOURCE_NAMES: Record<Key, readonly string[]> = {
  flr: ["flair", "t2f"],
  t1c: ["t1ce", "t1c"],
  t1p: ["t1", "t1n"],
  t2w: ["t2", "t2w"],
  seg: ["seg"],
};

export interface SubjectSource {
  id: string;
  grade: Grade;
  dir: string;
  /** Files found, by stored name. */
  files: Partial<Record<Key, string>>;
  /** BraTS 2023 file names (t2f, t1n, t1c, t2w), whose labels are 1/2/3 rather than 1/2/4. */
  brats2023: boolean;
}

const NII = /\.nii(\.gz)?$/i;
const NAMES_2023 = new Set(["t2f", "t1n", "t1c", "t2w"]);

/** Indexes one subject folder; several files for one sequence is an error naming them. */
export function indexSubject(dir: string, id: string, grade: Grade): SubjectSource {
  const files: Partial<Record<Key, string>> = {};
  let brats2023 = false;
  const entries = [...Deno.readDirSync(dir)].filter((e) => e.isFile && NII.test(e.name)).map((e) => e.name).sort();
  for (const key of Object.keys(SOURCE_NAMES) as Key[]) {
    const hits: { file: string; name: string }[] = [];
    for (const file of entries) {
      const stem = file.replace(NII, "").toLowerCase();
      const name = SOURCE_NAMES[key].find((s) => stem.endsWith(`_${s}`) || stem.endsWith(`-${s}`) || stem === s);
      if (name) hits.push({ file, name });
    }
    if (hits.length > 1) {
      throw new Error(`subject ${id}: several files for ${key} in ${dir}: ${hits.map((h) => h.file).join(", ")}`);
    }
    if (hits.length === 1) {
      files[key] = `${dir}/${hits[0].file}`;
      if (NAMES_2023.has(hits[0].name)) brats2023 = true;
    }
  }
  return { id, grade, dir, files, brats2023 };
}

function subdirs(dir: string): string[] {
  return [...Deno.readDirSync(dir)].filter((e) => e.isDirectory).map((e) => e.name).sort();
}

/** Every subject under `root`, sorted by id, in either layout. */
export function discoverSubjects(root: string): SubjectSource[] {
  let top: string[];
  try {
    top = subdirs(root);
  } catch (e) {
    throw new Error(`${root}: cannot list the dataset folder (${(e as Error).message})`);
  }
  const graded = top.filter((d) => d === "HGG" || d === "LGG");
  const out: SubjectSource[] = [];
  if (graded.length > 0) {
    for (const g of graded) {
      for (const id of subdirs(`${root}/${g}`)) out.push(indexSubject(`${root}/${g}/${id}`, id, g as Grade));
    }
  } else {
    for (const id of top) out.push(indexSubject(`${root}/${id}`, id, "unknown"));
  }
  const seen = new Map<string, string>();
  for (const s of out) {
    if (seen.has(s.id)) throw new Error(`subject ${s.id} appears twice: ${seen.get(s.id)} and ${s.dir}`);
    seen.set(s.id, s.dir);
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The files preprocessing needs; a missing one is an error naming it and the names looked for. */
export function requiredFiles(src: SubjectSource, withSeg: boolean): Record<Key, string> {
  const keys: Key[] = withSeg ? [...SEQUENCES, "seg"] : [...SEQUENCES];
  const missing = keys.filter((k) => !src.files[k]);
  if (missing.length > 0) {
    const what = missing.map((k) => {
      const names = SOURCE_NAMES[k];
      return `${names[0]} (no file ending in ${names.map((n) => `_${n}.nii[.gz] or -${n}.nii[.gz]`).join(" or ")})`;
    }).join(", ");
    throw new Error(`subject ${src.id}: missing ${what} in ${src.dir}`);
  }
  return src.files as Record<Key, string>;
}
