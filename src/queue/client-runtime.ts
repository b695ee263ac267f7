// What submitters (the API, the CLI) run against Redis: the session store, the request queue and the
// progress channel. Here, not in worker/, so that the API process imports nothing of the worker.
import type { RedisClient } from '../state/redis-connection.ts';
import type { Config } from '../config/config.ts';
import { SessionStore } from '../state/session-store.ts';
import { connectRedis, durability, keyLayout } from '../state/redis-connection.ts';
import { RequestQueue } from './request-queue.ts';
import { ProgressHub } from './progress-hub.ts';

/** What submitters (the API, the CLI) use: the store, the request queue and the progress channel. */
export interface ClientRuntime {
  redis: RedisClient;
  store: SessionStore;
  queue: RequestQueue;
  progress: ProgressHub;
  close(): Promise<void>;
}

export function startClientRuntime(config: Config): ClientRuntime {
  const redis = connectRedis(config);
  const layout = keyLayout(config);
  const acks = durability(config);
  const store = new SessionStore(redis, { prefix: config.keyPrefix, ttlSeconds: config.sessionTtlSeconds, layout, durability: acks });
  const progress = new ProgressHub(redis, config.keyPrefix, layout);
  const queue = new RequestQueue({ redis, prefix: config.keyPrefix, ttlSeconds: config.sessionTtlSeconds, layout, durability: acks, progress });
  return {
    redis, store, queue, progress,
    async close() {
      await queue.close();
      await progress.close();
      redis.disconnect();
    },
  };
}
