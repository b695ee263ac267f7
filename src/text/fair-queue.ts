// A queue shared by several keys (sessions), served round-robin: each key's items keep their order,
// and a key with many items waiting does not hold back the first item of another. The tokenizer pool
// uses it so that streaming sessions each get their next append tokenized in turn, instead of one
// session's backlog going first while every other session's worker side runs dry.
export class FairQueue<T> {
  /** Keys in turn order (a Map iterates in insertion order); each key's items, oldest first. */
  private readonly byKey = new Map<string, T[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(key: string, item: T): void {
    const items = this.byKey.get(key);
    if (items) items.push(item);
    else this.byKey.set(key, [item]);
    this.count++;
  }

  /** The oldest item of the key whose turn it is; that key then goes to the back of the turn order. */
  shift(): T | undefined {
    const next = this.byKey.entries().next();
    if (next.done) return undefined;
    const [key, items] = next.value;
    const item = items.shift()!;
    this.byKey.delete(key);
    if (items.length > 0) this.byKey.set(key, items);
    this.count--;
    return item;
  }

  /** Removes and returns every item (keys in turn order, each key's items in order). */
  drain(): T[] {
    const all = [...this.byKey.values()].flat();
    this.byKey.clear();
    this.count = 0;
    return all;
  }
}
