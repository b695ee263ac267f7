// An engine thread's scheduler. Requests queue up while a run executes; each iteration takes everything
// waiting, groups it by (model, graph) and runs each group as one batched call, up to maxBatch rows and
// maxBatchTokens tokens, oldest first (what does not fit waits for the next iteration, at the front).
// With batchWaitMs, an iteration first waits (that long at most) for streams it answered within that
// time: sessions in step then share one run instead of splitting into small ones.
import { performance } from 'node:perf_hooks';
import type { BatchStat, EngineRequest, WorkerConfig } from './engine-protocol.ts';
import type { Chains } from './chains.ts';
import type { DeviceTurn } from './device-turn.ts';

export type Graph = BatchStat['graph'];

/** Requests of one (model, graph) that run as one batch. */
export interface Group {
  model: string;
  graph: Graph;
  requests: EngineRequest[];
  tokens: number;
}

function groupKey(r: EngineRequest): string {
  return `${r.model}\u0000${r.op}`;
}

function streamOf(r: EngineRequest): string | undefined {
  return r.op === 'decode' ? undefined : r.stream;
}

export class Scheduler {
  /** Requests waiting for a run, oldest first. */
  private queue: EngineRequest[] = [];
  /**
   * Per (model, graph): streams answered recently whose next request has not come yet, and when they
   * were answered. With batchWaitMs, an iteration waits for them (a session's next segment follows its
   * reply by the main thread's turnaround, a few ms), so sessions in step share one run.
   */
  private readonly awaited = new Map<string, Map<string, number>>();
  /** Set while gather sleeps: new requests (wake) end the sleep early. */
  private wakeUp: (() => void) | undefined;

  constructor(
    private readonly config: Pick<WorkerConfig, 'maxBatch' | 'maxBatchTokens' | 'batchWaitMs'>,
    private readonly chains: Chains,
    private readonly device: DeviceTurn,
  ) {}

  /** Whether requests are waiting for a run. */
  get waiting(): boolean {
    return this.queue.length > 0;
  }

  /** Queues a checked request (last); its stream is no longer awaited. */
  push(r: EngineRequest): void {
    const stream = streamOf(r);
    if (stream !== undefined) this.awaited.get(groupKey(r))?.delete(stream);
    this.queue.push(r);
  }

  /** Drops request `id` from the queue (cancelled). */
  cancel(id: number): void {
    this.queue = this.queue.filter((r) => r.id !== id);
  }

  clear(): void {
    this.queue = [];
  }

  /** Ends gather's sleep: requests arrived, or the thread is closing. */
  wake(): void {
    this.wakeUp?.();
  }

  /**
   * Waits (at most batchWaitMs) for the awaited streams' requests before an iteration is planned. It
   * sleeps between arrivals rather than polling, so the thread takes no CPU while it waits. With several
   * engine threads it waits only while another thread is ready (has work and is not waiting itself):
   * waiting then costs the device nothing, whereas waiting with the device idle (sessions packed on one
   * thread, the other idle) made the 8-session level 4-7 % slower on the H200 (bench/gpu-suite.sh, bench/results/gpu-9).
   */
  async gather(closing: () => boolean): Promise<void> {
    const { batchWaitMs } = this.config;
    if (batchWaitMs <= 0) return;
    const limit = performance.now() + batchWaitMs;
    for (let now = performance.now(); now < limit && !closing(); now = performance.now()) {
      const expected = this.expectedUntil(now);
      if (expected === undefined || expected <= now) return;
      if (this.device.othersReady() === false) return;
      // Not ready while waiting: a thread that waits in its window cannot make another one wait too.
      this.device.setReady(-1);
      try {
        await this.sleep(Math.min(limit, expected) - now);
      } finally {
        this.device.setReady(1);
      }
    }
  }

  /**
   * Takes everything waiting and forms this iteration's groups: one per (model, graph), ordered by
   * their oldest request, each filled oldest first up to maxBatch rows and maxBatchTokens tokens
   * (its first request always fits, however long). The rest stays queued, ahead of later arrivals.
   */
  plan(): Group[] {
    const groups = new Map<string, Group>();
    const rest: EngineRequest[] = [];
    const inBatch = new Set<number>();
    for (const r of this.queue) {
      const key = groupKey(r);
      let g = groups.get(key);
      if (!g) {
        g = { model: r.model, graph: r.op, requests: [], tokens: 0 };
        groups.set(key, g);
      }
      const t = this.chains.tokensOf(r);
      const fits =
        g.requests.length < this.config.maxBatch &&
        (g.requests.length === 0 || g.tokens + t <= this.config.maxBatchTokens) &&
        // Two steps on one cache must run one after the other.
        !(r.op === 'decode' && inBatch.has(r.kv));
      if (!fits) {
        rest.push(r);
        continue;
      }
      if (r.op === 'decode') inBatch.add(r.kv);
      g.requests.push(r);
      g.tokens += t;
    }
    this.queue = rest;
    return [...groups.values()].filter((g) => g.requests.length > 0);
  }

  /**
   * After a group's replies went out: chains going on (`again`) are the oldest requests, so they lead
   * the next iteration; they are not awaited streams. The others' streams are awaited from now.
   */
  update(group: Group, again: EngineRequest[]): void {
    if (again.length > 0) this.queue = [...again, ...this.queue];
    if (this.config.batchWaitMs > 0) {
      const goingOn = new Set(again.map((r) => r.id));
      this.noteAnswered(group.requests.filter((r) => !goingOn.has(r.id)));
    }
  }

  /**
   * While a group that is not full yet has streams likely to send their next request: until when (the
   * newest such answer plus the window); undefined when none is expected.
   */
  private expectedUntil(now: number): number | undefined {
    const { maxBatch, batchWaitMs } = this.config;
    const rows = new Map<string, number>();
    for (const r of this.queue) {
      const key = groupKey(r);
      rows.set(key, (rows.get(key) ?? 0) + 1);
    }
    let until: number | undefined;
    for (const [key, n] of rows) {
      if (n >= maxBatch) continue;
      // One answered longer ago than the window is not waited for (that request was its last).
      for (const at of this.awaited.get(key)?.values() ?? []) if (now - at <= batchWaitMs) until = Math.max(until ?? 0, at + batchWaitMs);
    }
    return until;
  }

  /** Marks the streams of a run's requests as answered now; drops those answered beyond the window. */
  private noteAnswered(requests: EngineRequest[]): void {
    const now = performance.now();
    for (const r of requests) {
      const stream = streamOf(r);
      if (stream === undefined) continue;
      const key = groupKey(r);
      let m = this.awaited.get(key);
      if (!m) this.awaited.set(key, (m = new Map()));
      m.set(stream, now);
    }
    // Bounded by the streams answered within one window, however many sessions come and go.
    for (const m of this.awaited.values()) for (const [s, at] of m) if (now - at > this.config.batchWaitMs) m.delete(s);
  }

  /** Sleeps until `ms` passed, requests arrive or (several threads) another thread stops being ready, whichever is first. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      let settled = false;
      const done = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.wakeUp = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeUp = done;
      this.device.onReadyChange(ms, done);
    });
  }
}
