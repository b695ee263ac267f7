// The feeds of a batched segment run (segment, segment_state and segment_state_steps graphs): ids and
// mask as int64, right-padded and masked, and the rows' states (state-feeds.ts), built in reusable
// buffers (FeedScratch) or, for a chain's rows, taken from the run before without a copy.
import type { ModelPackage } from '../model/model-package.ts';
import { invariant } from './invariant.ts';
import { int64, type Tensor } from './onnx-runtime.ts';
import { feedsInPlace, flatState, stateFeeds } from './state-feeds.ts';

/** What the segment feeds read of a package. */
type FeedPackage = Pick<ModelPackage, 'segmentLength' | 'specialTokens' | 'stateLayout'>;

export interface SegmentRow {
  /** Token ids (an Int32Array from the engine thread, or a plain array). */
  ids: ArrayLike<number>;
  state: Float32Array;
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

/** How a batch's feeds are built. */
export interface FeedOptions {
  /**
   * Padded width of the batch (default: the longest row). A fixed width (segment_length) makes a
   * row's result independent of the other rows' lengths, bit for bit: the write memory sits after
   * the padding, and onnxruntime's vectorised reductions depend on where keys sit.
   */
  width?: number;
  /** Reuse these buffers for the feeds (see FeedScratch). */
  scratch?: FeedScratch;
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
export function writeInt64(out: BigInt64Array, at: number, values: ArrayLike<number>, width: number, pad: number): void {
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

/** Feeds of one batched segment call; rows are right-padded with the pad id and masked. */
export function segmentFeeds(pkg: FeedPackage, rows: readonly SegmentRow[], options: FeedOptions): { feeds: Record<string, Tensor>; width: number } {
  return feedsOf(pkg, rows.map((r) => [r.ids]), rows, options, false);
}

/**
 * Feeds of a batched call over `segments[b]` of row b (all rows the same count K): ids and mask
 * [batch, width] (`stepped` false, K = 1) or [batch, K, width] (the segment_state_steps graph), every
 * segment right-padded to the same width and masked.
 */
export function feedsOf(
  pkg: FeedPackage,
  segments: readonly (readonly ArrayLike<number>[])[], rows: readonly { state: Float32Array }[], options: FeedOptions, stepped: boolean,
): { feeds: Record<string, Tensor>; width: number } {
  // The rows are a planned batch of checked requests (engine-args.ts, request-check.ts): assertions.
  const k = segments[0]!.length;
  let longest = 0;
  for (const [i, segs] of segments.entries()) {
    invariant(segs.length === k, () => `row ${i} has ${segs.length} segments, expected ${k} (every row of a run the same)`);
    for (const [j, ids] of segs.entries()) {
      invariant(ids.length > 0 && ids.length <= pkg.segmentLength, () => `segment row ${i}${stepped ? ` step ${j}` : ''} has ${ids.length} tokens, expected 1..${pkg.segmentLength}`);
      longest = Math.max(longest, ids.length);
    }
    flatState(pkg, rows[i]!.state);
  }
  const width = options.width ?? longest;
  invariant(Number.isInteger(width) && width >= longest && width <= pkg.segmentLength, () => `segment width ${width} must be an integer in ${longest}..${pkg.segmentLength}`);
  const batch = rows.length;
  const inPlace = feedsInPlace(pkg.stateLayout, rows);
  const { ids, mask, states } = feedArrays(options.scratch, batch * k * width, inPlace ? 0 : batch * pkg.stateLayout.size);
  const none: number[] = [];
  segments.forEach((segs, b) => {
    segs.forEach((seg, j) => {
      const at = (b * k + j) * width;
      writeInt64(ids, at, seg, width, pkg.specialTokens.pad);
      // The mask: 1 over the segment's tokens, 0 over its padding.
      writeInt64(mask, at, none, seg.length, 1);
      writeInt64(mask, at + seg.length, none, width - seg.length, 0);
    });
  });
  const dims = stepped ? [batch, k, width] : [batch, width];
  const feeds = {
    input_ids: int64(ids, dims),
    attention_mask: int64(mask, dims),
    ...stateFeeds(pkg.stateLayout, rows, inPlace ? undefined : states),
  };
  return { feeds, width };
}
