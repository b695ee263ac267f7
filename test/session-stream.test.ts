// WebSocket streaming (src/api/routes/session-stream.ts) against the real stack: private
// redis-server, in-process worker, the app listening on a port, `ws` as the client.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { MAX_UNAPPLIED_BYTES } from '../src/api/stream/backpressure.ts';
import { streamStats } from '../src/api/stream/stream-stats.ts';
import type { SessionRecord } from '../src/state/session-record.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { bytesOf, randomChunks } from './support/chunks.ts';
import { Client, WebSocket, connectStream, type Msg } from './support/ws-client.ts';

const MODEL = 'rmt-brown-small';
const DOC = heldOutText().slice(0, 9000);

let h: ApiHarness;
let wsBase = '';

function connect(id: string): Promise<{ c: Client; hello: Msg }> {
  return connectStream(wsBase, id);
}

async function newSession(): Promise<string> {
  const m = h.deps.catalog.get(MODEL)!;
  const rec = await h.deps.store.create({ model: MODEL, shape: m.stateShape, dtype: 'float32' }, m.initState);
  return rec.id;
}

/** Waits until every request accepted for the session has been applied. */
async function settled(id: string, timeoutMs = 30000): Promise<SessionRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rec = await h.deps.store.get(id);
    assert.ok(rec, `session ${id} exists`);
    if (rec.appliedSeq === rec.acceptedSeq) return rec;
    assert.ok(Date.now() < deadline, `session ${id} did not settle: applied ${rec.appliedSeq} of ${rec.acceptedSeq}`);
    await sleep(50);
  }
}



let reference: SessionRecord;

function assertSameAsReference(rec: SessionRecord): void {
  assert.equal(rec.tokensIngested, reference.tokensIngested, 'tokens ingested');
  assert.equal(rec.segmentsCommitted, reference.segmentsCommitted, 'segments committed');
  assert.deepEqual(rec.tail, reference.tail, 'tail');
  assert.equal(rec.pendingText, reference.pendingText, 'pending text');
  assert.ok(bytesOf(rec.state).equals(bytesOf(reference.state)), 'state bytes equal the one-request reference');
}

