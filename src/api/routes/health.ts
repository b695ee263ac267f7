// Liveness (/healthz: the process answers), readiness (/readyz: Redis answers PING, models are
// configured, a worker heartbeat is fresh, the queue is not saturated) and Prometheus /metrics.
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ApiDeps } from '../deps.ts';
import { redisKeys } from '../../state/keys.ts';
import { apiMetrics, apiRegistry, observeRequests } from '../metrics.ts';
import { ErrorResponses, HealthSchema, ReadyQuerySchema, ReadySchema, type ReadyBody } from '../schemas.ts';
import { Type } from 'typebox';
import { saturated } from '../queue-errors.ts';

/** A worker heartbeat older than this does not count (workers beat every 2 s). */
export const WORKER_FRESH_MS = 10_000;
const CHECK_TIMEOUT_MS = 2_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * scope 'pod': only what this process needs to serve (Redis answers, models configured): the Kubernetes
 * readiness probe, which must not pull every API pod out of its Service when the queue is saturated
 * (clients should get 429 with Retry-After) or while no worker is up. 'cluster' (default) checks all.
 */
export async function readiness(deps: ApiDeps, scope: 'pod' | 'cluster' = 'cluster'): Promise<ReadyBody> {
  const checks = { redis: 'ok', models: 'ok', workers: 'ok', queue: 'ok' };
  try {
    const pong = await withTimeout(deps.redis.ping(), CHECK_TIMEOUT_MS, 'redis PING');
    if (pong !== 'PONG') checks.redis = `unexpected PING reply ${JSON.stringify(pong)}`;
  } catch (err) {
    checks.redis = `failed: ${(err as Error).message}`;
  }
  const n = deps.catalog.list().length;
  if (n === 0) checks.models = 'failed: no models configured';
  if (scope === 'pod') {
    checks.workers = 'skipped: scope=pod';
    checks.queue = 'skipped: scope=pod';
  } else if (checks.redis !== 'ok') {
    checks.workers = 'unknown: redis is not answering';
    checks.queue = 'unknown: redis is not answering';
  } else {
    try {
      const q = await withTimeout(saturated(deps), CHECK_TIMEOUT_MS, 'queue depth');
      checks.queue = q.saturated
        ? `saturated: ${q.depth} sessions waiting for a worker (limit ${deps.config.maxQueueDepth})`
        : `ok: ${q.depth} sessions waiting (limit ${deps.config.maxQueueDepth})`;
    } catch (err) {
      checks.queue = `failed: ${(err as Error).message}`;
    }
    try {
      const fresh = await withTimeout(
        deps.redis.zcount(redisKeys(deps.config.keyPrefix).workers(), Date.now() - WORKER_FRESH_MS, '+inf'), CHECK_TIMEOUT_MS, 'worker lookup',
      );
      if (fresh === 0) checks.workers = `failed: no worker heartbeat in the last ${WORKER_FRESH_MS / 1000} s`;
      else checks.workers = `ok: ${fresh} live`;
    } catch (err) {
      checks.workers = `failed: ${(err as Error).message}`;
    }
  }
  const ok = Object.values(checks).every((c) => c.startsWith('ok') || c.startsWith('skipped'));
  return { status: ok ? 'ok' : 'unavailable', checks };
}

export default async function healthRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(r);

  r.get('/healthz', {
    schema: { operationId: 'getHealth', tags: ['health'], summary: 'Liveness: the process answers', response: { 200: HealthSchema, ...ErrorResponses } },
  }, async () => ({ status: 'ok' }));

  r.get('/readyz', {
    schema: {
      operationId: 'getReadiness', tags: ['health'], summary: 'Readiness: Redis, models, a live worker, queue depth',
      description: 'Answers 200 when every check passes, 503 with the same body otherwise.',
      querystring: ReadyQuerySchema, response: { 200: ReadySchema, 503: ReadySchema, '4xx': ErrorResponses['4xx'] },
    },
  }, async (req, reply) => {
    const body = await readiness(deps, req.query.scope);
    return reply.status(body.status === 'ok' ? 200 : 503).send(body);
  });

  let sessionsCountedAt = 0;
  r.get('/metrics', {
    schema: {
      operationId: 'getMetrics', tags: ['health'], summary: 'Prometheus metrics of this API process (and an in-process worker)',
      response: { 200: { description: 'Prometheus text exposition format (version 0.0.4)', content: { 'text/plain': { schema: Type.String() } } } },
    },
  }, async (_req, reply) => {
    try {
      apiMetrics.queueDepth.set(await withTimeout(deps.queue.depth(), CHECK_TIMEOUT_MS, 'queue depth'));
    } catch {
      // leave the last value; the scrape itself still succeeds
    }
    if (Date.now() - sessionsCountedAt > 15_000) {
      sessionsCountedAt = Date.now();
      try {
        apiMetrics.activeSessions.set(await withTimeout(deps.store.count(), CHECK_TIMEOUT_MS, 'session count'));
      } catch {
        // keep the last sample
      }
    }
    for (const m of deps.catalog.list()) apiMetrics.stateBytes.set({ model: m.name }, m.stateBytes);
    const text = await apiRegistry.metrics();
    return reply.type(apiRegistry.contentType).send(text);
  });
}
