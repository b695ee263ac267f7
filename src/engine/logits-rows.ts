// Runs whose graph projects every position onto the vocabulary: scored segments (the full segment
// graph's token_logprobs) and generation prefill (the decode graph over a prompt). Their buffers grow
// with rows × positions × vocabulary, and onnxruntime's CPU arena (one per session) keeps what it grew
// to; at up to 32 rows those two sessions' arenas kept growing round after round of mixed load
// (bench/worker-soak.ts). Such a batch runs in chunks of at most MAX_LOGITS_ROWS rows; each chunk is
// padded to the batch's width, so every row's results are those of one run, bit for bit (rows are
// independent at a given width). The ingest graphs (segment_state, segment_state_steps) and decode
// steps are not chunked. Figures: BENCHMARKS.md, "Worker memory under load (soak)".
import { invariant } from './invariant.ts';

/**
 * Most rows in one run of a graph that produces per-position logits. After every batch size 1..32, the
 * small shipped model's scored segment runs kept 116 MB in chunks of 8 against 500 MB in one run, its
 * prefills 49 MB against 361 MB, at no more time per row (bench/engine-memory.ts; BENCHMARKS.md). 4
 * kept about half that again on the CPU; 8 keeps a GPU's runs of a fair size (not measured there).
 */
export const MAX_LOGITS_ROWS = 8;

/** `rows` in consecutive chunks of at most `size`, each with the index of its first row. */
export function chunksOf<T>(rows: readonly T[], size: number): { start: number; rows: T[] }[] {
  // maxLogitsRows, checked by startEngine (engine-options.ts).
  invariant(Number.isInteger(size) && size >= 1, () => `chunksOf: size must be a positive integer, found ${size}`);
  const out: { start: number; rows: T[] }[] = [];
  for (let start = 0; start < rows.length; start += size) out.push({ start, rows: rows.slice(start, start + size) });
  return out;
}
