// Prometheus metrics (prom-client). One registry per process; the worker serves it on its own port,
// the API (later) on /metrics.
import http from 'node:http';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BatchStat } from '../engine/engine.ts';
import type { LoggedRequest, RequestResult } from '../queue/request.ts';

/**
 * prom-client's default process and Node.js metrics, less the three gauges named `*_total`
 * (nodejs_active_{handles,requests,resources}_total): promtool refuses `_total` on a non-counter, and
 * each is only the sum of its labelled gauge (nodejs_active_handles{type} and so on), which stays.
 */
export function collectProcessMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
}

/** 1-2-5 steps from 1 up to `max` (token-count buckets, as vLLM's). */
export function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let m = 1; m <= max; m *= 10) for (const k of [1, 2, 5]) if (k * m <= max) out.push(k * m);
  return out;
}

/** From acceptance to the start (queue) or to the result (e2e): milliseconds to the 10-minute result timeout. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** A metric of that name already in the registry (a second worker runtime in one process), or a new one. */
function reuse<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

/** A worker's /readyz body: `ok` with 200, else 503. */
export interface ProbeResult {
  status: 'ok' | 'unavailable';
  checks: Record<string, string>;
}

export class WorkerMetrics {
  readonly registry: Registry;
  readonly batchRows: Histogram<'graph' | 'model'>;
  readonly batchTokens: Histogram<'graph' | 'model'>;
  readonly batchSteps: Histogram<'graph' | 'model'>;
  readonly stepSeconds: Histogram<'graph' | 'model'>;
  readonly runSeconds: Histogram<'graph' | 'model'>;
  readonly requestSeconds: Histogram<'model' | 'kind'>;
  readonly turnGapSeconds: Histogram;
  readonly turns: Counter<'outcome'>;
  readonly sessionsFailed: Counter<'code'>;
  readonly handoffs: Counter;
  readonly engineContinuations: Counter;
  readonly requests: Counter<'model' | 'kind' | 'outcome'>;
  readonly segments: Counter;
  readonly tokensIngested: Counter<'model'>;
  readonly tokensGenerated: Counter<'model'>;
  readonly queueSeconds: Histogram<'model' | 'kind'>;
  readonly e2eSeconds: Histogram<'model' | 'kind'>;
  readonly promptTokens: Histogram<'model' | 'kind'>;
  readonly generationTokens: Histogram<'model'>;

