// Every Redis key and channel rmt-serve touches is built here, under one configurable prefix, so
// that several deployments (or test runs) can share a Redis without colliding and an operator can
// find everything of ours with one SCAN pattern.
//
// A session's own keys (its hash, its request log, its results) carry the session id as a hash tag
// (`{id}`), so on a Redis Cluster they live in one slot and one Lua script can touch them together.
// Sharded (a cluster, or RMT_QUEUE_SHARDS > 1), the work queue is N BullMQ queues, each with its own
// hash tag (BullMQ needs a queue's keys in one slot) and its own sweeper index; a session always
// belongs to the same one. Unsharded, the layout is the single-Redis one it always was.
import { CLUSTER_SLOTS, keySlot } from './key-slot.ts';

/** Session ids: url-safe, short enough to log and to use in a key. */
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

export function assertPrefix(prefix: string): void {
  if (typeof prefix !== 'string' || prefix.length === 0) {
    throw new Error('redis key prefix must be a non-empty string');
  }
  if (/[\s{}]/.test(prefix)) {
    throw new Error(`redis key prefix must not contain whitespace or braces: ${JSON.stringify(prefix)}`);
  }
}

export function assertSessionId(id: string): void {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new Error(`invalid session id ${JSON.stringify(id)}: expected 1-64 characters of [A-Za-z0-9_-]`);
  }
}

export function isValidSessionId(id: string): boolean {
  return typeof id === 'string' && ID_RE.test(id);
}

/** The keys of one session, in one cluster slot. */
export interface SessionKeys {
  /** The session hash: state, tail, counters, sequence numbers, lease and failure fields. */
  session: string;
  /** The request log: accepted requests not yet applied, by seq (session-log.ts). */
  log: string;
  /** Results of applied requests whose submitter waits for them, by seq. */
  results: string;
}

/** How keys are laid out: for one Redis (the default) or a Redis Cluster. */
export interface KeyLayout {
  /** A Redis Cluster: progress channels carry the session's hash tag (sharded pub/sub). */
  cluster: boolean;
  /** Work queues (each its own hash tag when sharded); 1 with `cluster` false = the single-Redis layout. */
  queueShards: number;
}

export const SINGLE_REDIS: KeyLayout = { cluster: false, queueShards: 1 };

/**
 * Hash tag of queue shard `i` of `n`: the first `q<i>`, `q<i>.1`, ... whose slot lies in the i-th n-th
 * of the slot space, so with the even slot split `redis-cli --cluster create` makes over n masters
 * each shard's queue sits on its own master.
 */
export function queueShardTag(i: number, n: number): string {
  const lo = Math.ceil((i * CLUSTER_SLOTS) / n);
  const hi = Math.ceil(((i + 1) * CLUSTER_SLOTS) / n);
  for (let k = 0; ; k++) {
    const tag = k === 0 ? `q${i}` : `q${i}.${k}`;
    const slot = keySlot(tag);
    if (slot >= lo && slot < hi) return tag;
  }
}

export interface RedisKeys {
  readonly prefix: string;
  readonly layout: KeyLayout;
  /** Whether the queue is split into hash-tagged shards (a cluster, or more than one shard). */
  readonly sharded: boolean;
  /** One hash per session: every field of it, so one Lua script can commit it atomically. */
  session(id: string): string;
  /** The session's hash, log and results keys (one hash tag). */
  sessionKeys(id: string): SessionKeys;
  /** SCAN pattern matching every session hash (for counting, never for KEYS). */
  sessionPattern(): string;
  /** The work-queue shard a session's jobs go to (by its slot, so on an evenly split cluster: its own master's). */
  queueShardOf(sessionId: string): number;
  /** The prefix to hand to BullMQ for shard `shard` (its own keys go under `${queuePrefix}:${queueName}:...`). */
  queuePrefix(shard?: number): string;
  /** Sorted set of shard `shard`'s sessions that have (or had) work, scored by when they were last woken: the sweeper's index. */
  active(shard?: number): string;
  /** Pub/sub channel carrying a session's progress events (JSON); on a cluster in the session's slot (SPUBLISH). */
  progressChannel(sessionId: string): string;
  /** Pub/sub channel to every worker (cancellations). */
  controlChannel(): string;
  /** Sorted set of live workers, scored by their last heartbeat (ms epoch). */
  workers(): string;
}

export function redisKeys(prefix: string, layout: KeyLayout = SINGLE_REDIS): RedisKeys {
  assertPrefix(prefix);
  const n = layout.queueShards;
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`queueShards must be an integer >= 1, got ${n}`);
  const sharded = layout.cluster || n > 1;
  const tags = sharded ? Array.from({ length: n }, (_, i) => queueShardTag(i, n)) : [];
  const tag = (shard: number) => {
    const t = tags[shard];
    if (t === undefined) throw new RangeError(`queue shard ${shard} of ${n}`);
    return t;
  };
  const session = (id: string) => {
    assertSessionId(id);
    return `${prefix}:session:{${id}}`;
  };
  return {
    prefix,
    layout,
    sharded,
    session,
    sessionKeys(id) {
      return { session: session(id), log: `${prefix}:log:{${id}}`, results: `${prefix}:results:{${id}}` };
    },
    sessionPattern() {
      return `${prefix}:session:*`;
    },
    queueShardOf(sessionId) {
      assertSessionId(sessionId);
      return n === 1 ? 0 : Math.floor((keySlot(sessionId) * n) / CLUSTER_SLOTS);
    },
    queuePrefix(shard = 0) {
      return sharded ? `${prefix}:q:{${tag(shard)}}` : `${prefix}:q`;
    },
    active(shard = 0) {
      return sharded ? `${prefix}:active:{${tag(shard)}}` : `${prefix}:active`;
    },
    progressChannel(sessionId) {
      assertSessionId(sessionId);
      return layout.cluster ? `${prefix}:progress:{${sessionId}}` : `${prefix}:progress:${sessionId}`;
    },
    controlChannel() {
      return `${prefix}:control`;
    },
    workers() {
      return `${prefix}:workers`;
    },
  };
}
