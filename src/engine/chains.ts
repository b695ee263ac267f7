// Chained advances inside an engine thread: a request of several segments runs them back to back, each
// segment's memory feeding the next. A chain goes back to the front of the queue after each of its
// runs, so its session stays in step with the others instead of waiting on a round trip through the
// main thread. A chain sent with `keep` may be continued by a later advance (`after`), which starts
// from its last memory in the run right after its last segment. This class owns where each chain is
// and what waits on whom; the scheduler owns the queue and the executor the runs.
import type { EngineRequest, Reply } from './engine-protocol.ts';

export type Advance = Extract<EngineRequest, { op: 'advance' }>;

/** One of the segments a run gives a row: the chain it belongs to, its index there, where its ids start. */
export interface Slot {
  r: Advance;
  index: number;
  offset: number;
}

/** What a run of advances hands back, walked by `afterRun`: memory per row per segment, and each row's last. */
export interface AdvanceOutput {
  steps: Float32Array[][];
  last: Float32Array[];
}

/** A memory a run hands back: a step reply (`index`: a chain going on) or an advance reply (one ended). */
export interface StateSend {
  id: number;
  index?: number;
  state: Float32Array;
}

export class Chains {
  /**
   * Chains not finished yet (queued or in a run): the segment each is at and where its ids start. A
   * cancelled chain is removed from here (and from the queue): one in a run at the time is dropped when
   * the run ends.
   */
  private readonly at = new Map<number, { index: number; offset: number }>();
  /** Chains sent with `keep` that have not ended yet: a continuation of one of them waits for it. */
  private readonly keptLive = new Set<number>();
  /** Continuations waiting for the chain they continue from to end, by that chain's id. */
  private readonly parked = new Map<number, Advance>();
  /**
   * Last memory of kept chains that ended: a continuation sent before the main thread saw the end
   * claims it; otherwise the main thread says 'forget' once it has the reply.
   */
  private readonly finals = new Map<number, Float32Array>();

  /**
   * Takes in a checked advance: 'run' (queue it), 'parked' (it waits for the chain it continues, and
   * joins the runs when that one ends, in its place: afterRun), or why it is refused.
   */
  admit(r: Advance): 'run' | 'parked' | { refused: string } {
    if (r.keep) this.keptLive.add(r.id);
    if (r.after === undefined) {
      this.start(r);
      return 'run';
    }
    const last = this.finals.get(r.after);
    if (last) {
      this.finals.delete(r.after);
      this.startContinuation(r, last);
      return 'run';
    }
    if (this.keptLive.has(r.after)) {
      this.parked.set(r.after, r);
      return 'parked';
    }
    return { refused: `advance(${r.model}): request ${r.after}, continued from, failed, was cancelled or was not sent to be continued` };
  }

  /** The main thread cancelled request `id`: its chain and any continuation of it end. */
  cancel(id: number): Reply[] {
    this.at.delete(id);
    for (const [after, cont] of this.parked) if (cont.id === id) this.parked.delete(after);
    const replies = this.endKept(id, 'was cancelled');
    this.finals.delete(id);
    return replies;
  }

  /** The main thread has a kept chain's last memory and sent no continuation. */
  forget(id: number): void {
    this.finals.delete(id);
  }

  /** Request `id` failed: its chain ends, and a continuation waiting for it fails too. */
  fail(id: number, why: string): Reply[] {
    this.at.delete(id);
    return this.endKept(id, `failed: ${why}`);
  }

  clear(): void {
    this.at.clear();
    this.keptLive.clear();
    this.parked.clear();
    this.finals.clear();
  }

  /** The ids of the segment a request runs next (a chained advance's current segment). */
  segmentIds(r: Exclude<EngineRequest, { op: 'decode' }>): Int32Array {
    if (r.op !== 'advance') return r.ids;
    const at = this.at.get(r.id);
    if (!at) return r.ids.subarray(0, r.lengths[0]);
    return r.ids.subarray(at.offset, at.offset + r.lengths[at.index]!);
  }

