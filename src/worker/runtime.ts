// Assembles a worker process: RedisClient connection, session store, engine thread, tokenizers, BullMQ worker.
import type { RedisClient } from '../state/redis-connection.ts';
import type { Config } from '../config/config.ts';
import { startEngine, type Engine } from '../engine/engine.ts';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.ts';
import { SessionStore } from '../state/session-store.ts';
import { connectRedis, durability, keyLayout } from '../state/redis-connection.ts';
import { SessionWorker } from './session-worker.ts';
import { WorkerMetrics, type ProbeResult } from '../telemetry/metrics.ts';
import type { Registry } from 'prom-client';

export interface WorkerRuntime {
  redis: RedisClient;
  store: SessionStore;
  engine: Engine;
  tokenizers: Map<string, TextTokenizer>;
  worker: SessionWorker;
  metrics: WorkerMetrics;
  /** Port of the worker's /metrics endpoint, if served. */
  metricsPort?: number;
  close(graceMs?: number): Promise<void>;
}

/** RMT_ENGINE_THREADS, 0 resolved: on CUDA a second thread overlaps the host's turnaround with the other's run (BENCHMARKS.md). */
export function engineThreads(config: Pick<Config, 'engineThreads' | 'executionProvider'>): number {
  if (config.engineThreads > 0) return config.engineThreads;
  return config.executionProvider === 'cuda' ? 2 : 1;
}

export async function startWorkerRuntime(
  config: Config,
  log?: (o: Record<string, unknown>, m: string) => void,
  opts: { registry?: Registry } = {},
): Promise<WorkerRuntime> {
  const redis = connectRedis(config);
  const layout = keyLayout(config);
  const store = new SessionStore(redis, { prefix: config.keyPrefix, ttlSeconds: config.sessionTtlSeconds, layout, durability: durability(config) });
  const engine = await startEngine({
    modelsDir: config.modelsDir,
    models: config.models,
    executionProvider: config.executionProvider,
    deviceId: config.deviceId,
    precision: config.precision,
    cpuFallback: config.cpuFallback,
    ...(config.ortProfileDir ? { profileDir: config.ortProfileDir } : {}),
    ...(config.intraOpThreads > 0 ? { intraOpThreads: config.intraOpThreads } : {}),
    ortRunner: config.ortRunner,
    maxBatch: config.maxBatch,
    maxBatchTokens: config.maxBatchTokens,
    maxLogitsRows: config.maxLogitsRows,
    batchWaitMs: config.batchWaitMs,
    threads: engineThreads(config),
    deviceTurns: config.engineTurns,
    packStreams: config.enginePackSessions,
    segmentSteps: config.segmentSteps,
  });
  const device = engine.device();
  if (device.fallbackReason !== undefined) log?.({ fallbackReason: device.fallbackReason }, 'CUDA unavailable: running on the CPU (RMT_CPU_FALLBACK)');
  const tokenizers = new Map<string, TextTokenizer>();
  for (const m of engine.models()) tokenizers.set(m.name, await loadTokenizer(m.tokenizerFile));
  const metrics = new WorkerMetrics(opts.registry);
  engine.onBatch((b) => metrics.observeBatch(b));
  // Probes share the metrics port: ready once the BullMQ worker runs and Redis answers, not while closing.
  let phase: 'starting' | 'ready' | 'closing' = 'starting';
  const ready = (): ProbeResult => {
    const checks = { worker: phase, redis: redis.status };
    return { status: phase === 'ready' && redis.status === 'ready' ? 'ok' : 'unavailable', checks };
  };
  const metricsServer = config.metricsPort >= 0 ? await metrics.serve(config.metricsPort, { ready }) : undefined;
  const worker = new SessionWorker({
    redis, store, engine, tokenizers, metrics, prefix: config.keyPrefix, layout, ttlSeconds: config.sessionTtlSeconds, concurrency: config.workerConcurrency,
    lockDurationMs: config.lockDurationMs, stalledIntervalMs: config.stalledIntervalMs, maxAttempts: config.requestAttempts,
    maxPendingTextChars: config.maxPendingTextChars, commitEvery: { segments: config.commitSegments, ms: config.commitMs }, ...(log ? { log } : {}),
  });
  await worker.start();
  phase = 'ready';
  return {
    redis, store, engine, tokenizers, worker, metrics,
    ...(metricsServer ? { metricsPort: metricsServer.port } : {}),
    async close(graceMs = config.shutdownGraceMs) {
      phase = 'closing';
      await worker.close(graceMs);
      await metricsServer?.close();
      await engine.close();
      redis.disconnect();
    },
  };
}
