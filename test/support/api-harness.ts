// A real stack for API tests: private redis-server, an in-process worker (engine thread), the app.
import type { FastifyInstance } from 'fastify';
import { buildApp, type AppOptions } from '../../src/api/app.ts';
import { createApiDeps } from '../../src/api/deps-factory.ts';
import type { ApiDeps } from '../../src/api/deps.ts';
import { loadConfig, type Config } from '../../src/config/config.ts';
import { startWorkerRuntime, type WorkerRuntime } from '../../src/worker/runtime.ts';
import { apiRegistry } from '../../src/api/metrics.ts';
import { startRedis, type RedisServerHandle } from './redis-server.ts';

export interface ApiHarness {
  app: FastifyInstance;
  deps: ApiDeps;
  config: Config;
  redis: RedisServerHandle;
  worker: WorkerRuntime;
  /** Listens on 127.0.0.1:<free port> (for SSE, websockets, the openai client); returns the base URL. */
  listen(): Promise<string>;
  close(): Promise<void>;
}

let n = 0;

/** Stands for the Redis when the harness runs on a cluster the test started (REDIS_CLUSTER_NODES in env). */
const NO_SERVER: RedisServerHandle = { url: '', port: 0, stop: async () => undefined, kill: () => undefined };

export async function startApiHarness(opts: AppOptions = {}, env: NodeJS.ProcessEnv = {}): Promise<ApiHarness> {
  const redis = env.REDIS_CLUSTER_NODES ? NO_SERVER : await startRedis();
  const config = loadConfig({
    REDIS_URL: redis.url, RMT_PREFIX: `api${process.pid}x${++n}`, RMT_INTRA_OP_THREADS: '1',
    RMT_LOCK_MS: '5000', RMT_STALLED_CHECK_MS: '2000', ...env,
  });
  const worker = await startWorkerRuntime(config, undefined, { registry: apiRegistry }); // as `serve` does
  const deps = await createApiDeps(config);
  const app = await buildApp(deps, opts);
  return {
    app, deps, config, redis, worker,
    async listen() {
      await app.listen({ port: 0, host: '127.0.0.1' });
      const addr = app.server.address();
      return `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
    },
    async close() {
      await app.close();
      await deps.close();
      await worker.close(0);
      await redis.stop();
    },
  };
}