  /** registry: share the API's (serve runs both in one process, one /metrics); default: its own. */
  constructor(registry?: Registry) {
    const r = (this.registry = registry ?? new Registry());
    if (!registry) collectProcessMetrics(r);
    const labels = ['graph', 'model'] as const;
    this.batchRows = reuse(r, 'rmt_engine_batch_rows', () => new Histogram({
      name: 'rmt_engine_batch_rows', help: 'rows (sessions) in one onnxruntime run', labelNames: labels,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: [r],
    }));
    this.batchTokens = reuse(r, 'rmt_engine_batch_tokens', () => new Histogram({
      name: 'rmt_engine_batch_tokens', help: 'real tokens in one onnxruntime run', labelNames: labels,
      buckets: [1, 16, 128, 512, 1024, 4096, 16384, 65536], registers: [r],
    }));
    this.batchSteps = reuse(r, 'rmt_engine_batch_steps', () => new Histogram({
      name: 'rmt_engine_batch_steps', help: 'segments per row in one onnxruntime run (the segment_state_steps graph\'s K, else 1)', labelNames: labels,
      buckets: [1, 2, 4, 8, 16], registers: [r],
    }));
    this.stepSeconds = reuse(r, 'rmt_engine_step_seconds', () => new Histogram({
      name: 'rmt_engine_step_seconds', help: 'time of one onnxruntime run (segment step, prefill or decode)', labelNames: labels,
      buckets: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3], registers: [r],
    }));
    this.runSeconds = reuse(r, 'rmt_engine_run_seconds', () => new Histogram({
      name: 'rmt_engine_run_seconds', help: 'time of the onnxruntime run itself (engine threads\' runs overlap unless RMT_ENGINE_TURNS=1)', labelNames: labels,
      buckets: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3], registers: [r],
    }));
    this.requestSeconds = reuse(r, 'rmt_worker_request_seconds', () => new Histogram({
      name: 'rmt_worker_request_seconds', help: 'time applying one request, from its turn to its result', labelNames: ['model', 'kind'] as const,
      buckets: [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30], registers: [r],
    }));
    this.turnGapSeconds = reuse(r, 'rmt_worker_turn_gap_seconds', () => new Histogram({
      name: 'rmt_worker_turn_gap_seconds', help: 'a session idle between two of its requests applied by this process (the second already queued)',
      buckets: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3], registers: [r],
    }));
    this.turns = reuse(r, 'rmt_worker_turns_total', () => new Counter({
      name: 'rmt_worker_turns_total', help: 'turns on a session by outcome of taking its lease: ok (applied its requests), idle, busy (another worker\'s lease), failed, gone', labelNames: ['outcome'] as const, registers: [r],
    }));
    this.sessionsFailed = reuse(r, 'rmt_worker_sessions_failed_total', () => new Counter({
      name: 'rmt_worker_sessions_failed_total', help: 'sessions that entered their failed state (by error code)', labelNames: ['code'] as const, registers: [r],
    }));
    this.handoffs = reuse(r, 'rmt_worker_handoffs_total', () => new Counter({
      name: 'rmt_worker_handoffs_total', help: 'requests that continued from their session\'s previous request before it had landed (handoff.ts)', registers: [r],
    }));
    this.engineContinuations = reuse(r, 'rmt_worker_engine_continuations_total', () => new Counter({
      name: 'rmt_worker_engine_continuations_total', help: 'such requests whose segments the engine thread started from the previous request\'s chain itself, in the run after its last (sent before its last memory existed)', registers: [r],
    }));
    this.requests = reuse(r, 'rmt_worker_requests_total', () => new Counter({
      name: 'rmt_worker_requests_total', help: 'requests finished by workers of this process, by outcome (ok, duplicate: a retry found it applied, else its error code)', labelNames: ['model', 'kind', 'outcome'] as const, registers: [r],
    }));
    this.segments = reuse(r, 'rmt_segments_committed_total', () => new Counter({ name: 'rmt_segments_committed_total', help: 'segments written to memory', registers: [r] }));
    // Tokens are counted here, once, when a worker finishes the request (not again by the API).
    this.tokensIngested = reuse(r, 'rmt_tokens_ingested_total', () => new Counter({
      name: 'rmt_tokens_ingested_total', help: 'tokens ingested into sessions (appended text and generation prompts) by requests finished here', labelNames: ['model'] as const, registers: [r],
    }));
    this.tokensGenerated = reuse(r, 'rmt_tokens_generated_total', () => new Counter({
      name: 'rmt_tokens_generated_total', help: 'tokens generated by generation requests finished here', labelNames: ['model'] as const, registers: [r],
    }));
    const kinds = ['model', 'kind'] as const;
    this.queueSeconds = reuse(r, 'rmt_request_queue_seconds', () => new Histogram({
      name: 'rmt_request_queue_seconds', help: 'time from a request\'s acceptance into its session\'s log to the start of the attempt that finished it',
      labelNames: kinds, buckets: LATENCY_BUCKETS, registers: [r],
    }));
    this.e2eSeconds = reuse(r, 'rmt_request_e2e_seconds', () => new Histogram({
      name: 'rmt_request_e2e_seconds', help: 'time from a request\'s acceptance into its session\'s log to its result',
      labelNames: kinds, buckets: LATENCY_BUCKETS, registers: [r],
    }));
    this.promptTokens = reuse(r, 'rmt_request_prompt_tokens', () => new Histogram({
      name: 'rmt_request_prompt_tokens', help: 'tokens one finished request ingested (its appended text, or its generation prompt)',
      labelNames: kinds, buckets: buckets125(1_000_000), registers: [r],
    }));
    this.generationTokens = reuse(r, 'rmt_request_generation_tokens', () => new Histogram({
      name: 'rmt_request_generation_tokens', help: 'tokens one finished generation request generated',
      labelNames: ['model'] as const, buckets: buckets125(5000), registers: [r],
    }));
  }

  /**
   * A request a worker applied to its result (not a duplicate found already applied): its tokens, and
   * its queue and end-to-end times when the log entry says when it was accepted. `startedAt` and `now`
   * are ms since the epoch on this host's clock, compared with Redis's (times below 0 count as 0).
   */
  observeFinished(model: string, entry: LoggedRequest, result: RequestResult, startedAt: number, now = Date.now()): void {
    const kind = entry.request.kind;
    this.tokensIngested.inc({ model }, result.promptTokens);
    this.promptTokens.observe({ model, kind }, result.promptTokens);
    if (kind === 'generate') {
      const generated = result.completion?.ids.length ?? 0;
      this.tokensGenerated.inc({ model }, generated);
      this.generationTokens.observe({ model }, generated);
    }
    if (entry.acceptedAt !== undefined) {
      this.queueSeconds.observe({ model, kind }, Math.max(0, startedAt - entry.acceptedAt) / 1000);
      this.e2eSeconds.observe({ model, kind }, Math.max(0, now - entry.acceptedAt) / 1000);
    }
  }

  observeBatch(s: BatchStat): void {
    const labels = { graph: s.graph, model: s.model };
    this.batchRows.observe(labels, s.rows);
    this.batchTokens.observe(labels, s.tokens);
    this.batchSteps.observe(labels, s.steps);
    this.stepSeconds.observe(labels, s.ms / 1000);
    this.runSeconds.observe(labels, s.runMs / 1000);
  }

  /**
   * Serves GET /metrics on `port` (0 = an ephemeral port); resolves with the bound port. With `ready`,
   * the same port answers Kubernetes probes: /healthz (the process answers) and /readyz (`ready()`).
   */
  async serve(port: number, opts: { host?: string; ready?: () => ProbeResult } = {}): Promise<{ port: number; close(): Promise<void> }> {
    const { host = '0.0.0.0', ready } = opts;
    const server = http.createServer((req, res) => {
      const url = (req.url ?? '').split('?')[0];
      if (ready && (url === '/healthz' || url === '/readyz')) {
        const body = url === '/healthz' ? { status: 'ok' } : ready();
        res.writeHead(body.status === 'ok' ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(body));
        return;
      }
      if (url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body),
        (err) => res.writeHead(500).end(String(err)),
      );
    });
    await new Promise<void>((resolve) => server.listen(port, host, resolve));
    const addr = server.address();
    return {
      port: typeof addr === 'object' && addr ? addr.port : port,
      close: () => new Promise<void>((r) => server.close(() => r())),
    };
  }
}
