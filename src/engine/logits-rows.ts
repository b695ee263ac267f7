// Runs whose graph projects every position onto the vocabulary: scored segments (the full segment
// graph's token_logprobs) and generation prefill (the decode graph over a prompt). Their buffers grow
// with rows × positions × vocabulary, and onnxruntime's CPU arena keeps what it grew to (its memory
// patterns, one block per input shape, fragment it further): after rounds of mixed load at up to 32
// rows a worker held over 1 GB it no longer used. Such a batch runs in chunks of at most
// MAX_LOGITS_ROWS rows; each chunk is padded to the batch's width, so every row's results are those of
// one run, bit for bit (rows are independent at a given width). Measured with bench/engine-memory.ts
// (per graph and chunk size) and bench/worker-soak.ts (the service): BENCHMARKS.md, "Worker memory under
// load (soak)". The ingest graphs (segment_state, segment_state_steps) are not chunked.

/**
 * Most rows in one run of a graph that produces per-position logits. At 8 the shipped models' runs
 * kept about 140 MB of arena per graph after every batch size 1..32 (vs about 500 MB unchunked), and a
 * row cost no more CPU time than in runs of 32 (bench/engine-memory.ts).
 */
export const MAX_LOGITS_ROWS = 8;

/** `rows` in consecutive chunks of at most `size`, each with the index of its first row. */
export function chunksOf<T>(rows: readonly T[], size: number): { start: number; rows: T[] }[] {
  if (!Number.isInteger(size) || size < 1) throw new Error(`chunksOf: size must be a positive integer, found ${size}`);
  const out: { start: number; rows: T[] }[] = [];
  for (let start = 0; start < rows.length; start += size) out.push({ start, rows: rows.slice(start, start + size) });
  return out;
}
