// A queue shard's consumer that stopped taking jobs is replaced. After a Redis Cluster failover a
// BullMQ worker can stay parked for good: its blocking connection's reset waits for a cluster
// reconnect that never completes, so a due job of its shard sits in the queue with nobody taking it
// (and the sweeper's wake is absorbed by that very job). A healthy idle consumer takes a due job
// within moments, so while this process runs nothing of the shard, a delayed job overdue by
// `overdueMs`, or the same job at the head of the wait list for that long, means it is stuck.

import { Periodic } from './periodic.ts';

/** The oldest work of a shard's queue (work-queue.ts oldest()). */
export interface ShardHead {
  /** When the first delayed job became due (ms epoch). */
  delayedDueAt?: number;
  /** The id of the job next in line in the wait list. */
  waitingHead?: string;
}

export interface ShardWatchdogOptions {
  shards: number;
  head(shard: number): Promise<ShardHead>;
  /** True while this process runs no job of the shard (a busy consumer is not stuck). */
  idle(shard: number): boolean;
  /** Replaces the shard's consumer. */
  restart(shard: number): Promise<void>;
  overdueMs: number;
  log?: (obj: Record<string, unknown>, msg: string) => void;
}

export class ShardWatchdog extends Periodic {
  /** Per shard: the wait list's head as last seen, and since when. */
  private readonly seen = new Map<number, { id: string; since: number }>();

  constructor(private readonly o: ShardWatchdogOptions) {
    super();
  }

  protected pass(): Promise<unknown> {
    return this.check();
  }

  /** One look at every shard: returns the shards whose consumer was replaced. */
  async check(now = Date.now()): Promise<number[]> {
    const restarted: number[] = [];
    for (let shard = 0; shard < this.o.shards; shard++) {
      if (!this.o.idle(shard)) {
        this.seen.delete(shard);
        continue;
      }
      const head = await this.o.head(shard);
      const last = this.seen.get(shard);
      const since = head.waitingHead === undefined ? undefined : last?.id === head.waitingHead ? last.since : now;
      if (head.waitingHead === undefined) this.seen.delete(shard);
      else this.seen.set(shard, { id: head.waitingHead, since: since! });
      const delayedOverdue = head.delayedDueAt !== undefined && now - head.delayedDueAt > this.o.overdueMs;
      const waitingOverdue = since !== undefined && now - since > this.o.overdueMs;
      if (!(delayedOverdue || waitingOverdue) || !this.o.idle(shard)) continue;
      this.o.log?.({ shard, ...head }, 'queue shard consumer took no due job: replacing it');
      this.seen.delete(shard);
      await this.o.restart(shard);
      restarted.push(shard);
    }
    return restarted;
  }
}
