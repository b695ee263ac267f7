// Running one planned group on the loaded models: a batched call per group (in chunks where a graph's
// per-position logits call for it), padded to a batch-size bucket (batch-buckets.ts); advances' memory
// goes out through the state ring. With batchInvariant (the default) segment runs are padded to
// segment_length and decode runs' past to the cache capacity, so batch composition cannot change a
// row's results (see segment-feeds.ts, batch-decode.ts).
import { performance } from 'node:perf_hooks';
import { bucketOf } from './batch-buckets.ts';
import { decodeBatch, prefillBatch, type BatchPrefillResult } from './batch-decode.ts';
import type { Chains, Slot } from './chains.ts';
import type { DeviceTurn } from './device-turn.ts';
import type { BatchStat, EngineRequest, Reply, WorkerConfig } from './engine-protocol.ts';
import { invariant } from './invariant.ts';
import { kvCapacity } from './kv-cache.ts';
import type { KvRegistry } from './kv-registry.ts';
import { segmentOptions, type Loaded } from './loader.ts';
import { chunksOf } from './logits-rows.ts';
import type { RunGate } from './onnx-runtime.ts';
import { precheck } from './request-check.ts';
import { runSegment, runSegmentState, runSegmentSteps } from './rmt-runner.ts';
import type { Graph, Group } from './scheduler.ts';
import type { SegmentRow } from './segment-feeds.ts';
import type { RingSlice, StateRingWriter } from './state-ring.ts';

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The onnxruntime runs of one batch (one, or several when it runs in chunks). */
interface BatchRuns {
  /** When the first got the device (ms since the epoch). */
  startedAt: number;
  /** How long they held the device, and waited for it. */
  ms: number;
  waitedMs: number;
  runs: number;
}

/**
 * Every onnxruntime run of the thread goes through `exclusive` (the packages' run gate): it takes the
 * device turn for the run alone, and adds the run's timing to the batch being run.
 */
export class RunClock {
  private batch: BatchRuns = { startedAt: 0, ms: 0, waitedMs: 0, runs: 0 };
  private done = 0;

  constructor(private readonly turn: DeviceTurn) {}

  readonly exclusive: RunGate = async (run) => {
    const { settled, timing } = await this.turn.take(run);
    const b = this.batch;
    this.batch = { startedAt: b.runs === 0 ? timing.startedAt : b.startedAt, ms: b.ms + timing.ms, waitedMs: b.waitedMs + timing.waitedMs, runs: b.runs + 1 };
    this.done++;
    if (settled.status === 'rejected') throw settled.reason;
    return settled.value;
  };

  /** onnxruntime runs so far (the loop yields to the event loop only after an iteration without one). */
  get runs(): number {
    return this.done;
  }

  /** Times `body`'s runs as one batch. */
  async timeBatch<T>(body: () => Promise<T>): Promise<{ value: T; runs: BatchRuns }> {
    this.batch = { startedAt: 0, ms: 0, waitedMs: 0, runs: 0 };
    const value = await body();
    return { value, runs: this.batch };
  }
}

/**
 * Results of one run: replies with the buffers to transfer, the rows run (padding included), and the
 * chained advances that go on to their next segment.
 */
interface RunOutcome {
  replies: Reply[];
  transfer: ArrayBuffer[];
  runRows: number;
  again: EngineRequest[];
  /** Advance runs: segments per row (1, or the segment_state_steps graph's K) and the tokens run. */
  steps?: { k: number; tokens: number };
}

/** A group's replies (one message), the batches' stats, and the chains going on to a next run. */
export interface GroupResult {
  replies: Reply[];
  stats: BatchStat[];
  transfer: ArrayBuffer[];
  again: EngineRequest[];
}

export class Executor {
  constructor(
    private readonly config: WorkerConfig,
    readonly models: ReadonlyMap<string, Loaded>,
    private readonly ring: StateRingWriter,
    private readonly kvs: KvRegistry,
    private readonly chains: Chains,
    private readonly clock: RunClock,
  ) {}

  /** The ring position after every slice written so far (each replies message says it). */
  get ringEnd(): number {
    return this.ring.end;
  }

