// How long one long piece (letters with no space: a URL, base64, a long number) takes to tokenize:
// the tokenizer hands pieces over MAX_REMEMBERED_CHARS to the library's linear encode instead of its
// own merge loop, which is quadratic in a piece's length (40,000 letters took 18.7 s through it).
// test/tokenizer.test.ts checks the ids; this prints the time, for BENCHMARKS.md.
//
//   node --import tsx bench/tokenizer-long-piece.ts            (LETTERS: piece lengths, default "40000,100000")
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadTokenizer } from '../src/text/tokenizer.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tok = await loadTokenizer(path.join(ROOT, 'models/rmt-brown-small/tokenizer.json'));
for (const n of (process.env.LETTERS ?? '40000,100000').split(',').map(Number)) {
  const piece = 'ab'.repeat(n / 2);
  const t0 = performance.now();
  const ids = tok.encode(piece);
  const ms = performance.now() - t0;
  console.log(JSON.stringify({ letters: piece.length, ids: ids.length, ms: Number(ms.toFixed(1)) }));
}
