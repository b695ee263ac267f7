// Acknowledged means durable: on a Redis whose replication is asynchronous (a cluster, or one Redis
// with replicas) a write the master answered can be lost when a replica takes over before it arrived.
// What the service acknowledges to a client (an accepted request, a created, forked or imported
// session) is first confirmed on RMT_REDIS_WAIT_REPLICAS replicas by WAIT on the master that holds it;
// a WAIT that confirms fewer fails the call with NotDurableError (503 not_durable): the write may or
// may not survive, so the client resends (a websocket's client seq makes that exactly-once).

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
 * The reply of `WAIT` sent in one pipeline right behind a write (lua-scripts.ts runScriptDurable):
 * both travel on one connection, so the count covers that write, never only a later connection's.
 */
export function checkWaitReply(reply: [Error | null, unknown] | undefined, d: Durability): void {
  const confirmed = reply && !reply[0] ? Number(reply[1]) : 0;
  if (confirmed < d.replicas) throw new NotDurableError(confirmed, d.replicas);
}
