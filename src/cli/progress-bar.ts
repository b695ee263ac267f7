// Progress on stderr: a bar redrawn in place for a person at a terminal; plain lines (one every few
// seconds, and one at the end) for a log, a pipe, or --no-progress, so a file never fills with
// carriage returns and escape codes.
export interface ProgressOptions {
  out?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Plain lines even on a terminal (--no-progress). */
  plain?: boolean;
  /** Plain mode: least time between two lines. */
  lineEveryMs?: number;
}

export class ProgressBar {
  private last = 0;
  private drawn = false;
  private readonly started = Date.now();
  private readonly out: NodeJS.WritableStream;
  private readonly redraw: boolean;
  private readonly lineEveryMs: number;

  constructor(
    private readonly label: string,
    opts: ProgressOptions = {},
  ) {
    this.out = opts.out ?? process.stderr;
    this.redraw = opts.plain !== true && (opts.out ?? process.stderr).isTTY === true;
    this.lineEveryMs = opts.lineEveryMs ?? 2000;
  }

  /** `frac` of the work is applied (0..1); `detail` says what (tokens, segments, pending requests). */
  update(frac: number, detail: string): void {
    const now = Date.now();
    if (now - this.last < (this.redraw ? 100 : this.lineEveryMs)) return;
    this.last = now;
    this.write(frac, detail);
  }

  /** The final state, always shown; the bar's line is ended. */
  end(frac: number, detail: string): void {
    this.write(frac, detail);
    if (this.redraw) this.out.write('\n');
    this.drawn = false;
  }

  /** Ends a redrawn line without a final state (before other output, e.g. generated text). */
  clear(): void {
    if (this.redraw && this.drawn) this.out.write('\n');
    this.drawn = false;
  }

  private write(frac: number, detail: string): void {
    const f = Math.max(0, Math.min(1, frac));
    const secs = ((Date.now() - this.started) / 1000).toFixed(1);
    const pct = `${(f * 100).toFixed(0).padStart(3)}%`;
    if (!this.redraw) {
      this.out.write(`${this.label} ${pct} ${detail} ${secs}s\n`);
      return;
    }
    const width = 30;
    const fill = Math.round(f * width);
    this.out.write(`\r${this.label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${pct} ${detail} ${secs}s\x1b[K`);
    this.drawn = true;
  }
}
