// Tokens per second of the API's tokenizer pool (src/text/tokenizer-pool.ts, RMT_TOKENIZER_THREADS)
// on the service bench's text: 64 KB appends (as bench/service-stream.ts sends them) encoded by
// THREADS threads at once, and the same text on this thread for the per-token cost.
//
//   node --import tsx bench/tokenizer-throughput.ts
//
// TEXT=brown: held-out Brown corpus text (real English) instead of the service bench's synthetic text.
// "this thread" is reported twice: the library's own encode, and loadTokenizer's (remembered words).
// Environment: THREADS ("1,2,4,8"), TOKENIZER (models/rmt-brown-small/tokenizer.json), TOKENS of text
// (1000000), REPEATS (3; the best is reported, with the spread), SELF (1; 0 skips this thread's run, e.g. to use
// the pool as a CPU load beside another benchmark).
import os from 'node:os';
import { TokenizerPool } from '../src/text/tokenizer-pool.ts';
import { loadTokenizer } from '../src/text/tokenizer.ts';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { syntheticText } from './stream-documents.ts';
import { heldOutText } from '../test/support/brown.ts';

const THREADS = (process.env.THREADS ?? '1,2,4,8').split(',').map(Number);
const TOKENIZER = process.env.TOKENIZER ?? 'models/rmt-brown-small/tokenizer.json';
const TOKENS = Number(process.env.TOKENS ?? 1_000_000);
const REPEATS = Number(process.env.REPEATS ?? 3);
const CHUNK = 65536;

const TEXT = process.env.TEXT ?? 'synthetic';
// Brown: the held-out files, repeated as needed (about 4.3 chars per token as well).
// Brown: the held-out files once (about 1M tokens), never repeated, so remembered words are only
// those the text itself repeats. Every run starts with a new tokenizer (cold caches).
// TEXT_FILE: a text file instead (e.g. the whole Brown corpus, bench/brown-text.ts), likewise once.
const text = process.env.TEXT_FILE
  ? readFileSync(process.env.TEXT_FILE, 'utf8').slice(0, Math.round(TOKENS * 4.3))
  : TEXT === 'brown' ? heldOutText().slice(0, Math.round(TOKENS * 4.3)) : syntheticText(1, TOKENS);
const chunks: string[] = [];
for (let i = 0; i < text.length; i += CHUNK) chunks.push(text.slice(i, i + CHUNK));

function line(label: string, rates: number[]): void {
  const sorted = [...rates].sort((a, b) => a - b);
  console.log(`${label.padEnd(24)} ${(sorted.at(-1)! / 1e6).toFixed(2)}M tok/s (runs ${sorted.map((r) => (r / 1e6).toFixed(2)).join(', ')})`);
}

console.log(`tokenizer throughput: ${TOKENIZER}, ${process.env.TEXT_FILE ?? TEXT} text, ${chunks.length} appends of ${CHUNK} chars, ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), node ${process.version}`);
if (process.env.SELF !== '0') {
  const dir = path.dirname(TOKENIZER);
  const lib = new Tokenizer(JSON.parse(readFileSync(TOKENIZER, 'utf8')), JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
  for (const [label, make] of [
    ['this thread, library', async () => (t: string) => lib.encode(t, { add_special_tokens: false }).ids],
    ['this thread, ours', async () => (await loadTokenizer(TOKENIZER)).encode],
  ] as const) {
    const rates: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      const encode = await make();
      const t0 = performance.now();
      let n = 0;
      for (const c of chunks) n += encode(c).length;
      rates.push(n / ((performance.now() - t0) / 1000));
    }
    line(label, rates);
  }
}
for (const threads of THREADS) {
  const rs: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    const pool = await TokenizerPool.start({ threads, tokenizers: { m: TOKENIZER } });
    try {
      const t0 = performance.now();
      const res = await Promise.all(chunks.map((c) => pool.encode('m', c)));
      rs.push(res.reduce((a, x) => a + x.length, 0) / ((performance.now() - t0) / 1000));
    } finally {
      await pool.close();
    }
  }
  line(`pool, ${threads} thread(s)`, rs);
}
