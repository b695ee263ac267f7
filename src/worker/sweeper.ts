// The safety net under the work queue: sessions with accepted work and no live lease are woken
// again. In normal operation a job always says a session has work (work-queue.ts); this catches what
// should not happen but can — a job lost with its Redis, an API process killed between accepting a
// request and waking its session, a job removed by hand — so no accepted request waits forever.
// Its index (keys.ts active(): sessions scored by when they were last woken) is only a hint: an entry
// missing is a lost safety net, never lost work; an entry too many is checked and dropped. Sharded,
// each queue shard has its own index and a pass looks at each.
import type { RedisClient } from '../state/redis-connection.ts';
import { Periodic } from './periodic.ts';
import type { RedisKeys } from '../state/keys.ts';

export interface SweeperOptions {
  redis: RedisClient;
  keys: RedisKeys;
  /** A session woken this long ago and still without a live lease is woken again. */
  staleMs: number;
  wake(sessionId: string): Promise<void>;
  log?: (obj: Record<string, unknown>, msg: string) => void;
}

/** Sessions looked at per sweep (the oldest first). */
const BATCH = 200;

export class Sweeper extends Periodic {
  constructor(private readonly o: SweeperOptions) {
    super();
  }

  protected pass(): Promise<unknown> {
    return this.sweep();
  }

  /** One pass over every shard's index: returns how many sessions were woken and dropped from it. */
  async sweep(now = Date.now()): Promise<{ woken: number; dropped: number }> {
    const total = { woken: 0, dropped: 0 };
    for (let shard = 0; shard < this.o.keys.layout.queueShards; shard++) {
      const r = await this.sweepShard(shard, now);
      total.woken += r.woken;
      total.dropped += r.dropped;
    }
    return total;
  }

  private async sweepShard(shard: number, now: number): Promise<{ woken: number; dropped: number }> {
    const { redis, keys } = this.o;
    const active = keys.active(shard);
    const stale = await redis.zrangebyscore(active, '-inf', now - this.o.staleMs, 'LIMIT', 0, BATCH);
    if (stale.length === 0) return { woken: 0, dropped: 0 };
    const [secs, micros] = await redis.time();
    const redisNow = Number(secs) * 1000 + Math.floor(Number(micros) / 1000);
    let woken = 0;
    let dropped = 0;
    for (const id of stale) {
      const [model, status, accepted, applied, leaseUntil] = await redis.hmget(keys.session(id), 'model', 'status', 'acceptedSeq', 'appliedSeq', 'leaseUntil');
      if (model === null || status === 'failed' || Number(applied ?? 0) >= Number(accepted ?? 0)) {
        await redis.zrem(active, id);
        dropped++;
      } else if (Number(leaseUntil ?? 0) > redisNow) {
        await redis.zadd(active, now, id); // a worker has it: look again later
      } else {
        await this.o.wake(id);
        woken++;
        this.o.log?.({ sessionId: id, accepted: Number(accepted), applied: Number(applied) }, 'sweeper: woke a session with work and no worker');
      }
    }
    return { woken, dropped };
  }
}
