// Shared fixtures for tests that run the real model package on CPU.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MODELS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../models');
/** The recall model: the package most tests run. */
export const PACKAGE_DIR = path.join(MODELS_DIR, 'rmt-brown-small');
/** Every shipped package (each folder of models/ with a model.json): golden replay runs on each. */
export const SHIPPED_PACKAGES = readdirSync(MODELS_DIR)
  .filter((name) => existsSync(path.join(MODELS_DIR, name, 'model.json')))
  .sort()
  .map((name) => ({ name, dir: path.join(MODELS_DIR, name) }));

export interface TopLogits {
  ids: number[];
  values: number[];
}

export interface Golden {
  tolerance: { state: number; logits: number; token_logprobs: number };
  sequence: {
    segments: { input_ids: number[]; state_after: string; top_logits: TopLogits; token_logprobs: number[] }[];
  };
  padded_batch: {
    input_ids: number[][];
    attention_mask: number[][];
    next_state: string[];
    top_logits: TopLogits[];
    token_logprobs: number[][];
  };
  greedy: {
    prompt_ids: number[];
    max_new_tokens: number;
    expected_ids: number[];
    segments_committed_during_generation: number;
  };
}

export function loadGolden(dir: string = PACKAGE_DIR): Golden {
  return JSON.parse(readFileSync(path.join(dir, 'golden.json'), 'utf8')) as Golden;
}

/** Decodes golden's base64 little-endian float32 encoding. */
export function decodeF32(b64: string): Float32Array {
  const bytes = Buffer.from(b64, 'base64');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Top-k (descending, ties by lower index) as plain arrays. */
export function topK(values: Float32Array, k: number): TopLogits {
  const ids = Array.from(values.keys())
    .sort((x, y) => values[y]! - values[x]! || x - y)
    .slice(0, k);
  return { ids, values: ids.map((i) => values[i]!) };
}
