// Segment recurrence and KV-cached decoding over a loaded model package.
// Mirrors the reference algorithm in rmt_toolkit so outputs match golden.json.
import type { ModelPackage } from '../model/model-package.ts';
import { float16, float32, int64, type Tensor } from './onnx-runtime.ts';
import { argmax } from '../text/sampling.ts';

/** A KV cache's elements: float32, or raw IEEE half floats for fp16 graphs (never converted here). */
export type KvArray = Float32Array | Uint16Array;

export interface SegmentRow {
  /** Token ids (an Int32Array from the engine thread, or a plain array). */
  ids: ArrayLike<number>;
  state: Float32Array;
}

export interface SegmentResult {
  nextState: Float32Array;
  /** Logits at the row's last real token. */
  logits: Float32Array;
  /** Log-probability of each real token (position 0 has no context: 0). */
  tokenLogprobs: Float32Array;
}

/** Key/value cache for one sequence: [layers, 2, 1, heads, length, head_dim]. */
export interface KvCache {
  data: KvArray;
  length: number;
}

export interface DecodeResult {
  logits: Float32Array;
  kv: KvCache;
}

function memoryState(pkg: Pick<ModelPackage, 'memoryTokens' | 'dModel'>, state: Float32Array): Float32Array {
  const expected = pkg.memoryTokens * pkg.dModel;
  if (state.length !== expected) {
    throw new Error(`memory state has ${state.length} values, expected ${expected} ([${pkg.memoryTokens}, ${pkg.dModel}])`);
  }
  return state;
}

function asFloat32(t: Tensor | undefined, name: string): Float32Array {
  if (!t || t.dtype !== 'float32') throw new Error(`expected float32 output '${name}'`);
  return t.data;
}

/**
 * Buffers for a caller that runs one batch at a time (the engine thread) to build every run's feeds
 * in, instead of new arrays per run: new zeroed arrays of a batch's size (400 KB at 8 rows of a
 * GPT-2-small-shaped model) cost page faults and zeroing between a session's dependent runs, while the
 * device waits. Grown to the largest batch seen; feeds are views of its start. Not for callers with two
 * runs in flight at once (onnxruntime-node reads the feeds when the run starts, a turn of the event
 * loop after run() is called).
 */
export interface FeedScratch {
  ids?: BigInt64Array;
  mask?: BigInt64Array;
  states?: Float32Array;
}

export interface SegmentOptions {
  /**
   * Padded width of the batch (default: the longest row). A fixed width (segment_length) makes a
   * row's result independent of the other rows' lengths, bit for bit: the write memory sits after
   * the padding, and onnxruntime's vectorised reductions depend on where keys sit.
   */
  width?: number;
  /** Reuse these buffers for the feeds (see FeedScratch). */
  scratch?: FeedScratch;
  /**
   * runSegmentState: each row's next memory is a view of the run's one output buffer instead of a
   * copy. The engine thread feeds a chain's views straight into its next run (see rowsInPlace); a
   * caller that transfers or keeps one must copy it (slice) first.
   */
  views?: boolean;
}

// int64 feeds are written through an Int32Array view of their buffer (low word, high word): a BigInt
// per element took 2-4x as long (bench/segment-feeds.ts), on the engine thread, between a
// session's dependent runs, while the device waits for the next run.
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Writes `values` (non-negative, < 2^31) at `at` as int64, then `pad` up to `width` values (no values: a
 * fill). High words are never written: every value written is below 2^31, so they stay 0 in reused
 * buffers too (FeedScratch); the padding is always written, so nothing of an earlier batch is left.
 */
function writeInt64(out: BigInt64Array, at: number, values: ArrayLike<number>, width: number, pad: number): void {
  if (!LITTLE_ENDIAN) {
    for (let t = 0; t < width; t++) out[at + t] = BigInt(t < values.length ? values[t]! : pad);
    return;
  }
  const words = new Int32Array(out.buffer, out.byteOffset + at * 8, width * 2);
  const n = values.length;
  for (let t = 0; t < n; t++) words[2 * t] = values[t]!;
  for (let t = n; t < width; t++) words[2 * t] = pad;
}

