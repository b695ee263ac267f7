// The checks of what the engine's callers pass (token ids, a memory, a token to decode), on the main
// thread before anything is sent: each error names the call (`where`) and what was wrong. Checked ids
// and states come back as new arrays of their own, to be moved (not copied) to the thread.
import type { ModelInfo } from './engine-protocol.ts';

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  return (v as object).constructor?.name ?? 'object';
}

/** 1..segment_length token ids of the model's vocabulary, as an Int32Array. */
export function checkIds(where: string, m: ModelInfo, ids: readonly number[]): Int32Array<ArrayBuffer> {
  if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) {
    throw new Error(`${where}: ids must be an array of token ids, found ${typeName(ids)}`);
  }
  if (ids.length === 0 || ids.length > m.segmentLength) {
    throw new Error(`${where}: ${ids.length} ids, expected 1..${m.segmentLength} (segment_length)`);
  }
  const out = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= m.vocabSize) {
      throw new Error(`${where}: ids[${i}] = ${String(id)} is not a token id in 0..${m.vocabSize - 1}`);
    }
    out[i] = id;
  }
  return out;
}

/** A memory of the model's state shape, as a copy. */
export function checkState(where: string, m: ModelInfo, state: Float32Array): Float32Array<ArrayBuffer> {
  if (!(state instanceof Float32Array)) {
    throw new Error(`${where}: state must be a Float32Array, found ${typeName(state)}`);
  }
  const expected = m.stateBytes / 4;
  if (state.length !== expected) {
    throw new Error(
      `${where}: state has ${state.length} float32 values (${state.byteLength} bytes), ` +
        `expected ${expected} ([${m.stateShape.join(', ')}], ${m.stateBytes} bytes)`,
    );
  }
  // A copy of just this view: transferring it neither detaches the caller's array nor
  // clones a larger buffer the view may sit in.
  return state.slice();
}

/** A chained advance's segments, each checked, as one array of ids split by `lengths`. */
export function checkSegments(where: string, m: ModelInfo, segments: readonly (readonly number[])[]): { ids: Int32Array<ArrayBuffer>; lengths: Int32Array<ArrayBuffer> } {
  if (!Array.isArray(segments) || segments.length === 0) throw new Error(`${where}: segments must be a non-empty array of token id arrays`);
  const parts = segments.map((ids, k) => checkIds(`${where} segment ${k}`, m, ids));
  const lengths = Int32Array.from(parts, (p) => p.length);
  const ids = new Int32Array(lengths.reduce((a, b) => a + b, 0));
  let at = 0;
  for (const p of parts) {
    ids.set(p, at);
    at += p.length;
  }
  return { ids, lengths };
}

/** A token id of the model's vocabulary (the one a decode appends). */
export function checkToken(where: string, m: ModelInfo, token: number): void {
  if (typeof token !== 'number' || !Number.isInteger(token) || token < 0 || token >= m.vocabSize) {
    throw new Error(`${where}: token ${String(token)} is not a token id in 0..${m.vocabSize - 1}`);
  }
}
