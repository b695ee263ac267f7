// Batched KV-cached decoding (the engine thread's prefill and decode runs): each row's cache grows in
// place up to a fixed capacity (GrowableKvCache), so a decode step appends one position per row
// instead of copying the whole cache out of every run. How the state goes in (the RMT's memory as the
// cache's prefix, or every entry on every call, kept with the cache) is decodeStateFeeds'.
import type { ModelPackage } from '../model/model-package.ts';
import { asFloat32 } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { asKv, kvBlocks, kvCapacity, kvPrefix, kvTensor, newKv, type GrowableKvCache } from './kv-cache.ts';
import { int64 } from './onnx-runtime.ts';
import { writeInt64, type SegmentRow } from './segment-feeds.ts';
import { decodeStateFeeds, flatState } from './state-feeds.ts';

/** A prefix cache's rows on a step (the RMT: its memory is in the cache, the feed is empty). */
const EMPTY = new Float32Array(0);

export interface BatchPrefillResult {
  logits: Float32Array;
  kv: GrowableKvCache;
}

export interface DecodeRow {
  token: number;
  kv: GrowableKvCache;
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
 * Prefills several rows in one decode.onnx call: ids right-padded, attention_mask [B, P + width] with 1
 * for the prefix and each row's real tokens (P = kvPrefix: the RMT's M memory positions, else 0), the
 * state, empty past. Each row gets its own cache of `capacity` positions holding its P + n valid
 * entries, and, for a state-conditioned package, the row's state for its steps.
 */
export async function prefillBatch(
  pkg: ModelPackage,
  rows: readonly SegmentRow[],
  capacity: number = kvCapacity(pkg),
  options: PrefillOptions = {},
): Promise<BatchPrefillResult[]> {
  if (rows.length === 0) return [];
  const M = kvPrefix(pkg);
  // The rows are a planned batch of checked requests (engine-args.ts, request-check.ts): assertions.
  for (const [i, r] of rows.entries()) {
    invariant(r.ids.length > 0 && r.ids.length <= pkg.segmentLength && M + r.ids.length <= capacity, () => `prefill row ${i} has ${r.ids.length} tokens, expected 1..${Math.min(pkg.segmentLength, capacity - M)}`);
    flatState(pkg, r.state);
  }
  const batch = rows.length;
  const longest = Math.max(...rows.map((r) => r.ids.length));
  const width = options.width ?? longest;
  invariant(Number.isInteger(width) && width >= longest && width <= pkg.segmentLength, () => `prefill width ${width} must be an integer in ${longest}..${pkg.segmentLength}`);
  const ids = new BigInt64Array(batch * width);
  const mask = new BigInt64Array(batch * (M + width));
  rows.forEach((r, b) => {
    writeInt64(ids, b * width, r.ids, width, pkg.specialTokens.pad);
    writeInt64(mask, b * (M + width), [], M + r.ids.length, 1);
  });
  const { layers, heads, headDim } = pkg.kv;
  const out = await pkg.sessions.decode.run({
    input_ids: int64(ids, [batch, width]),
    attention_mask: int64(mask, [batch, M + width]),
    ...decodeStateFeeds(pkg, rows.map((r) => r.state), true),
    past_key_values: kvTensor(pkg, newKv(pkg, 0), [layers, 2, batch, heads, 0, headDim]),
  });
  const logits = asFloat32(out.logits, 'logits');
  const present = asKv(pkg, out.present_key_values);
  const total = M + width;
  // The graph's output sizes are the package's, not checked at load: checked here.
  if (present.length !== layers * 2 * batch * heads * total * headDim) {
    throw new Error(`present_key_values has ${present.length} values, expected [${layers}, 2, ${batch}, ${heads}, ${total}, ${headDim}]`);
  }
  const vocab = logits.length / batch;
  const blocks = kvBlocks(pkg);
  // The steps of a state-conditioned cache are fed the state it was prefilled with: the row's own
  // array (a request's, moved to the engine thread; the caller does not change it while the cache lives).
  const keepState = pkg.conditioning.kind === 'state';
  return rows.map((r, b) => {
    const length = M + r.ids.length;
    const data = newKv(pkg, blocks * capacity * headDim);
    for (let j = 0; j < blocks; j++) {
      const lk = Math.floor(j / heads);
      const h = j % heads;
      const src = ((lk * batch + b) * heads + h) * total * headDim;
      data.set(present.subarray(src, src + length * headDim), j * capacity * headDim);
    }
    const kv: GrowableKvCache = { data, length, capacity, ...(keepState ? { conditioning: r.state } : {}) };
    return { logits: logits.slice(b * vocab, (b + 1) * vocab), kv };
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
  // Every cache was made by prefillBatch, a full one is refused before its decode runs (request-check.ts
  // precheck) and a batch holds a cache once (the scheduler): assertions.
  for (const [i, r] of rows.entries()) {
    invariant(r.kv.data.length === blocks * r.kv.capacity * headDim, () => `decode row ${i}: cache has ${r.kv.data.length} values, expected ${blocks * r.kv.capacity * headDim}`);
    invariant(r.kv.length >= 1 && r.kv.length < r.kv.capacity, () => `decode row ${i}: cache holds ${r.kv.length} of ${r.kv.capacity} positions, no room for another token`);
    invariant(rows.findIndex((o) => o.kv === r.kv) === i, () => `decode row ${i}: the same cache appears twice in one batch`);
    invariant(pkg.conditioning.kind !== 'state' || r.kv.conditioning !== undefined, () => `decode row ${i}: a state-conditioned cache without its state`);
  }
  const batch = rows.length;
  const longest = Math.max(...rows.map((r) => r.kv.length));
  const P = options.pastLength ?? longest;
  invariant(Number.isInteger(P) && P >= longest, () => `decode past length ${P} must be an integer >= ${longest} (the longest cache)`);
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
    ...decodeStateFeeds(pkg, rows.map((r) => r.kv.conditioning ?? EMPTY), false),
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
