// Segment recurrence over a loaded model package: batched runs of the segment graphs, each row's
// memory in and its next memory out (the feeds: segment-feeds.ts; KV-cached decoding: batch-decode.ts,
// sequence-decode.ts). Mirrors the reference algorithm in rmt_toolkit so outputs match golden.json.
import type { ModelPackage } from '../model/model-package.ts';
import { asFloat32 } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { feedsOf, segmentFeeds, type FeedOptions, type SegmentRow } from './segment-feeds.ts';

export interface SegmentResult {
  nextState: Float32Array;
  /** Logits at the row's last real token. */
  logits: Float32Array;
  /** Log-probability of each real token (position 0 has no context: 0). */
  tokenLogprobs: Float32Array;
}

export interface SegmentOptions extends FeedOptions {
  /**
   * runSegmentState: each row's next memory is a view of the run's one output buffer instead of a
   * copy. The engine thread feeds a chain's views straight into its next run (see rowsInPlace in
   * segment-feeds.ts); a caller that transfers or keeps one must copy it (slice) first.
   */
  views?: boolean;
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
  // Called only for a package with the graph, with rows of K segments (Executor.stepsPlan, the warm-up).
  const session = pkg.sessions.segmentSteps;
  invariant(session && pkg.steps !== undefined, () => `model '${pkg.name}' has no segment_state_steps graph (${pkg.precision})`);
  if (rows.length === 0) return { steps: [], last: [] };
  const K = pkg.steps;
  for (const [i, r] of rows.entries()) invariant(r.segments.length === K, () => `steps row ${i} has ${r.segments.length} segments, expected ${K} (the graph's steps per run)`);
  const { feeds } = feedsOf(pkg, rows.map((r) => r.segments), rows, options, true);
  const out = await session.run(feeds, ['next_state.memory', 'step_states.memory']);
  const batch = rows.length;
  const all = asFloat32(out['step_states.memory'], 'step_states.memory');
  const stateSize = pkg.memoryTokens * pkg.dModel;
  // The graph's output sizes are the package's, not checked at load: checked here.
  if (all.length !== batch * K * stateSize) {
    throw new Error(`step_states.memory has ${all.length} values, expected [${batch}, ${K}, ${pkg.memoryTokens}, ${pkg.dModel}]`);
  }
  const flat = splitStates(pkg, all, batch * K, options.views);
  return {
    steps: Array.from({ length: batch }, (_, b) => flat.slice(b * K, (b + 1) * K)),
    last: splitStates(pkg, asFloat32(out['next_state.memory'], 'next_state.memory'), batch, options.views),
  };
}
