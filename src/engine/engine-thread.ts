// The engine thread: owns onnxruntime (through loadModelPackage) and runs the scheduling loop.
// Requests queue up while a run executes; after each iteration the loop takes everything waiting,
// groups it by (model, graph) and runs each group as one batched call, up to maxBatch rows and
// maxBatchTokens tokens, oldest first (what does not fit waits for the next iteration, at the front).
// With batchWaitMs, an iteration first waits (that long at most) for streams it answered within that
// time: sessions in step then share one run instead of splitting into small ones.
// KV caches live here, keyed by handle, and grow in place; the main thread only ever sees handles.
// An engine may run several of these threads (engine.ts routes each session to one); their runs overlap
// on the device (or, with deviceTurns, take turns through a shared ticket lock), so one thread's run
// covers the others' turnaround (replies, the sessions' next requests, planning) instead of the device
// waiting through it.
// With batchInvariant (the default) segment runs are padded to segment_length and decode runs' past
// to the cache capacity, so batch composition cannot change a row's results (see rmt-runner.ts).
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { cudaPreflight, explainCudaFailure } from './cuda-check.ts';
import type { BatchStat, EngineDevice } from './engine.ts';
import { modelInfo, type ModelInfo } from '../model/model-spec.ts';
import type { EngineRequest, FromWorker, Op, Reply, ToWorker, WorkerConfig } from './engine-protocol.ts';
import { bucketOf, bucketSizes } from './batch-buckets.ts';
import { loadModelPackage, type LoadOptions, type ModelPackage } from '../model/model-package.ts';
import { ORT_VERSION } from './onnx-runtime.ts';
import { createStateRing, StateRingWriter, type RingSlice } from './state-ring.ts';
import { chunksOf } from './logits-rows.ts';
import { decodeBatch, kvCapacity, prefillBatch, runSegment, runSegmentState, runSegmentSteps, type BatchPrefillResult, type FeedScratch, type GrowableKvCache, type SegmentOptions, type SegmentRow } from './rmt-runner.ts';

if (!parentPort) throw new Error('engine-thread.ts must run as a worker thread (see startEngine in engine.ts)');
const port = parentPort;
const config = workerData as WorkerConfig;
/**
 * Shared by the engine's threads (several only): [next ticket, ticket served, threads ready]. The first
 * two are the ticket lock they take turns with (deviceTurns); the count (threads with work that are not
 * waiting in the batch window) is kept either way, for the window.
 */
const device = config.deviceState ? new Int32Array(config.deviceState) : undefined;
/** The ticket lock, when the threads take turns. */
const turn = config.deviceTurns ? device : undefined;

interface Loaded {
  pkg: ModelPackage;
  info: ModelInfo;
  /** The buffers this model's segment and advance runs build their feeds in (this thread runs one batch at a time). */
  scratch: FeedScratch;
}

interface KvEntry {
  model: string;
  cache: GrowableKvCache;
  /** Decode requests for this cache that are queued or running. */
  queued: number;
  /** Released by the main thread while decodes were still queued: dropped when they are done. */
  released: boolean;
}

type Graph = BatchStat['graph'];

const models = new Map<string, Loaded>();
const kvs = new Map<number, KvEntry>();
// Handles are unique across the engine's threads, and say which thread holds the cache.
let nextKv = config.lane + 1;
/** Requests waiting for a run, oldest first. */
let queue: EngineRequest[] = [];
/**
 * Per (model, graph): streams answered recently whose next request has not come yet, and when they
 * were answered. With batchWaitMs, an iteration waits for them (a session's next segment follows its
 * reply by the main thread's turnaround, a few ms), so sessions in step share one run.
 */
const awaited = new Map<string, Map<string, number>>();

/**
 * Chained advances not finished yet (queued or in a run): the segment each is at and where its ids
 * start. A chain goes back to the front of the queue after each of its runs, so its session stays in
 * step with the others instead of waiting on a round trip through the main thread. A cancelled chain
 * is removed from here (and from the queue): one in a run at the time is dropped when the run ends.
 */
const chainAt = new Map<number, { index: number; offset: number }>();

type Advance = Extract<EngineRequest, { op: 'advance' }>;

/** Chains sent with `keep` that have not ended yet: a continuation of one of them waits for it. */
const keptLive = new Set<number>();
/** Continuations waiting for the chain they continue from to end, by that chain's id. */
const parked = new Map<number, Advance>();
/**
 * Last memory of kept chains that ended: a continuation sent before the main thread saw the end claims
 * it; otherwise the main thread says 'forget' once it has the reply.
 */
const finals = new Map<number, Float32Array>();

