// Batch sizes a segment or advance run is padded up to. On CUDA, onnxruntime's first run of each new
// batch size costs about 80 ms (measured on the H100 with bench/engine-event-loop.ts STAGGER_MS: a
// level whose runs take sizes not seen before holds the device as long with half the throughput), and
// sessions fed through a queue make every size up to maxBatch. With buckets the device sees a few
// sizes, each run once at start (warm-up), for at most 3 padded rows per run up to 64 rows and 7 above.
// Padded rows cost as much as real ones (above a few rows a run's time grows with its rows): steps of
// 4 up to 64, where a worker's runs mostly are, instead of 8 (a 25-row run padded to 32 did 28 % more
// work than needed; bench/gpu-suite.sh, bench/results/gpu-5).
import { invariant } from './invariant.ts';

/** 1, 2, 4, then multiples of 4 up to 64, then multiples of 8, capped at maxBatch. */
export function bucketOf(rows: number, maxBatch: number): number {
  // A run has rows (the executor pads only what it runs; the warm-up counts from 1).
  invariant(Number.isInteger(rows) && rows >= 1, () => `bucketOf: rows must be a positive integer, found ${rows}`);
  const b = rows <= 4 ? 2 ** Math.ceil(Math.log2(rows)) : rows <= 64 ? Math.ceil(rows / 4) * 4 : Math.ceil(rows / 8) * 8;
  return Math.min(b, Math.max(rows, maxBatch));
}

/** Every bucket size up to maxBatch, ascending (maxBatch itself included). */
export function bucketSizes(maxBatch: number): number[] {
  const out = new Set<number>();
  for (let n = 1; n <= maxBatch; n++) out.add(bucketOf(n, maxBatch));
  return [...out].sort((a, b) => a - b);
}
