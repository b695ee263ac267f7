// The API's tokenizer threads (src/text/tokenizer-pool.ts): the real tokenizer in real worker
// threads; the ids must be those of the tokenizer on this thread, and no request may hang when a
// thread dies or the pool closes.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { REQUEST_CHARS, TokenizerPool } from '../src/text/tokenizer-pool.ts';
import { loadTokenizer, type TextTokenizer } from '../src/text/tokenizer.ts';
import { heldOutText } from './support/brown.ts';
import { PACKAGE_DIR } from './helpers.ts';

const TOKENIZER = path.join(PACKAGE_DIR, 'tokenizer.json');
const BROWN = heldOutText();

describe('tokenizer pool', { timeout: 120_000 }, () => {
  let tok: TextTokenizer;
  let pool: TokenizerPool;
  before(async () => {
    tok = await loadTokenizer(TOKENIZER);
    pool = await TokenizerPool.start({ threads: 2, tokenizers: { small: TOKENIZER, other: TOKENIZER } });
  });
  after(async () => {
    await pool?.close();
  });

  test('ids equal the tokenizer on this thread, for short, long and odd texts', async () => {
    const texts = [
      '',
      ' Mary went to the kitchen.',
      'naïve café 東京 🙂🙂 <|endoftext|>\u00a0x\u3000y\r\n\tz  ',
      BROWN.slice(0, 200_000), // several thread requests
      'x'.repeat(REQUEST_CHARS + 500) + ' and then words', // a piece without a boundary in its window
      '   ' + BROWN.slice(5000, 80_000) + '  \n',
    ];
    for (const [i, text] of texts.entries()) {
      assert.deepEqual(await pool.encode('small', text), tok.encode(text), `text ${i}`);
    }
    await assert.rejects(pool.encode('nope', 'text'), /no tokenizer for model 'nope'/);
  });

  test('concurrent requests are spread over the threads and each gets its own ids', async () => {
    const texts = Array.from({ length: 12 }, (_, i) => BROWN.slice(i * 40_000, i * 40_000 + 30_000 + i * 7_000));
    const results = texts.map((t, i) => pool.encode(i % 2 ? 'small' : 'other', t));
    const load = pool.load();
    assert.ok(load.every((chars) => chars > 0), `both threads busy at once: ${JSON.stringify(load)}`);
    const got = await Promise.all(results);
    got.forEach((ids, i) => assert.deepEqual(ids, tok.encode(texts[i]!), `text ${i}`));
    assert.deepEqual(pool.load(), [0, 0], 'nothing left in flight');
  });

  test('keys take turns: a key\'s backlog does not hold back another key\'s first text; each key\'s texts stay in order', async () => {
    const one = await TokenizerPool.start({ threads: 1, tokenizers: { small: TOKENIZER } });
    try {
      const done: string[] = [];
      const text = (k: number) => BROWN.slice(k * 30_000, k * 30_000 + 30_000);
      const track = (label: string, p: Promise<number[]>) => p.then((ids) => (done.push(label), ids));
      // One thread with room for two requests: a1 and a2 go out at once, the rest wait in the queue.
      const a = [1, 2, 3, 4, 5].map((k) => track(`a${k}`, one.encode('small', text(k), 'session-a')));
      const b = [track('b1', one.encode('small', text(6), 'session-b')), track('b2', one.encode('small', text(7), 'session-b'))];
      const ids = await Promise.all([...a, ...b]);
      ids.forEach((got, i) => assert.deepEqual(got, tok.encode(text(i + 1)), `text ${i + 1}`));
      // First in first out would finish b1 after a5. In turns: a3 (its key was first), b1, a4, b2, a5.
      assert.deepEqual(done, ['a1', 'a2', 'a3', 'b1', 'a4', 'b2', 'a5']);
    } finally {
      await one.close();
    }
  });

  test('a thread that dies fails its requests with the reason; the pool replaces it', { timeout: 20_000 }, async () => {
    const one = await TokenizerPool.start({ threads: 1, tokenizers: { small: TOKENIZER } });
    try {
      const victim = one.threads()[0]!;
      const long = one.encode('small', BROWN);
      await victim.terminate();
      await assert.rejects(long, /tokenizer thread 0 exited \(code 1\) before it answered/);
      // Requests made while the replacement starts wait for it.
      assert.deepEqual(await one.encode('small', ' after the crash'), tok.encode(' after the crash'));
      assert.notEqual(one.threads()[0], victim, 'a new thread');
    } finally {
      await one.close();
    }
  });

  test('a replacement that cannot start takes the pool down loudly', { timeout: 20_000 }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'rmt-tokpool-'));
    const file = path.join(dir, 'tokenizer.json');
    copyFileSync(TOKENIZER, file);
    const one = await TokenizerPool.start({ threads: 1, tokenizers: { small: file } });
    try {
      rmSync(file);
      const victim = one.threads()[0]!;
      const waiting = one.encode('small', BROWN.slice(0, 50_000));
      await victim.terminate();
      await assert.rejects(waiting, /tokenizer thread 0 exited/);
      await assert.rejects(one.encode('small', 'more text'), /tokenizer pool is down: thread 0 died and its replacement did not start \(tokenizer thread failed to start: .*tokenizer\.json/);
    } finally {
      await one.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a pool whose tokenizer cannot load does not start', async () => {
    await assert.rejects(
      TokenizerPool.start({ threads: 2, tokenizers: { small: '/nonexistent/tokenizer.json' } }),
      /tokenizer thread failed to start: .*\/nonexistent\/tokenizer\.json/,
    );
  });

  test('close fails what is in flight and everything after', { timeout: 20_000 }, async () => {
    const p = await TokenizerPool.start({ threads: 1, tokenizers: { small: TOKENIZER } });
    const inFlight = assert.rejects(p.encode('small', BROWN), /tokenizer pool is closed/);
    await p.close();
    await inFlight;
    await assert.rejects(p.encode('small', 'late'), /tokenizer pool is closed/);
    assert.deepEqual(p.threads(), [undefined], 'no thread left');
  });
});

test('nice: each tokenizer thread lowers its own CPU priority (Linux), the process keeps its own', { skip: process.platform !== 'linux' }, async () => {
  const niceOf = (tid: string) => Number(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1]!.split(' ')[16]);
  const own = niceOf(String(process.pid));
  const before = new Set(readdirSync('/proc/self/task'));
  const p = await TokenizerPool.start({ threads: 2, nice: 5, tokenizers: { small: TOKENIZER } });
  try {
    const added = readdirSync('/proc/self/task').filter((t) => !before.has(t));
    const lowered = added.filter((t) => niceOf(t) === Math.min(19, own + 5));
    assert.equal(lowered.length, 2, `threads started: ${added.map((t) => `${t}:${niceOf(t)}`).join(' ')}`);
    assert.equal(niceOf(String(process.pid)), own);
    assert.deepEqual(await p.encode('small', ' Mary went to the kitchen.'), (await loadTokenizer(TOKENIZER)).encode(' Mary went to the kitchen.'));
  } finally {
    await p.close();
  }
});
