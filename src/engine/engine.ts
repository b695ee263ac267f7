// Main-thread side of the inference engine, its front: onnxruntime-node's run() blocks the thread that
// calls it, so all inference happens in worker threads (engine-thread.ts) that own the sessions and
// batch concurrent requests into one run per (model, graph). This module never imports onnxruntime:
// startEngine checks the options (engine-options.ts) and starts the threads (engine-threads.ts); each
// call's arguments are checked here (engine-args.ts) and the request goes to a thread through the
// client (engine-client.ts), which resolves its promise when the reply comes.
// With threads > 1 each thread loads every model and a session (stream) stays on one thread while it
// streams, so the sessions form cohorts whose runs overlap on the device, or take turns on it with deviceTurns
// (see engine-thread.ts, device-turn.ts): while one cohort's run executes, the others' results go back and their next segments come in.
import { advanceChain, type AdvanceOptions, type ChainRef } from './chained-advance.ts';
import { checkIds, checkState, checkToken } from './engine-args.ts';
import { EngineClient } from './engine-client.ts';
import { checkOptions, type EngineOptions } from './engine-options.ts';
import type { Answer, BatchStat, EngineDevice, EngineRequest, ModelInfo } from './engine-protocol.ts';
import { startEngineThreads } from './engine-threads.ts';

// Declared with the thread's messages, which carry them, and with the modules that own them; exported
// from here for the engine's users.
export type { BatchStat, EngineDevice, ModelInfo } from './engine-protocol.ts';
export type { EngineOptions } from './engine-options.ts';
export type { AdvanceOptions, ChainRef } from './chained-advance.ts';

export interface SegmentOutput {
  nextState: Float32Array;
  logits: Float32Array;
  tokenLogprobs: Float32Array;
}

/** A KV cache kept inside the engine thread (never copied to the main thread). */
export type KvHandle = number;

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
  /**
   * Runs and segments (steps x rows) finished so far, read from shared memory: current even while
   * this thread is blocked and handles no message (tests show the engine going on without it).
   */
  progress(): { runs: number; segments: number };
  /** Terminates the thread; pending calls reject. */
  close(): Promise<void>;
}

export async function startEngine(opts: EngineOptions): Promise<Engine> {
  const { threads, packStreams, streamIdleMs, ...config } = checkOptions(opts);
  const { lanes, infos, device, progress } = await startEngineThreads(config, threads);
  const client = new EngineClient(lanes, { packStreams, streamIdleMs });
  const byName = new Map(infos.map((m) => [m.name, m]));

  const model = (name: string): ModelInfo => {
    const m = byName.get(name);
    if (!m) {
      throw new Error(`unknown model '${name}'; known models: ${[...byName.keys()].join(', ')}`);
    }
    return m;
  };

  /** A segment, advance or prefill request: ids and state checked, then moved (not copied) to the thread. */
  const submitRow = <O extends 'segment' | 'advance' | 'prefill'>(op: O, name: string, ids: readonly number[], state: Float32Array, stream?: string) => {
    const where = `${op}(${name})`;
    const m = model(name);
    const idArr = checkIds(where, m, ids);
    const st = checkState(where, m, state);
    const lengths = op === 'advance' ? { lengths: Int32Array.of(idArr.length) } : {};
    const request = { op, id: client.nextId(), model: name, ids: idArr, ...lengths, state: st, ...(stream !== undefined ? { stream } : {}) } as EngineRequest;
    return client.submit<Extract<Answer, { op: O; ok: true }>>(client.laneFor(stream), request, [idArr.buffer, st.buffer]);
  };

  const engine: Engine = {
    models: () => [...byName.values()],
    model,
    device: () => ({ ...device }),

    segment: (name, ids, state, stream) =>
      client.call(async () => {
        const r = await submitRow('segment', name, ids, state, stream);
        return { nextState: r.nextState, logits: r.logits, tokenLogprobs: r.tokenLogprobs };
      }),

    advance: (name, ids, state, stream) => client.call(async () => (await submitRow('advance', name, ids, state, stream)).nextState),

    advanceMany: (name, segments, state, opts = {}) => client.call(() => advanceChain(client, model(name), segments, state, opts)),

    prefill: (name, ids, state) =>
      client.call(async () => {
        const r = await submitRow('prefill', name, ids, state);
        client.keepKv(r.kv, name);
        return { logits: r.logits, kv: r.kv };
      }),

    decode: (name, kv, token) =>
      client.call(async () => {
        const where = `decode(${name})`;
        const m = model(name);
        client.checkKv(where, kv, name);
        checkToken(where, m, token);
        const r = await client.submit<Extract<Answer, { op: 'decode'; ok: true }>>(client.laneOfKv(kv), { op: 'decode', id: client.nextId(), model: name, kv, token }, []);
        return { logits: r.logits };
      }),

    releaseKv: (kv) => client.releaseKv(kv),

    progress: () => ({ runs: Atomics.load(progress, 0), segments: Atomics.load(progress, 1) }),

    onBatch: (listener) => client.onBatch(listener),

    close: () => client.close(),
  };
  return engine;
}
