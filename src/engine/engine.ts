// Main-thread side of the inference engine. onnxruntime-node's run() blocks the thread that calls
// it, so all inference happens in worker threads (engine-thread.ts) that own the sessions and batch
// concurrent requests into one run per (model, graph). This module never imports onnxruntime: it
// validates requests, ships them to a thread and resolves their promises.
// With threads > 1 each thread loads every model and a session (stream) stays on one thread while it
// streams, so the sessions form cohorts whose runs overlap on the device, or take turns on it with deviceTurns
// (see engine-thread.ts): while one cohort's run executes, the others' results go back and their next segments come in.
import type { Worker } from 'node:worker_threads';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Answer, EngineRequest, FromWorker, Op, ToWorker, WorkerConfig } from './engine-protocol.ts';
import { StateRingReader, type StateRingShared } from './state-ring.ts';
import { MAX_LOGITS_ROWS } from './logits-rows.ts';
import { awaitReady, startThread } from './thread-entry.ts';
import type { ModelInfo } from '../model/model-spec.ts';

export interface EngineOptions {
  modelsDir: string;
  /** Package folder names under modelsDir. */
  models: string[];
  executionProvider: 'cpu' | 'cuda';
  /** CUDA device ordinal (default 0). */
  deviceId?: number;
  intraOpThreads?: number;
  /** Which of the package's graphs to load (default fp32); fp16 is meant for CUDA. */
  precision?: 'fp32' | 'fp16';
  /** cuda only: when CUDA cannot start, load the fp32 graphs on the CPU instead of failing (default false). */
  cpuFallback?: boolean;
  /** Write onnxruntime profiles (one JSON per graph, flushed at close) into this folder. */
  profileDir?: string;
  /** Max rows per onnxruntime run. */
  maxBatch: number;
  /** Max sum of row token counts per segment/prefill run (a single larger request still runs, alone). */
  maxBatchTokens: number;
  /**
   * Most rows in one onnxruntime run of a graph that projects every position onto the vocabulary
   * (scored segments, prefill); a larger batch runs in chunks of this many, results unchanged bit for
   * bit (default MAX_LOGITS_ROWS, 8: onnxruntime's arena keeps what those runs' buffers grew to; see logits-rows.ts).
   */
  maxLogitsRows?: number;
  /**
   * Default true: every segment run is padded to segment_length and every decode run's past to the
   * full cache capacity, so a row's outputs are bit-identical whatever else shares its batch (and
   * greedy output does not depend on load). false pads to the longest row / cache of each batch:
   * less work for short rows, but results then move by float rounding (up to ~2e-5 on the shipped
   * models' logits) with the batch's composition.
   */
  batchInvariant?: boolean;
  /**
   * Default 0. When > 0, an iteration waits up to this many ms while streams it answered less than
   * this many ms ago (see the `stream` argument: a session between two of its segments) have not
   * sent their next request, so a cohort of sessions runs as one batch instead of several small ones.
   */
  batchWaitMs?: number;
  /**
   * Pad each segment/advance run with copies of its last row up to a batch-size bucket (1, 2, 4, then
   * multiples of 4 up to 64 and of 8 above), so onnxruntime sees few batch sizes (default: true on cuda, where each new
   * size's first run costs ~80 ms; see batch-buckets.ts). Results are unchanged (rows are independent).
   */
  batchBuckets?: boolean;
  /** Run every bucket once per segment graph before the engine is ready (default: true on cuda). */
  warmup?: boolean;
  /**
   * Default true: when a package ships a segment_state_steps graph (K segments per run), a batch of
   * chained advances whose rows all have K segments to go (their chain, then the continuations queued
   * after it) runs them in one onnxruntime run, so the engine thread turns around once per K segments.
   * Same results in fp32 (bit for bit); fp16 graphs round differently by a few half-float units.
   */
  segmentSteps?: boolean;
  /**
   * Engine threads (default 1), each with its own onnxruntime sessions (the models' weights once per
   * thread) and its own cohort of sessions, so the device works on one cohort while the others turn
   * around (see deviceTurns).
   */
  threads?: number;
  /**
   * threads > 1: whether the threads take turns on the device, one onnxruntime run at a time (default
   * false: their runs overlap, each onnxruntime session on its own CUDA stream; on the H200 that did
   * 1.58M tok/s at 64 sessions against 1.48M taking turns, bench/gpu-suite.sh, bench/results/gpu-12).
   */
  deviceTurns?: boolean;
  /**
   * threads > 1: a new stream goes to the thread with the most streams among those holding fewer
   * than this many (default 0: none), else to the one with the fewest. A few sessions then share one
   * thread's runs (8 sessions as one run of 8 rows, not two of 4) and only many spread evenly.
   */
  packStreams?: number;
  /** A stream keeps its thread this long after its last request, then counts no more and may be placed anew (default 2000). */
  streamIdleMs?: number;
}


