// The tiny random-weight packages of the state-conditioned architectures (test/fixtures/<arch>-tiny),
// made by the toolkit:
//   PYTHONPATH=models/toolkit python3 -m rmt_toolkit random-gpt2-small --size tiny --architecture <arch> \
//     --precisions fp32 --tokenizer test/fixtures/rmt-tiny-masked/tokenizer.json --name <arch>-tiny \
//     --out test/fixtures/<arch>-tiny
// (golden.json from PyTorch; the graphs checked by `node --import tsx models/toolkit/ort-check.ts DIR`),
// and golden.json's format for them: every state as one base64 float32 array per entry.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StateLayout } from '../../src/model/state-layout.ts';
import { decodeF32, type TopLogits } from '../helpers.ts';

export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures');

export const STATE_ARCHITECTURES = ['transformer-xl', 'lamemo', 'memtransformer', 'memctrl', 'membottleneck', 'armt'] as const;

/** One package per architecture: its name is its folder under FIXTURES_DIR. */
export const STATE_PACKAGES = STATE_ARCHITECTURES.map((architecture) => ({
  architecture, name: `${architecture}-tiny`, dir: path.join(FIXTURES_DIR, `${architecture}-tiny`),
}));

/** A state in golden.json: base64 float32 per entry name. */
export type GoldenState = Record<string, string>;

export interface StateGolden {
  architecture: string;
  tolerance: { state: number; logits: number; token_logprobs: number };
  sequence: { segments: { input_ids: number[]; state_after: GoldenState; top_logits: TopLogits; token_logprobs: number[] }[] };
  padded_batch: { input_ids: number[][]; attention_mask: number[][]; next_state: GoldenState[]; top_logits: TopLogits[]; token_logprobs: number[][] };
  greedy: { prompt_ids: number[]; max_new_tokens: number; expected_ids: number[]; segments_committed_during_generation: number };
}

export function loadStateGolden(dir: string): StateGolden {
  return JSON.parse(readFileSync(path.join(dir, 'golden.json'), 'utf8')) as StateGolden;
}

/** A golden state as the service keeps it: one flat array, the entries in the layout's order. */
export function goldenFlat(layout: StateLayout, state: GoldenState): Float32Array {
  const out = new Float32Array(layout.size);
  for (const s of layout.slots) {
    const v = decodeF32(state[s.name]!);
    if (v.length !== s.size) throw new Error(`golden state ${s.name}: ${v.length} values, expected ${s.size}`);
    out.set(v, s.offset);
  }
  return out;
}

/** Max-abs-diff per entry of two flat states (names each entry in a failure). */
export function entryDiffs(layout: StateLayout, a: Float32Array, b: Float32Array): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of layout.slots) {
    let m = 0;
    for (let i = s.offset; i < s.offset + s.size; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
    out[s.name] = m;
  }
  return out;
}
