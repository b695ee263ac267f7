// KV caches kept in an engine thread, keyed by handle; the main thread only ever sees handles. Handles
// are unique across the engine's threads and say which thread holds the cache: the handles of thread
// `lane` of `lanes` are lane + 1 + k·lanes. Both sides number them here (the thread makes them,
// engine-client.ts routes a cache's steps by them). Types only from kv-cache.ts: the main thread
// imports this module and must not load onnxruntime.
import type { GrowableKvCache } from './kv-cache.ts';

/** The `k`-th handle (0-based) of thread `lane` of `lanes`. */
export function kvHandle(lane: number, lanes: number, k: number): number {
  return lane + 1 + k * lanes;
}

/** The thread (lane) that holds the cache with this handle. */
export function laneOfKv(kv: number, lanes: number): number {
  return (kv - 1) % lanes;
}

export interface KvEntry {
  model: string;
  /**
   * The cache, and for a state-conditioned package the state it was prefilled with
   * (cache.conditioning): every decode step of the cache is fed that state again.
   */
  cache: GrowableKvCache;
  /** Decode requests for this cache that are queued or running. */
  queued: number;
  /** Released by the main thread while decodes were still queued: dropped when they are done. */
  released: boolean;
}

/** One thread's caches. */
export class KvRegistry {
  private readonly entries = new Map<number, KvEntry>();
  /** How many handles this thread has made. */
  private made = 0;

  constructor(
    private readonly lane: number,
    private readonly lanes: number,
  ) {}

  get(kv: number): KvEntry | undefined {
    return this.entries.get(kv);
  }

  /** Keeps a new cache (a prefill's) and returns its handle. */
  add(model: string, cache: GrowableKvCache): number {
    const kv = kvHandle(this.lane, this.lanes, this.made++);
    this.entries.set(kv, { model, cache, queued: 0, released: false });
    return kv;
  }

  /** A decode for this cache was queued (the request was checked: the cache is here). */
  hold(kv: number): void {
    this.entries.get(kv)!.queued++;
  }

  /** A decode for this cache is done (run or failed): a released cache goes with its last one. */
  unhold(kv: number): void {
    const e = this.entries.get(kv);
    if (!e) return;
    e.queued--;
    if (e.released && e.queued <= 0) this.entries.delete(kv);
  }

  /** The main thread released the handle: the cache goes now, or after the decodes queued for it. */
  release(kv: number): void {
    const e = this.entries.get(kv);
    if (!e) return;
    if (e.queued > 0) e.released = true;
    else this.entries.delete(kv);
  }

  clear(): void {
    this.entries.clear();
  }
}
