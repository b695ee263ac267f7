// KV-cached decoding of one sequence, the reference algorithm's way (greedy-generate.ts): the cache
// is a run's present_key_values as it is, a new array each step. The engine batches its decodes
// instead (batch-decode.ts).
import type { ModelPackage } from '../model/model-package.ts';
import { asFloat32, memoryState } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { emptyKv, kvFromOutput, kvTensor, type KvCache } from './kv-cache.ts';
import { float32, int64 } from './onnx-runtime.ts';

export interface DecodeResult {
  logits: Float32Array;
  kv: KvCache;
}

function ones(n: number): BigInt64Array {
  return new BigInt64Array(n).fill(1n);
}

/** Starts a decode cache: the memory tokens plus `ids`, attending to the given state. */
export async function prefill(pkg: ModelPackage, ids: readonly number[], state: Float32Array): Promise<DecodeResult> {
  invariant(ids.length > 0, 'prefill needs at least one token');
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