/** Where advances' memory goes to the main thread (made once the models are loaded: sized by their state). */
let ring: StateRingWriter;

let running = false;
let closing = false;

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function groupKey(r: EngineRequest): string {
  return `${r.model}\u0000${r.op}`;
}

function streamOf(r: EngineRequest): string | undefined {
  return r.op === 'decode' ? undefined : r.stream;
}

/**
 * While a group that is not full yet has streams likely to send their next request: until when (the
 * newest such answer plus the window); undefined when none is expected.
 */
function expectedUntil(now: number): number | undefined {
  const rows = new Map<string, number>();
  for (const r of queue) {
    const key = groupKey(r);
    rows.set(key, (rows.get(key) ?? 0) + 1);
  }
  let until: number | undefined;
  for (const [key, n] of rows) {
    if (n >= config.maxBatch) continue;
    // One answered longer ago than the window is not waited for (that request was its last).
    for (const at of awaited.get(key)?.values() ?? []) if (now - at <= config.batchWaitMs) until = Math.max(until ?? 0, at + config.batchWaitMs);
  }
  return until;
}

/** Marks the streams of a run's requests as answered now; drops those answered beyond the window. */
function noteAnswered(requests: EngineRequest[]): void {
  const now = performance.now();
  for (const r of requests) {
    const stream = streamOf(r);
    if (stream === undefined) continue;
    const key = groupKey(r);
    let m = awaited.get(key);
    if (!m) awaited.set(key, (m = new Map()));
    m.set(stream, now);
  }
  // Bounded by the streams answered within one window, however many sessions come and go.
  for (const m of awaited.values()) for (const [s, at] of m) if (now - at > config.batchWaitMs) m.delete(s);
}

/** Set while gatherBatch sleeps: new requests (onOps) end the sleep early. */
let wake: (() => void) | undefined;

/** Sleeps until `ms` passed, requests arrive or (several threads) another thread stops being ready, whichever is first. */
function sleepUntilOps(ms: number): Promise<void> {
  return new Promise((resolve) => {
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      wake = undefined;
      resolve();
    };
    const timer = setTimeout(done, ms);
    wake = done;
    if (device) {
      // Resolves when another thread stops being ready (or after `ms`): the thread then looks again.
      const w = Atomics.waitAsync(device, READY, Atomics.load(device, READY), ms);
      if (w.async) void w.value.then(done);
      else done();
    }
  });
}

/** Index in `device` of the count of threads ready: with work queued or running, not waiting in the window. */
const READY = 2;

function setReady(delta: 1 | -1): void {
  if (!device) return;
  Atomics.add(device, READY, delta);
  Atomics.notify(device, READY);
}

/**
 * With several engine threads: whether another thread is ready (it runs on the device now or next, so
 * waiting here costs the device nothing). Called by a ready thread. Undefined with one thread, which
 * cannot tell (other processes may share the device).
 */
function deviceBusy(): boolean | undefined {
  if (!device) return undefined;
  return Atomics.load(device, READY) > 1;
}

/**
 * Waits (at most batchWaitMs) for the awaited streams' requests before an iteration is planned. It
 * sleeps between arrivals rather than polling, so the thread takes no CPU while it waits. With several
 * engine threads it waits only while another thread is ready (has work and is not waiting itself):
 * waiting then costs the device nothing, whereas waiting with the device idle (sessions packed on one
 * thread, the other idle) made the 8-session level 4-7 % slower on the H200 (bench/gpu-suite.sh, bench/results/gpu-9).
 */
async function gatherBatch(): Promise<void> {
  if (config.batchWaitMs <= 0) return;
  const limit = performance.now() + config.batchWaitMs;
  for (let now = performance.now(); now < limit && !closing; now = performance.now()) {
    const expected = expectedUntil(now);
    if (expected === undefined || expected <= now) return;
    if (deviceBusy() === false) return;
    // Not ready while waiting: a thread that waits in its window cannot make another one wait too.
    setReady(-1);
    try {
      await sleepUntilOps(Math.min(limit, expected) - now);
    } finally {
      setReady(1);
    }
  }
}

function graphOf(r: EngineRequest): Graph {
  return r.op;
}

/** The ids of the segment a request runs next (a chained advance's current segment). */
function segmentIds(r: Exclude<EngineRequest, { op: 'decode' }>): Int32Array {
  if (r.op !== 'advance') return r.ids;
  const at = chainAt.get(r.id);
  if (!at) return r.ids.subarray(0, r.lengths[0]);
  return r.ids.subarray(at.offset, at.offset + r.lengths[at.index]!);
}

