// KV-cached decoding of one sequence, the reference algorithm's way (greedy-generate.ts): the cache
// is a run's present_key_values as it is, a new array each step. The engine batches its decodes
// instead (batch-decode.ts). The state goes in as the package's decode conditioning has it
// (decodeStateFeeds): the RMT's memory at prefill only, or every entry on every call.
import type { ModelPackage } from '../model/model-package.ts';
import { asFloat32 } from './graph-tensors.ts';
import { invariant } from './invariant.ts';
import { emptyKv, kvFromOutput, kvPrefix, kvTensor, type KvCache } from './kv-cache.ts';
import { int64 } from './onnx-runtime.ts';
import { decodeStateFeeds, flatState } from './state-feeds.ts';

export interface DecodeResult {
  logits: Float32Array;
  kv: KvCache;
}

function ones(n: number): BigInt64Array {
  return new BigInt64Array(n).fill(1n);
}

/** Starts a decode cache: the prefix positions (the RMT's memory) plus `ids`, attending to the given state. */
export async function prefill(pkg: ModelPackage, ids: readonly number[], state: Float32Array): Promise<DecodeResult> {
  invariant(ids.length > 0, 'prefill needs at least one token');
  const total = kvPrefix(pkg) + ids.length;
  const out = await pkg.sessions.decode.run({
    input_ids: int64(ids, [1, ids.length]),
    attention_mask: int64(ones(total), [1, total]),
    ...decodeStateFeeds(pkg, [flatState(pkg, state)], true),
    past_key_values: emptyKv(pkg),
  });
  const conditioning = pkg.conditioning.kind === 'state' ? state : undefined;
  return { logits: asFloat32(out.logits, 'logits'), kv: kvFromOutput(pkg, out.present_key_values, conditioning) };
}

/** Appends one token to an existing cache (given the state it was prefilled with, where the package takes it). */
export async function decodeStep(pkg: ModelPackage, token: number, kv: KvCache): Promise<DecodeResult> {
  const { layers, heads, headDim } = pkg.kv;
  invariant(pkg.conditioning.kind !== 'state' || kv.conditioning !== undefined, 'a state-conditioned cache without its state');
  const out = await pkg.sessions.decode.run({
    input_ids: int64([token], [1, 1]),
    attention_mask: int64(ones(kv.length + 1), [1, kv.length + 1]),
    ...decodeStateFeeds(pkg, [kv.conditioning ?? new Float32Array(0)], false),
    past_key_values: kvTensor(pkg, kv.data, [layers, 2, 1, heads, kv.length, headDim]),
  });
  return { logits: asFloat32(out.logits, 'logits'), kv: kvFromOutput(pkg, out.present_key_values, kv.conditioning) };
}
