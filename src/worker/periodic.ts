// A pass run every intervalMs, never two at once (a pass still running when the timer fires is not
// doubled), errors swallowed (the pass logs its own), and a stop that waits for the running pass.
// The sweeper and the shard watchdog are such passes.
export abstract class Periodic {
  private timer?: NodeJS.Timeout;
  private running?: Promise<unknown>;

  /** One pass (the timer's; also callable directly). */
  protected abstract pass(): Promise<unknown>;

  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (!this.running) this.running = this.pass().catch(() => undefined).finally(() => (this.running = undefined));
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}
