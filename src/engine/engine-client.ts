// The main thread's side of the engine threads, as vLLM's engine core client is to its core: a request
// goes to a thread (stream-placement.ts; a KV cache's steps to the thread holding it) and waits there
// (pending-calls.ts) until the thread's reply message settles it; each message's batch stats go to
// the listeners. The client owns the engine's life: one thread lost fails the engine, since its
// sessions' requests and KV caches are gone and the others would wait for its turn on the device.
import type { BatchStat, EngineRequest, Op } from './engine-protocol.ts';
import { updateRefs, type Lane, type RepliesMessage } from './engine-lane.ts';
import { KvHandles } from './kv-handles.ts';
import { laneOfKv } from './kv-registry.ts';
import { PendingCalls, type Ok } from './pending-calls.ts';
import { StreamPlacement } from './stream-placement.ts';

export class EngineClient {
  private readonly placement: StreamPlacement;
  private readonly pending: PendingCalls;
  /** Live KV handles on this side, with their model: decode and release are checked here first. */
  private readonly kvs = new KvHandles();
  private readonly listeners = new Set<(s: BatchStat) => void>();
  /** Set once the engine cannot take work: closed, or a thread died (the reason). */
  private dead: string | undefined;
  private closing: Promise<void> | undefined;

  constructor(private readonly lanes: readonly Lane[], placement: { packStreams: number; streamIdleMs: number }) {
    this.placement = new StreamPlacement(lanes, placement.packStreams, placement.streamIdleMs);
    this.pending = new PendingCalls(this.placement);
    updateRefs(lanes);
    for (const lane of lanes) lane.listen((msg) => this.onReplies(lane, msg), (reason) => this.lost(lane, reason));
  }

  /** Runs `body` and turns both its throws and a dead engine into a rejected promise. */
  call<T>(body: () => Promise<T>): Promise<T> {
    if (this.dead !== undefined) return Promise.reject(new Error(this.dead));
    try {
      return body();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  nextId(): number {
    return this.pending.nextId();
  }

  /** The thread for a request of `stream` (see StreamPlacement). */
  laneFor(stream: string | undefined): Lane {
    return this.placement.laneFor(stream);
  }

  /** The thread with this index (a chain's, continued there). */
  lane(index: number): Lane {
    return this.lanes[index]!;
  }

  /** Sends `request` to `lane`, moving `buffers`; resolves with its reply. */
  submit<T extends Ok>(lane: Lane, request: EngineRequest, buffers: ArrayBuffer[], onStep?: (index: number, state: Float32Array) => void): Promise<T> {
    const reply = this.pending.add<T>(lane, request, onStep);
    updateRefs(this.lanes);
    lane.send({ kind: 'request', request }, buffers);
    return reply;
  }

  /** Gives up on request `id` (its caller's signal aborted, with `reason`): rejected, and its thread told to drop it. */
  abort(id: number, reason: unknown): void {
    const lane = this.pending.drop(id, () => (reason instanceof Error ? reason : new Error(String(reason))));
    if (!lane) return;
    updateRefs(this.lanes);
    this.tell(lane, { kind: 'cancel', id });
  }

  /** Tells the thread of a chain that no continuation is coming: its copy of the last memory can go. */
  forget(lane: Lane, id: number): void {
    this.tell(lane, { kind: 'forget', id });
  }

  /** Throws, naming the call, unless `kv` is a live handle of `model`. */
  checkKv(where: string, kv: number, model: string): void {
    this.kvs.check(where, kv, model);
  }

  /** A prefill's cache handle, now live (unless the engine died meanwhile: its caches are gone). */
  keepKv(kv: number, model: string): void {
    if (this.dead === undefined) this.kvs.add(kv, model);
  }

  /** The thread that holds this cache. */
  laneOfKv(kv: number): Lane {
    return this.lanes[laneOfKv(kv, this.lanes.length)]!;
  }

  releaseKv(kv: number): void {
    if (!this.kvs.release(kv) || this.dead !== undefined) return;
    this.laneOfKv(kv).send({ kind: 'release', kv });
  }

  onBatch(listener: (s: BatchStat) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Fails what is pending and ends the threads (letting each finish its run, unless the engine died). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const wasDead = this.dead !== undefined;
      this.dead ??= 'engine is closed';
      this.failAll('engine closed');
      if (wasDead) {
        await Promise.allSettled(this.lanes.map((l) => l.terminate()));
        return;
      }
      await Promise.all(this.lanes.map((l) => l.close()));
    })();
    return this.closing;
  }

  /** An op that is not a request, for a thread of a live engine. */
  private tell(lane: Lane, op: Op): void {
    if (this.dead === undefined) lane.send(op);
  }

  private onReplies(lane: Lane, msg: RepliesMessage): void {
    for (const s of msg.stats) {
      for (const l of this.listeners) {
        try {
          l(s);
        } catch {
          // a metrics listener must not break the engine
        }
      }
    }
    this.pending.settle(lane, msg.replies);
    if (msg.ringEnd !== undefined) lane.ring.release(msg.ringEnd);
    updateRefs(this.lanes);
  }

  private lost(lane: Lane, reason: string): void {
    if (this.dead !== undefined) return;
    this.dead = reason;
    this.failAll(reason);
    for (const other of this.lanes) if (other !== lane) void other.terminate();
  }

  private failAll(reason: string): void {
    this.kvs.clear();
    for (const lane of this.lanes) lane.stop();
    this.pending.failAll(new Error(reason));
  }
}