  /** Runs one group; if the batched run fails, each request runs alone so only the bad one fails. */
  async run(group: Group): Promise<GroupResult> {
    const loaded = this.models.get(group.model)!;
    const stats: BatchStat[] = [];
    // Requests that cannot run any more (a cache filled up by the steps queued before) fail alone.
    const early: Reply[] = [];
    const runnable = group.requests.filter((r) => {
      const problem = precheck(loaded, r, this.kvs);
      if (problem !== undefined) early.push({ id: r.id, ok: false, message: problem });
      return problem === undefined;
    });
    const g: Group = { ...group, requests: runnable };
    const timed = async (reqs: EngineRequest[]): Promise<RunOutcome> => {
      // Counted before the run, which moves chained advances on to their next segment.
      const tokens = reqs.reduce((s, r) => s + this.chains.tokensOf(r), 0);
      const t0 = performance.now();
      const { value: out, runs } = await this.clock.timeBatch(() => this.runBatch(loaded, g.graph, reqs));
      // Waiting for another thread's run is not this batch's work.
      const ms = performance.now() - t0 - runs.waitedMs;
      stats.push({
        graph: g.graph, model: g.model, rows: reqs.length, runRows: out.runRows, tokens: out.steps?.tokens ?? tokens, ms, lane: this.config.lane,
        startedAt: runs.startedAt, runMs: runs.ms, steps: out.steps?.k ?? 1, runs: runs.runs,
      });
      return out;
    };
    let outcome: RunOutcome;
    try {
      outcome = g.requests.length > 0 ? await timed(g.requests) : { replies: [], transfer: [], runRows: 0, again: [] };
    } catch (err) {
      const failed = (r: EngineRequest, e: unknown): Reply[] => [{ id: r.id, ok: false, message: errorMessage(e) }, ...this.chains.fail(r.id, errorMessage(e))];
      if (g.requests.length === 1) {
        outcome = { replies: failed(g.requests[0]!, err), transfer: [], runRows: 0, again: [] };
      } else {
        outcome = { replies: [], transfer: [], runRows: 0, again: [] };
        for (const r of g.requests) {
          try {
            const one = await timed([r]);
            outcome.replies.push(...one.replies);
            outcome.transfer.push(...one.transfer);
            outcome.again.push(...one.again);
          } catch (e) {
            outcome.replies.push(...failed(r, e));
          }
        }
      }
    }
    for (const r of group.requests) if (r.op === 'decode') this.kvs.unhold(r.kv);
    return { replies: [...early, ...outcome.replies], stats, transfer: outcome.transfer, again: outcome.again };
  }

  private async runBatch(loaded: Loaded, graph: Graph, reqs: EngineRequest[]): Promise<RunOutcome> {
    if (graph === 'advance') return this.runAdvances(loaded, reqs);
    const { config } = this;
    const { pkg } = loaded;
    const replies: Reply[] = [];
    const transfer: ArrayBuffer[] = [];
    let runRows = reqs.length;
    if (graph === 'segment') {
      // In chunks of maxLogitsRows (logits-rows.ts), each padded to the batch's width and to its own bucket.
      const rows = this.segmentRows(reqs, graph);
      const options = segmentOptions(loaded, config.batchInvariant);
      const width = options.width ?? longestOf(rows);
      runRows = 0;
      for (const chunk of chunksOf(rows, config.maxLogitsRows)) {
        const run = this.padToBucket(chunk.rows);
        runRows += run.length;
        const out = (await runSegment(pkg, run, { ...options, width })).slice(0, chunk.rows.length);
        out.forEach((o, j) => {
          replies.push({ id: reqs[chunk.start + j]!.id, ok: true, op: 'segment', nextState: o.nextState, logits: o.logits, tokenLogprobs: o.tokenLogprobs });
          transfer.push(o.nextState.buffer as ArrayBuffer, o.logits.buffer as ArrayBuffer, o.tokenLogprobs.buffer as ArrayBuffer);
        });
      }
    } else if (graph === 'prefill') {
      const rows = this.segmentRows(reqs, graph);
      const width = longestOf(rows);
      const out: BatchPrefillResult[] = [];
      for (const chunk of chunksOf(rows, config.maxLogitsRows)) out.push(...(await prefillBatch(pkg, chunk.rows, kvCapacity(pkg), { width })));
      out.forEach((o, i) => {
        const r = reqs[i]!;
        const kv = this.kvs.add(r.model, o.kv);
        replies.push({ id: r.id, ok: true, op: 'prefill', logits: o.logits, kv });
        transfer.push(o.logits.buffer as ArrayBuffer);
      });
    } else {
      const rows = reqs.map((r) => {
        invariant(r.op === 'decode', 'a decode batch holds only decodes');
        // precheck found the cache, held for this decode since it was taken in (KvRegistry.hold).
        const e = this.kvs.get(r.kv);
        invariant(e, () => `decode(${r.model}): KV handle ${r.kv} is held until its decodes are done`);
        return { token: r.token, kv: e.cache };
      });
      const out = await decodeBatch(pkg, rows, config.batchInvariant ? { pastLength: kvCapacity(pkg) - 1 } : {});
      out.forEach((logits, i) => {
        replies.push({ id: reqs[i]!.id, ok: true, op: 'decode', logits });
        transfer.push(logits.buffer as ArrayBuffer);
      });
    }
    return { replies, transfer, runRows, again: [] };
  }