/** Views of `n` int64 ids, `n` int64 mask values and `m` floats: new arrays, or the scratch's (grown as needed). */
function feedArrays(scratch: FeedScratch | undefined, n: number, m: number): { ids: BigInt64Array; mask: BigInt64Array; states: Float32Array } {
  if (!scratch) return { ids: new BigInt64Array(n), mask: new BigInt64Array(n), states: new Float32Array(m) };
  if (!scratch.ids || scratch.ids.length < n) {
    scratch.ids = new BigInt64Array(n);
    scratch.mask = new BigInt64Array(n);
  }
  if (!scratch.states || scratch.states.length < m) scratch.states = new Float32Array(m);
  return { ids: scratch.ids.subarray(0, n), mask: scratch.mask!.subarray(0, n), states: scratch.states.subarray(0, m) };
}

/**
 * When the rows' states lie one after another in one buffer, in row order (a chain's views of the run
 * before: SegmentOptions.views), that stretch of the buffer as the batch's state feed: no copy.
 */
function rowsInPlace(rows: readonly { state: Float32Array }[], stateSize: number): Float32Array | undefined {
  const first = rows[0]!.state;
  for (let b = 1; b < rows.length; b++) {
    const s = rows[b]!.state;
    if (s.buffer !== first.buffer || s.byteOffset !== first.byteOffset + b * stateSize * 4) return undefined;
  }
  return new Float32Array(first.buffer, first.byteOffset, rows.length * stateSize);
}

/** Feeds of one batched segment call; rows are right-padded with the pad id and masked. */
export function segmentFeeds(pkg: Pick<ModelPackage, 'segmentLength' | 'memoryTokens' | 'dModel' | 'specialTokens'>, rows: readonly SegmentRow[], options: SegmentOptions): { feeds: Record<string, Tensor>; width: number } {
  return feedsOf(pkg, rows.map((r) => [r.ids]), rows, options, false);
}

/**
 * Feeds of a batched call over `segments[b]` of row b (all rows the same count K): ids and mask
 * [batch, width] (`stepped` false, K = 1) or [batch, K, width] (the segment_state_steps graph), every
 * segment right-padded to the same width and masked.
 */
function feedsOf(
  pkg: Pick<ModelPackage, 'segmentLength' | 'memoryTokens' | 'dModel' | 'specialTokens'>,
  segments: readonly (readonly ArrayLike<number>[])[], rows: readonly { state: Float32Array }[], options: SegmentOptions, stepped: boolean,
): { feeds: Record<string, Tensor>; width: number } {
  const k = segments[0]!.length;
  let longest = 0;
  for (const [i, segs] of segments.entries()) {
    if (segs.length !== k) throw new Error(`row ${i} has ${segs.length} segments, expected ${k} (every row of a run the same)`);
    for (const [j, ids] of segs.entries()) {
      if (ids.length === 0 || ids.length > pkg.segmentLength) {
        throw new Error(`segment row ${i}${stepped ? ` step ${j}` : ''} has ${ids.length} tokens, expected 1..${pkg.segmentLength}`);
      }
      longest = Math.max(longest, ids.length);
    }
    memoryState(pkg, rows[i]!.state);
  }
  const width = options.width ?? longest;
  if (!Number.isInteger(width) || width < longest || width > pkg.segmentLength) {
    throw new Error(`segment width ${width} must be an integer in ${longest}..${pkg.segmentLength}`);
  }
  const batch = rows.length;
  const stateSize = pkg.memoryTokens * pkg.dModel;
  const inPlace = rowsInPlace(rows, stateSize);
  const { ids, mask, states: scratchStates } = feedArrays(options.scratch, batch * k * width, inPlace ? 0 : batch * stateSize);
  const states = inPlace ?? scratchStates;
  const none: number[] = [];
  segments.forEach((segs, b) => {
    segs.forEach((seg, j) => {
      const at = (b * k + j) * width;
      writeInt64(ids, at, seg, width, pkg.specialTokens.pad);
      // The mask: 1 over the segment's tokens, 0 over its padding.
      writeInt64(mask, at, none, seg.length, 1);
      writeInt64(mask, at + seg.length, none, width - seg.length, 0);
    });
    if (!inPlace) states.set(rows[b]!.state, b * stateSize);
  });
  const dims = stepped ? [batch, k, width] : [batch, width];
  const feeds = {
    input_ids: int64(ids, dims),
    attention_mask: int64(mask, dims),
    'state.memory': float32(states, [batch, pkg.memoryTokens, pkg.dModel]),
  };
  return { feeds, width };
}

