// BullMQ jobs that only say "this session has work" (the work itself is in the session's log:
// session-log.ts). One job per session at a time, by BullMQ's deduplication on the session id with
// keepLastIfActive: a wake while the session's job waits is absorbed by it; a wake while its job is
// running is kept and becomes a new job the moment that one finishes (inside BullMQ's own finishing
// script), so work accepted while a worker is letting go of a session is never left without a job.
// The waiting jobs are thus sessions waiting for a worker: the queue depth that admission control
// and autoscaling read. Sharded (keys.ts), there is one BullMQ queue per shard, each in its own slot,
// and a session's jobs always go to its own shard's queue; the depth is the sum over the shards.
import { Queue, type JobsOptions } from 'bullmq';
import type { RedisClient } from '../state/redis-connection.ts';
import type { RedisKeys } from '../state/keys.ts';

export const WORK_QUEUE = 'sessions';

export interface WorkJobData {
  sessionId: string;
}

/**
 * Retries of a failed turn (a Redis hiccup, a worker error) never run out: whether a request is hopeless
 * is decided by the session's own attempt count (acquire.lua), not by a job's.
 */
export const WORK_JOB_ATTEMPTS = 1_000_000;
/** Backoff between retries of a turn: doubling from 100 ms, at most this. */
export const WORK_RETRY_MAX_MS = 5_000;

export function workRetryDelay(attemptsMade: number): number {
  return Math.min(WORK_RETRY_MAX_MS, 100 * 2 ** Math.min(16, Math.max(0, attemptsMade - 1)));
}

function jobOptions(sessionId: string): JobsOptions {
  return {
    deduplication: { id: sessionId, keepLastIfActive: true },
    attempts: WORK_JOB_ATTEMPTS,
    backoff: { type: 'capped' },
    removeOnComplete: true,
    removeOnFail: true,
  };
}

export class WorkQueue {
  /** One queue per shard (keys.ts): index = shard. */
  readonly queues: Queue<WorkJobData>[];
  private cached = { at: -Infinity, depth: 0 };

  constructor(
    private readonly redis: RedisClient,
    private readonly keys: RedisKeys,
  ) {
    this.queues = Array.from({ length: keys.layout.queueShards }, (_, shard) =>
      new Queue<WorkJobData>(WORK_QUEUE, { connection: redis, prefix: keys.queuePrefix(shard) }));
  }

  /** The single-Redis layout's one queue (shard 0). */
  get queue(): Queue<WorkJobData> {
    return this.queues[0]!;
  }

  /** The session has work: make sure a job on its shard says so (idempotent). */
  async wake(sessionId: string): Promise<void> {
    await this.queues[this.keys.queueShardOf(sessionId)]!.add('work', { sessionId }, jobOptions(sessionId));
  }

  /** Sessions with work waiting for a worker (waiting, delayed for a retry, or prioritized jobs), over every shard. */
  async depth(): Promise<number> {
    const counts = await Promise.all(this.queues.map((q) => q.getJobCounts('waiting', 'delayed', 'prioritized')));
    return counts.reduce((n, c) => n + (c.waiting ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0), 0);
  }

  /** The shard's oldest work: when its first delayed job became due, and the job next in its wait list. */
  async oldest(shard: number): Promise<{ delayedDueAt?: number; waitingHead?: string }> {
    const q = this.queues[shard]!;
    const [delayed, wait] = await Promise.all([this.redis.zrange(q.keys.delayed!, '0', '0', 'WITHSCORES'), this.redis.lrange(q.keys.wait!, '-1', '-1')]);
    // BullMQ scores a delayed job by its due time × 4096 (the low bits order jobs due in the same ms).
    return { ...(delayed[1] ? { delayedDueAt: Math.floor(Number(delayed[1]) / 0x1000) } : {}), ...(wait[0] ? { waitingHead: wait[0] } : {}) };
  }

  /** depth(), read at most every `maxAgeMs` (admission control asks on every request). */
  async depthCached(maxAgeMs: number): Promise<number> {
    const now = performance.now();
    if (now - this.cached.at > maxAgeMs) this.cached = { at: now, depth: await this.depth() };
    return this.cached.depth;
  }

  async close(): Promise<void> {
    await Promise.all(this.queues.map((q) => q.close()));
  }
}
