// A queue shard's consumer that stopped taking jobs is replaced. After a Redis Cluster failover a
// BullMQ worker can stay parked for good: its blocking connection's reset waits for a cluster
// reconnect that never completes, so a due job of its shard sits in the queue with nobody taking it
// (and the sweeper's wake is absorbed by that very job). Healthy, an idle consumer takes a due job
// within moments, so a job overdue by `overdueMs` while this process runs nothing of the shard means
// the consumer is stuck.
import type { Queue } from 'bullmq';

export interface ShardWatchdogOptions {
  queues: readonly Queue[];
  /** True while this process runs no job of the shard (a busy consumer is not stuck). */
  idle(shard: number): boolean;
  /** Replaces the shard's consumer. */
  restart(shard: number): Promise<void>;
  overdueMs: number;
  log?: (obj: Record<string, unknown>, msg: string) => void;
}

export class ShardWatchdog {
  private timer?: NodeJS.Timeout;
  private running?: Promise<unknown>;

  constructor(private readonly o: ShardWatchdogOptions) {}

  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (!this.running) this.running = this.check().catch(() => undefined).finally(() => (this.running = undefined));
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One look at every shard: returns the shards whose consumer was replaced. */
  async check(now = Date.now()): Promise<number[]> {
    const restarted: number[] = [];
    for (let shard = 0; shard < this.o.queues.length; shard++) {
      if (!this.o.idle(shard)) continue;
      const oldest = await this.o.queues[shard]!.getJobs(['waiting', 'delayed', 'prioritized'], 0, 0, true);
      const overdue = oldest.some((j) => j && now - (j.timestamp + (j.delay ?? 0)) > this.o.overdueMs);
      if (!overdue || !this.o.idle(shard)) continue;
      this.o.log?.({ shard }, 'queue shard consumer took no due job: replacing it');
      await this.o.restart(shard);
      restarted.push(shard);
    }
    return restarted;
  }
}
