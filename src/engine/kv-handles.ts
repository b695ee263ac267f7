// The KV handles the main thread has handed out (prefill) and not released, with their model: a decode
// or release is checked here before it goes to the thread that holds the cache (kv-registry.ts).

export class KvHandles {
  private readonly live = new Map<number, string>();

  /** A prefill's cache, of `model`. */
  add(kv: number, model: string): void {
    this.live.set(kv, model);
  }

  /** Throws, naming the call (`where`), unless `kv` is live and of `model`. */
  check(where: string, kv: number, model: string): void {
    const owner = this.live.get(kv);
    if (owner === undefined) throw new Error(`${where}: KV handle ${String(kv)} is unknown or was released`);
    if (owner !== model) throw new Error(`${where}: KV handle ${kv} belongs to model '${owner}'`);
  }

  /** Whether `kv` was live (it is not any more). */
  release(kv: number): boolean {
    return this.live.delete(kv);
  }

  clear(): void {
    this.live.clear();
  }
}
