// A pool of tokenizer threads (tokenizer-thread.ts). The API tokenizes the middle of long appends
// here before queueing them (as TGI's router does during validation), so a worker's main thread,
// which also feeds the GPU, does not spend its time in the pure-JS tokenizer. A text goes out in
// pieces cut at word boundaries; each piece goes to the thread with the fewest chars in flight that
// has room, the rest wait in the pool's queue, which serves its callers' keys (sessions) in turn. A thread that dies fails its requests at once and is
// replaced; if a replacement cannot start, the pool is down and says so on every request.
import type { Worker } from 'node:worker_threads';
import { FairQueue } from './fair-queue.ts';
import { piecesAtBoundaries } from './text-stream.ts';
import { awaitReady, startThread } from '../engine/thread-entry.ts';

/**
 * Longest piece (chars) of one thread request (the pieces' ids are those of the whole text): one
 * long append is spread over all threads, and text waiting for a thread stays a slice of the
 * caller's string instead of a copy in a thread's message queue.
 */
export const REQUEST_CHARS = 65536;

export interface TokenizerThreadConfig {
  /** Model name -> tokenizer.json path. */
  tokenizers: Record<string, string>;
  /** Linux: each thread lowers its own CPU priority by this much (nice), 0 = unchanged. */
  nice?: number;
}

export interface ToTokenizerThread {
  id: number;
  model: string;
  text: string;
}

export type FromTokenizerThread =
  | { type: 'ready' }
  | { type: 'loadError'; message: string }
  | { type: 'result'; id: number; ids: Uint32Array }
  | { type: 'result'; id: number; error: string };

export interface TokenizerPoolOptions extends TokenizerThreadConfig {
  threads: number;
}

/** Requests sent to a thread and not answered, at most: one running, one ready to start next. */
const IN_FLIGHT_PER_THREAD = 2;

/** One piece of a text to encode; `text` fails all of its pieces when one fails. */
interface Job {
  model: string;
  piece: string;
  text: { failed: boolean };
  resolve(ids: Uint32Array): void;
  reject(err: Error): void;
}

interface Slot {
  index: number;
  /** undefined while its replacement starts. */
  worker: Worker | undefined;
  starting: Promise<void> | undefined;
  pending: Map<number, Job>;
  /** Chars of text sent and not answered: how busy the thread is. */
  chars: number;
}

/** Starts one thread and waits until its tokenizers are loaded. */
function spawn(config: TokenizerThreadConfig): Promise<Worker> {
  // A small young generation: tokenizing keeps little alive, and V8's default (up to 48 MB per
  // isolate) would add tens of MB of resident memory per thread for no speed (measured).
  const worker = startThread('tokenizer-thread', { workerData: config, resourceLimits: { maxYoungGenerationSizeMb: 4 } }, import.meta.url);
  return awaitReady<Worker, FromTokenizerThread>(worker, 'tokenizer thread', (msg) =>
    msg.type === 'ready' ? { ready: worker } : msg.type === 'loadError' ? { failed: msg.message } : undefined,
  );
}

export class TokenizerPool {
  private readonly slots: Slot[];
  private nextId = 1;
  private readonly queue = new FairQueue<Job>();
  /** Set once the pool takes no more work: closed, or a thread could not be replaced (the reason). */
  private down: string | undefined;

  private constructor(
    private readonly config: TokenizerThreadConfig,
    workers: Worker[],
  ) {
    this.slots = workers.map((w, index) => {
      const slot: Slot = { index, worker: undefined, starting: undefined, pending: new Map(), chars: 0 };
      this.attach(slot, w);
      return slot;
    });
  }

