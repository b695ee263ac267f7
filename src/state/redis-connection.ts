// The one place a Redis connection is made from the configuration.
import { Redis } from 'ioredis';
import { ConfigError, type Config } from '../config/config.ts';

/**
 * The configured Redis. There is no default address: a Redis that merely answers on localhost:6379
 * may be someone else's database, so only REDIS_URL (or the CLI, which resolves the private Redis of
 * `serve` into it: src/cli/embedded-redis.ts) names one.
 */
export function redisUrl(config: Pick<Config, 'redisUrl'>): string {
  if (!config.redisUrl) throw new ConfigError('REDIS_URL is not set: set it to redis://HOST:PORT (or run `rmt-serve serve`, which starts a private Redis)');
  return config.redisUrl;
}

export function connectRedis(config: Pick<Config, 'redisUrl'>): Redis {
  // maxRetriesPerRequest null: BullMQ's blocking connections require it, and a brief Redis restart
  // should delay requests, not fail them.
  const redis = new Redis(redisUrl(config), { maxRetriesPerRequest: null, lazyConnect: false });
  // ioredis reconnects by itself; without a listener every failed attempt is an "unhandled error".
  redis.on('error', () => undefined);
  return redis;
}