function tokensOf(r: EngineRequest): number {
  return r.op === 'decode' ? 1 : segmentIds(r).length;
}

/** Checks a request against its model (the main thread checks too; this guards the batch). */
function validate(r: EngineRequest): string | undefined {
  const where = `${r.op}(${r.model})`;
  const m = models.get(r.model);
  if (!m) return `unknown model '${r.model}'; known models: ${[...models.keys()].join(', ')}`;
  const { segmentLength, vocabSize } = m.info;
  if (r.op === 'decode') {
    const e = kvs.get(r.kv);
    if (!e) return `${where}: KV handle ${r.kv} is unknown or was released`;
    if (e.model !== r.model) return `${where}: KV handle ${r.kv} belongs to model '${e.model}'`;
    if (!Number.isInteger(r.token) || r.token < 0 || r.token >= vocabSize) {
      return `${where}: token ${r.token} is not a token id in 0..${vocabSize - 1}`;
    }
    return undefined;
  }
  if (r.op === 'advance') {
    if (r.lengths.length === 0) return `${where}: no segments`;
    let sum = 0;
    for (let k = 0; k < r.lengths.length; k++) {
      const n = r.lengths[k]!;
      if (!Number.isInteger(n) || n < 1 || n > segmentLength) return `${where}: segment ${k} has ${n} ids, expected 1..${segmentLength} (segment_length)`;
      sum += n;
    }
    if (sum !== r.ids.length) return `${where}: segment lengths add up to ${sum}, but ${r.ids.length} ids were sent`;
  } else if (r.ids.length === 0 || r.ids.length > segmentLength) {
    return `${where}: ${r.ids.length} ids, expected 1..${segmentLength} (segment_length)`;
  }
  for (let i = 0; i < r.ids.length; i++) {
    const id = r.ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) return `${where}: ids[${i}] = ${id} is not a token id in 0..${vocabSize - 1}`;
  }
  const expected = m.info.stateBytes / 4;
  if (r.op === 'advance' && r.after !== undefined) {
    if (r.state.length !== 0) return `${where}: a continuation (after request ${r.after}) carries no state, found ${r.state.length} values`;
    return undefined;
  }
  if (r.state.length !== expected) {
    return `${where}: state has ${r.state.length} float32 values, expected ${expected} ([${m.info.stateShape.join(', ')}])`;
  }
  return undefined;
}

function dropKvRef(kv: number): void {
  const e = kvs.get(kv);
  if (!e) return;
  e.queued--;
  if (e.released && e.queued <= 0) kvs.delete(kv);
}

/** A chained advance of several segments starts at its first. */
function startChain(r: Advance): void {
  if (r.lengths.length > 1) chainAt.set(r.id, { index: 0, offset: 0 });
}

/** Starts a continuation from `state`, the last memory of the chain it continues. */
function startContinuation(r: Advance, state: Float32Array): void {
  r.state = state;
  startChain(r);
}

/** A chain ended without a last memory (failed, cancelled): its waiting continuation fails with it. */
function endKept(id: number, why: string): Reply[] {
  keptLive.delete(id);
  const cont = parked.get(id);
  if (!cont) return [];
  parked.delete(id);
  return [{ id: cont.id, ok: false, message: `advance(${cont.model}): request ${id}, continued from, ${why}` }];
}

function onOps(ops: Op[]): void {
  const rejected: Reply[] = [];
  for (const op of ops) {
    if (op.kind === 'cancel') {
      queue = queue.filter((r) => r.id !== op.id);
      chainAt.delete(op.id);
      for (const [after, cont] of parked) if (cont.id === op.id) parked.delete(after);
      rejected.push(...endKept(op.id, 'was cancelled'));
      finals.delete(op.id);
      continue;
    }
    if (op.kind === 'forget') {
      finals.delete(op.id);
      continue;
    }
    if (op.kind === 'release') {
      const e = kvs.get(op.kv);
      if (!e) continue;
      if (e.queued > 0) e.released = true;
      else kvs.delete(op.kv);
      continue;
    }
    const r = op.request;
    const problem = closing ? 'engine closed' : validate(r);
    if (problem !== undefined) {
      rejected.push({ id: r.id, ok: false, message: problem });
      continue;
    }
    if (r.op === 'decode') kvs.get(r.kv)!.queued++;
    if (r.op === 'advance' && r.keep) keptLive.add(r.id);
    if (r.op === 'advance' && r.after !== undefined) {
      const last = finals.get(r.after);
      if (last) {
        finals.delete(r.after);
        startContinuation(r, last);
      } else if (keptLive.has(r.after)) {
        // Joins the runs when that chain ends, in its place (runBatch).
        parked.set(r.after, r);
        continue;
      } else {
        rejected.push({ id: r.id, ok: false, message: `advance(${r.model}): request ${r.after}, continued from, failed, was cancelled or was not sent to be continued` });
        continue;
      }
    } else if (r.op === 'advance') startChain(r);
    const stream = streamOf(r);
    if (stream !== undefined) awaited.get(groupKey(r))?.delete(stream);
    queue.push(r);
  }
  if (rejected.length) post({ type: 'replies', replies: rejected, stats: [] });
  wake?.();
  void pump();
}

