// Acknowledged means durable: on a Redis whose replication is asynchronous (a cluster, or one Redis
// with replicas) a write the master answered can be lost when a replica takes over before it arrived.
// What the service acknowledges to a client (an accepted request, a created, forked or imported
// session) is first confirmed on RMT_REDIS_WAIT_REPLICAS replicas by WAIT on the master that holds it;
// a WAIT that confirms fewer fails the call with NotDurableError (503 not_durable): the write may or
// may not survive, so the client resends (a websocket's client seq makes that exactly-once).
import type { RedisClient } from './redis-connection.ts';

export interface Durability {
  /** Replicas WAIT must confirm; 0 = acknowledge on the master's reply. */
  replicas: number;
  timeoutMs: number;
}

export const NO_WAIT: Durability = { replicas: 0, timeoutMs: 0 };

export class NotDurableError extends Error {
  readonly code = 'not_durable';
  constructor(
    readonly confirmed: number,
    readonly wanted: number,
    why = `the write was confirmed on ${confirmed} of the ${wanted} replicas asked for (RMT_REDIS_WAIT_REPLICAS) in time`,
  ) {
    super(`${why}; it may be lost on a failover: send it again`);
    this.name = 'NotDurableError';
  }
}

/**
 * Waits until the writes this connection sent before (among them the caller's, to `key`) reached
 * `d.replicas` replicas of the master holding `key`. On a cluster a pipeline whose one keyed command
 * names `key` goes to that key's master, and WAIT rides with it.
 */
export async function confirmDurable(redis: RedisClient, key: string, d: Durability): Promise<void> {
  if (d.replicas <= 0) return;
  let confirmed: number;
  try {
    const replies = await redis.pipeline().exists(key).wait(d.replicas, d.timeoutMs).exec();
    const [err, n] = replies?.[1] ?? [new Error('no reply to WAIT'), 0];
    if (err) throw err;
    confirmed = Number(n);
  } catch {
    // The master went away before it answered: the write is as unconfirmed as with too few replicas.
    confirmed = 0;
  }
  if (confirmed < d.replicas) throw new NotDurableError(confirmed, d.replicas);
}
