// Builds ApiDeps from config: the client side of the data plane (Redis, store, queue), progress
// fan-out, model catalog and tokenizers, and the tokenizer threads for long appends.
import type { Config } from '../config/config.ts';
import { loadCatalog } from '../model/model-catalog.ts';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.ts';
import { TokenizerPool } from '../text/tokenizer-pool.ts';
import { startClientRuntime } from '../queue/client-runtime.ts';
import type { ApiDeps } from './deps.ts';
import { Pretokenizer } from './pretokenizer.ts';

export async function createApiDeps(config: Config): Promise<ApiDeps & { close(): Promise<void> }> {
  const catalog = await loadCatalog(config.modelsDir, config.models);
  const tokenizers = new Map<string, TextTokenizer>();
  for (const m of catalog.list()) tokenizers.set(m.name, await loadTokenizer(m.tokenizerFile));
  const pool = config.tokenizerThreads > 0
    ? await TokenizerPool.start({ threads: config.tokenizerThreads, nice: config.tokenizerNice, tokenizers: Object.fromEntries(catalog.list().map((m) => [m.name, m.tokenizerFile])) })
    : undefined;
  const client = startClientRuntime(config);
  return {
    // One progress hub (one subscriber connection) for the routes and the queue's results: a session's
    // token events and its 'done' then arrive in publication order on the one connection.
    config, redis: client.redis, store: client.store, queue: client.queue, progress: client.progress, catalog, tokenizers,
    ...(pool ? { pretokenizer: new Pretokenizer(pool) } : {}),
    async close() {
      await client.close();
      await pool?.close();
    },
  };
}