/** Where the engine actually runs; fallbackReason says why a CUDA engine runs on the CPU. */
export interface EngineDevice {
  executionProvider: 'cpu' | 'cuda';
  deviceId?: number;
  precision: 'fp32' | 'fp16';
  fallbackReason?: string;
}

export interface SegmentOutput {
  nextState: Float32Array;
  logits: Float32Array;
  tokenLogprobs: Float32Array;
}

/** A KV cache kept inside the engine thread (never copied to the main thread). */
export type KvHandle = number;

export interface BatchStat {
  graph: 'segment' | 'advance' | 'prefill' | 'decode';
  model: string;
  rows: number;
  tokens: number;
  ms: number;
  /** The engine thread that ran it (0 when there is one). */
  lane: number;
  /** Rows in the onnxruntime run (all its runs: runs), padding up to a batch-size bucket included. */
  runRows: number;
  /** The onnxruntime run inside: when it started (ms since the epoch, comparable across threads) and how long it took. */
  startedAt: number;
  runMs: number;
  /** Segments per row in the run: the segment_state_steps graph's K, else 1. */
  steps: number;
  /** onnxruntime runs the batch took: more than 1 when it ran in chunks of maxLogitsRows (startedAt is the first's, runMs their sum). */
  runs?: number;
}

export interface AdvanceOptions {
  /** Who is asking (a session id): its segments stay on one engine thread, and the batch window expects it. */
  stream?: string;
  onState?: (index: number, state: Float32Array) => void;
  signal?: AbortSignal;
  /** Lets a later advanceMany continue from this chain before it ends (pass this ref as its state). */
  chain?: ChainRef;
}

/**
 * A chained advance a later one may continue from: advanceMany fills it in as the chain is sent and as
 * it ends. Passed as a later advanceMany's state before the chain has ended, the engine thread starts
 * that one from the chain's last memory in the run right after the chain's last, without a trip
 * through the main thread (a session's next request keeps its place in the batches).
 */
export interface ChainRef {
  /** The engine request and its thread, once sent. */
  sent?: { id: number; lane: number };
  /** Its last memory, once its reply is here. */
  final?: Float32Array;
  /** It failed or was aborted. */
  failed?: boolean;
  /** A continuation was sent before the reply came (the thread hands it the memory). */
  continued?: boolean;
}

export interface Engine {
  models(): ModelInfo[];
  /** Throws an Error naming the unknown model and the known ones. */
  model(name: string): ModelInfo;
  /** Where the models were loaded. */
  device(): EngineDevice;
  /** Runs 1..segmentLength ids through segment.onnx; concurrent calls are batched. */
  /** `stream`: who is asking (e.g. a session id), so the batcher can expect its next request (batchWaitMs). */
  segment(model: string, ids: readonly number[], state: Float32Array, stream?: string): Promise<SegmentOutput>;
  /**
   * Like segment() but returns only the next memory, and runs the package's segment_state graph
   * when it has one (no vocabulary projection): the call for ingesting text without scores.
   */
  advance(model: string, ids: readonly number[], state: Float32Array, stream?: string): Promise<Float32Array>;
  /**
   * Several segments of one session through the segment_state graph, back to back inside the engine
   * thread (each segment's memory feeds the next without a trip through this thread, so a session
   * keeps its place in every batch). Resolves with the last segment's memory; `onState` sees every
   * segment's memory, in order, as it is made (the last one too, just before the promise resolves).
   * Aborting `signal` drops the segments not run yet and rejects with the signal's reason.
   */
  advanceMany(model: string, segments: readonly (readonly number[])[], state: Float32Array | ChainRef, opts?: AdvanceOptions): Promise<Float32Array>;
  /** Starts a KV cache holding [read memory; ids]. */
  prefill(model: string, ids: readonly number[], state: Float32Array): Promise<{ logits: Float32Array; kv: KvHandle }>;
  /** Appends one token to that cache (in place). */
  decode(model: string, kv: KvHandle, token: number): Promise<{ logits: Float32Array }>;
  releaseKv(kv: KvHandle): void;
  /** For metrics (batch sizes); returns an unsubscribe function. */
  onBatch(listener: (s: BatchStat) => void): () => void;
  /** Terminates the thread; pending calls reject. */
  close(): Promise<void>;
}