function splitStates(pkg: ModelPackage, next: Float32Array, batch: number, views = false): Float32Array[] {
  const stateSize = pkg.memoryTokens * pkg.dModel;
  // slice() copies, so results do not pin the whole batch buffer.
  return Array.from({ length: batch }, (_, b) => (views ? next.subarray(b * stateSize, (b + 1) * stateSize) : next.slice(b * stateSize, (b + 1) * stateSize)));
}

/** Runs one batched segment call: next state, last-token logits and per-token log-probabilities. */
export async function runSegment(pkg: ModelPackage, rows: readonly SegmentRow[], options: SegmentOptions = {}): Promise<SegmentResult[]> {
  if (rows.length === 0) return [];
  const { feeds, width } = segmentFeeds(pkg, rows, options);
  const out = await pkg.sessions.segment.run(feeds);
  const batch = rows.length;
  const next = splitStates(pkg, asFloat32(out['next_state.memory'], 'next_state.memory'), batch);
  const logits = asFloat32(out.logits, 'logits');
  const logprobs = asFloat32(out.token_logprobs, 'token_logprobs');
  const vocab = logits.length / batch;
  return rows.map((r, b) => ({
    nextState: next[b]!,
    logits: logits.slice(b * vocab, (b + 1) * vocab),
    tokenLogprobs: logprobs.slice(b * width, b * width + r.ids.length),
  }));
}

/**
 * The next memory only: the package's segment_state graph when it has one (no vocabulary
 * projection at all), else the segment graph with only next_state.memory copied back.
 */
export async function runSegmentState(pkg: ModelPackage, rows: readonly SegmentRow[], options: SegmentOptions = {}): Promise<Float32Array[]> {
  if (rows.length === 0) return [];
  const { feeds } = segmentFeeds(pkg, rows, options);
  const session = pkg.sessions.segmentState ?? pkg.sessions.segment;
  const out = await session.run(feeds, ['next_state.memory']);
  return splitStates(pkg, asFloat32(out['next_state.memory'], 'next_state.memory'), rows.length, options.views);
}

/** A row of a segment_state_steps run: its next `pkg.steps` segments, and the memory before the first. */
export interface StepsRow {
  segments: readonly ArrayLike<number>[];
  state: Float32Array;
}

export interface StepsResult {
  /** Per row, the memory after each of its segments. */
  steps: Float32Array[][];
  /** Per row, the memory after its last segment (equal to its last step's; with views, rows lie one after another). */
  last: Float32Array[];
}

/**
 * Runs `pkg.steps` segments of every row in one call of the segment_state_steps graph, each segment's
 * memory feeding the next inside the graph. With options.views the memories are views of the run's
 * output buffers (see SegmentOptions.views).
 */
export async function runSegmentSteps(pkg: ModelPackage, rows: readonly StepsRow[], options: SegmentOptions = {}): Promise<StepsResult> {
  const session = pkg.sessions.segmentSteps;
  if (!session || pkg.steps === undefined) throw new Error(`model '${pkg.name}' has no segment_state_steps graph (${pkg.precision})`);
  if (rows.length === 0) return { steps: [], last: [] };
  const K = pkg.steps;
  for (const [i, r] of rows.entries()) if (r.segments.length !== K) throw new Error(`steps row ${i} has ${r.segments.length} segments, expected ${K} (the graph's steps per run)`);
  const { feeds } = feedsOf(pkg, rows.map((r) => r.segments), rows, options, true);
  const out = await session.run(feeds, ['next_state.memory', 'step_states.memory']);
  const batch = rows.length;
  const all = asFloat32(out['step_states.memory'], 'step_states.memory');
  const stateSize = pkg.memoryTokens * pkg.dModel;
  if (all.length !== batch * K * stateSize) {
    throw new Error(`step_states.memory has ${all.length} values, expected [${batch}, ${K}, ${pkg.memoryTokens}, ${pkg.dModel}]`);
  }
  const flat = splitStates(pkg, all, batch * K, options.views);
  return {
    steps: Array.from({ length: batch }, (_, b) => flat.slice(b * K, (b + 1) * K)),
    last: splitStates(pkg, asFloat32(out['next_state.memory'], 'next_state.memory'), batch, options.views),
  };
}

function newKv(pkg: ModelPackage, n: number): KvArray {
  return pkg.kvDtype === 'float16' ? new Uint16Array(n) : new Float32Array(n);
}