  static async start(opts: TokenizerPoolOptions): Promise<TokenizerPool> {
    if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new Error(`TokenizerPool: threads must be an integer >= 1, found ${opts.threads}`);
    const config: TokenizerThreadConfig = { tokenizers: { ...opts.tokenizers }, ...(opts.nice ? { nice: opts.nice } : {}) };
    const started = await Promise.allSettled(Array.from({ length: opts.threads }, () => spawn(config)));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((s) => (s.status === 'fulfilled' ? s.value.terminate() : undefined)));
      throw failed.reason;
    }
    return new TokenizerPool(config, started.map((s) => (s as PromiseFulfilledResult<Worker>).value));
  }

  /**
   * The ids of `text` under `model`'s tokenizer (the same as one encode() of it). Its pieces wait in
   * the pool's queue, as slices of `text` (no copies), until a thread has room. `key` (a session id)
   * takes turns with other keys: texts of one key go in order, but a key with a backlog does not
   * hold back another key's next text (many sessions streaming appends each keep work queued).
   */
  async encode(model: string, text: string, key = ''): Promise<number[]> {
    if (this.down !== undefined) throw new Error(this.down);
    const group = { failed: false };
    const parts = piecesAtBoundaries(text, REQUEST_CHARS).map(
      (piece) => new Promise<Uint32Array>((resolve, reject) => this.queue.push(key, { model, piece, text: group, resolve, reject })),
    );
    this.pump();
    let ids: Uint32Array[];
    try {
      ids = await Promise.all(parts);
    } catch (err) {
      group.failed = true; // its queued pieces are dropped
      for (const p of parts) p.catch(() => undefined);
      throw err;
    }
    // One allocation of the final size: pushing would leave ~2x the array in garbage (8 bytes an id),
    // and under a flood of long appends the API's peak memory is mostly such garbage.
    let n = 0;
    for (const part of ids) n += part.length;
    const out = new Array<number>(n);
    let k = 0;
    for (const part of ids) for (let i = 0; i < part.length; i++) out[k++] = part[i]!;
    return out;
  }

  /** Chars in flight per thread, in thread order (for tests and metrics). */
  load(): number[] {
    return this.slots.map((s) => s.chars);
  }

  /** The live threads, in thread order (undefined while one is being replaced); tests end one. */
  threads(): (Worker | undefined)[] {
    return this.slots.map((s) => s.worker);
  }

  async close(): Promise<void> {
    this.stop('tokenizer pool is closed');
    await Promise.all(this.slots.map((s) => s.starting));
    await Promise.all(this.slots.map((s) => s.worker?.terminate()));
    for (const s of this.slots) s.worker = undefined;
  }

  /** Sends queued pieces to the least busy threads that have room. */
  private pump(): void {
    while (this.queue.size > 0) {
      let best: Slot | undefined;
      for (const s of this.slots) {
        if (s.worker && s.pending.size < IN_FLIGHT_PER_THREAD && (!best || s.chars < best.chars)) best = s;
      }
      if (!best) return;
      const job = this.queue.shift()!;
      if (job.text.failed) {
        job.reject(new Error('another piece of this text failed'));
        continue;
      }
      const id = this.nextId++;
      best.pending.set(id, job);
      best.chars += job.piece.length;
      if (best.pending.size === 1) best.worker!.ref();
      best.worker!.postMessage({ id, model: job.model, text: job.piece } satisfies ToTokenizerThread);
    }
  }

  private settle(slot: Slot, id: number): Job | undefined {
    const job = slot.pending.get(id);
    if (!job) return undefined;
    slot.pending.delete(id);
    slot.chars -= job.piece.length;
    if (slot.pending.size === 0) slot.worker?.unref(); // an idle pool does not keep the process alive
    return job;
  }

  private failAll(slot: Slot, why: string): void {
    for (const id of [...slot.pending.keys()]) this.settle(slot, id)!.reject(new Error(why));
  }

  /** Takes no more work: every request waiting or in flight fails with `why`. */
  private stop(why: string): void {
    this.down = why;
    for (const job of this.queue.drain()) job.reject(new Error(why));
    for (const s of this.slots) this.failAll(s, why);
  }

  private attach(slot: Slot, worker: Worker): void {
    slot.worker = worker;
    let crash: string | undefined;
    worker.on('message', (msg: FromTokenizerThread) => {
      if (msg.type !== 'result') return;
      const job = this.settle(slot, msg.id);
      if (!job) return;
      if ('error' in msg) job.reject(new Error(`tokenizer thread ${slot.index}: ${msg.error}`));
      else job.resolve(msg.ids);
      this.pump();
    });
    worker.on('error', (err) => {
      crash = err.message;
    });
    worker.on('exit', (code) => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      const why = `tokenizer thread ${slot.index} ${crash !== undefined ? `crashed (${crash})` : `exited (code ${code})`} before it answered`;
      this.failAll(slot, why);
      if (this.down === undefined) this.replace(slot);
    });
    worker.unref();
  }

  private replace(slot: Slot): void {
    slot.starting = spawn(this.config).then(
      (w) => {
        slot.starting = undefined;
        if (this.down !== undefined) return void w.terminate();
        this.attach(slot, w);
        this.pump();
      },
      (err: Error) => {
        slot.starting = undefined;
        if (this.down !== undefined) return;
        this.stop(`tokenizer pool is down: thread ${slot.index} died and its replacement did not start (${err.message})`);
        for (const s of this.slots) void s.worker?.terminate();
      },
    );
  }
}
