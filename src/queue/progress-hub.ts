// One Redis subscriber connection per process fans session progress out to local listeners
// (SSE streams, websockets), subscribing to a session's channel only while someone listens.
import type { Redis } from 'ioredis';
import { redisKeys } from '../state/keys.ts';
import type { ProgressEvent } from './request.ts';

type Listener = (ev: ProgressEvent) => void;

export class ProgressHub {
  private readonly sub: Redis;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly keys;

  constructor(redis: Redis, prefix: string) {
    this.keys = redisKeys(prefix);
    this.sub = redis.duplicate();
    this.sub.on('error', () => undefined);
    this.sub.on('message', (channel: string, msg: string) => {
      const set = this.listeners.get(channel);
      if (!set) return;
      const ev = JSON.parse(msg) as ProgressEvent;
      for (const l of set) l(ev);
    });
  }

  /** Resolves once subscribed, so no event published after it returns is missed. */
  async subscribe(sessionId: string, listener: Listener): Promise<() => Promise<void>> {
    const channel = this.keys.progressChannel(sessionId);
    let set = this.listeners.get(channel);
    if (!set) {
      set = new Set();
      this.listeners.set(channel, set);
      await this.sub.subscribe(channel);
    }
    set.add(listener);
    return async () => {
      const s = this.listeners.get(channel);
      if (!s) return;
      s.delete(listener);
      if (s.size === 0) {
        this.listeners.delete(channel);
        await this.sub.unsubscribe(channel).catch(() => undefined);
      }
    };
  }

  async close(): Promise<void> {
    this.sub.disconnect();
  }
}
