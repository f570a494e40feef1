// PyTorch's ReduceLROnPlateau in mode "max" (threshold 1e-4 relative, cooldown 0, min_lr 0, eps 1e-8): after more
// than `patience` epochs without a relative improvement of the metric, the learning rate is multiplied by `factor`.

export class Plateau {
  readonly factor: number;
  readonly patience: number;
  best = -Infinity;
  bad = 0;

  constructor(o: { factor: number; patience: number }) {
    if (!(o.factor > 0 && o.factor < 1)) throw new Error(`plateau factor must be in (0, 1), got ${o.factor}`);
    this.factor = o.factor;
    this.patience = o.patience;
  }

  /** Takes an epoch's metric and the current learning rate; returns the learning rate to use next. */
  step(metric: number, lr: number): number {
    if (metric > this.best * (1 + 1e-4)) {
      this.best = metric;
      this.bad = 0;
    } else {
      this.bad++;
    }
    if (this.bad > this.patience) {
      this.bad = 0;
      const next = lr * this.factor;
      return lr - next > 1e-8 ? next : lr;
    }
    return lr;
  }

  /** JSON-safe state (best is null before the first step). */
  state(): { best: number | null; bad: number } {
    return { best: Number.isFinite(this.best) ? this.best : null, bad: this.bad };
  }

  setState(st: { best: number | null; bad: number }) {
    this.best = st.best ?? -Infinity;
    this.bad = st.bad;
  }
}
