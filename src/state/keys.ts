// Every Redis key and channel rmt-serve touches is built here, under one configurable prefix, so
// that several deployments (or test runs) can share a Redis without colliding and an operator can
// find everything of ours with one SCAN pattern.
//
// A session's own keys (its hash, its request log, its results) carry the session id as a hash tag
// (`{id}`), so on a Redis Cluster they live in one slot and one Lua script can touch them together.

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

export interface RedisKeys {
  readonly prefix: string;
  /** One hash per session: every field of it, so one Lua script can commit it atomically. */
  session(id: string): string;
  /** The session's hash, log and results keys (one hash tag). */
  sessionKeys(id: string): SessionKeys;
  /** SCAN pattern matching every session hash (for counting, never for KEYS). */
  sessionPattern(): string;
  /** The prefix to hand to BullMQ (its own keys go under `${queuePrefix}:${queueName}:...`). */
  queuePrefix(): string;
  /** Sorted set of sessions that have (or had) work, scored by when they were last woken: the sweeper's index. */
  active(): string;
  /** Pub/sub channel carrying a session's progress events (JSON). */
  progressChannel(sessionId: string): string;
  /** Pub/sub channel to every worker (cancellations). */
  controlChannel(): string;
  /** Sorted set of live workers, scored by their last heartbeat (ms epoch). */
  workers(): string;
}

export function redisKeys(prefix: string): RedisKeys {
  assertPrefix(prefix);
  const session = (id: string) => {
    assertSessionId(id);
    return `${prefix}:session:{${id}}`;
  };
  return {
    prefix,
    session,
    sessionKeys(id) {
      return { session: session(id), log: `${prefix}:log:{${id}}`, results: `${prefix}:results:{${id}}` };
    },
    sessionPattern() {
      return `${prefix}:session:*`;
    },
    queuePrefix() {
      return `${prefix}:q`;
    },
    active() {
      return `${prefix}:active`;
    },
    progressChannel(sessionId) {
      assertSessionId(sessionId);
      return `${prefix}:progress:${sessionId}`;
    },
    controlChannel() {
      return `${prefix}:control`;
    },
    workers() {
      return `${prefix}:workers`;
    },
  };
}
