// Builds ApiDeps from config: Redis, store, queue, progress fan-out, model catalog, tokenizers.
import type { Config } from '../config/config.ts';
import { loadCatalog } from '../engine/model-catalog.ts';
import { loadTokenizer, type TextTokenizer } from '../engine/tokenizer.ts';
import { ProgressHub } from '../queue/progress-hub.ts';
import { RequestQueue } from '../queue/request-queue.ts';
import { SessionStore } from '../state/session-store.ts';
import { connectRedis } from '../worker/runtime.ts';
import type { ApiDeps } from './deps.ts';

export async function createApiDeps(config: Config): Promise<ApiDeps & { close(): Promise<void> }> {
  const redis = connectRedis(config);
  const store = new SessionStore(redis, { prefix: config.keyPrefix, ttlSeconds: config.sessionTtlSeconds });
  const queue = new RequestQueue({ redis, store, prefix: config.keyPrefix, attempts: config.jobAttempts });
  const progress = new ProgressHub(redis, config.keyPrefix);
  const catalog = await loadCatalog(config.modelsDir, config.models);
  const tokenizers = new Map<string, TextTokenizer>();
  for (const m of catalog.list()) tokenizers.set(m.name, await loadTokenizer(m.tokenizerFile));
  return {
    config, redis, store, queue, progress, catalog, tokenizers,
    async close() {
      await progress.close();
      await queue.close();
      redis.disconnect();
    },
  };
}