interface Pending {
  resolve: (reply: Answer & { ok: true }) => void;
  reject: (err: Error) => void;
  /** A chained advance's memory after each segment but the last ('step' replies). */
  onStep?: (index: number, state: Float32Array) => void;
  /** The stream it was placed for, if any. */
  stream?: string;
}

/** How long close() waits for the thread to release its sessions before terminating it. */
const CLOSE_GRACE_MS = 5000;

function positiveInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw new Error(`startEngine: ${what} must be a positive integer, found ${JSON.stringify(v)}`);
  }
  return v;
}

function nonNegative(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`startEngine: ${what} must be a number >= 0, found ${JSON.stringify(v)}`);
  return v;
}

function checkOptions(opts: EngineOptions): Omit<WorkerConfig, 'lane' | 'lanes' | 'deviceState'> & { threads: number; packStreams: number; streamIdleMs: number } {
  if (typeof opts.modelsDir !== 'string' || opts.modelsDir === '') throw new Error('startEngine: modelsDir must be a non-empty string');
  if (!Array.isArray(opts.models) || opts.models.length === 0) throw new Error('startEngine: models must list at least one package');
  for (const m of opts.models) {
    if (typeof m !== 'string' || m === '') throw new Error(`startEngine: model names must be non-empty strings, found ${JSON.stringify(m)}`);
  }
  const dup = opts.models.find((m, i) => opts.models.indexOf(m) !== i);
  if (dup !== undefined) throw new Error(`startEngine: model '${dup}' is listed twice`);
  if (opts.executionProvider !== 'cpu' && opts.executionProvider !== 'cuda') {
    throw new Error(`startEngine: executionProvider must be 'cpu' or 'cuda', found ${JSON.stringify(opts.executionProvider)}`);
  }
  const precision = opts.precision ?? 'fp32';
  if (precision !== 'fp32' && precision !== 'fp16') {
    throw new Error(`startEngine: precision must be 'fp32' or 'fp16', found ${JSON.stringify(opts.precision)}`);
  }
  const deviceId = opts.deviceId ?? 0;
  if (!Number.isInteger(deviceId) || deviceId < 0) throw new Error(`startEngine: deviceId must be a non-negative integer, found ${JSON.stringify(opts.deviceId)}`);
  if (opts.intraOpThreads !== undefined) positiveInt(opts.intraOpThreads, 'intraOpThreads');
  return {
    modelsDir: path.resolve(opts.modelsDir),
    models: [...opts.models],
    executionProvider: opts.executionProvider,
    deviceId,
    precision,
    cpuFallback: opts.cpuFallback ?? false,
    ...(opts.profileDir !== undefined ? { profileDir: path.resolve(opts.profileDir) } : {}),
    ...(opts.intraOpThreads !== undefined ? { intraOpThreads: opts.intraOpThreads } : {}),
    maxBatch: positiveInt(opts.maxBatch, 'maxBatch'),
    maxBatchTokens: positiveInt(opts.maxBatchTokens, 'maxBatchTokens'),
    maxLogitsRows: positiveInt(opts.maxLogitsRows ?? MAX_LOGITS_ROWS, 'maxLogitsRows'),
    batchInvariant: opts.batchInvariant ?? true,
    batchWaitMs: nonNegative(opts.batchWaitMs ?? 0, 'batchWaitMs'),
    threads: opts.threads === undefined ? 1 : positiveInt(opts.threads, 'threads'),
    deviceTurns: opts.deviceTurns ?? false,
    packStreams: opts.packStreams === undefined || opts.packStreams === 0 ? 0 : positiveInt(opts.packStreams, 'packStreams'),
    streamIdleMs: nonNegative(opts.streamIdleMs ?? STREAM_IDLE_MS, 'streamIdleMs'),
    batchBuckets: opts.batchBuckets ?? opts.executionProvider === 'cuda',
    warmup: opts.warmup ?? opts.executionProvider === 'cuda',
    segmentSteps: opts.segmentSteps ?? true,
  };
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  return (v as object).constructor?.name ?? 'object';
}

