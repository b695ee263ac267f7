// One engine thread as the main thread sees it (a lane): its worker, the state ring its replies'
// memories arrive in, the requests it has in flight, and the ops issued for it in the current
// macrotask, which go out as one message: sessions that continue from one batch's results then
// arrive together and can share the next run.
import type { Worker } from 'node:worker_threads';
import type { FromWorker, Op, ToWorker } from './engine-protocol.ts';
import type { StateRingReader } from './state-ring.ts';

/** How long close() waits for the thread to release its sessions before terminating it. */
const CLOSE_GRACE_MS = 5000;

export type RepliesMessage = Extract<FromWorker, { type: 'replies' }>;

export class Lane {
  /** Ops issued in the current macrotask, sent as one message. */
  private outbox: Op[] = [];
  private transfer: ArrayBuffer[] = [];
  private flushScheduled = false;
  /** Set once the engine cannot take work (closed, or a thread died): nothing more goes out. */
  private stopped = false;
  /** Requests sent and not answered yet. */
  private calls = 0;

  constructor(
    readonly index: number,
    /** 'engine thread', or 'engine thread <index>' when there are several. */
    readonly name: string,
    private readonly worker: Worker,
    /** Where the thread puts advances' memory (copied out as each message arrives). */
    readonly ring: StateRingReader,
  ) {}

  get inFlight(): number {
    return this.calls;
  }

  /** A request was sent to this thread. */
  began(): void {
    this.calls++;
  }

  /** A request sent here was answered, failed or dropped. */
  ended(): void {
    this.calls--;
  }

  /** Queues `op` (moving `buffers`) for this macrotask's message. */
  send(op: Op, buffers: ArrayBuffer[] = []): void {
    if (this.stopped) return;
    this.outbox.push(op);
    this.transfer.push(...buffers);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.outbox.length === 0 || this.stopped) return;
    const msg: ToWorker = { type: 'ops', ops: this.outbox };
    this.worker.postMessage(msg, this.transfer);
    this.outbox = [];
    this.transfer = [];
  }

  /** Keeps the process alive only while this thread has calls outstanding. */
  updateRef(): void {
    if (this.calls > 0) this.worker.ref();
    else this.worker.unref();
  }

  /** `onReplies` gets each replies message; `onLost` why the thread is gone, should it crash or exit. */
  listen(onReplies: (msg: RepliesMessage) => void, onLost: (reason: string) => void): void {
    this.worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'replies') onReplies(msg);
    });
    this.worker.on('error', (err) => onLost(`${this.name} crashed: ${err.message}`));
    this.worker.on('exit', (code) => onLost(`${this.name} exited unexpectedly (code ${code})`));
  }

  /** The engine failed or closed: what is queued is dropped, nothing more is sent, nothing counts as in flight. */
  stop(): void {
    this.stopped = true;
    this.outbox = [];
    this.transfer = [];
    this.calls = 0;
  }

  /** Lets the thread finish its current run and release its sessions (up to CLOSE_GRACE_MS), then ends it. */
  async close(): Promise<void> {
    const worker = this.worker;
    worker.ref();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, CLOSE_GRACE_MS);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      worker.on('message', (msg: FromWorker) => {
        if (msg.type === 'closed') done();
      });
      worker.once('exit', done);
      worker.postMessage({ type: 'close' } satisfies ToWorker);
    });
    await worker.terminate();
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }
}

/** Each thread keeps the process alive while it has calls outstanding. */
export function updateRefs(lanes: readonly Lane[]): void {
  for (const lane of lanes) lane.updateRef();
}
