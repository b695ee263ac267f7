// Segment recurrence over a loaded model package: batched runs of the segment graphs, each row's
// state in and its next state out (the feeds: segment-feeds.ts; the state entries: state-feeds.ts;
// KV-cached decoding: batch-decode.ts, sequence-decode.ts). Any package: the RMT's memory, or the
// several entries of a state-conditioned architecture. Mirrors the reference algorithm in rmt_toolkit
// so outputs match golden.json.
import type { ModelPackage } from '../model/model-package.ts';
import { asFloat32 } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { feedsOf, segmentFeeds, type FeedOptions, type SegmentRow } from './segment-feeds.ts';
import { stateOutputs, statesFromOutputs } from './state-feeds.ts';

export interface SegmentResult {
  nextState: Float32Array;
  /** Logits at the row's last real token. */
  logits: Float32Array;
  /** Log-probability of each real token (position 0 has no context: 0). */
  tokenLogprobs: Float32Array;
}

export interface SegmentOptions extends FeedOptions {
  /**
   * runSegmentState: each row's next state is a view of one buffer of the run's (its output, for the
   * RMT's one entry) instead of a copy. The engine thread feeds a chain's views straight into its next run (see rowsInPlace in
   * segment-feeds.ts); a caller that transfers or keeps one must copy it (slice) first.
   */
  views?: boolean;
}

/** Runs one batched segment call: next state, last-token logits and per-token log-probabilities. */
export async function runSegment(pkg: ModelPackage, rows: readonly SegmentRow[], options: SegmentOptions = {}): Promise<SegmentResult[]> {
  if (rows.length === 0) return [];
  const { feeds, width } = segmentFeeds(pkg, rows, options);
  const out = await pkg.sessions.segment.run(feeds);
  const batch = rows.length;
  const next = statesFromOutputs(pkg, out, 'next_state', batch);
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
 * The next state only: the package's segment_state graph when it has one (no vocabulary
 * projection at all), else the segment graph with only the next_state outputs copied back.
 */
export async function runSegmentState(pkg: ModelPackage, rows: readonly SegmentRow[], options: SegmentOptions = {}): Promise<Float32Array[]> {
  if (rows.length === 0) return [];
  const { feeds } = segmentFeeds(pkg, rows, options);
  const session = pkg.sessions.segmentState ?? pkg.sessions.segment;
  const out = await session.run(feeds, stateOutputs(pkg.stateLayout, 'next_state'));
  return statesFromOutputs(pkg, out, 'next_state', rows.length, options.views);
}

/** A row of a segment_state_steps run: its next `pkg.steps` segments, and the state before the first. */
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
  const out = await session.run(feeds, [...stateOutputs(pkg.stateLayout, 'next_state'), ...stateOutputs(pkg.stateLayout, 'step_states')]);
  const batch = rows.length;
  // step_states.<name> is [batch, K, ...shape]: batch x K rows.
  const flat = statesFromOutputs(pkg, out, 'step_states', batch * K, options.views);
  return {
    steps: Array.from({ length: batch }, (_, b) => flat.slice(b * K, (b + 1) * K)),
    last: statesFromOutputs(pkg, out, 'next_state', batch, options.views),
  };
}