/** One engine thread and the main thread's side of it. */
interface Lane {
  index: number;
  worker: Worker;
  /** Where the thread puts advances' memory (copied out as each message arrives). */
  ring: StateRingReader;
  /** Ops issued in the current macrotask, sent as one message. */
  outbox: Op[];
  transfer: ArrayBuffer[];
  flushScheduled: boolean;
  /** Streams placed on this thread (threads > 1). */
  streams: number;
  /** Requests sent and not answered yet. */
  inFlight: number;
}

/**
 * Default streamIdleMs. A session streaming a document sends its next request within milliseconds
 * (worker/handoff.ts); one that waited longer has left its cohort's step anyway, and counting the
 * sessions that stopped would place new ones by a load long gone (bench/gpu-suite.sh, bench/results/gpu-6).
 */
const STREAM_IDLE_MS = 2000;

export async function startEngine(opts: EngineOptions): Promise<Engine> {
  const { threads, packStreams, streamIdleMs, ...config } = checkOptions(opts);
  const deviceState = threads > 1 ? new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT) : undefined;
  const workers = Array.from({ length: threads }, (_, lane) => {
    const workerData: WorkerConfig = { ...config, lane, lanes: threads, ...(deviceState ? { deviceState } : {}) };
    return startThread('engine-thread', { workerData });
  });

  // A package or provider that cannot load is refused with its own message (CUDA's reasons included).
  // Every thread is let finish loading before any is terminated: ending a thread inside
  // onnxruntime's session creation aborts the process.
  const started = await Promise.allSettled(
    workers.map((w, i) =>
      awaitReady<{ infos: ModelInfo[]; device: EngineDevice; ring: StateRingShared }, FromWorker>(w, threads > 1 ? `engine thread ${i}` : 'engine thread', (msg) =>
        msg.type === 'ready' ? { ready: { infos: msg.models, device: msg.device, ring: msg.ring } } : msg.type === 'loadError' ? { refused: msg.message } : undefined,
      ),
    ),
  );
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.allSettled(workers.map((w) => w.terminate()));
    throw failed.reason;
  }
  const ready = started.map((r) => (r as PromiseFulfilledResult<{ infos: ModelInfo[]; device: EngineDevice; ring: StateRingShared }>).value);
  const { infos, device } = ready[0]!;

  const byName = new Map(infos.map((m) => [m.name, m]));
  const pending = new Map<number, Pending & { lane: Lane }>();
  /** Live KV handles on this side, with their model: decode/release check here first. */
  const liveKv = new Map<KvHandle, string>();
  const listeners = new Set<(s: BatchStat) => void>();
  let nextId = 1;
  /** Set once the engine cannot take work: closed, or a thread died (the reason). */
  let dead: string | undefined;
  let closing: Promise<void> | undefined;

  const lanes: Lane[] = workers.map((worker, index) => ({ index, worker, ring: new StateRingReader(ready[index]!.ring), outbox: [], transfer: [], flushScheduled: false, streams: 0, inFlight: 0 }));

  // Requests issued in the same macrotask go out as one message per thread, so sessions that
  // continue from one batch's results arrive together and can share the next run.
  const flush = (lane: Lane) => {
    lane.flushScheduled = false;
    if (lane.outbox.length === 0 || dead !== undefined) return;
    const msg: ToWorker = { type: 'ops', ops: lane.outbox };
    lane.worker.postMessage(msg, lane.transfer);
    lane.outbox = [];
    lane.transfer = [];
  };
  const send = (lane: Lane, op: Op, buffers: ArrayBuffer[] = []) => {
    lane.outbox.push(op);
    lane.transfer.push(...buffers);
    if (!lane.flushScheduled) {
      lane.flushScheduled = true;
      setImmediate(() => flush(lane));
    }
  };

  // Which thread serves a stream: the one it was placed on, or for a new stream the fullest one
  // below packStreams, else the one with the fewest, so sessions that start together split into even
  // cohorts (after filling threads to packStreams one by one). Unnamed requests go to the least busy
  // thread; a KV cache's steps to the thread that holds it.
  /** Per stream: its thread, its requests in flight, and when it last sent or was answered. */
  const placed = new Map<string, { lane: Lane; busy: number; at: number }>();
  let pruneAt = 0;
  const leastBusy = () => lanes.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
  const laneFor = (stream: string | undefined): Lane => {
    if (lanes.length === 1) return lanes[0]!;
    if (stream === undefined) return leastBusy();
    const now = performance.now();
    const known = placed.get(stream);
    if (known) {
      known.at = now;
      known.busy++;
      return known.lane;
    }
    if (now >= pruneAt) {
      for (const [s, p] of placed) {
        if (p.busy === 0 && now - p.at > streamIdleMs) {
          placed.delete(s);
          p.lane.streams--;
        }
      }
      pruneAt = now + streamIdleMs;
    }
    const open = lanes.filter((l) => l.streams < packStreams);
    const lane = open.length > 0
      ? open.reduce((a, b) => (b.streams > a.streams ? b : a))
      : lanes.reduce((a, b) => (b.streams < a.streams || (b.streams === a.streams && b.inFlight < a.inFlight) ? b : a));
    lane.streams++;
    placed.set(stream, { lane, busy: 1, at: now });
    return lane;
  };
  /** A stream's request is over (answered, failed or aborted): its idle time counts from now. */
  const streamDone = (stream: string | undefined) => {
    const p = stream === undefined ? undefined : placed.get(stream);
    if (!p) return;
    p.busy--;
    p.at = performance.now();
  };
  const laneOfKv = (kv: KvHandle): Lane => lanes[(kv - 1) % lanes.length]!;

  // Keep the process alive only while calls are outstanding.
  const updateRef = () => {
    for (const lane of lanes) {
      if (lane.inFlight > 0) lane.worker.ref();
      else lane.worker.unref();
    }
  };
  updateRef();

  const failAll = (reason: string) => {
    const err = new Error(reason);
    const all = [...pending.values()];
    pending.clear();
    liveKv.clear();
    for (const lane of lanes) {
      lane.outbox = [];
      lane.transfer = [];
      lane.inFlight = 0;
    }
    for (const p of all) p.reject(err);
  };

  for (const lane of lanes) {
    const name = lanes.length > 1 ? `engine thread ${lane.index}` : 'engine thread';
    lane.worker.on('message', (msg: FromWorker) => {
      if (msg.type !== 'replies') return;
      for (const s of msg.stats) {
        for (const l of listeners) {
          try {
            l(s);
          } catch {
            // a metrics listener must not break the engine
          }
        }
      }
      for (const sent of msg.replies) {
        const p = pending.get(sent.id);
        if (!p) continue;
        // A memory in the ring is copied out now: its region is written again once released below.
        const r: Answer = sent.ok && (sent.op === 'step' || sent.op === 'advance') && !(sent.nextState instanceof Float32Array) ? { ...sent, nextState: lane.ring.read(sent.nextState) } : (sent as Answer);
        if (r.ok && r.op === 'step') {
          try {
            p.onStep?.(r.index, r.nextState);
          } catch {
            // the caller's listener must not break the engine; it sees its own errors
          }
          continue;
        }
        pending.delete(r.id);
        p.lane.inFlight--;
        streamDone(p.stream);
        if (r.ok) p.resolve(r);
        else p.reject(new Error(r.message));
      }
      if (msg.ringEnd !== undefined) lane.ring.release(msg.ringEnd);
      updateRef();
    });
    // One thread lost fails the engine: its sessions' requests and KV caches are gone, and the others
    // would wait for its turn on the device.
    const lost = (reason: string) => {
      if (dead !== undefined) return;
      dead = reason;
      failAll(dead);
      for (const other of lanes) if (other !== lane) void other.worker.terminate();
    };
    lane.worker.on('error', (err) => lost(`${name} crashed: ${err.message}`));
    lane.worker.on('exit', (code) => lost(`${name} exited unexpectedly (code ${code})`));
  }

  const model = (name: string): ModelInfo => {
    const m = byName.get(name);
    if (!m) {
      throw new Error(`unknown model '${name}'; known models: ${[...byName.keys()].join(', ')}`);
    }
    return m;
  };

  const checkIds = (where: string, m: ModelInfo, ids: readonly number[]): Int32Array<ArrayBuffer> => {
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) {
      throw new Error(`${where}: ids must be an array of token ids, found ${typeName(ids)}`);
    }
    if (ids.length === 0 || ids.length > m.segmentLength) {
      throw new Error(`${where}: ${ids.length} ids, expected 1..${m.segmentLength} (segment_length)`);
    }
    const out = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= m.vocabSize) {
        throw new Error(`${where}: ids[${i}] = ${String(id)} is not a token id in 0..${m.vocabSize - 1}`);
      }
      out[i] = id;
    }
    return out;
  };

  const checkState = (where: string, m: ModelInfo, state: Float32Array): Float32Array<ArrayBuffer> => {
    if (!(state instanceof Float32Array)) {
      throw new Error(`${where}: state must be a Float32Array, found ${typeName(state)}`);
    }
    const expected = m.stateBytes / 4;
    if (state.length !== expected) {
      throw new Error(
        `${where}: state has ${state.length} float32 values (${state.byteLength} bytes), ` +
          `expected ${expected} ([${m.stateShape.join(', ')}], ${m.stateBytes} bytes)`,
      );
    }
    // A copy of just this view: transferring it neither detaches the caller's array nor
    // clones a larger buffer the view may sit in.
    return state.slice();
  };

  const submit = <T extends Answer & { ok: true }>(
    lane: Lane, request: EngineRequest, buffers: ArrayBuffer[], extra: Pick<Pending, 'onStep'> = {},
  ): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const stream = request.op === 'decode' ? undefined : request.stream;
      pending.set(request.id, { resolve: resolve as (r: Answer & { ok: true }) => void, reject, lane, ...extra, ...(stream !== undefined ? { stream } : {}) });
      lane.inFlight++;
      updateRef();
      send(lane, { kind: 'request', request }, buffers);
    });

  /** A segment, advance or prefill request: ids and state checked, then moved (not copied) to the thread. */
  const submitRow = <O extends 'segment' | 'advance' | 'prefill'>(op: O, name: string, ids: readonly number[], state: Float32Array, stream?: string) => {
    const where = `${op}(${name})`;
    const m = model(name);
    const idArr = checkIds(where, m, ids);
    const st = checkState(where, m, state);
    const lengths = op === 'advance' ? { lengths: Int32Array.of(idArr.length) } : {};
    const request = { op, id: nextId++, model: name, ids: idArr, ...lengths, state: st, ...(stream !== undefined ? { stream } : {}) } as EngineRequest;
    return submit<Extract<Answer, { op: O; ok: true }>>(laneFor(stream), request, [idArr.buffer, st.buffer]);
  };

  /** A chained advance: every segment checked, the ids sent as one array split by `lengths`. */
  const submitChain = async (name: string, segments: readonly (readonly number[])[], state: Float32Array | ChainRef, opts: AdvanceOptions): Promise<Float32Array> => {
    const where = `advanceMany(${name})`;
    const m = model(name);
    if (!Array.isArray(segments) || segments.length === 0) throw new Error(`${where}: segments must be a non-empty array of token id arrays`);
    const parts = segments.map((ids, k) => checkIds(`${where} segment ${k}`, m, ids));
    const lengths = Int32Array.from(parts, (p) => p.length);
    const ids = new Int32Array(lengths.reduce((a, b) => a + b, 0));
    let at = 0;
    for (const p of parts) {
      ids.set(p, at);
      at += p.length;
    }
    // From a chain still running (its reply not here yet): the thread that runs it continues it.
    const from = state instanceof Float32Array ? undefined : state;
    if (from && from.final === undefined && (from.failed || from.sent === undefined)) {
      throw new Error(`${where}: the chain to continue from ${from.failed ? 'failed' : 'was never sent'}`);
    }
    const after = from && from.final === undefined ? from.sent! : undefined;
    const st = after ? new Float32Array(0) : checkState(where, m, from ? from.final! : (state as Float32Array));
    const { signal, onState, stream, chain } = opts;
    signal?.throwIfAborted();
    const placedLane = laneFor(stream);
    const lane = after ? lanes[after.lane]! : placedLane;
    const request: EngineRequest = {
      op: 'advance', id: nextId++, model: name, ids, lengths, state: st, ...(stream !== undefined ? { stream } : {}), ...(onState ? { steps: true } : {}),
      ...(chain ? { keep: true } : {}), ...(after ? { after: after.id } : {}),
    };
    if (after) from!.continued = true;
    if (chain) chain.sent = { id: request.id, lane: lane.index };
    const onAbort = () => {
      const p = pending.get(request.id);
      if (!p) return;
      pending.delete(request.id);
      lane.inFlight--;
      streamDone(stream);
      updateRef();
      if (dead === undefined) send(lane, { kind: 'cancel', id: request.id });
      p.reject(signal!.reason instanceof Error ? signal!.reason : new Error(String(signal!.reason)));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      let r: Extract<Answer, { op: 'advance'; ok: true }>;
      try {
        r = await submit<Extract<Answer, { op: 'advance'; ok: true }>>(lane, request, [ids.buffer, st.buffer], onState ? { onStep: onState } : {});
      } catch (err) {
        if (chain) chain.failed = true;
        throw err;
      }
      if (chain) {
        chain.final = r.nextState;
        // No continuation came before the reply: a later one starts from `final`; the thread's copy can go.
        if (!chain.continued && dead === undefined) send(lane, { kind: 'forget', id: request.id });
      }
      onState?.(segments.length - 1, r.nextState);
      return r.nextState;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  };

  /** Runs `body` and turns both its throws and a dead engine into a rejected promise. */
  const call = <T>(body: () => Promise<T>): Promise<T> => {
    if (dead !== undefined) return Promise.reject(new Error(dead));
    try {
      return body();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  };

  const engine: Engine = {
    models: () => [...byName.values()],
    model,
    device: () => ({ ...device }),

    segment: (name, ids, state, stream) =>
      call(async () => {
        const r = await submitRow('segment', name, ids, state, stream);
        return { nextState: r.nextState, logits: r.logits, tokenLogprobs: r.tokenLogprobs };
      }),

    advance: (name, ids, state, stream) => call(async () => (await submitRow('advance', name, ids, state, stream)).nextState),

    advanceMany: (name, segments, state, opts = {}) => call(() => submitChain(name, segments, state, opts)),

    prefill: (name, ids, state) =>
      call(async () => {
        const r = await submitRow('prefill', name, ids, state);
        if (dead === undefined) liveKv.set(r.kv, name);
        return { logits: r.logits, kv: r.kv };
      }),

    decode: (name, kv, token) =>
      call(async () => {
        const where = `decode(${name})`;
        const m = model(name);
        const owner = liveKv.get(kv);
        if (owner === undefined) throw new Error(`${where}: KV handle ${String(kv)} is unknown or was released`);
        if (owner !== name) throw new Error(`${where}: KV handle ${kv} belongs to model '${owner}'`);
        if (typeof token !== 'number' || !Number.isInteger(token) || token < 0 || token >= m.vocabSize) {
          throw new Error(`${where}: token ${String(token)} is not a token id in 0..${m.vocabSize - 1}`);
        }
        const r = await submit<Extract<Answer, { op: 'decode'; ok: true }>>(laneOfKv(kv), { op: 'decode', id: nextId++, model: name, kv, token }, []);
        return { logits: r.logits };
      }),

    releaseKv: (kv) => {
      if (!liveKv.delete(kv) || dead !== undefined) return;
      send(laneOfKv(kv), { kind: 'release', kv });
    },

    onBatch: (listener) => {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },

    close: () => {
      closing ??= (async () => {
        const wasDead = dead !== undefined;
        dead ??= 'engine is closed';
        failAll('engine closed');
        if (wasDead) {
          await Promise.allSettled(lanes.map((l) => l.worker.terminate()));
          return;
        }
        // Let each thread finish its current run and release its sessions, then end it.
        await Promise.all(
          lanes.map(async ({ worker }) => {
            worker.ref();
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, CLOSE_GRACE_MS);
              const done = () => {
                clearTimeout(timer);
                resolve();
              };
              worker.on('message', (msg: FromWorker) => {
                if (msg.type === 'closed') done();
              });
              worker.once('exit', done);
              worker.postMessage({ type: 'close' } satisfies ToWorker);
            });
            await worker.terminate();
          }),
        );
      })();
      return closing;
    },
  };
  return engine;
}