function kvTensor(pkg: ModelPackage, data: KvArray, dims: number[]): Tensor {
  if (pkg.kvDtype === 'float16') {
    if (!(data instanceof Uint16Array)) throw new Error('KV cache holds float32 values but the decode graph takes float16');
    return float16(data, dims);
  }
  if (!(data instanceof Float32Array)) throw new Error('KV cache holds float16 values but the decode graph takes float32');
  return float32(data, dims);
}

function asKv(pkg: ModelPackage, t: Tensor | undefined): KvArray {
  if (!t || t.dtype !== pkg.kvDtype) throw new Error(`expected ${pkg.kvDtype} output 'present_key_values', found ${t?.dtype ?? 'none'}`);
  return t.data as KvArray;
}

function emptyKv(pkg: ModelPackage): Tensor {
  return kvTensor(pkg, newKv(pkg, 0), [pkg.kv.layers, 2, 1, pkg.kv.heads, 0, pkg.kv.headDim]);
}

function kvFromOutput(pkg: ModelPackage, t: Tensor | undefined): KvCache {
  const data = asKv(pkg, t);
  return { data, length: data.length / (pkg.kv.layers * 2 * pkg.kv.heads * pkg.kv.headDim) };
}

function ones(n: number): BigInt64Array {
  return new BigInt64Array(n).fill(1n);
}

/** Starts a decode cache: the memory tokens plus `ids`, attending to the given state. */
export async function prefill(pkg: ModelPackage, ids: readonly number[], state: Float32Array): Promise<DecodeResult> {
  if (ids.length === 0) throw new Error('prefill needs at least one token');
  const out = await pkg.sessions.decode.run({
    input_ids: int64(ids, [1, ids.length]),
    attention_mask: int64(ones(pkg.memoryTokens + ids.length), [1, pkg.memoryTokens + ids.length]),
    memory: float32(memoryState(pkg, state), [1, pkg.memoryTokens, pkg.dModel]),
    past_key_values: emptyKv(pkg),
  });
  return { logits: asFloat32(out.logits, 'logits'), kv: kvFromOutput(pkg, out.present_key_values) };
}

/** Appends one token to an existing cache; memory is already inside the cache. */
export async function decodeStep(pkg: ModelPackage, token: number, kv: KvCache): Promise<DecodeResult> {
  const { layers, heads, headDim } = pkg.kv;
  const out = await pkg.sessions.decode.run({
    input_ids: int64([token], [1, 1]),
    attention_mask: int64(ones(kv.length + 1), [1, kv.length + 1]),
    memory: float32(new Float32Array(0), [1, 0, pkg.dModel]),
    past_key_values: kvTensor(pkg, kv.data, [layers, 2, 1, heads, kv.length, headDim]),
  });
  return { logits: asFloat32(out.logits, 'logits'), kv: kvFromOutput(pkg, out.present_key_values) };
}

export interface GreedyResult {
  ids: number[];
  segmentsCommitted: number;
  state: Float32Array;
}

/**
 * Greedy decoding: full prompt segments go through the segment graph; the
 * tail lives in the KV cache, and when it reaches segment_length it is
 * committed to memory with the segment graph and the cache starts over.
 */
export async function greedyGenerate(pkg: ModelPackage, promptIds: readonly number[], maxNew: number): Promise<GreedyResult> {
  if (promptIds.length === 0) throw new Error('greedyGenerate needs a non-empty prompt');
  const L = pkg.segmentLength;
  let state = pkg.initState.memory!;
  let logits: Float32Array | undefined;
  const fullEnd = Math.floor(promptIds.length / L) * L;
  for (let start = 0; start < fullEnd; start += L) {
    const [r] = await runSegment(pkg, [{ ids: promptIds.slice(start, start + L), state }]);
    state = r!.nextState;
    logits = r!.logits;
  }
  let tail = promptIds.slice(fullEnd);
  let kv: KvCache | undefined;
  if (tail.length > 0) ({ logits, kv } = await prefill(pkg, tail, state));

  const output: number[] = [];
  let segmentsCommitted = 0;
  while (output.length < maxNew) {
    const tok = argmax(logits!);
    output.push(tok);
    tail = [...tail, tok];
    if (tail.length === L) {
      const [r] = await runSegment(pkg, [{ ids: tail, state }]);
      state = r!.nextState;
      logits = r!.logits;
      tail = [];
      kv = undefined;
      segmentsCommitted++;
    } else if (kv === undefined) {
      ({ logits, kv } = await prefill(pkg, tail, state));
    } else {
      ({ logits, kv } = await decodeStep(pkg, tok, kv));
    }
  }
  return { ids: output, segmentsCommitted, state };
}

