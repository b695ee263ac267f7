// The one place a connection is made from the configuration: one Redis (REDIS_URL) or a Redis Cluster
// (REDIS_CLUSTER_NODES), and the key layout and durability that go with it.
import { Cluster, Redis } from 'ioredis';
import { ConfigError, type Config } from '../config/config.ts';
import type { KeyLayout } from './keys.ts';
import type { Durability } from './durable-ack.ts';

/** A connection to one Redis or to a cluster: the data plane speaks only commands both route. */
export type RedisClient = Redis | Cluster;

type ConnectionConfig = Pick<Config, 'redisUrl' | 'redisClusterNodes'>;

/** Queue shards on a cluster when RMT_QUEUE_SHARDS is 0: the masters of the smallest cluster with replicas. */
export const DEFAULT_CLUSTER_QUEUE_SHARDS = 3;

/**
 * The configured Redis. There is no default address: a Redis that merely answers on localhost:6379
 * may be someone else's database, so only REDIS_URL (or the CLI, which resolves the private Redis of
 * `serve` into it: src/cli/embedded-redis.ts) names one.
 */
export function redisUrl(config: Pick<Config, 'redisUrl'>): string {
  if (!config.redisUrl) throw new ConfigError('REDIS_URL is not set: set it to redis://HOST:PORT (or run `rmt-serve serve`, which starts a private Redis)');
  return config.redisUrl;
}

export function isCluster(r: RedisClient): r is Cluster {
  return r.isCluster;
}

export function keyLayout(config: Pick<Config, 'redisClusterNodes' | 'queueShards'>): KeyLayout {
  const cluster = config.redisClusterNodes.length > 0;
  return { cluster, queueShards: config.queueShards > 0 ? config.queueShards : cluster ? DEFAULT_CLUSTER_QUEUE_SHARDS : 1 };
}

export function durability(config: Pick<Config, 'redisClusterNodes' | 'redisWaitReplicas' | 'redisWaitTimeoutMs'>): Durability {
  const replicas = config.redisWaitReplicas >= 0 ? config.redisWaitReplicas : config.redisClusterNodes.length > 0 ? 1 : 0;
  return { replicas, timeoutMs: config.redisWaitTimeoutMs };
}

function clusterNode(spec: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(spec);
  if (!m) throw new ConfigError(`REDIS_CLUSTER_NODES: expected host:port entries, got ${JSON.stringify(spec)}`);
  return { host: m[1]!, port: Number(m[2]) };
}

export function connectRedis(config: ConnectionConfig): RedisClient {
  // maxRetriesPerRequest null: BullMQ's blocking connections require it, and a brief Redis restart
  // (or a failover) should delay requests, not fail them.
  const redis: RedisClient = config.redisClusterNodes.length > 0
    ? new Cluster(config.redisClusterNodes.map(clusterNode), {
      redisOptions: { maxRetriesPerRequest: null },
      // One subscriber per master, so progress events travel by SPUBLISH/SSUBSCRIBE in their session's shard.
      shardedSubscribers: true,
      // A failover takes the cluster's node timeout and an election: keep retrying rather than fail requests.
      retryDelayOnClusterDown: 200,
      retryDelayOnFailover: 200,
      retryDelayOnTryAgain: 200,
      maxRedirections: 64,
      clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    })
    : new Redis(redisUrl(config), { maxRetriesPerRequest: null, lazyConnect: false });
  // ioredis reconnects by itself; without a listener every failed attempt is an "unhandled error".
  redis.on('error', () => undefined);
  return redis;
}

/**
 * Another connection to the same Redis or cluster (a subscriber, BullMQ's blocking one), retrying
 * commands without limit as BullMQ's workers require (connectRedis's clusters already do).
 */
export function duplicateClient(r: RedisClient): RedisClient {
  const d: RedisClient = isCluster(r) ? r.duplicate() : r.duplicate({ maxRetriesPerRequest: null });
  d.on('error', () => undefined); // reconnects by itself; lasting trouble shows in the commands
  return d;
}

/** The masters to run a whole-keyspace command on (SCAN): the cluster's masters, or the one Redis. */
export function masters(r: RedisClient): Redis[] {
  return isCluster(r) ? r.nodes('master') : [r];
}

/** PUBLISH on one Redis; on a cluster SPUBLISH, so the event stays in its channel's shard. */
export async function publishTo(r: RedisClient, channel: string, message: string): Promise<void> {
  if (isCluster(r)) await r.spublish(channel, message);
  else await r.publish(channel, message);
}
