import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { GPT2_SPLIT, IncrementalDetokenizer, MAX_REMEMBERED_CHARS, WORD_CACHE_SIZE, bytePairEncoder, loadTokenizer, type TextTokenizer, type TokenizerJson } from '../src/text/tokenizer.ts';
import { heldOutText } from './support/brown.ts';
import { randomChunks } from './support/chunks.ts';
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

  test('remembered words give exactly the library\'s ids: held-out Brown text in random chunks, unicode, spacing, added tokens', () => {
    const lib = new Tokenizer(
      JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer_config.json'), 'utf8')),
    );
    const plain = (t: string) => lib.encode(t, { add_special_tokens: false }).ids;
    const brown = heldOutText().slice(0, 400_000);
    const odd = [
      'caf\u00e9 \u{1F600} ok', '\u4e2d\u6587\u5b57 and \u0915\u094d\u0937 mixed', 'e\u0301 combining', "it's they're we've I'm you'll he'd O'Neil's",
      'tabs\tand\nnewlines\n\n\nand   runs   of  spaces  ', '  leading', 'trailing  ', ' ', '', '\r\n', '1,234.56 + 7e-3 = x', '<|endoftext|> after',
      'in <|pad|> the middle', '\u00a0non-breaking\u2003em space', 'a\u200bzero width', '\ud83d lone surrogate', '!!!???...', "'''quotes'''",
    ];
    for (const t of [...odd, ...randomChunks(brown, 7, 5000), brown]) assert.deepEqual(tok.encode(t), plain(t), `ids differ for ${JSON.stringify(t.slice(0, 60))}`);
    // Again with a warm cache, in other chunks: pieces seen before, now at other offsets.
    for (const t of randomChunks(brown, 11, 3000)) assert.deepEqual(tok.encode(t), plain(t));
    assert.ok(WORD_CACHE_SIZE >= 1024);
  });

  test('a long piece (letters or digits with no space) gets the library\'s ids without the quadratic merge loop', () => {
    const lib = new Tokenizer(
      JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer_config.json'), 'utf8')),
    );
    const plain = (t: string) => lib.encode(t, { add_special_tokens: false }).ids;
    const letters = 'ab'.repeat(20_000);
    // The guard against a blow-up, shown by where the piece goes rather than by a time: 40,000 letters
    // through our merge loop (the cap lifted) took 18.7 s on the development VM, so a piece this long
    // must go whole to the library's linear encode. How long that takes: bench/tokenizer-long-piece.ts.
    const proto = Tokenizer.prototype as unknown as { encode: (text: string, ...rest: unknown[]) => unknown };
    const libraryEncode = proto.encode;
    const toLibrary: number[] = [];
    proto.encode = function (this: unknown, text: string, ...rest: unknown[]) {
      toLibrary.push(text.length);
      return libraryEncode.call(this, text, ...rest);
    };
    let ids: number[];
    try {
      ids = tok.encode(letters);
    } finally {
      proto.encode = libraryEncode;
    }
    assert.ok(toLibrary.includes(letters.length), `the ${letters.length}-letter piece did not go whole to the library (its calls: ${toLibrary.join(', ')})`);
    assert.deepEqual(ids, plain(letters));
    const digits = '31415926535'.repeat(5000);
    for (const t of [` x ${letters} y`, digits, 'w'.repeat(MAX_REMEMBERED_CHARS), 'w'.repeat(MAX_REMEMBERED_CHARS + 1)]) {
      assert.deepEqual(tok.encode(t), plain(t), `ids differ for a text of ${t.length} chars`);
    }
  });

  test('the byte-pair encoder gives every piece the library\'s ids itself (no piece left to the library)', () => {
    const json = JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer.json'), 'utf8')) as TokenizerJson;
    const lib = new Tokenizer(json, JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'tokenizer_config.json'), 'utf8')));
    const bpe = bytePairEncoder(json.model!);
    assert.ok(bpe, 'this package\'s BPE model is one the encoder follows');
    const text = heldOutText().slice(0, 200_000) + ' caf\u00e9 \u{1F600} \u4e2d\u6587 aaaa !!!???... 1,234.56 e\u0301 \u00a0x';
    const pieces = new Set(text.match(GPT2_SPLIT));
    assert.ok(pieces.size > 5000);
    for (const p of pieces) assert.deepEqual(bpe(p), lib.encode(p, { add_special_tokens: false }).ids, `ids differ for ${JSON.stringify(p)}`);
  });
});