// ---------------------------------------------------------------------------
// Batched KV-cached decoding (used by the engine thread's scheduler).

/**
 * A decode cache for one sequence that grows in place:
 * `data` is [layers, 2, 1, heads, capacity, head_dim]; positions < `length` are valid.
 */
export interface GrowableKvCache {
  data: KvArray;
  length: number;
  capacity: number;
}

export interface BatchPrefillResult {
  logits: Float32Array;
  kv: GrowableKvCache;
}

export interface DecodeRow {
  token: number;
  kv: GrowableKvCache;
}

/** Largest cache the decode graph can extend: [read memory; a full segment of tokens]. */
export function kvCapacity(pkg: ModelPackage): number {
  return pkg.memoryTokens + pkg.segmentLength;
}

function kvBlocks(pkg: ModelPackage): number {
  return pkg.kv.layers * 2 * pkg.kv.heads;
}

export interface PrefillOptions {
  /**
   * Padded width of the ids (default: the longest row). A caller that splits one batch into several
   * runs passes the batch's longest to each, so every row is padded as in one run (and its results
   * are those of one run: rows are independent at a given width).
   */
  width?: number;
}

/**
 * Prefills several rows in one decode.onnx call: ids right-padded, attention_mask
 * [B, M + width] with 1 for the memory and each row's real tokens, memory [B, M, D], empty past.
 * Each row gets its own cache of `capacity` positions holding its M + n valid entries.
 */
export async function prefillBatch(
  pkg: ModelPackage,
  rows: readonly SegmentRow[],
  capacity: number = kvCapacity(pkg),
  options: PrefillOptions = {},
): Promise<BatchPrefillResult[]> {
  if (rows.length === 0) return [];
  const M = pkg.memoryTokens;
  for (const [i, r] of rows.entries()) {
    if (r.ids.length === 0 || r.ids.length > pkg.segmentLength || M + r.ids.length > capacity) {
      throw new Error(`prefill row ${i} has ${r.ids.length} tokens, expected 1..${Math.min(pkg.segmentLength, capacity - M)}`);
    }
    memoryState(pkg, r.state);
  }
  const batch = rows.length;
  const longest = Math.max(...rows.map((r) => r.ids.length));
  const width = options.width ?? longest;
  if (!Number.isInteger(width) || width < longest || width > pkg.segmentLength) {
    throw new Error(`prefill width ${width} must be an integer in ${longest}..${pkg.segmentLength}`);
  }
  const stateSize = M * pkg.dModel;
  const ids = new BigInt64Array(batch * width);
  const mask = new BigInt64Array(batch * (M + width));
  const memory = new Float32Array(batch * stateSize);
  rows.forEach((r, b) => {
    writeInt64(ids, b * width, r.ids, width, pkg.specialTokens.pad);
    writeInt64(mask, b * (M + width), [], M + r.ids.length, 1);
    memory.set(r.state, b * stateSize);
  });
  const { layers, heads, headDim } = pkg.kv;
  const out = await pkg.sessions.decode.run({
    input_ids: int64(ids, [batch, width]),
    attention_mask: int64(mask, [batch, M + width]),
    memory: float32(memory, [batch, M, pkg.dModel]),
    past_key_values: kvTensor(pkg, newKv(pkg, 0), [layers, 2, batch, heads, 0, headDim]),
  });
  const logits = asFloat32(out.logits, 'logits');
  const present = asKv(pkg, out.present_key_values);
  const total = M + width;
  if (present.length !== layers * 2 * batch * heads * total * headDim) {
    throw new Error(`present_key_values has ${present.length} values, expected [${layers}, 2, ${batch}, ${heads}, ${total}, ${headDim}]`);
  }
  const vocab = logits.length / batch;
  const blocks = kvBlocks(pkg);
  return rows.map((r, b) => {
    const length = M + r.ids.length;
    const data = newKv(pkg, blocks * capacity * headDim);
    for (let j = 0; j < blocks; j++) {
      const lk = Math.floor(j / heads);
      const h = j % heads;
      const src = ((lk * batch + b) * heads + h) * total * headDim;
      data.set(present.subarray(src, src + length * headDim), j * capacity * headDim);
    }
    return { logits: logits.slice(b * vocab, (b + 1) * vocab), kv: { data, length, capacity } };
  });
}

