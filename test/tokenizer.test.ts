import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { IncrementalDetokenizer, loadTokenizer, type TextTokenizer } from '../src/engine/tokenizer.ts';
import { PACKAGE_DIR } from './helpers.ts';

describe('tokenizer', () => {
  let tok: TextTokenizer;
  before(async () => {
    tok = await loadTokenizer(path.join(PACKAGE_DIR, 'tokenizer.json'));
  });

  test('round-trips plain text', () => {
    const text = ' Mary went to the kitchen.';
    const ids = tok.encode(text);
    assert.ok(ids.length > 0);
    assert.equal(tok.decode(ids), text);
  });

  test('incremental detokenizer holds back split multi-byte characters', () => {
    const text = 'caf\u00e9 \u{1F600} ok';
    const ids = tok.encode(text);
    // The emoji is outside this small byte-level vocab, so it spans several byte tokens.
    assert.ok(tok.decode(ids.slice(0, -1)).length > 0);
    const detok = new IncrementalDetokenizer(tok);
    const chunks = ids.map((id) => detok.push(id));
    chunks.push(detok.flush());
    for (const c of chunks) assert.ok(!c.includes('\uFFFD'), `chunk ${JSON.stringify(c)} has U+FFFD`);
    assert.ok(chunks.includes(''), 'some pushes must be held back');
    assert.equal(chunks.join(''), text);
    assert.ok(chunks.some((c) => c.includes('\u{1F600}')), 'the emoji is emitted whole');
  });
});
