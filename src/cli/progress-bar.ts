// One-line progress bar on stderr (only when it is a terminal, else a line every few seconds).
export class ProgressBar {
  private last = 0;
  private readonly started = Date.now();
  constructor(
    private readonly label: string,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  update(done: number, total: number, detail: string): void {
    const now = Date.now();
    const tty = this.out.isTTY === true;
    if (done < total && now - this.last < (tty ? 100 : 3000)) return;
    this.last = now;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (now - this.started) / 1000;
    const line = `${this.label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${detail} ${secs.toFixed(1)}s`;
    this.out.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
  }

  end(): void {
    if (this.out.isTTY) this.out.write('\n');
  }
}
