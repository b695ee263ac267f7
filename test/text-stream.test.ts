// Chunked text must tokenize exactly like the whole text (the ingest path relies on it).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import path from 'node:path';
import { encodeInPieces, splitForTokenization } from '../src/engine/text-stream.ts';
import { loadTokenizer } from '../src/engine/tokenizer.ts';
import { PACKAGE_DIR } from './helpers.ts';

test('random chunking tokenizes to the same ids as the whole text', async () => {
  const tok = await loadTokenizer(path.join(PACKAGE_DIR, 'tokenizer.json'));
  const text =
    'The jury said it did find that many of Georgia\'s registration  and election laws "are outmoded".\n\n' +
    'Mary went back to the kitchen. Prices rose 3.5% in 1961 — naïve café, 東京, emoji 🙂🙂 end.   \t tail';
  const whole = tok.encode(text);
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let trial = 0; trial < 50; trial++) {
    let pending = '';
    const ids: number[] = [];
    let pos = 0;
    while (pos < text.length) {
      const n = 1 + Math.floor(rand() * 12);
      const [ready, rest] = splitForTokenization(pending + text.slice(pos, pos + n), 4096);
      ids.push(...tok.encode(ready));
      pending = rest;
      pos += n;
    }
    ids.push(...tok.encode(pending));
    assert.deepEqual(ids, whole, `trial ${trial}`);
  }
});

test('a run without whitespace longer than the limit is released', () => {
  assert.deepEqual(splitForTokenization('x'.repeat(10), 4), ['x'.repeat(10), '']);
  assert.deepEqual(splitForTokenization('ab cd', 4), ['ab', ' cd']);
  assert.deepEqual(splitForTokenization('abc', 4), ['', 'abc']);
  assert.deepEqual(splitForTokenization('a  ', 4), ['a', '  ']);
});

test('encodeInPieces gives the ids of one encode of the whole text', async () => {
  const tok = await loadTokenizer(path.join(PACKAGE_DIR, 'tokenizer.json'));
  const text = 'Mary went back to the kitchen.  Prices rose 3.5% — naïve café 🙂. '.repeat(400) + 'x'.repeat(300);
  for (const piece of [7, 64, 1000, 100_000]) assert.deepEqual(encodeInPieces((t) => tok.encode(t), text, piece), tok.encode(text), `piece ${piece}`);
});
