// Every Redis key and channel rmt-serve touches is built here, under one configurable prefix, so
// that several deployments (or test runs) can share a Redis without colliding and an operator can
// find everything of ours with one SCAN pattern.

/** Session ids: url-safe, short enough to log and to use in a key. */
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

export function assertPrefix(prefix: string): void {
  if (typeof prefix !== 'string' || prefix.length === 0) {
    throw new Error('redis key prefix must be a non-empty string');
  }
  if (/\s/.test(prefix)) {
    throw new Error(`redis key prefix must not contain whitespace: ${JSON.stringify(prefix)}`);
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

export interface RedisKeys {
  readonly prefix: string;
  /** One hash per session: every field of it, so one Lua script can commit it atomically. */
  session(id: string): string;
  /** SCAN pattern matching every session hash (for counting, never for KEYS). */
  sessionPattern(): string;
  /** The prefix to hand to BullMQ (its own keys go under `${queuePrefix}:${queueName}:...`). */
  queuePrefix(): string;
  /** Pub/sub channel carrying a session's progress events (JSON). */
  progressChannel(sessionId: string): string;
  /** Sorted set of live workers, scored by their last heartbeat (ms epoch). */
  workers(): string;
}

export function redisKeys(prefix: string): RedisKeys {
  assertPrefix(prefix);
  return {
    prefix,
    sessionPattern() {
      return `${prefix}:session:*`;
    },
    session(id) {
      assertSessionId(id);
      return `${prefix}:session:${id}`;
    },
    queuePrefix() {
      return `${prefix}:q`;
    },
    progressChannel(sessionId) {
      assertSessionId(sessionId);
      return `${prefix}:progress:${sessionId}`;
    },
    workers() {
      return `${prefix}:workers`;
    },
  };
}