  tokensOf(r: EngineRequest): number {
    return r.op === 'decode' ? 1 : this.segmentIds(r).length;
  }

  /**
   * A row's next `k` segments at most: its chain from where it is, then, when the chain is kept, the
   * continuation parked after it (and after that one, the next). Fewer when no more are here yet.
   */
  slotsOf(r: Advance, k: number): Slot[] {
    const slots: Slot[] = [];
    let cur: Advance | undefined = r;
    let { index, offset } = this.at.get(r.id) ?? { index: 0, offset: 0 };
    while (cur && slots.length < k) {
      for (; index < cur.lengths.length && slots.length < k; offset += cur.lengths[index]!, index++) slots.push({ r: cur, index, offset });
      if (index < cur.lengths.length) break;
      cur = cur.keep ? this.parked.get(cur.id) : undefined;
      index = 0;
      offset = 0;
    }
    return slots;
  }

  /**
   * After a run of `plan` (each row's segments, `k` per row), walks each row's segments in order: a
   * step reply per segment, an advance reply where a chain ends, the continuation taking over from that
   * memory; what was cancelled during the run is dropped from there on. Returns the memories to send,
   * the chains going on to a next run (`again`) and the tokens run.
   */
  afterRun(plan: Slot[][], reqs: EngineRequest[], out: AdvanceOutput): { sends: StateSend[]; again: EngineRequest[]; tokens: number } {
    const k = plan[0]!.length;
    const again: EngineRequest[] = [];
    const sends: StateSend[] = [];
    let tokens = 0;
    plan.forEach((slots, i) => {
      const first = reqs[i] as Advance;
      for (const s of slots) tokens += s.r.lengths[s.index]!;
      if (first.lengths.length > 1 && !this.at.has(first.id)) return; // cancelled during this run: its caller has gone
      for (let j = 0; j < k; j++) {
        const { r, index, offset } = slots[j]!;
        const state = out.steps[i]![j]!;
        if (index + 1 < r.lengths.length) {
          if (r.steps) sends.push({ id: r.id, index, state });
          if (j === k - 1) {
            this.at.set(r.id, { index: index + 1, offset: offset + r.lengths[index]! });
            again.push({ ...r, state: out.last[i]! });
          }
          continue;
        }
        this.at.delete(r.id);
        sends.push({ id: r.id, state });
        // Not kept, or kept and cancelled during this run (the cancel ended it): nothing goes on from here.
        if (!(r.keep && this.keptLive.delete(r.id))) break;
        const cont = this.parked.get(r.id);
        if (!cont) {
          this.finals.set(r.id, state);
          break;
        }
        this.parked.delete(r.id);
        if (j === k - 1 || slots[j + 1]!.r !== cont) {
          // It takes this chain's place in the next run, from this memory (not through the main thread).
          this.startContinuation(cont, state);
          again.push(cont);
          break;
        }
        // Its first segments ran in this run, right after this chain's last.
        this.start(cont);
      }
    });
    return { sends, again, tokens };
  }

  /** A chained advance of several segments starts at its first. */
  private start(r: Advance): void {
    if (r.lengths.length > 1) this.at.set(r.id, { index: 0, offset: 0 });
  }

  /** Starts a continuation from `state`, the last memory of the chain it continues. */
  private startContinuation(r: Advance, state: Float32Array): void {
    r.state = state;
    this.start(r);
  }

  /** A chain ended without a last memory (failed, cancelled): its waiting continuation fails with it. */
  private endKept(id: number, why: string): Reply[] {
    this.keptLive.delete(id);
    const cont = this.parked.get(id);
    if (!cont) return [];
    this.parked.delete(id);
    return [{ id: cont.id, ok: false, message: `advance(${cont.model}): request ${id}, continued from, ${why}` }];
  }
}
