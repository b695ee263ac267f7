// Accepting requests: each gets the session's next sequence number (atomically, in Redis) and one
// BullMQ job whose id is derived from it, so a request can never be enqueued twice.
// A request whose predecessor has not started yet is added delayed (held back): the worker that
// starts the predecessor promotes it (session-worker.ts). So the wait list holds at most a session's
// next request, and workers never fetch, parse and park a client's whole backlog of appends (with
// 64 sessions each sending a whole document at once, that flood took the worker's main thread for
// the first seconds: BENCHMARKS.md, run 7). The delay is only the fallback should a promotion be lost.
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { redisKeys } from '../state/keys.ts';
import type { SessionStore } from '../state/session-store.ts';
import type { RequestJobData, RequestResult, SessionRequest } from './request.ts';

export const QUEUE_NAME = 'requests';

export function jobIdFor(sessionId: string, seq: number): string {
  return `${sessionId}-${seq}`;
}

export interface RequestQueueOptions {
  redis: Redis;
  store: SessionStore;
  prefix: string;
  attempts: number;
  /**
   * Fallback delay of a held-back request, ms (default 30 s): only a lost promotion waits this long.
   * Shorter (it was 1 s per request ahead) fired before busy sessions' predecessors started, at 256
   * sessions about once per request, each a fetch, a parse and a park (BENCHMARKS.md, run 7).
   */
  holdMs?: number;
}

/** Fallback delay of a held-back request. */
const HOLD_MS = 30_000;

export class RequestQueue {
  readonly queue: Queue<RequestJobData, RequestResult>;
  private events?: QueueEvents;
  private eventsConn?: Redis;

  constructor(private readonly o: RequestQueueOptions) {
    this.queue = new Queue(QUEUE_NAME, { connection: o.redis, prefix: redisKeys(o.prefix).queuePrefix() });
    // Every waitUntilFinished adds a 'closing' listener for as long as it waits: many concurrent
    // waits are normal here, not a leak.
    this.queue.setMaxListeners(0);
  }

  /** Durably accepts a request: when this resolves, the request is in Redis and will be applied in order. */
  /**
   * With `tag`, a retry of the same tagged request (after its caller died between taking the seq and
   * enqueuing) gets the same seq and job id: the job is added if missing, ignored if present (BullMQ
   * job ids are unique), and a worker never applies a seq twice.
   */
  async submit(sessionId: string, request: SessionRequest, tag?: { field: string; value: string }): Promise<{ seq: number; jobId: string }> {
    const { seq, started } = await this.o.store.accept(sessionId, tag);
    const jobId = jobIdFor(sessionId, seq);
    const behind = seq - 1 - started;
    const job = await this.queue.add(request.kind, { sessionId, seq, request }, {
      jobId,
      attempts: this.o.attempts,
      backoff: { type: 'exponential', delay: 200 },
      removeOnComplete: { age: 3600, count: 10000 },
      removeOnFail: { age: 86400 },
      ...(behind > 0 ? { delay: this.o.holdMs ?? HOLD_MS } : {}),
    });
    // The predecessor may have started between accept and add: its worker then found no job to
    // promote, so promote it here (one of the two always sees the other's write).
    if (behind > 0 && (await this.o.store.startedSeq(sessionId)) >= seq - 1) await job.promote().catch(() => undefined);
    return { seq, jobId };
  }

  /** Waits for a request's result (QueueEvents, no polling). */
  async result(jobId: string, timeoutMs?: number): Promise<RequestResult> {
    if (!this.events) {
      this.eventsConn = this.o.redis.duplicate({ maxRetriesPerRequest: null });
      this.eventsConn.on('error', () => undefined);
      this.events = new QueueEvents(QUEUE_NAME, { connection: this.eventsConn, prefix: redisKeys(this.o.prefix).queuePrefix() });
      await this.events.waitUntilReady();
    }
    const job = await this.queue.getJob(jobId);
    if (!job) throw new Error(`request ${jobId} not found`);
    return job.waitUntilFinished(this.events, timeoutMs);
  }

  /** Jobs waiting or delayed (queue depth, for metrics and readiness). */
  async depth(): Promise<number> {
    const c = await this.queue.getJobCounts('waiting', 'delayed', 'prioritized');
    return (c.waiting ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0);
  }

  async close(): Promise<void> {
    await this.events?.close();
    await this.queue.close();
    this.eventsConn?.disconnect();
  }
}
