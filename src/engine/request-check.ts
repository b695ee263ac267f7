// Checks of a request inside the engine thread: against its model as it arrives (the main thread checks
// too; this guards the batch), and a decode against its cache just before it runs.
import type { EngineRequest } from './engine-protocol.ts';
import { kvPrefix } from './kv-cache.ts';
import type { KvRegistry } from './kv-registry.ts';
import type { Loaded } from './loader.ts';

/** Why a request cannot be taken in, or undefined. */
export function validate(r: EngineRequest, models: ReadonlyMap<string, Loaded>, kvs: KvRegistry): string | undefined {
  const where = `${r.op}(${r.model})`;
  const m = models.get(r.model);
  if (!m) return `unknown model '${r.model}'; known models: ${[...models.keys()].join(', ')}`;
  const { segmentLength, vocabSize } = m.info;
  if (r.op === 'decode') {
    const e = kvs.get(r.kv);
    if (!e) return `${where}: KV handle ${r.kv} is unknown or was released`;
    if (e.model !== r.model) return `${where}: KV handle ${r.kv} belongs to model '${e.model}'`;
    if (!Number.isInteger(r.token) || r.token < 0 || r.token >= vocabSize) {
      return `${where}: token ${r.token} is not a token id in 0..${vocabSize - 1}`;
    }
    return undefined;
  }
  if (r.op === 'advance') {
    if (r.lengths.length === 0) return `${where}: no segments`;
    let sum = 0;
    for (let k = 0; k < r.lengths.length; k++) {
      const n = r.lengths[k]!;
      if (!Number.isInteger(n) || n < 1 || n > segmentLength) return `${where}: segment ${k} has ${n} ids, expected 1..${segmentLength} (segment_length)`;
      sum += n;
    }
    if (sum !== r.ids.length) return `${where}: segment lengths add up to ${sum}, but ${r.ids.length} ids were sent`;
  } else if (r.ids.length === 0 || r.ids.length > segmentLength) {
    return `${where}: ${r.ids.length} ids, expected 1..${segmentLength} (segment_length)`;
  }
  for (let i = 0; i < r.ids.length; i++) {
    const id = r.ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) return `${where}: ids[${i}] = ${id} is not a token id in 0..${vocabSize - 1}`;
  }
  const expected = m.info.stateBytes / 4;
  if (r.op === 'advance' && r.after !== undefined) {
    if (r.state.length !== 0) return `${where}: a continuation (after request ${r.after}) carries no state, found ${r.state.length} values`;
    return undefined;
  }
  if (r.state.length !== expected) {
    return `${where}: state has ${r.state.length} float32 values, expected ${expected} ([${m.info.stateShape.join(', ')}])`;
  }
  return undefined;
}

/** Why a queued request cannot run any more (a cache filled up by the steps queued before it), or undefined. */
export function precheck(loaded: Loaded, r: EngineRequest, kvs: KvRegistry): string | undefined {
  if (r.op !== 'decode') return undefined;
  const e = kvs.get(r.kv);
  if (!e) return `decode(${r.model}): KV handle ${r.kv} is unknown or was released`;
  if (e.cache.length >= e.cache.capacity) {
    // The cache holds the package's prefix (the RMT's memory positions; none for a state-conditioned
    // package) and then the tokens.
    const prefix = kvPrefix(loaded.pkg);
    return (
      `decode(${r.model}): KV cache ${r.kv} is full (${e.cache.length - prefix} tokens${prefix > 0 ? ' after the memory' : ''}, ` +
      `segment_length ${loaded.pkg.segmentLength}); commit the tail with segment() and prefill again`
    );
  }
  return undefined;
}
