// Chunked text must tokenize exactly like the whole text (the ingest path relies on it).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import path from 'node:path';
import { encodeInPieces, splitAtBoundaries, splitForTokenization } from '../src/text/text-stream.ts';
import { loadTokenizer } from '../src/text/tokenizer.ts';
import { requestTokens } from '../src/worker/request-tokens.ts';
import type { IngestRequest } from '../src/queue/request.ts';
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

test('splitAtBoundaries cuts at the first and last non-space→space boundary', () => {
  assert.deepEqual(splitAtBoundaries('  ab cd  ef\ngh '), { head: '  ab', middle: ' cd  ef\ngh', tail: ' ' });
  assert.deepEqual(splitAtBoundaries('ab cd\n\nef'), { head: 'ab', middle: ' cd', tail: '\n\nef' });
  assert.deepEqual(splitAtBoundaries('a b c'), { head: 'a', middle: ' b', tail: ' c' });
  assert.equal(splitAtBoundaries('a b'), undefined, 'one boundary: no middle');
  assert.equal(splitAtBoundaries('   abc'), undefined, 'leading whitespace is not a boundary');
  assert.equal(splitAtBoundaries(''), undefined);
  assert.equal(splitAtBoundaries('abc'), undefined);
});

// Random appends: words, punctuation, runs of spaces, newlines, tabs, non-ASCII and Unicode spaces,
// special-token text, runs without whitespace longer than maxPending, leading/trailing whitespace.
function randomText(rand: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const word = () => Array.from({ length: 1 + Math.floor(rand() * 10) }, () => pick([...'abcdefghijklmnopqrstuvwxyzAEIOU'])).join('');
  const parts = [
    word, word, word, () => ' ', () => ' ', () => '  ', () => '   ', () => '\n', () => '\n\n', () => '\t', () => ' \t\n ',
    () => pick(['.', ',', ';', ':', '!', '?', '"', "'", '(', ')', '-', '—', "'s", '3.5%', '1961']),
    () => pick(['naïve', 'café', '東京', '🙂🙂', 'ü', '\u00a0', '\u3000', '\u2028', '\r\n', '<|endoftext|>']),
    () => 'x'.repeat(1 + Math.floor(rand() * 120)), // a long run without whitespace
  ];
  let s = rand() < 0.3 ? pick([' ', '  ', '\n', '\t ']) : '';
  const n = Math.floor(rand() * 60);
  for (let i = 0; i < n; i++) s += pick(parts)();
  if (rand() < 0.3) s += pick([' ', '  ', '\n', ' \n\n']);
  return s;
}

test('pieces give exactly the ids and held-back text of the same append as text', async () => {
  const tok = await loadTokenizer(path.join(PACKAGE_DIR, 'tokenizer.json'));
  let seed = 11;
  const rand = () => {
    // mulberry32: successive draws of an LCG's high bits are too correlated for the case mix here
    let t = (seed = (seed + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const seen = { pieces: 0, flush: 0, tailReleased: 0, tailHeld: 0, pendingJoins: 0 };
  for (let trial = 0; trial < 3000; trial++) {
    const text = randomText(rand);
    const split = splitAtBoundaries(text);
    if (!split) continue;
    assert.equal(split.head + split.middle + split.tail, text);
    seen.pieces++;
    const maxPending = [8, 32, 64, 4096][trial % 4]!;
    // What a session may hold back: any text (the pieces path must not depend on its shape).
    const pendingText = rand() < 0.25 ? '' : randomText(rand).slice(0, maxPending);
    const flush = rand() < 0.3;
    const asText: IngestRequest = { kind: 'ingest', text, flush };
    const asPieces: IngestRequest = {
      kind: 'ingest', flush, pieces: { head: split.head, ids: encodeInPieces((t) => tok.encode(t), split.middle, 64), tail: split.tail },
    };
    const want = requestTokens(tok, pendingText, asText, maxPending);
    const got = requestTokens(tok, pendingText, asPieces, maxPending);
    const what = `trial ${trial}: ${JSON.stringify({ pendingText, text, flush, maxPending })}`;
    assert.deepEqual(got.ids, want.ids, what);
    assert.equal(got.pendingAfter, want.pendingAfter, what);
    if (flush) seen.flush++;
    else if (split.tail.length > maxPending) seen.tailReleased++;
    else seen.tailHeld++;
    if (pendingText && !/\s$/u.test(pendingText) && !/^\s/u.test(text)) seen.pendingJoins++;
  }
  // The cases the reasoning distinguishes all occurred, many times.
  for (const [k, v] of Object.entries(seen)) assert.ok(v >= 100, `${k}: only ${v} cases`);
});
