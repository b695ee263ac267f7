// The one place a Redis connection is made from the configuration.
import { Redis } from 'ioredis';
import type { Config } from '../config/config.ts';

export function redisUrl(config: Pick<Config, 'redisUrl'>): string {
  return config.redisUrl || 'redis://127.0.0.1:6379';
}

export function connectRedis(config: Pick<Config, 'redisUrl'>): Redis {
  // maxRetriesPerRequest null: BullMQ's blocking connections require it, and a brief Redis restart
  // should delay requests, not fail them.
  const redis = new Redis(redisUrl(config), { maxRetriesPerRequest: null, lazyConnect: false });
  // ioredis reconnects by itself; without a listener every failed attempt is an "unhandled error".
  redis.on('error', () => undefined);
  return redis;
}
