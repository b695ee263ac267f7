// One Redis subscriber connection per process fans session progress out to local listeners
// (SSE streams, websockets), subscribing to a session's channel only while someone listens. On a
// cluster the channels are sharded (SSUBSCRIBE: the event stays in its session's shard, and ioredis
// keeps one subscriber per master, moving subscriptions when a replica takes over).
import { redisKeys, SINGLE_REDIS, type KeyLayout } from '../state/keys.ts';
import { duplicateClient, isCluster, type RedisClient } from '../state/redis-connection.ts';
import type { ProgressEvent } from './request.ts';

type Listener = (ev: ProgressEvent) => void;

export class ProgressHub {
  private readonly sub: RedisClient;
  private readonly sharded: boolean;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly keys;

  constructor(redis: RedisClient, prefix: string, layout: KeyLayout = SINGLE_REDIS) {
    this.keys = redisKeys(prefix, layout);
    this.sharded = isCluster(redis);
    this.sub = duplicateClient(redis);
    const onMessage = (channel: string, msg: string) => {
      const set = this.listeners.get(channel);
      if (!set) return;
      const ev = JSON.parse(msg) as ProgressEvent;
      for (const l of set) l(ev);
    };
    this.sub.on(this.sharded ? 'smessage' : 'message', onMessage);
  }

  /** Resolves once subscribed, so no event published after it returns is missed. */
  async subscribe(sessionId: string, listener: Listener): Promise<() => Promise<void>> {
    const channel = this.keys.progressChannel(sessionId);
    let set = this.listeners.get(channel);
    if (!set) {
      set = new Set();
      this.listeners.set(channel, set);
      await (this.sharded ? this.sub.ssubscribe(channel) : this.sub.subscribe(channel));
    }
    set.add(listener);
    return async () => {
      const s = this.listeners.get(channel);
      if (!s) return;
      s.delete(listener);
      if (s.size === 0) {
        this.listeners.delete(channel);
        await (this.sharded ? this.sub.sunsubscribe(channel) : this.sub.unsubscribe(channel)).catch(() => undefined);
      }
    };
  }

  async close(): Promise<void> {
    this.sub.disconnect();
  }
}