describe('session stream (websocket)', { timeout: 120_000 }, () => {
  before(async () => {
    h = await startApiHarness({}, { RMT_MODELS: MODEL });
    wsBase = (await h.listen()).replace(/^http/, 'ws');
    // Reference: the whole document in one ingest request through the queue.
    const id = await newSession();
    await h.deps.queue.submit(id, { kind: 'ingest', text: DOC, flush: false });
    reference = await settled(id);
    assert.ok(reference.segmentsCommitted >= 3, 'the document spans several segments');
  });

  after(async () => {
    await h?.close();
  });

  test('404 before the upgrade for an unknown session', async () => {
    const ws = new WebSocket(`${wsBase}/v1/sessions/nope123/stream`);
    const res = await new Promise<{ statusCode: number; body: string }>((resolve, reject) => {
      ws.once('open', () => reject(new Error('upgraded')));
      ws.once('error', () => undefined);
      ws.once('unexpected-response', (_req: unknown, r: NodeJS.ReadableStream & { statusCode: number }) => {
        let body = '';
        r.on('data', (d: Buffer) => (body += String(d)));
        r.on('end', () => resolve({ statusCode: r.statusCode, body }));
      });
    });
    assert.equal(res.statusCode, 404);
    assert.equal(JSON.parse(res.body).error.code, 'session_not_found');
  });

  test('an API crash around an append: the resend is applied exactly once, and accepted work is woken on the next hello', async () => {
    const text = 'The jury said the election was conducted well. '.repeat(20);
    for (const stage of ['before-accept', 'after-accept'] as const) {
      const id = await newSession();
      // What a process that died mid-append left behind: nothing (before the accept script), or the
      // append accepted with its client seq but its session never woken and no ack sent.
      if (stage === 'after-accept') await h.deps.queue.log.accept(id, { kind: 'ingest', text, flush: false }, { clientSeq: 1, wantResult: false });
      const { c, hello } = await connect(id);
      assert.equal(hello.last_seq, stage === 'after-accept' ? 1 : 0, stage);
      // The client resends from last_seq + 1, as the protocol says: the accepted append is not sent again.
      if (stage === 'before-accept') {
        c.send({ type: 'append', seq: 1, text });
        const ack = await c.next((m) => m.type === 'ack' || m.type === 'error');
        assert.deepEqual([ack.type, ack.seq, ack.duplicate], ['ack', 1, undefined], `${stage}: ${JSON.stringify(ack)}`);
      }
      await c.close();
      const rec = await settled(id);
      assert.equal(rec.acceptedSeq, 1, `${stage}: the resend took a new request seq`);
      assert.equal(rec.appliedSeq, 1, `${stage}: the accepted append was never applied`);
      const once = h.deps.tokenizers.get(MODEL)!.encode(text.trimEnd()).length;
      assert.ok(rec.tokensIngested < 2 * once - 5 && rec.tokensIngested > 0.8 * once, `${stage}: ${rec.tokensIngested} tokens ingested for one copy of ${once}`);
    }
  });

  test('hello, ordered acks, and random chunks equal one ingest of the whole text', async () => {
    const id = await newSession();
    const { c, hello } = await connect(id);
    assert.equal(hello.session_id, id);
    assert.equal(hello.last_seq, 0);
    assert.equal(hello.segment_length, 128);
    assert.equal(hello.tokens_ingested, 0);
    assert.equal(hello.segments_committed, 0);
    const chunks = randomChunks(DOC, 7, 300);
    chunks.forEach((text, i) => c.send({ type: 'append', seq: i + 1, text }));
    for (let i = 0; i < chunks.length; i++) {
      const ack = await c.next((m) => m.type === 'ack' || m.type === 'error');
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      assert.equal(ack.seq, i + 1, 'acks arrive in order');
      assert.equal(ack.duplicate, undefined);
      assert.equal(typeof ack.tokens, 'number');
      assert.equal(typeof ack.pending_tokens, 'number');
    }
    assertSameAsReference(await settled(id));
    const progress = await c.next((m) => m.type === 'progress');
    assert.ok(progress.segments_committed >= 1);
    await c.close();
    const again = await connect(id);
    assert.equal(again.hello.last_seq, chunks.length, 'last_seq survives the connection');
    assert.equal(again.hello.segments_committed, reference.segmentsCommitted);
    await again.c.close();
  });

  test('a dropped connection resumes from last_seq + 1; duplicates are acked, not applied', async () => {
    const id = await newSession();
    const chunks = randomChunks(DOC, 11, 200);
    const first = await connect(id);
    const half = Math.floor(chunks.length / 2);
    for (let i = 0; i < half; i++) first.c.send({ type: 'append', seq: i + 1, text: chunks[i]! });
    await first.c.next((m) => m.type === 'ack' && m.seq === 5);
    first.c.ws.terminate(); // mid-stream: later appends may or may not have been accepted

    const { c, hello } = await connect(id);
    const last = hello.last_seq as number;
    assert.ok(last >= 5 && last <= half, `last_seq ${last} in [5, ${half}]`);
    // Resend from an already-acknowledged seq: it must be a duplicate.
    for (let i = last - 1; i < chunks.length; i++) c.send({ type: 'append', seq: i + 1, text: chunks[i]! });
    const dup = await c.next((m) => m.type === 'ack' || m.type === 'error');
    assert.deepEqual([dup.type, dup.seq, dup.duplicate], ['ack', last, true]);
    for (let i = last; i < chunks.length; i++) {
      const ack = await c.next((m) => m.type === 'ack' || m.type === 'error');
      assert.deepEqual([ack.type, ack.seq, ack.duplicate], ['ack', i + 1, undefined]);
    }
    assertSameAsReference(await settled(id));
    // A late duplicate of an early seq is still only acknowledged.
    c.send({ type: 'append', seq: 1, text: chunks[0]! });
    assert.equal((await c.next((m) => m.type === 'ack')).duplicate, true);
    assertSameAsReference(await settled(id));
    await c.close();
  });

  test('generate streams token events, then done', async () => {
    const id = await newSession();
    const { c } = await connect(id);
    c.send({ type: 'append', seq: 1, text: DOC.slice(0, 1500) });
    c.send({ type: 'generate', max_tokens: 12, temperature: 0 });
    assert.equal((await c.next((m) => m.type === 'ack')).seq, 1);
    const tokens: Msg[] = [];
    let done: Msg;
    for (;;) {
      const m = await c.next((x) => x.type === 'token' || x.type === 'done' || x.type === 'error', 30000);
      assert.notEqual(m.type, 'error', JSON.stringify(m));
      if (m.type === 'done') {
        done = m;
        break;
      }
      tokens.push(m);
    }
    assert.ok(tokens.length >= 1, 'at least one token event');
    assert.deepEqual(tokens.map((t) => t.index), tokens.map((_, i) => i));
    assert.ok(['length', 'stop', 'eos'].includes(done.finish_reason));
    assert.equal(done.usage.completion_tokens, tokens.length);
    assert.ok(done.usage.prompt_tokens > 0, 'the pending text was flushed into the prompt');
    assert.equal(done.text, tokens.map((t) => t.text).join(''));
    await c.close();
  });

  test('bad messages get error events and the connection stays usable', async () => {
    const id = await newSession();
    const { c } = await connect(id);
    const expectError = async (send: () => void, code: string) => {
      send();
      const m = await c.next((x) => x.type === 'error' || x.type === 'ack');
      assert.deepEqual([m.type, m.code], ['error', code], JSON.stringify(m));
    };
    await expectError(() => c.ws.send('{not json'), 'invalid_json');
    await expectError(() => c.ws.send('[1,2]'), 'invalid_message');
    await expectError(() => c.send({ type: 'frobnicate' }), 'unknown_type');
    await expectError(() => c.send({ text: 'x' }), 'unknown_type');
    await expectError(() => c.send({ type: 'append', seq: 0, text: 'x' }), 'invalid_field');
    await expectError(() => c.send({ type: 'append', seq: 1.5, text: 'x' }), 'invalid_field');
    await expectError(() => c.send({ type: 'append', seq: '1', text: 'x' }), 'invalid_field');
    await expectError(() => c.send({ type: 'append', seq: 1, text: 42 }), 'invalid_field');
    await expectError(() => c.send({ type: 'append', seq: 2, text: 'x' }), 'seq_gap');
    await expectError(() => c.ws.send('{"type":"append","seq":1,"text":"a\\ud800b"}'), 'invalid_text');
    await expectError(() => c.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), 'invalid_utf8');
    // Invalid UTF-8 in a *text* frame: an error message, not a closed socket.
    await expectError(() => c.ws.send(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d]), { binary: false }), 'invalid_utf8');
    await expectError(() => c.send({ type: 'generate', max_tokens: 0 }), 'invalid_field');
    await expectError(() => c.send({ type: 'generate', max_tokens: 5, temperature: 9 }), 'invalid_field');
    await expectError(() => c.send({ type: 'generate', max_tokens: 5, stop: [1] }), 'invalid_field');
    // Still open, and nothing was applied: seq 1 is still the next one.
    c.send({ type: 'append', seq: 1, text: 'Hello there. ' });
    const ack = await c.next((x) => x.type === 'ack' || x.type === 'error');
    assert.deepEqual([ack.type, ack.seq, ack.duplicate], ['ack', 1, undefined]);
    // A binary frame holding valid UTF-8 JSON is accepted too.
    c.ws.send(Buffer.from(JSON.stringify({ type: 'append', seq: 2, text: 'More text, é. ' })));
    assert.equal((await c.next((x) => x.type === 'ack' || x.type === 'error')).seq, 2);
    const rec = await settled(id);
    assert.equal(rec.acceptedSeq, 2, 'only the two good appends reached the queue');
    await c.close();
  });

  test('a 100 MB flood is held back: the socket is paused at the bound and nothing more is accepted', async () => {
    // Behaviour only, shown by the server's counters: it pauses the socket once MAX_UNAPPLIED_BYTES
    // are held, stays paused while nothing is applied, and acknowledges no more than the bound. What
    // the flood costs in memory depends on the machine: bench/stream-flood-memory.ts prints it.
    // The in-process worker is paused so that nothing is applied: the bound is reached at once.
    await h.worker.worker.worker.pause(true);
    const id = await newSession();
    const { c } = await connect(id);
    const unit = (DOC + ' ').repeat(Math.ceil((1 << 20) / (DOC.length + 1))).slice(0, 1 << 20);
    const pausesBefore = streamStats.pausesTotal;
    let sent = 0;
    // As fast as TCP lets us, until the server paused the socket and the client's buffer backed up
    // (at most ~4 MB queued in it at a time), or all 100 MB went.
    for (let seq = 1; seq <= 100; seq++) {
      while (c.ws.bufferedAmount > 4 << 20) {
        if (streamStats.pausesTotal > pausesBefore && streamStats.paused > 0) break;
        await sleep(5);
      }
      if (c.ws.bufferedAmount > 4 << 20) break;
      c.send({ type: 'append', seq, text: unit });
      sent += unit.length;
    }
    // Every ack the server will send for what it read has come once acks stop arriving while paused.
    let acked = -1;
    while (acked !== c.msgs.filter((m) => m.type === 'ack').length) {
      acked = c.msgs.filter((m) => m.type === 'ack').length;
      await sleep(500);
    }
    try {
      assert.ok(streamStats.pausesTotal > pausesBefore, 'the server paused reading the socket');
      assert.equal(streamStats.paused, 1, 'and is still paused (nothing was applied)');
      assert.ok(sent > MAX_UNAPPLIED_BYTES + (2 << 20), `the client offered more (${sent}) than the server holds`);
      assert.ok(acked * (1 << 20) <= MAX_UNAPPLIED_BYTES + (1 << 20), `acked ${acked} appends: more than the bound`);
      assert.ok(c.ws.bufferedAmount > 0, 'the client holds what the server does not read');
    } finally {
      c.ws.terminate();
      await h.deps.store.delete(id);
      h.worker.worker.worker.resume(); // the session is gone: its queued appends now fail fast
    }
  });
});
