// What an engine's threads share about the device (several threads only), in one SharedArrayBuffer
// (WorkerConfig.deviceState): [next ticket, ticket served, threads ready]. The first two are a ticket
// lock the threads take turns with (deviceTurns): only an onnxruntime run itself holds the turn, so a
// thread builds its feeds and splits its results while another thread's run executes. The count
// (threads with work that are not waiting in the batch window) is kept either way, for the window.
import { performance } from 'node:perf_hooks';

/** Index of the count of threads ready: with work queued or running, not waiting in the window. */
const READY = 2;

/** How one onnxruntime run went on the device. */
export interface RunTiming {
  /** When it got the device (ms since the epoch, comparable across threads). */
  startedAt: number;
  /** How long it held the device, and how long it waited for its turn first. */
  ms: number;
  waitedMs: number;
}

export class DeviceTurn {
  /** The shared state; undefined with one thread. */
  private readonly shared: Int32Array | undefined;
  /** The ticket lock, when the threads take turns. */
  private readonly turn: Int32Array | undefined;

  constructor(state: SharedArrayBuffer | undefined, turns: boolean) {
    this.shared = state ? new Int32Array(state) : undefined;
    this.turn = turns ? this.shared : undefined;
  }

  /**
   * Runs `run` in this thread's turn on the device (at once without turns): how it ended, and its timing.
   * A failed run is timed too (settled rejected).
   */
  async take<T>(run: () => Promise<T>): Promise<{ settled: PromiseSettledResult<T>; timing: RunTiming }> {
    const t0 = performance.now();
    await this.acquire();
    const t1 = performance.now();
    let settled: PromiseSettledResult<T>;
    try {
      settled = { status: 'fulfilled', value: await run() };
    } catch (reason) {
      settled = { status: 'rejected', reason };
    }
    const t2 = performance.now();
    this.release();
    return { settled, timing: { startedAt: performance.timeOrigin + t1, ms: t2 - t1, waitedMs: t1 - t0 } };
  }

  /** Waits for this thread's turn (first come, first served across threads), without blocking the thread. */
  private async acquire(): Promise<void> {
    const turn = this.turn;
    if (!turn) return;
    const mine = Atomics.add(turn, 0, 1);
    // A pending waitAsync does not keep a thread's event loop alive (during the warm-up nothing else does).
    const keepAlive = setInterval(() => {}, 1 << 30);
    try {
      for (;;) {
        const serving = Atomics.load(turn, 1);
        if (serving === mine) return;
        const w = Atomics.waitAsync(turn, 1, serving);
        if (w.async) await w.value;
      }
    } finally {
      clearInterval(keepAlive);
    }
  }

  private release(): void {
    const turn = this.turn;
    if (!turn) return;
    Atomics.add(turn, 1, 1);
    Atomics.notify(turn, 1);
  }

  /** This thread became ready (1) or stopped being ready (-1). */
  setReady(delta: 1 | -1): void {
    const shared = this.shared;
    if (!shared) return;
    Atomics.add(shared, READY, delta);
    Atomics.notify(shared, READY);
  }

  /**
   * Whether another thread is ready (it runs on the device now or next, so waiting here costs the
   * device nothing). Called by a ready thread. Undefined with one thread, which cannot tell (other
   * processes may share the device).
   */
  othersReady(): boolean | undefined {
    if (!this.shared) return undefined;
    return Atomics.load(this.shared, READY) > 1;
  }

  /** With several threads: calls `done` when another thread stops being ready (or after `ms`); nothing with one. */
  onReadyChange(ms: number, done: () => void): void {
    const shared = this.shared;
    if (!shared) return;
    const w = Atomics.waitAsync(shared, READY, Atomics.load(shared, READY), ms);
    if (w.async) void w.value.then(done);
    else done();
  }
}
