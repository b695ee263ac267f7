// Main-thread side of the inference engine. onnxruntime-node's run() blocks the thread that calls
// it, so all inference happens in one worker thread (engine-thread.ts) that owns the sessions and
// batches concurrent requests into one run per (model, graph). This module never imports
// onnxruntime: it validates requests, ships them to the thread and resolves their promises.
import path from 'node:path';
import type { EngineRequest, FromWorker, Op, Reply, ToWorker, WorkerConfig } from './engine-protocol.ts';
import { awaitReady, startThread } from './thread-entry.ts';

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
}

export interface ModelInfo {
  name: string;
  dir: string;
  segmentLength: number;
  memoryTokens: number;
  dModel: number;
  vocabSize: number;
  specialTokens: { eos: number; pad: number };
  stateShape: number[];
  stateDtype: 'float32';
  stateBytes: number;
  initState: Float32Array;
  tokenizerFile: string;
  task?: unknown;
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
  resolve: (reply: Reply & { ok: true }) => void;
  reject: (err: Error) => void;
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

function checkOptions(opts: EngineOptions): WorkerConfig {
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
    batchInvariant: opts.batchInvariant ?? true,
    batchWaitMs: nonNegative(opts.batchWaitMs ?? 0, 'batchWaitMs'),
  };
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  return (v as object).constructor?.name ?? 'object';
}

export async function startEngine(opts: EngineOptions): Promise<Engine> {
  const config = checkOptions(opts);
  const worker = startThread('engine-thread', { workerData: config });

  // A package or provider that cannot load is refused with its own message (CUDA's reasons included).
  const { infos, device } = await awaitReady<{ infos: ModelInfo[]; device: EngineDevice }, FromWorker>(worker, 'engine thread', (msg) =>
    msg.type === 'ready' ? { ready: { infos: msg.models, device: msg.device } } : msg.type === 'loadError' ? { refused: msg.message } : undefined,
  );

  const byName = new Map(infos.map((m) => [m.name, m]));
  const pending = new Map<number, Pending>();
  /** Live KV handles on this side, with their model: decode/release check here first. */
  const liveKv = new Map<KvHandle, string>();
  const listeners = new Set<(s: BatchStat) => void>();
  let nextId = 1;
  /** Set once the engine cannot take work: closed, or the thread died (the reason). */
  let dead: string | undefined;
  let closing: Promise<void> | undefined;

  // Requests issued in the same macrotask go out as one message, so sessions that continue from
  // one batch's results arrive together and can share the next run.
  let outbox: Op[] = [];
  let transfer: ArrayBuffer[] = [];
  let flushScheduled = false;
  const flush = () => {
    flushScheduled = false;
    if (outbox.length === 0 || dead !== undefined) return;
    const msg: ToWorker = { type: 'ops', ops: outbox };
    worker.postMessage(msg, transfer);
    outbox = [];
    transfer = [];
  };
  const send = (op: Op, buffers: ArrayBuffer[] = []) => {
    outbox.push(op);
    transfer.push(...buffers);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flush);
    }
  };

  // Keep the process alive only while calls are outstanding.
  const updateRef = () => {
    if (pending.size > 0) worker.ref();
    else worker.unref();
  };
  updateRef();

  const failAll = (reason: string) => {
    const err = new Error(reason);
    const all = [...pending.values()];
    pending.clear();
    liveKv.clear();
    outbox = [];
    transfer = [];
    for (const p of all) p.reject(err);
  };

  worker.on('message', (msg: FromWorker) => {
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
    for (const r of msg.replies) {
      const p = pending.get(r.id);
      if (!p) continue;
      pending.delete(r.id);
      if (r.ok) p.resolve(r);
      else p.reject(new Error(r.message));
    }
    updateRef();
  });
  worker.on('error', (err) => {
    if (dead === undefined) dead = `engine thread crashed: ${err.message}`;
    failAll(dead);
  });
  worker.on('exit', (code) => {
    if (dead === undefined) dead = `engine thread exited unexpectedly (code ${code})`;
    failAll(dead);
  });

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

  const submit = <T extends Reply & { ok: true }>(request: EngineRequest, buffers: ArrayBuffer[]): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      pending.set(request.id, { resolve: resolve as (r: Reply & { ok: true }) => void, reject });
      updateRef();
      send({ kind: 'request', request }, buffers);
    });

  /** A segment, advance or prefill request: ids and state checked, then moved (not copied) to the thread. */
  const submitRow = <O extends 'segment' | 'advance' | 'prefill'>(op: O, name: string, ids: readonly number[], state: Float32Array, stream?: string) => {
    const where = `${op}(${name})`;
    const m = model(name);
    const idArr = checkIds(where, m, ids);
    const st = checkState(where, m, state);
    const request = { op, id: nextId++, model: name, ids: idArr, state: st, ...(stream !== undefined ? { stream } : {}) } as EngineRequest;
    return submit<Extract<Reply, { op: O; ok: true }>>(request, [idArr.buffer, st.buffer]);
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
        const r = await submit<Extract<Reply, { op: 'decode'; ok: true }>>({ op: 'decode', id: nextId++, model: name, kv, token }, []);
        return { logits: r.logits };
      }),

    releaseKv: (kv) => {
      if (!liveKv.delete(kv) || dead !== undefined) return;
      send({ kind: 'release', kv });
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
          await worker.terminate();
          return;
        }
        // Let the thread finish its current run and release its sessions, then end it.
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
      })();
      return closing;
    },
  };
  return engine;
}
