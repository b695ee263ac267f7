// Messages between the main thread (engine-client.ts, engine-lane.ts) and the engine thread (engine-thread.ts).
// Types only: nothing here runs, so either side can import it. The types both sides share live here
// (engine.ts re-exports them), so neither imports the other.
import type { ModelInfo } from '../model/model-spec.ts';
import type { RingSlice, StateRingShared } from './state-ring.ts';

export interface WorkerConfig {
  modelsDir: string;
  models: string[];
  executionProvider: 'cpu' | 'cuda';
  deviceId: number;
  precision: 'fp32' | 'fp16';
  /** cuda only: start on the CPU (fp32) when CUDA cannot, instead of failing. */
  cpuFallback: boolean;
  profileDir?: string;
  intraOpThreads?: number;
  /** What runs the segment_state graphs: onnxruntime-node, or the IO-binding addon (ort-native.ts). */
  ortRunner: 'onnxruntime-node' | 'bound';
  maxBatch: number;
  maxBatchTokens: number;
  /** Most rows in one run of a graph with per-position logits (scored segment, prefill): see logits-rows.ts. */
  maxLogitsRows: number;
  batchInvariant: boolean;
  /** Most ms an iteration waits for rows of streams that were just answered (0 = run what is queued). */
  batchWaitMs: number;
  /** Pad segment and advance runs up to a batch-size bucket (see batch-buckets.ts). */
  batchBuckets: boolean;
  /** Run every bucket once per segment graph before saying ready. */
  warmup: boolean;
  /** This thread's index among the engine's threads, and their number (KV handles say which thread holds the cache: kv-registry.ts). */
  lane: number;
  lanes: number;
  /**
   * With several threads: what they share ([next ticket, now serving, threads ready], Int32). With
   * deviceTurns the first two are a ticket lock, so one runs onnxruntime at a time while the others take
   * in their next batch; the count tells the batch window whether another thread will use the device.
   */
  deviceState?: SharedArrayBuffer;
  /**
   * [runs finished, segments (steps x rows) finished] over every thread (Int32, Atomics), counted
   * before each run's replies are posted: the main thread can read the engine's progress while it
   * is blocked and handles no message (Engine.progress()).
   */
  progress?: SharedArrayBuffer;
  deviceTurns: boolean;
  /** Run chained advances K segments per run through a package's segment_state_steps graph when every row has K to go. */
  segmentSteps: boolean;
}

export type EngineRequest =
  | { op: 'segment'; id: number; model: string; ids: Int32Array; state: Float32Array; stream?: string }
  /**
   * One or more segments of one session, run back to back inside the engine thread: `lengths` splits
   * `ids` into segments, each segment's next memory feeding the next, with no trip to the main thread
   * in between. With `steps`, every segment's memory is also sent back as it is made ('step' replies);
   * the last comes as the 'advance' reply.
   */
  | {
      op: 'advance'; id: number; model: string; ids: Int32Array; lengths: Int32Array; state: Float32Array; stream?: string; steps?: boolean;
      /**
       * Another may continue from this chain (keep its last memory until that one comes or the main
       * thread says 'forget').
       */
      keep?: boolean;
      /**
       * Continues from this earlier chain (sent with `keep`): starts from its last memory, in the run
       * right after that chain's last; `state` is then empty.
       */
      after?: number;
    }
  | { op: 'prefill'; id: number; model: string; ids: Int32Array; state: Float32Array; stream?: string }
  | { op: 'decode'; id: number; model: string; kv: number; token: number };

/** One item of the ordered stream the main thread sends; releases keep their place among requests. */
export type Op =
  | { kind: 'request'; request: EngineRequest }
  | { kind: 'release'; kv: number }
  | { kind: 'cancel'; id: number }
  /** The main thread has a kept chain's last memory and no continuation was sent: drop the thread's. */
  | { kind: 'forget'; id: number };

export type ToWorker = { type: 'ops'; ops: Op[] } | { type: 'close' };

/**
 * A reply; `S` is how an advance's memory travels: as sent, its own buffer or a slice of the thread's
 * state ring (Reply); as the main thread hands it on, its own buffer (Answer).
 */
type ReplyOf<S> =
  | { id: number; ok: true; op: 'segment'; nextState: Float32Array; logits: Float32Array; tokenLogprobs: Float32Array }
  | { id: number; ok: true; op: 'advance'; nextState: S }
  /** A chained advance's memory after its segment `index` (0-based), before the request is done. */
  | { id: number; ok: true; op: 'step'; index: number; nextState: S }
  | { id: number; ok: true; op: 'prefill'; logits: Float32Array; kv: number }
  | { id: number; ok: true; op: 'decode'; logits: Float32Array }
  | { id: number; ok: false; message: string };

export type Reply = ReplyOf<Float32Array | RingSlice>;
export type Answer = ReplyOf<Float32Array>;

export type FromWorker =
  /** `ring`: where the thread puts advances' memory for this side to copy out (state-ring.ts). */
  | { type: 'ready'; models: ModelInfo[]; device: EngineDevice; ring: StateRingShared }
  | { type: 'loadError'; message: string }
  /** The replies of one onnxruntime run (or of requests rejected before any run), in one message. */
  /** `ringEnd`: the ring position after every slice sent so far, released once this message's are copied out. */
  | { type: 'replies'; replies: Reply[]; stats: BatchStat[]; ringEnd?: number }
  | { type: 'closed' };

/** What a loaded model is, as the engine's users see it (model-spec.ts, the one reader of model.json). */
export type { ModelInfo };

/** Where the engine actually runs; fallbackReason says why a CUDA engine runs on the CPU. */
export interface EngineDevice {
  executionProvider: 'cpu' | 'cuda';
  deviceId?: number;
  precision: 'fp32' | 'fp16';
  fallbackReason?: string;
}

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
