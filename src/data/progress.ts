// Progress on stderr (a bar with elapsed time and ETA, redrawn in place on a terminal, a line every few seconds
// otherwise) and JSON-lines logs (one object per line, with a timestamp).

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}

export interface ProgressOptions {
  /** Where lines go; default stderr. */
  write?: (text: string) => void;
  /** Redraw in place with \r; default: whether stderr is a terminal. */
  inPlace?: boolean;
  /** Minimum time between two lines when not drawing in place; default 5000 ms. */
  intervalMs?: number;
  now?: () => number;
}

export class Progress {
  #done = 0;
  #start: number;
  #last = -Infinity;
  #write: (text: string) => void;
  #inPlace: boolean;
  #interval: number;
  #now: () => number;

  constructor(readonly total: number, readonly label: string, opts: ProgressOptions = {}) {
    const enc = new TextEncoder();
    this.#write = opts.write ?? ((t) => Deno.stderr.writeSync(enc.encode(t)));
    this.#inPlace = opts.inPlace ?? Deno.stderr.isTerminal();
    this.#interval = opts.intervalMs ?? 5000;
    this.#now = opts.now ?? (() => performance.now());
    this.#start = this.#now();
  }

  get done(): number {
    return this.#done;
  }

  /** One line: label, bar, count, percent, elapsed, ETA (from the mean time per item so far) and a note. */
  line(note = ""): string {
    const frac = this.total > 0 ? this.#done / this.total : 1;
    const width = 24, full = Math.round(frac * width);
    const elapsed = (this.#now() - this.#start) / 1000;
    const eta = this.#done > 0 ? (elapsed / this.#done) * (this.total - this.#done) : NaN;
    return `${this.label} [${"#".repeat(full)}${".".repeat(width - full)}] ${this.#done}/${this.total} ` +
      `${Math.floor(frac * 100)}% ${formatDuration(elapsed)} elapsed, ETA ${formatDuration(eta)}` +
      (note ? ` ${note}` : "");
  }

  tick(n = 1, note = "") {
    this.#done += n;
    const t = this.#now();
    if (this.#inPlace) this.#write(`\r\x1b[2K${this.line(note)}`);
    else if (t - this.#last >= this.#interval || this.#done >= this.total) this.#write(this.line(note) + "\n");
    else return;
    this.#last = t;
  }

  /** Prints a message on its own line without breaking the bar. */
  log(message: string) {
    this.#write(this.#inPlace ? `\r\x1b[2K${message}\n${this.line()}` : message + "\n");
  }

  finish() {
    if (this.#inPlace) this.#write("\n");
  }
}

/** Appends JSON objects, one per line, each with `time` (ISO 8601) first. */
export class JsonlLog {
  #file: Deno.FsFile;
  #enc = new TextEncoder();

  private constructor(file: Deno.FsFile, readonly path: string) {
    this.#file = file;
  }

  static async open(path: string): Promise<JsonlLog> {
    return new JsonlLog(await Deno.open(path, { create: true, append: true }), path);
  }

  write(record: Record<string, unknown>) {
    const line = JSON.stringify({ time: new Date().toISOString(), ...record }) + "\n";
    const bytes = this.#enc.encode(line);
    let off = 0;
    while (off < bytes.length) off += this.#file.writeSync(bytes.subarray(off));
  }

  close() {
    this.#file.close();
  }
}

/** Reads a JSON-lines file back (blank lines skipped; a bad line is an error naming its number). */
export function readJsonl(path: string): Record<string, unknown>[] {
  return Deno.readTextFileSync(path).split("\n").flatMap((l, i) => {
    if (l.trim() === "") return [];
    try {
      return [JSON.parse(l)];
    } catch {
      throw new Error(`${path}:${i + 1}: not JSON: ${l.slice(0, 80)}`);
    }
  });
}