interface Group {
  model: string;
  graph: Graph;
  requests: EngineRequest[];
  tokens: number;
}

/**
 * Takes everything waiting and forms this iteration's groups: one per (model, graph), ordered by
 * their oldest request, each filled oldest first up to maxBatch rows and maxBatchTokens tokens
 * (its first request always fits, however long). The rest stays queued, ahead of later arrivals.
 */
function planIteration(): Group[] {
  const groups = new Map<string, Group>();
  const rest: EngineRequest[] = [];
  const inBatch = new Set<number>();
  for (const r of queue) {
    const key = groupKey(r);
    let g = groups.get(key);
    if (!g) {
      g = { model: r.model, graph: graphOf(r), requests: [], tokens: 0 };
      groups.set(key, g);
    }
    const t = tokensOf(r);
    const fits =
      g.requests.length < config.maxBatch &&
      (g.requests.length === 0 || g.tokens + t <= config.maxBatchTokens) &&
      // Two steps on one cache must run one after the other.
      !(r.op === 'decode' && inBatch.has(r.kv));
    if (!fits) {
      rest.push(r);
      continue;
    }
    if (r.op === 'decode') inBatch.add(r.kv);
    g.requests.push(r);
    g.tokens += t;
  }
  queue = rest;
  return [...groups.values()].filter((g) => g.requests.length > 0);
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

/** One of the segments a steps run gives a row: the chain it belongs to, its index there, where its ids start. */
interface Slot {
  r: Advance;
  index: number;
  offset: number;
}

/**
 * A row's next `k` segments at most: its chain from where it is, then, when the chain is kept, the
 * continuation parked after it (and after that one, the next). Fewer when no more are here yet.
 */
function slotsOf(r: Advance, k: number): Slot[] {
  const slots: Slot[] = [];
  let cur: Advance | undefined = r;
  let { index, offset } = chainAt.get(r.id) ?? { index: 0, offset: 0 };
  while (cur && slots.length < k) {
    for (; index < cur.lengths.length && slots.length < k; offset += cur.lengths[index]!, index++) slots.push({ r: cur, index, offset });
    if (index < cur.lengths.length) break;
    cur = cur.keep ? parked.get(cur.id) : undefined;
    index = 0;
    offset = 0;
  }
  return slots;
}

/**
 * With the segment_state_steps graph: every row's next K segments (slotsOf), when every row has K to
 * go; otherwise undefined (the batch runs one segment per row, as the graph takes K for all rows).
 */
function stepsPlan(loaded: Loaded, reqs: EngineRequest[]): Slot[][] | undefined {
  const k = loaded.pkg.steps;
  if (!config.segmentSteps || k === undefined) return undefined;
  const plan: Slot[][] = [];
  for (const r of reqs) {
    if (r.op !== 'advance') return undefined;
    const slots = slotsOf(r, k);
    if (slots.length < k) return undefined;
    plan.push(slots);
  }
  return plan;
}

/** The rows of a segment, advance or prefill batch. */
function segmentRows(reqs: EngineRequest[], graph: Graph): SegmentRow[] {
  return reqs.map((r) => {
    if (r.op === 'decode') throw new Error(`internal: decode request in a ${graph} batch`);
    return { ids: segmentIds(r), state: r.state };
  });
}

/** With batchBuckets: the rows and copies of the last one, up to its bucket (their results are dropped). */
function padToBucket<T>(rows: T[]): T[] {
  if (!config.batchBuckets) return rows;
  const b = bucketOf(rows.length, config.maxBatch);
  return b === rows.length ? rows : [...rows, ...new Array<T>(b - rows.length).fill(rows[rows.length - 1]!)];
}

/** The most ids of any row (the width a run of them is padded to without batchInvariant). */
function longestOf(rows: readonly SegmentRow[]): number {
  return rows.reduce((n, r) => Math.max(n, r.ids.length), 0);
}

const segmentOptions = ({ pkg, scratch }: Loaded): SegmentOptions => (config.batchInvariant ? { width: pkg.segmentLength, scratch } : { scratch });

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
function statesOut(states: Float32Array[]): { out: (Float32Array | RingSlice)[]; transfer?: ArrayBuffer } {
  if (states.length === 0) return { out: [] };
  const written = ring.write(states);
  if (written) return { out: written.slices };
  const copies = packCopies(states);
  return { out: copies, transfer: copies[0]!.buffer as ArrayBuffer };
}

/**
 * A batch of chained advances: one segment per row through the segment_state graph, or (`stepsPlan`)
 * K per row in one run of the segment_state_steps graph, which may run past a chain's end into the
 * continuation parked after it. Afterwards each row's segments are walked in order: a step reply per
 * segment, an advance reply where a chain ends, the continuation taking over from that memory; what was
 * cancelled during the run is dropped from there on.
 */
async function runAdvances(loaded: Loaded, reqs: EngineRequest[]): Promise<RunOutcome> {
  const plan = stepsPlan(loaded, reqs) ?? reqs.map((r) => {
    if (r.op !== 'advance') throw new Error('internal: non-advance request in an advance batch');
    return slotsOf(r, 1);
  });
  const k = plan[0]!.length;
  const segmentOf = ({ r, index, offset }: Slot) => r.ids.subarray(offset, offset + r.lengths[index]!);
  const options = { ...segmentOptions(loaded), views: true };
  // Views of the run's output: a row going on feeds its last memory to its next run as it is (in the
  // same row order, the next run's state feed is that buffer, uncopied: rowsInPlace in rmt-runner.ts).
  let out: { steps: Float32Array[][]; last: Float32Array[] };
  let runRows: number;
  if (k > 1) {
    const rows = padToBucket(plan.map((slots, i) => ({ segments: slots.map(segmentOf), state: (reqs[i] as Advance).state })));
    runRows = rows.length;
    out = await runSegmentSteps(loaded.pkg, rows, options);
  } else {
    const rows = padToBucket(plan.map(([slot], i) => ({ ids: segmentOf(slot!), state: (reqs[i] as Advance).state })));
    runRows = rows.length;
    const last = await runSegmentState(loaded.pkg, rows, options);
    out = { steps: last.map((st) => [st]), last };
  }
  const again: EngineRequest[] = [];
  // Every memory this run hands back: step replies (a chain going on) and advance replies (one ended).
  const sends: { id: number; index?: number; state: Float32Array }[] = [];
  let tokens = 0;
  plan.forEach((slots, i) => {
    const first = reqs[i] as Advance;
    for (const s of slots) tokens += s.r.lengths[s.index]!;
    if (first.lengths.length > 1 && !chainAt.has(first.id)) return; // cancelled during this run: its caller has gone
    for (let j = 0; j < k; j++) {
      const { r, index, offset } = slots[j]!;
      const state = out.steps[i]![j]!;
      if (index + 1 < r.lengths.length) {
        if (r.steps) sends.push({ id: r.id, index, state });
        if (j === k - 1) {
          chainAt.set(r.id, { index: index + 1, offset: offset + r.lengths[index]! });
          again.push({ ...r, state: out.last[i]! });
        }
        continue;
      }
      chainAt.delete(r.id);
      sends.push({ id: r.id, state });
      // Not kept, or kept and cancelled during this run (the cancel ended it): nothing goes on from here.
      if (!(r.keep && keptLive.delete(r.id))) break;
      const cont = parked.get(r.id);
      if (!cont) {
        finals.set(r.id, state);
        break;
      }
      parked.delete(r.id);
      if (j === k - 1 || slots[j + 1]!.r !== cont) {
        // It takes this chain's place in the next run, from this memory (not through the main thread).
        startContinuation(cont, state);
        again.push(cont);
        break;
      }
      // Its first segments ran in this run, right after this chain's last.
      startChain(cont);
    }
  });
  // Copies, not the run's output: this thread keeps it for the chains' next segment (and transferring it would take every row's memory).
  const sent = statesOut(sends.map((x) => x.state));
  const replies: Reply[] = sends.map((x, n) => {
    const nextState = sent.out[n]!;
    return x.index === undefined ? { id: x.id, ok: true, op: 'advance', nextState } : { id: x.id, ok: true, op: 'step', index: x.index, nextState };
  });
  return { replies, transfer: sent.transfer ? [sent.transfer] : [], runRows, again, steps: { k, tokens } };
}

async function runBatch(loaded: Loaded, graph: Graph, reqs: EngineRequest[]): Promise<RunOutcome> {
  if (graph === 'advance') return runAdvances(loaded, reqs);
  const { pkg } = loaded;
  const replies: Reply[] = [];
  const transfer: ArrayBuffer[] = [];
  let runRows = reqs.length;
  if (graph === 'segment') {
    // In chunks of maxLogitsRows (logits-rows.ts), each padded to the batch's width and to its own bucket.
    const rows = segmentRows(reqs, graph);
    const options = segmentOptions(loaded);
    const width = options.width ?? longestOf(rows);
    runRows = 0;
    for (const chunk of chunksOf(rows, config.maxLogitsRows)) {
      const run = padToBucket(chunk.rows);
      runRows += run.length;
      const out = (await runSegment(pkg, run, { ...options, width })).slice(0, chunk.rows.length);
      out.forEach((o, j) => {
        replies.push({ id: reqs[chunk.start + j]!.id, ok: true, op: 'segment', nextState: o.nextState, logits: o.logits, tokenLogprobs: o.tokenLogprobs });
        transfer.push(o.nextState.buffer as ArrayBuffer, o.logits.buffer as ArrayBuffer, o.tokenLogprobs.buffer as ArrayBuffer);
      });
    }
  } else if (graph === 'prefill') {
    const rows = segmentRows(reqs, graph);
    const width = longestOf(rows);
    const out: BatchPrefillResult[] = [];
    for (const chunk of chunksOf(rows, config.maxLogitsRows)) out.push(...(await prefillBatch(pkg, chunk.rows, kvCapacity(pkg), { width })));
    out.forEach((o, i) => {
      const r = reqs[i]!;
      const kv = nextKv;
      nextKv += config.lanes;
      kvs.set(kv, { model: r.model, cache: o.kv, queued: 0, released: false });
      replies.push({ id: r.id, ok: true, op: 'prefill', logits: o.logits, kv });
      transfer.push(o.logits.buffer as ArrayBuffer);
    });
  } else {
    const rows = reqs.map((r) => {
      if (r.op !== 'decode') throw new Error('internal: non-decode request in a decode batch');
      const e = kvs.get(r.kv);
      if (!e) throw new Error(`decode(${r.model}): KV handle ${r.kv} is unknown or was released`);
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

function precheck(loaded: Loaded, r: EngineRequest): string | undefined {
  if (r.op !== 'decode') return undefined;
  const e = kvs.get(r.kv);
  if (!e) return `decode(${r.model}): KV handle ${r.kv} is unknown or was released`;
  if (e.cache.length >= e.cache.capacity) {
    return (
      `decode(${r.model}): KV cache ${r.kv} is full (${e.cache.length - loaded.pkg.memoryTokens} tokens after the memory, ` +
      `segment_length ${loaded.pkg.segmentLength}); commit the tail with segment() and prefill again`
    );
  }
  return undefined;
}

/** Runs one group; if the batched run fails, each request runs alone so only the bad one fails. */
async function runGroup(group: Group): Promise<void> {
  const loaded = models.get(group.model)!;
  const stats: BatchStat[] = [];
  // Requests that cannot run any more (a cache filled up by the steps queued before) fail alone.
  const early: Reply[] = [];
  const runnable = group.requests.filter((r) => {
    const problem = precheck(loaded, r);
    if (problem !== undefined) early.push({ id: r.id, ok: false, message: problem });
    return problem === undefined;
  });
  const g: Group = { ...group, requests: runnable };
  const timed = async (reqs: EngineRequest[]): Promise<RunOutcome> => {
    // Counted before the run, which moves chained advances on to their next segment.
    const tokens = reqs.reduce((s, r) => s + tokensOf(r), 0);
    const t0 = performance.now();
    batchRuns = { startedAt: 0, ms: 0, waitedMs: 0, runs: 0 };
    const out = await runBatch(loaded, g.graph, reqs);
    // Waiting for another thread's run is not this batch's work.
    const ms = performance.now() - t0 - batchRuns.waitedMs;
    stats.push({
      graph: g.graph, model: g.model, rows: reqs.length, runRows: out.runRows, tokens: out.steps?.tokens ?? tokens, ms, lane: config.lane,
      startedAt: batchRuns.startedAt, runMs: batchRuns.ms, steps: out.steps?.k ?? 1, runs: batchRuns.runs,
    });
    return out;
  };
  let outcome: RunOutcome;
  try {
    outcome = g.requests.length > 0 ? await timed(g.requests) : { replies: [], transfer: [], runRows: 0, again: [] };
  } catch (err) {
    const failed = (r: EngineRequest, e: unknown): Reply[] => {
      chainAt.delete(r.id);
      return [{ id: r.id, ok: false, message: errorMessage(e) }, ...endKept(r.id, `failed: ${errorMessage(e)}`)];
    };
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
  for (const r of group.requests) if (r.op === 'decode') dropKvRef(r.kv);
  // Every ring slice written so far is in this message or an earlier one (onOps' messages carry none).
  post({ type: 'replies', replies: [...early, ...outcome.replies], stats, ringEnd: ring.end }, outcome.transfer);
  // Chains going on are the oldest requests: they lead the next iteration. They are not awaited streams.
  if (outcome.again.length > 0) queue = [...outcome.again, ...queue];
  if (config.batchWaitMs > 0) {
    const goingOn = new Set(outcome.again.map((r) => r.id));
    noteAnswered(group.requests.filter((r) => !goingOn.has(r.id)));
  }
}

/** Waits for this thread's turn on the device (first come, first served across threads), without blocking the thread. */
async function acquireTurn(): Promise<void> {
  if (!turn) return;
  const mine = Atomics.add(turn, 0, 1);
  // A pending waitAsync does not keep a thread's event loop alive (during the warm-up nothing else does).
  const keepAlive = setInterval(() => {}, 1 << 30);
  try {
    for (;;) {
      const serving = Atomics.load(turn, 1);
      if (serving === mine) return;
      const w = Atomics.waitAsync(turn, 1, serving);
      if (w.async) await w.value;
    }
  } finally {
    clearInterval(keepAlive);
  }
}

function releaseTurn(): void {
  if (!turn) return;
  Atomics.add(turn, 1, 1);
  Atomics.notify(turn, 1);
}

/** onnxruntime runs so far (the loop yields to the event loop only after an iteration without one). */
let runsDone = 0;

/**
 * The onnxruntime runs of the batch being run (one, or several when it runs in chunks): when the first
 * started (ms since the epoch), how long they held the device and waited for it, and how many there were.
 */
let batchRuns = { startedAt: 0, ms: 0, waitedMs: 0, runs: 0 };

/**
 * Every onnxruntime run goes through here: only the run itself holds the turn, so a thread builds its
 * feeds and splits its results while another thread's run executes.
 */
async function exclusive<T>(run: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  await acquireTurn();
  const t1 = performance.now();
  try {
    return await run();
  } finally {
    const t2 = performance.now();
    releaseTurn();
    batchRuns = {
      startedAt: batchRuns.runs === 0 ? performance.timeOrigin + t1 : batchRuns.startedAt,
      ms: batchRuns.ms + (t2 - t1), waitedMs: batchRuns.waitedMs + (t1 - t0), runs: batchRuns.runs + 1,
    };
    runsDone++;
  }
}

/** Lets the event loop deliver messages that arrived meanwhile (the poll phase runs before setImmediate). */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

async function pump(): Promise<void> {
  if (running) return;
  running = true;
  setReady(1);
  try {
    // Requests sent together arrive together: let the rest of a burst land before planning.
    await yieldToEventLoop();
    while (queue.length > 0 && !closing) {
      const runsBefore = runsDone;
      await gatherBatch();
      for (const g of planIteration()) {
        if (closing) break;
        try {
          await runGroup(g);
        } catch (err) {
          // runGroup answers every request itself; this only guards against a failed postMessage.
          post({ type: 'replies', replies: g.requests.map((r) => ({ id: r.id, ok: false, message: errorMessage(err) })), stats: [] });
        }
      }
      // onnxruntime-node starts each run from setImmediate (its backend's run()), so an iteration that ran
      // one has let the event loop deliver what arrived meanwhile; another turn here would cost every
      // dependent run its time (a few hundredths of a ms) while the device waits. Requests that arrived
      // while the run was being planned join the next one.
      if (runsDone === runsBefore) await yieldToEventLoop();
    }
  } finally {
    running = false;
    setReady(-1);
    if (closing) await finishClose();
  }
}

let closed = false;
async function finishClose(): Promise<void> {
  if (closed) return;
  closed = true;
  queue = [];
  chainAt.clear();
  keptLive.clear();
  parked.clear();
  finals.clear();
  kvs.clear();
  await Promise.allSettled([...models.values()].map((m) => m.pkg.release()));
  post({ type: 'closed' });
}

async function loadAll(opts: LoadOptions): Promise<void> {
  for (const name of config.models) {
    const dir = path.resolve(config.modelsDir, name);
    try {
      const pkg = await loadModelPackage(dir, opts);
      models.set(name, { pkg, info: modelInfo(name, pkg), scratch: {} });
    } catch (err) {
      await releaseAll();
      throw new Error(`failed to load model '${name}' from ${dir}: ${errorMessage(err)}`, { cause: err });
    }
  }
}

async function releaseAll(): Promise<void> {
  await Promise.allSettled([...models.values()].map((m) => m.pkg.release()));
  models.clear();
}

/** True when the same packages load on the CPU: then a CUDA load failure is CUDA's, not the model's. */
async function loadsOnCpu(): Promise<boolean> {
  for (const name of config.models) {
    try {
      const pkg = await loadModelPackage(path.resolve(config.modelsDir, name), { executionProvider: 'cpu', precision: 'fp32', intraOpThreads: 1 });
      await pkg.release();
    } catch {
      return false;
    }
  }
  return true;
}

/**
 * Loads every model on the configured provider. A CUDA start that cannot work fails with the
 * reason (provider files, ORT version, libraries the loader cannot find), or, with cpuFallback,
 * loads the fp32 graphs on the CPU and says why in the ready message.
 */
async function loadModels(): Promise<EngineDevice> {
  const common: LoadOptions = { exclusive, ...(config.intraOpThreads !== undefined ? { intraOpThreads: config.intraOpThreads } : {}) };
  // One folder per thread: each thread profiles its own sessions, under the same graph names.
  if (config.profileDir !== undefined) {
    common.profileDir = config.lanes > 1 ? path.join(config.profileDir, `thread-${config.lane}`) : config.profileDir;
    await mkdir(common.profileDir, { recursive: true });
  }
  if (config.executionProvider === 'cpu') {
    await loadAll({ ...common, executionProvider: 'cpu', precision: config.precision });
    return { executionProvider: 'cpu', precision: config.precision };
  }
  let cudaProblem: string | undefined;
  const pre = cudaPreflight(ORT_VERSION);
  if (pre.length) {
    cudaProblem = `CUDA execution provider cannot start: ${pre.join('; ')}${config.cpuFallback ? '' : '; set RMT_CPU_FALLBACK=1 to run on the CPU instead'}`;
  } else {
    try {
      // On CUDA the kernels run on the GPU; an intra-op pool (onnxruntime's default: one spinning
      // thread per core) would only busy-wait, taking CPU from the worker's and the API's threads.
      await loadAll({ intraOpThreads: 1, ...common, executionProvider: 'cuda', deviceId: config.deviceId, precision: config.precision });
      return { executionProvider: 'cuda', deviceId: config.deviceId, precision: config.precision };
    } catch (err) {
      const msg = errorMessage(err);
      if (!/failed to load ONNX graph on cuda/.test(msg) || !(await loadsOnCpu())) throw err;
      cudaProblem = explainCudaFailure(msg, ORT_VERSION);
    }
  }
  if (!config.cpuFallback) throw new Error(cudaProblem);
  await loadAll({ ...common, executionProvider: 'cpu', precision: 'fp32' });
  return { executionProvider: 'cpu', precision: 'fp32', fallbackReason: cudaProblem };
}

/**
 * Runs every batch-size bucket once through each model's ingest graph (segment_state, else segment),
 * so no request pays a size's first run. Only that graph: the full segment graph's per-position
 * logits at the largest buckets took the H100's memory (onnxruntime's arenas keep what they grew to).
 */
async function warmUp(): Promise<void> {
  if (!config.batchBuckets || !config.warmup) return;
  for (const loaded of models.values()) {
    const row = { ids: [loaded.info.specialTokens.pad], state: loaded.info.initState };
    const { steps } = loaded.pkg;
    for (const b of bucketSizes(config.maxBatch)) {
      await runSegmentState(loaded.pkg, new Array<typeof row>(b).fill(row), segmentOptions(loaded));
      if (config.segmentSteps && steps !== undefined) {
        const stepsRow = { segments: new Array<number[]>(steps).fill(row.ids), state: row.state };
        await runSegmentSteps(loaded.pkg, new Array<typeof stepsRow>(b).fill(stepsRow), segmentOptions(loaded));
      }
    }
  }
}

async function start(): Promise<void> {
  let device: EngineDevice;
  try {
    device = await loadModels();
    // A steps run hands back K memories per row.
    const perRun = config.maxBatch * Math.max(...[...models.values()].map((m) => (config.segmentSteps ? (m.pkg.steps ?? 1) : 1)));
    ring = new StateRingWriter(createStateRing(perRun, Math.max(...[...models.values()].map((m) => m.info.initState.length))));
    await warmUp();
  } catch (err) {
    post({ type: 'loadError', message: errorMessage(err) });
    return;
  }
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'ops') onOps(msg.ops);
    else if (msg.type === 'close') {
      closing = true;
      wake?.();
      if (!running) void finishClose();
    }
  });
  post({ type: 'ready', models: [...models.values()].map((m) => m.info), device, ring: ring.shared });
}

void start();