/**
 * One decode step for several rows whose caches have different lengths, in one decode.onnx call.
 * past is [L, 2, B, H, Pmax, Dh] with each row's cache padded at the end with zeros and
 * attention_mask 0 there (positions are cumsum(mask) - 1, so padding does not shift them);
 * from present [L, 2, B, H, Pmax + 1, Dh] the new entry is appended to each row's cache in place.
 */
export interface DecodeBatchOptions {
  /**
   * Past length Pmax of the batch (default: the longest cache). A fixed Pmax (capacity - 1) makes a
   * row's logits independent of the other rows' cache lengths, bit for bit: padding moves the new
   * token's key, and onnxruntime's vectorised softmax sums depend on where keys sit (up to ~2e-5 on
   * the shipped models' logits otherwise).
   */
  pastLength?: number;
}

export async function decodeBatch(pkg: ModelPackage, rows: readonly DecodeRow[], options: DecodeBatchOptions = {}): Promise<Float32Array[]> {
  if (rows.length === 0) return [];
  const { layers, heads, headDim } = pkg.kv;
  const blocks = kvBlocks(pkg);
  for (const [i, r] of rows.entries()) {
    if (r.kv.data.length !== blocks * r.kv.capacity * headDim) {
      throw new Error(`decode row ${i}: cache has ${r.kv.data.length} values, expected ${blocks * r.kv.capacity * headDim}`);
    }
    if (r.kv.length < 1 || r.kv.length >= r.kv.capacity) {
      throw new Error(`decode row ${i}: cache holds ${r.kv.length} of ${r.kv.capacity} positions, no room for another token`);
    }
    if (rows.findIndex((o) => o.kv === r.kv) !== i) throw new Error(`decode row ${i}: the same cache appears twice in one batch`);
  }
  const batch = rows.length;
  const longest = Math.max(...rows.map((r) => r.kv.length));
  const P = options.pastLength ?? longest;
  if (!Number.isInteger(P) || P < longest) throw new Error(`decode past length ${P} must be an integer >= ${longest} (the longest cache)`);
  const past = newKv(pkg, layers * 2 * batch * heads * P * headDim);
  const mask = new BigInt64Array(batch * (P + 1));
  rows.forEach((r, b) => {
    const { data, length, capacity } = r.kv;
    for (let j = 0; j < blocks; j++) {
      const lk = Math.floor(j / heads);
      const h = j % heads;
      const src = j * capacity * headDim;
      past.set(data.subarray(src, src + length * headDim), ((lk * batch + b) * heads + h) * P * headDim);
    }
    mask.fill(1n, b * (P + 1), b * (P + 1) + length);
    mask[b * (P + 1) + P] = 1n;
  });
  const out = await pkg.sessions.decode.run({
    input_ids: int64(rows.map((r) => r.token), [batch, 1]),
    attention_mask: int64(mask, [batch, P + 1]),
    memory: float32(new Float32Array(0), [batch, 0, pkg.dModel]),
    past_key_values: kvTensor(pkg, past, [layers, 2, batch, heads, P, headDim]),
  });
  const logits = asFloat32(out.logits, 'logits');
  const present = asKv(pkg, out.present_key_values);
  if (present.length !== layers * 2 * batch * heads * (P + 1) * headDim) {
    throw new Error(`present_key_values has ${present.length} values, expected [${layers}, 2, ${batch}, ${heads}, ${P + 1}, ${headDim}]`);
  }
  const vocab = logits.length / batch;
  rows.forEach((r, b) => {
    const { data, length, capacity } = r.kv;
    for (let j = 0; j < blocks; j++) {
      const lk = Math.floor(j / heads);
      const h = j % heads;
      const src = (((lk * batch + b) * heads + h) * (P + 1) + P) * headDim;
      data.set(present.subarray(src, src + headDim), (j * capacity + length) * headDim);
    }
    r.kv.length = length + 1;
  });
  return rows.map((_, b) => logits.slice(b * vocab, (b + 1) * vocab));
}
