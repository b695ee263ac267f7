// Batch sizes a segment or advance run is padded up to. On CUDA, onnxruntime's first run of each new
// batch size costs about 80 ms (measured on the H100 with bench/engine-event-loop.ts STAGGER_MS: a
// level whose runs take sizes not seen before holds the device as long with half the throughput), and
// sessions fed through a queue make every size up to maxBatch. With buckets the device sees a few
// sizes, each run once at start (warm-up), for at most 7 padded rows per run.

/** 1, 2, 4, 8, then multiples of 8, capped at maxBatch. */
export function bucketOf(rows: number, maxBatch: number): number {
  if (!Number.isInteger(rows) || rows < 1) throw new Error(`bucketOf: rows must be a positive integer, found ${rows}`);
  const b = rows <= 8 ? 2 ** Math.ceil(Math.log2(rows)) : Math.ceil(rows / 8) * 8;
  return Math.min(b, Math.max(rows, maxBatch));
}

/** Every bucket size up to maxBatch, ascending (maxBatch itself included). */
export function bucketSizes(maxBatch: number): number[] {
  const out = new Set<number>();
  for (let n = 1; n <= maxBatch; n++) out.add(bucketOf(n, maxBatch));
  return [...out].sort((a, b) => a - b);
}
