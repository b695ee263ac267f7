// The options of startEngine, checked once there: the thread's config (WorkerConfig) with every default
// filled in, and the main thread's own (threads, stream placement).
import path from 'node:path';
import type { WorkerConfig } from './engine-protocol.ts';
import { MAX_LOGITS_ROWS } from './logits-rows.ts';

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
  /**
   * What runs the segment_state graphs (ingest's runs): onnxruntime-node (default), or 'bound': the
   * IO-binding addon (src/engine/ort-native.ts; npm run native:build), whose sessions keep their input
   * and output buffers. No CUDA graphs here: onnxruntime refuses to capture these graphs with dynamic
   * shapes (bench/results/gpu-17/bound), and static ones would need a session per batch and width.
   */
  ortRunner?: 'onnxruntime-node' | 'bound';
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

/**
 * Default streamIdleMs. A session streaming a document sends its next request within milliseconds
 * (worker/handoff.ts); one that waited longer has left its cohort's step anyway, and counting the
 * sessions that stopped would place new ones by a load long gone (bench/gpu-suite.sh, bench/results/gpu-6).
 */
const STREAM_IDLE_MS = 2000;

/** Every engine thread's config, but for its place among the threads and what they share (added as they start). */
export type ThreadConfig = Omit<WorkerConfig, 'lane' | 'lanes' | 'deviceState' | 'progress'>;

/** The checked options: the threads' config and the main thread's own. */
export type CheckedOptions = ThreadConfig & { threads: number; packStreams: number; streamIdleMs: number };

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

/** The options with their defaults, or an Error naming the first one that is wrong. */
export function checkOptions(opts: EngineOptions): CheckedOptions {
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
  const ortRunner = opts.ortRunner ?? 'onnxruntime-node';
  if (ortRunner !== 'onnxruntime-node' && ortRunner !== 'bound') {
    throw new Error(`startEngine: ortRunner must be 'onnxruntime-node' or 'bound', found ${JSON.stringify(opts.ortRunner)}`);
  }
  return {
    modelsDir: path.resolve(opts.modelsDir),
    models: [...opts.models],
    executionProvider: opts.executionProvider,
    deviceId,
    precision,
    cpuFallback: opts.cpuFallback ?? false,
    ...(opts.profileDir !== undefined ? { profileDir: path.resolve(opts.profileDir) } : {}),
    ...(opts.intraOpThreads !== undefined ? { intraOpThreads: opts.intraOpThreads } : {}),
    ortRunner,
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
