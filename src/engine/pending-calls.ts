// The calls sent to the engine threads and not answered yet, by request id. A thread's reply settles
// its call (an advance's memory copied out of the thread's state ring first: its region is written
// again once the message's slices are released); a chained advance's step replies go to its listener
// as they come. The engine's client ends calls early too (an abort, a failed engine).
import type { Answer, EngineRequest, Reply } from './engine-protocol.ts';
import type { Lane } from './engine-lane.ts';
import type { StreamPlacement } from './stream-placement.ts';

export type Ok = Answer & { ok: true };

interface Pending {
  resolve: (reply: Ok) => void;
  reject: (err: Error) => void;
  /** A chained advance's memory after each segment but the last ('step' replies). */
  onStep?: (index: number, state: Float32Array) => void;
  /** The stream it was placed for, if any. */
  stream?: string;
  /** The thread it was sent to. */
  lane: Lane;
}

export class PendingCalls {
  private readonly calls = new Map<number, Pending>();
  private lastId = 0;

  constructor(private readonly placement: Pick<StreamPlacement, 'done'>) {}

  /** A new request id. */
  nextId(): number {
    return ++this.lastId;
  }

  /** Waits for the reply to `request`, which goes to `lane` (the caller sends it). */
  add<T extends Ok>(lane: Lane, request: EngineRequest, onStep?: Pending['onStep']): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const stream = request.op === 'decode' ? undefined : request.stream;
      this.calls.set(request.id, { resolve: resolve as (r: Ok) => void, reject, lane, ...(onStep ? { onStep } : {}), ...(stream !== undefined ? { stream } : {}) });
      lane.began();
    });
  }

  /** The replies of one message from `lane`'s thread, in order. */
  settle(lane: Lane, replies: readonly Reply[]): void {
    for (const sent of replies) {
      const p = this.calls.get(sent.id);
      if (!p) continue;
      // A memory in the ring is copied out now: its region is written again once released.
      const r: Answer = sent.ok && (sent.op === 'step' || sent.op === 'advance') && !(sent.nextState instanceof Float32Array) ? { ...sent, nextState: lane.ring.read(sent.nextState) } : (sent as Answer);
      if (r.ok && r.op === 'step') {
        try {
          p.onStep?.(r.index, r.nextState);
        } catch {
          // the caller's listener must not break the engine; it sees its own errors
        }
        continue;
      }
      this.end(r.id);
      if (r.ok) p.resolve(r);
      else p.reject(new Error(r.message));
    }
  }

  /**
   * Ends the call before its reply (the caller gave up on it): rejected with `reason()`. The thread it
   * went to, or undefined when it had ended already.
   */
  drop(id: number, reason: () => Error): Lane | undefined {
    const p = this.end(id);
    if (!p) return undefined;
    p.reject(reason());
    return p.lane;
  }

  /** Ends every call with `err` (the engine failed or closed); the lanes have stopped counting them. */
  failAll(err: Error): void {
    const all = [...this.calls.values()];
    this.calls.clear();
    for (const p of all) p.reject(err);
  }

  /** Takes a call off the books: its thread and its stream count it no more. */
  private end(id: number): Pending | undefined {
    const p = this.calls.get(id);
    if (!p) return undefined;
    this.calls.delete(id);
    p.lane.ended();
    this.placement.done(p.stream);
    return p;
  }
}
