// A decode cache's layout and its tensors: [layers, 2, 1, heads, positions, head_dim] in the decode
// graph's KV dtype (float32, or raw IEEE half floats for fp16 graphs, never converted here). What a
// cache holds before its tokens follows from the package's decode conditioning: the RMT's memory
// (memory_tokens positions), or nothing, the state being fed to every call instead (its `conditioning`).
import type { ModelPackage } from '../model/model-package.ts';
import { invariant } from './invariant.ts';
import { float16, float32, type Tensor } from './onnx-runtime.ts';

/** A KV cache's elements: float32, or raw IEEE half floats for fp16 graphs (never converted here). */
export type KvArray = Float32Array | Uint16Array;

/** Key/value cache for one sequence: [layers, 2, 1, heads, length, head_dim]. */
export interface KvCache {
  data: KvArray;
  length: number;
  /**
   * A state-conditioned package's decode graph takes the session state on every call: the flat state
   * the cache was prefilled with, kept with it for the steps. Absent for the RMT, whose memory is
   * inside the cache.
   */
  conditioning?: Float32Array;
}

/**
 * A decode cache for one sequence that grows in place:
 * `data` is [layers, 2, 1, heads, capacity, head_dim]; positions < `length` are valid.
 */
export interface GrowableKvCache {
  data: KvArray;
  length: number;
  capacity: number;
  /** As KvCache.conditioning. */
  conditioning?: Float32Array;
}

/** Positions a cache holds before its tokens: the RMT's read memory (memory_tokens), else none. */
export function kvPrefix(pkg: Pick<ModelPackage, 'conditioning'>): number {
  return pkg.conditioning.kind === 'prefix' ? pkg.conditioning.positions : 0;
}

/** Largest cache the decode graph can extend: [prefix; a full segment of tokens]. */
export function kvCapacity(pkg: ModelPackage): number {
  return kvPrefix(pkg) + pkg.segmentLength;
}

/** Blocks of head_dim-long rows per position: layers x (key, value) x heads. */
export function kvBlocks(pkg: ModelPackage): number {
  return pkg.kv.layers * 2 * pkg.kv.heads;
}

export function newKv(pkg: ModelPackage, n: number): KvArray {
  return pkg.kvDtype === 'float16' ? new Uint16Array(n) : new Float32Array(n);
}

/** A cache as the decode graph's past (every cache is made by newKv or the graph, of the package's dtype). */
export function kvTensor(pkg: ModelPackage, data: KvArray, dims: number[]): Tensor {
  if (pkg.kvDtype === 'float16') {
    invariant(data instanceof Uint16Array, 'KV cache holds float32 values but the decode graph takes float16');
    return float16(data, dims);
  }
  invariant(data instanceof Float32Array, 'KV cache holds float16 values but the decode graph takes float32');
  return float32(data, dims);
}

/** The decode graph's present_key_values output (its dtype checked at load). */
export function asKv(pkg: ModelPackage, t: Tensor | undefined): KvArray {
  invariant(t !== undefined && t.dtype === pkg.kvDtype, () => `expected ${pkg.kvDtype} output 'present_key_values', found ${t?.dtype ?? 'none'}`);
  return t.data as KvArray;
}

/** An empty past for one sequence (a prefill's). */
export function emptyKv(pkg: ModelPackage): Tensor {
  return kvTensor(pkg, newKv(pkg, 0), [pkg.kv.layers, 2, 1, pkg.kv.heads, 0, pkg.kv.headDim]);
}

/** One sequence's cache as the decode graph returned it (with the state it is conditioned on, if any). */
export function kvFromOutput(pkg: ModelPackage, t: Tensor | undefined, conditioning?: Float32Array): KvCache {
  const data = asKv(pkg, t);
  return { data, length: data.length / (pkg.kv.layers * 2 * pkg.kv.heads * pkg.kv.headDim), ...(conditioning ? { conditioning } : {}) };
}
