// The reference algorithm end to end, one sequence, greedy (golden.json is made by rmt_toolkit's), for
// any package: the state is the flat state of its entries (the RMT's memory alone).
import type { ModelPackage } from '../model/model-package.ts';
import { argmax } from '../text/sampling.ts';
import type { KvCache } from './kv-cache.ts';
import { runSegment } from './rmt-runner.ts';
import { decodeStep, prefill } from './sequence-decode.ts';

export interface GreedyResult {
  ids: number[];
  segmentsCommitted: number;
  state: Float32Array;
}

export interface GreedyOptions {
  /** The state before the prompt (default: the package's initial state). */
  state?: Float32Array;
  /**
   * 'decode' (default): the tail in a KV cache through the decode graph. 'segment': every next token
   * from the segment graph run over the whole tail from the state, no decode graph at all (slow: the
   * oracle that decode computes what segment computes, as the package contract says).
   */
  via?: 'decode' | 'segment';
  /** The next token from a step's logits (`index`: tokens generated before it); default argmax, greedy. */
  pick?: (logits: Float32Array, index: number) => number;
}

/**
 * Greedy decoding: full prompt segments go through the segment graph; the
 * tail lives in the KV cache, and when it reaches segment_length it is
 * committed to the state with the segment graph and the cache starts over.
 */
export async function greedyGenerate(pkg: ModelPackage, promptIds: readonly number[], maxNew: number, options: GreedyOptions = {}): Promise<GreedyResult> {
  if (promptIds.length === 0) throw new Error('greedyGenerate needs a non-empty prompt');
  const L = pkg.segmentLength;
  const bySegment = options.via === 'segment';
  let state = options.state ?? pkg.initFlat;
  let logits: Float32Array | undefined;
  const fullEnd = Math.floor(promptIds.length / L) * L;
  for (let start = 0; start < fullEnd; start += L) {
    const [r] = await runSegment(pkg, [{ ids: promptIds.slice(start, start + L), state }]);
    state = r!.nextState;
    logits = r!.logits;
  }
  let tail = promptIds.slice(fullEnd);
  let kv: KvCache | undefined;
  const tailLogits = async (ids: readonly number[]) => (await runSegment(pkg, [{ ids, state }]))[0]!.logits;
  if (tail.length > 0) {
    if (bySegment) logits = await tailLogits(tail);
    else ({ logits, kv } = await prefill(pkg, tail, state));
  }

  const output: number[] = [];
  let segmentsCommitted = 0;
  while (output.length < maxNew) {
    const tok = options.pick ? options.pick(logits!, output.length) : argmax(logits!);
    output.push(tok);
    tail = [...tail, tok];
    if (tail.length === L) {
      const [r] = await runSegment(pkg, [{ ids: tail, state }]);
      state = r!.nextState;
      logits = r!.logits;
      tail = [];
      kv = undefined;
      segmentsCommitted++;
    } else if (bySegment) {
      logits = await tailLogits(tail);
    } else if (kv === undefined) {
      ({ logits, kv } = await prefill(pkg, tail, state));
    } else {
      ({ logits, kv } = await decodeStep(pkg, tok, kv));
    }
  }
  return { ids: output, segmentsCommitted, state };
}
