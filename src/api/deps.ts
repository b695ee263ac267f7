// What the routes are given: built once by app.ts (or a test), so routes never construct clients.
import type { RedisClient } from '../state/redis-connection.ts';
import type { Config } from '../config/config.ts';
import type { ModelCatalog } from '../model/model-catalog.ts';
import type { TextTokenizer } from '../text/tokenizer.ts';
import type { Pretokenizer } from './pretokenizer.ts';
import type { ProgressHub } from '../queue/progress-hub.ts';
import type { RequestQueue } from '../queue/request-queue.ts';
import type { SessionStore } from '../state/session-store.ts';

export interface ApiDeps {
  config: Config;
  redis: RedisClient;
  store: SessionStore;
  queue: RequestQueue;
  progress: ProgressHub;
  catalog: ModelCatalog;
  tokenizers: Map<string, TextTokenizer>;
  /** Tokenizes long appends before they are queued (RMT_TOKENIZER_THREADS > 0); absent: workers do. */
  pretokenizer?: Pretokenizer;
}
