// Helpers shared by the data-plane tests: seeded random chunking, and a state's raw bytes.

/** Splits text into chunks of 1..max chars, the same split for the same seed. */
export function randomChunks(text: string, seed: number, max: number): string[] {
  let s = seed;
  const rand = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const out: string[] = [];
  for (let i = 0; i < text.length; ) {
    const n = 1 + Math.floor(rand() * max);
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

/** The bytes of a state, for bit-identical comparisons. */
export function bytesOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
