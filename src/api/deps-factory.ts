// Builds ApiDeps from config: the client side of the data plane (Redis, store, queue), progress
// fan-out, model catalog and tokenizers.
import type { Config } from '../config/config.ts';
import { loadCatalog } from '../engine/model-catalog.ts';
import { loadTokenizer, type TextTokenizer } from '../engine/tokenizer.ts';
import { ProgressHub } from '../queue/progress-hub.ts';
import { startClientRuntime } from '../worker/runtime.ts';
import type { ApiDeps } from './deps.ts';

export async function createApiDeps(config: Config): Promise<ApiDeps & { close(): Promise<void> }> {
  const client = startClientRuntime(config);
  const progress = new ProgressHub(client.redis, config.keyPrefix);
  const catalog = await loadCatalog(config.modelsDir, config.models);
  const tokenizers = new Map<string, TextTokenizer>();
  for (const m of catalog.list()) tokenizers.set(m.name, await loadTokenizer(m.tokenizerFile));
  return {
    config, redis: client.redis, store: client.store, queue: client.queue, progress, catalog, tokenizers,
    async close() {
      await progress.close();
      await client.close();
    },
  };
}
