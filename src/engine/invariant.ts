// Assertions of what this code guarantees itself (a request checked where it came in, a batch the
// scheduler planned, a cache this thread made), as opposed to the checks of what callers send. One
// that fails is a bug here, not a caller's mistake, so it throws an internal error naming the
// invariant instead of answering with a message of its own.

/** An invariant did not hold: an internal error. */
export class InvariantError extends Error {
  override name = 'InvariantError';
}

/**
 * Throws an InvariantError naming `what` unless `cond` holds. `what` may be a function, so a hot path
 * builds its message only on failure.
 */
export function invariant(cond: unknown, what: string | (() => string)): asserts cond {
  if (!cond) throw new InvariantError(`internal error: invariant broken: ${typeof what === 'string' ? what : what()}`);
}
