// What the data plane's typed errors mean to an HTTP client (through the one table in errors.ts),
// and admission control: above RMT_MAX_QUEUE_DEPTH sessions waiting for a worker, new work is refused.
import type { FastifyReply } from 'fastify';
import type { ApiDeps } from './deps.ts';
import { ApiError, fromCode } from './errors.ts';
import { RequestDropped, ResultTimeout } from '../queue/request-queue.ts';
import { OrderError } from '../queue/session-log.ts';
import { SessionError } from '../state/session-error.ts';

/** Queue depth read at most this often per API process (admission asks on every request). */
const DEPTH_MAX_AGE_MS = 250;
/** What a refused client is told to wait (Retry-After, seconds). */
export const RETRY_AFTER_S = 2;

export function fromQueueError(err: unknown): unknown {
  if (err instanceof ApiError) return err;
  if (err instanceof OrderError) {
    switch (err.code) {
      case 'session_failed':
        return new ApiError('conflict', err.message, null, 'session_failed');
      case 'not_failed':
        return new ApiError('conflict', err.message, null, 'session_not_failed');
      case 'client_seq':
        return new ApiError('conflict', err.message, null, 'conflict');
    }
  }
  if (err instanceof RequestDropped) return new ApiError('conflict', err.message, null, 'request_dropped');
  if (err instanceof ResultTimeout) return new ApiError('unavailable', err.message, null, 'timeout');
  if (err instanceof SessionError) return fromCode(err.code, err.message);
  return err;
}

/** True when new work should be refused (sessions waiting for a worker at or above RMT_MAX_QUEUE_DEPTH). */
export async function saturated(deps: ApiDeps): Promise<{ depth: number; saturated: boolean }> {
  const depth = await deps.queue.depth(DEPTH_MAX_AGE_MS);
  return { depth, saturated: depth >= deps.config.maxQueueDepth };
}

/** Refuses new work with 429 (OpenAI shape, Retry-After) while the queue is saturated. */
export async function admit(deps: ApiDeps, reply: FastifyReply): Promise<void> {
  const s = await saturated(deps).catch(() => ({ depth: 0, saturated: false })); // Redis trouble: the request fails on its own
  if (!s.saturated) return;
  void reply.header('retry-after', String(RETRY_AFTER_S));
  throw new ApiError('rate_limited', `the service is overloaded (${s.depth} sessions waiting for a worker, limit ${deps.config.maxQueueDepth}); retry after ${RETRY_AFTER_S} s`, null, 'overloaded');
}
