// API-side Prometheus metrics (prom-client), one registry per process, served on GET /metrics.
// Routes plugins call observeRequests(app) on their own (encapsulated) instance so their requests are
// counted; routes that serve a model call requestModel(req, name) once they resolved it, so the
// request is also counted by model; the completions route calls apiMetrics.ttft / interToken.
// Tokens are counted by the workers that apply requests (telemetry/metrics.ts), not here.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../telemetry/metrics.ts';

export const apiRegistry = new Registry();
collectProcessMetrics(apiRegistry);

const REQUEST_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120];
const requests = new Counter({
  name: 'rmt_api_requests_total', help: 'HTTP requests answered (every route), by route and status', labelNames: ['method', 'route', 'status'],
  registers: [apiRegistry],
});
const requestSeconds = new Histogram({
  name: 'rmt_api_request_seconds', help: 'HTTP request latency (every route), by route and status', labelNames: ['method', 'route', 'status'],
  buckets: REQUEST_BUCKETS, registers: [apiRegistry],
});
// The same requests again, by model, for the routes that serve one (a model the catalog has: the
// label never takes a client's arbitrary string, nor an empty value on routes without a model).
const modelRequests = new Counter({
  name: 'rmt_api_model_requests_total', help: 'HTTP requests for a model answered (completions, session appends), by model, route and status',
  labelNames: ['model', 'route', 'status'], registers: [apiRegistry],
});
const modelRequestSeconds = new Histogram({
  name: 'rmt_api_model_request_seconds', help: 'HTTP latency of requests for a model (to the end of a streamed response), by model, route and status',
  labelNames: ['model', 'route', 'status'], buckets: REQUEST_BUCKETS, registers: [apiRegistry],
});
const queueDepth = new Gauge({ name: 'rmt_queue_depth', help: 'sessions with work waiting for a worker (what RMT_MAX_QUEUE_DEPTH is compared with)', registers: [apiRegistry] });
const stateBytes = new Gauge({
  name: 'rmt_session_state_bytes', help: 'bytes of recurrent state one session of a model holds', labelNames: ['model'],
  registers: [apiRegistry],
});
const sessionsCreated = new Counter({
  name: 'rmt_api_sessions_created_total', help: 'sessions created (including forks and imports into new sessions)', labelNames: ['model'],
  registers: [apiRegistry],
});
const activeSessions = new Gauge({
  name: 'rmt_active_sessions', help: 'sessions stored in Redis (sampled by SCAN at most every 15 s)', registers: [apiRegistry],
});
const sessionsDeleted = new Counter({ name: 'rmt_api_sessions_deleted_total', help: 'sessions deleted through the API', registers: [apiRegistry] });

export const apiMetrics = {
  ttft: new Histogram({
    name: 'rmt_api_time_to_first_token_seconds', help: 'time from request to first generated token',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [apiRegistry],
  }),
  interToken: new Histogram({
    name: 'rmt_api_inter_token_seconds', help: 'time between consecutive streamed tokens',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [apiRegistry],
  }),
  pretokenizeSeconds: new Histogram({
    name: 'rmt_api_pretokenize_seconds', help: 'time an append waited for the tokenizer threads (queue and tokenizing), by outcome',
    labelNames: ['outcome'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [apiRegistry],
  }),
  sessionsCreated,
  sessionsDeleted,
  queueDepth,
  stateBytes,
  activeSessions,
};

const START = Symbol('rmtApiStart');
const MODEL = Symbol('rmtApiModel');

/** The request is for this model (one the catalog has): it is also counted in the by-model request metrics. */
export function requestModel(req: FastifyRequest, model: string): void {
  (req as unknown as Record<symbol, string>)[MODEL] = model;
}

/** Counts and times every request of this (encapsulated) instance's routes, by route template and status. */
export function observeRequests(app: FastifyInstance): void {
  app.addHook('onRequest', async (req) => {
    (req as unknown as Record<symbol, bigint>)[START] = process.hrtime.bigint();
  });
  app.addHook('onResponse', async (req, reply) => {
    const tags = req as unknown as Record<symbol, bigint | string | undefined>;
    const start = tags[START] as bigint | undefined;
    const model = tags[MODEL] as string | undefined;
    const route = req.routeOptions.url ?? 'unknown';
    const status = String(reply.statusCode);
    const labels = { method: req.method, route, status };
    const seconds = start !== undefined ? Number(process.hrtime.bigint() - start) / 1e9 : undefined;
    requests.inc(labels);
    if (seconds !== undefined) requestSeconds.observe(labels, seconds);
    if (model !== undefined) {
      modelRequests.inc({ model, route, status });
      if (seconds !== undefined) modelRequestSeconds.observe({ model, route, status }, seconds);
    }
  });
}
