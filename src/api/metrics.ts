// API-side Prometheus metrics (prom-client), one registry per process, served on GET /metrics.
// Routes plugins call observeRequests(app) on their own (encapsulated) instance so their requests are
// counted; the completions route calls apiMetrics.ttft / interToken / tokensGenerated.
import type { FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const apiRegistry = new Registry();
collectDefaultMetrics({ register: apiRegistry });

const requests = new Counter({
  name: 'rmt_api_requests_total', help: 'HTTP requests answered, by route and status', labelNames: ['method', 'route', 'status'],
  registers: [apiRegistry],
});
const requestSeconds = new Histogram({
  name: 'rmt_api_request_seconds', help: 'HTTP request latency, by route and status', labelNames: ['method', 'route', 'status'],
  buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120], registers: [apiRegistry],
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
  tokensGenerated: new Counter({ name: 'rmt_api_tokens_generated_total', help: 'tokens generated for API requests', registers: [apiRegistry] }),
  tokensIngested: new Counter({ name: 'rmt_api_tokens_ingested_total', help: 'tokens ingested for API requests', registers: [apiRegistry] }),
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

/** Counts and times every request of this (encapsulated) instance's routes, by route template and status. */
export function observeRequests(app: FastifyInstance): void {
  app.addHook('onRequest', async (req) => {
    (req as unknown as Record<symbol, bigint>)[START] = process.hrtime.bigint();
  });
  app.addHook('onResponse', async (req, reply) => {
    const start = (req as unknown as Record<symbol, bigint | undefined>)[START];
    const labels = { method: req.method, route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) };
    requests.inc(labels);
    if (start !== undefined) requestSeconds.observe(labels, Number(process.hrtime.bigint() - start) / 1e9);
  });
}
