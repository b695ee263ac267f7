// Tokens per second of the API's tokenizer pool (src/engine/tokenizer-pool.ts, RMT_TOKENIZER_THREADS)
// on the service bench's text: 64 KB appends (as bench/service-stream.ts sends them) encoded by
// THREADS threads at once, and the same text on this thread for the per-token cost.
//
//   node --import tsx bench/tokenizer-throughput.ts
//
// Environment: THREADS ("1,2,4,8"), TOKENIZER (models/rmt-brown-small/tokenizer.json), TOKENS of text
// (1000000), REPEATS (3; the best is reported, with the spread), SELF (1; 0 skips this thread's run, e.g. to use
// the pool as a CPU load beside another benchmark).
import os from 'node:os';
import { TokenizerPool } from '../src/engine/tokenizer-pool.ts';
import { loadTokenizer } from '../src/engine/tokenizer.ts';
import { syntheticText } from './service-stream.ts';

const THREADS = (process.env.THREADS ?? '1,2,4,8').split(',').map(Number);
const TOKENIZER = process.env.TOKENIZER ?? 'models/rmt-brown-small/tokenizer.json';
const TOKENS = Number(process.env.TOKENS ?? 1_000_000);
const REPEATS = Number(process.env.REPEATS ?? 3);
const CHUNK = 65536;

const text = syntheticText(1, TOKENS);
const chunks: string[] = [];
for (let i = 0; i < text.length; i += CHUNK) chunks.push(text.slice(i, i + CHUNK));

function line(label: string, rates: number[]): void {
  const sorted = [...rates].sort((a, b) => a - b);
  console.log(`${label.padEnd(24)} ${(sorted.at(-1)! / 1e6).toFixed(2)}M tok/s (runs ${sorted.map((r) => (r / 1e6).toFixed(2)).join(', ')})`);
}

console.log(`tokenizer throughput: ${TOKENIZER}, ${chunks.length} appends of ${CHUNK} chars, ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), node ${process.version}`);
if (process.env.SELF !== '0') {
  const tok = await loadTokenizer(TOKENIZER);
  const rates: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    const t0 = performance.now();
    let n = 0;
    for (const c of chunks) n += tok.encode(c).length;
    rates.push(n / ((performance.now() - t0) / 1000));
  }
  line('this thread', rates);
}
for (const threads of THREADS) {
  const pool = await TokenizerPool.start({ threads, tokenizers: { m: TOKENIZER } });
  try {
    const rs: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      const t0 = performance.now();
      const res = await Promise.all(chunks.map((c) => pool.encode('m', c)));
      rs.push(res.reduce((a, x) => a + x.length, 0) / ((performance.now() - t0) / 1000));
    }
    line(`pool, ${threads} thread(s)`, rs);
  } finally {
    await pool.close();
  }
}
