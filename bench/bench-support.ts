// Shared by the benches: percentiles and deterministic token ids (no tokenizer needed).

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Deterministic pseudo-random token ids in [2, vocab). */
export function tokens(seed: number, n: number, vocab: number): number[] {
  let x = (seed * 2654435761) >>> 0 || 1;
  return Array.from({ length: n }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return 2 + ((x >>> 0) % (vocab - 2));
  });
}
