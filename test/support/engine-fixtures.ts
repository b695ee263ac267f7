// Shared by the engine's test files (engine*.test.ts): the shipped packages' names, tolerances,
// greedy generation built from the engine's calls, and the golden corpus.
import assert from 'node:assert/strict';
import path from 'node:path';
import type { BatchStat, Engine, KvHandle } from '../../src/engine/engine.ts';
import { PACKAGE_DIR, SHIPPED_PACKAGES, loadGolden, maxAbsDiff } from '../helpers.ts';

export const MODELS_DIR = path.dirname(PACKAGE_DIR);
export const SMALL = 'rmt-brown-small';
export const LM = 'rmt-brown-lm';
/** Every shipped package, the recall model first (LM among them): what engine.test.ts's `eng` loads. */
export const ENGINE_MODELS = [SMALL, ...SHIPPED_PACKAGES.map((p) => p.name).filter((n) => n !== SMALL)];
/** Batched rows vs the same row alone. */
export const BATCH_TOL = 1e-5;
/**
 * Padded vs unpadded shapes (batchInvariant: false, or any engine vs an unpadded run): onnxruntime's
 * vectorised softmax sums depend on where keys sit, which moves logits by float rounding (~2e-5 here).
 */
export const PAD_TOL = 1e-4;

export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, limit: number, label: string): void {
  const d = maxAbsDiff(actual, expected);
  assert.ok(d <= limit, `${label}: max abs diff ${d} > ${limit}`);
}

export interface GreedyTrace {
  ids: number[];
  segmentsCommitted: number;
  /** State after every segment call (the prompt's full segments, then generation's), in order. */
  states: Float32Array[];
  /** The logits each generated token was picked from, in order. */
  seen: Float32Array[];
  state: Float32Array;
}

/** greedyGenerate (src/engine/greedy-generate.ts) built from engine.segment / prefill / decode. */
export async function engineGreedy(
  engine: Engine,
  model: string,
  prompt: readonly number[],
  maxNew: number,
  initial?: Float32Array,
): Promise<GreedyTrace> {
  const L = engine.model(model).segmentLength;
  let state = initial ?? engine.model(model).initState;
  const states: Float32Array[] = [];
  let logits: Float32Array | undefined;
  const fullEnd = Math.floor(prompt.length / L) * L;
  for (let start = 0; start < fullEnd; start += L) {
    const r = await engine.segment(model, prompt.slice(start, start + L), state);
    state = r.nextState;
    states.push(state);
    logits = r.logits;
  }
  let tail = prompt.slice(fullEnd);
  let kv: KvHandle | undefined;
  if (tail.length > 0) ({ logits, kv } = await engine.prefill(model, tail, state));
  const ids: number[] = [];
  const seen: Float32Array[] = [];
  let segmentsCommitted = 0;
  while (ids.length < maxNew) {
    seen.push(logits!);
    const tok = argmax(logits!);
    ids.push(tok);
    tail = [...tail, tok];
    if (tail.length === L) {
      if (kv !== undefined) engine.releaseKv(kv);
      const r = await engine.segment(model, tail, state);
      state = r.nextState;
      states.push(state);
      logits = r.logits;
      tail = [];
      kv = undefined;
      segmentsCommitted++;
    } else if (kv === undefined) {
      ({ logits, kv } = await engine.prefill(model, tail, state));
    } else {
      ({ logits } = await engine.decode(model, kv, tok));
    }
  }
  if (kv !== undefined) engine.releaseKv(kv);
  return { ids, segmentsCommitted, states, seen, state };
}

/** All golden segment tokens of the small package, end to end (1280 tokens). */
export const corpus = loadGolden(PACKAGE_DIR).sequence.segments.flatMap((s) => s.input_ids);

export function recordStats(engine: Engine): { stats: BatchStat[]; stop: () => void } {
  const stats: BatchStat[] = [];
  const stop = engine.onBatch((s) => stats.push(s));
  return { stats, stop };
}