  /**
   * A batch of chained advances: one segment per row through the segment_state graph, or (`stepsPlan`)
   * K per row in one run of the segment_state_steps graph, which may run past a chain's end into the
   * continuation parked after it. The chains then walk each row's segments (Chains.afterRun).
   */
  private async runAdvances(loaded: Loaded, reqs: EngineRequest[]): Promise<RunOutcome> {
    const plan = this.stepsPlan(loaded, reqs) ?? reqs.map((r) => {
      invariant(r.op === 'advance', 'an advance batch holds only advances');
      return this.chains.slotsOf(r, 1);
    });
    const k = plan[0]!.length;
    const segmentOf = ({ r, index, offset }: Slot) => r.ids.subarray(offset, offset + r.lengths[index]!);
    const stateOf = (i: number) => (reqs[i] as Extract<EngineRequest, { op: 'advance' }>).state;
    const options = { ...segmentOptions(loaded, this.config.batchInvariant), views: true };
    // Views of the run's output: a row going on feeds its last memory to its next run as it is (in the
    // same row order, the next run's state feed is that buffer, uncopied: rowsInPlace in segment-feeds.ts).
    let out: { steps: Float32Array[][]; last: Float32Array[] };
    let runRows: number;
    if (k > 1) {
      const rows = this.padToBucket(plan.map((slots, i) => ({ segments: slots.map(segmentOf), state: stateOf(i) })));
      runRows = rows.length;
      out = await runSegmentSteps(loaded.pkg, rows, options);
    } else {
      const rows = this.padToBucket(plan.map(([slot], i) => ({ ids: segmentOf(slot!), state: stateOf(i) })));
      runRows = rows.length;
      const last = await runSegmentState(loaded.pkg, rows, options);
      out = { steps: last.map((st) => [st]), last };
    }
    const { sends, again, tokens } = this.chains.afterRun(plan, reqs, out);
    // Copies, not the run's output: this thread keeps it for the chains' next segment (and transferring it would take every row's memory).
    const sent = statesOut(this.ring, sends.map((x) => x.state));
    const replies: Reply[] = sends.map((x, n) => {
      const nextState = sent.out[n]!;
      return x.index === undefined ? { id: x.id, ok: true, op: 'advance', nextState } : { id: x.id, ok: true, op: 'step', index: x.index, nextState };
    });
    return { replies, transfer: sent.transfer ? [sent.transfer] : [], runRows, again, steps: { k, tokens } };
  }

  /**
   * With the segment_state_steps graph: every row's next K segments (Chains.slotsOf), when every row has
   * K to go; otherwise undefined (the batch runs one segment per row, as the graph takes K for all rows).
   */
  private stepsPlan(loaded: Loaded, reqs: EngineRequest[]): Slot[][] | undefined {
    const k = loaded.pkg.steps;
    if (!this.config.segmentSteps || k === undefined) return undefined;
    const plan: Slot[][] = [];
    for (const r of reqs) {
      if (r.op !== 'advance') return undefined;
      const slots = this.chains.slotsOf(r, k);
      if (slots.length < k) return undefined;
      plan.push(slots);
    }
    return plan;
  }

  /** The rows of a segment, advance or prefill batch. */
  private segmentRows(reqs: EngineRequest[], graph: Graph): SegmentRow[] {
    return reqs.map((r) => {
      invariant(r.op !== 'decode', () => `a ${graph} batch holds no decodes`);
      return { ids: this.chains.segmentIds(r), state: r.state };
    });
  }

  /** With batchBuckets: the rows and copies of the last one, up to its bucket (their results are dropped). */
  private padToBucket<T>(rows: T[]): T[] {
    if (!this.config.batchBuckets) return rows;
    const b = bucketOf(rows.length, this.config.maxBatch);
    return b === rows.length ? rows : [...rows, ...new Array<T>(b - rows.length).fill(rows[rows.length - 1]!)];
  }
}

/** The most ids of any row (the width a run of them is padded to without batchInvariant). */
function longestOf(rows: readonly SegmentRow[]): number {
  return rows.reduce((n, r) => Math.max(n, r.ids.length), 0);
}

/**
 * Copies `states` (views of one run's output) into one new buffer and returns views of it: one buffer
 * to transfer for all of a run's replies instead of one per row (when the ring is full).
 */
function packCopies(states: Float32Array[]): Float32Array[] {
  if (states.length === 0) return [];
  const size = states[0]!.length;
  const all = new Float32Array(states.length * size);
  return states.map((st, k) => {
    all.set(st, k * size);
    return all.subarray(k * size, (k + 1) * size);
  });
}

/**
 * The memory of a run's step and advance replies, as the main thread will find it: slices of the ring,
 * or (the ring full: the main thread is behind) copies in one buffer to transfer.
 */
function statesOut(ring: StateRingWriter, states: Float32Array[]): { out: (Float32Array | RingSlice)[]; transfer?: ArrayBuffer } {
  if (states.length === 0) return { out: [] };
  const written = ring.write(states);
  if (written) return { out: written.slices };
  const copies = packCopies(states);
  return { out: copies, transfer: copies[0]!.buffer as ArrayBuffer };
}
