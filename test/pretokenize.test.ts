// Long appends tokenized by the API's tokenizer threads (RMT_TOKENIZER_THREADS > 0) against the
// real stack: the same appends over REST and over the websocket must leave exactly the session
// that RMT_TOKENIZER_THREADS=0 (the worker tokenizes) leaves: counters, held-back text, tail and
// state bytes (the portable snapshot holds them all).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { PRETOKENIZE_MIN_CHARS } from '../src/api/pretokenizer.ts';
import { splitAtBoundaries } from '../src/text/text-stream.ts';
import type { IngestRequest, SessionRequest } from '../src/queue/request.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';

interface WsClient {
  send(data: string): void;
  close(): void;
  on(ev: string, fn: (...args: any[]) => void): void;
  once(ev: string, fn: (...args: any[]) => void): void;
}
const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: new (url: string) => WsClient };

const MODEL = 'rmt-brown-small';
const MAX_PENDING = 64;
const BROWN = heldOutText();

/**
 * Appends that reach every case of the pieces path: the first ends mid-word (text held back), the
 * next starts mid-word (the held-back text joins its head), one ends with a run without whitespace
 * longer than RMT_MAX_PENDING_TEXT (released, not held), one starts and ends with whitespace, the
 * last flushes.
 */
const APPENDS: { text: string; flush: boolean }[] = [
  { text: BROWN.slice(0, 500) + ' regis', flush: false },
  { text: 'tration' + BROWN.slice(500, 4500) + ' unfinish', flush: false },
  { text: 'ed ' + BROWN.slice(4500, 8000) + ' ' + 'x'.repeat(3 * MAX_PENDING), flush: false },
  { text: '  \n' + BROWN.slice(8000, 11000) + ' \n\n', flush: false },
  { text: BROWN.slice(11000, 14000) + ' the en', flush: true },
];

interface Side {
  h: ApiHarness;
  ws: string;
  /** Every request the API submitted, by session (what it accepted into the session's log). */
  submitted: Map<string, SessionRequest[]>;
}

async function startSide(threads: number): Promise<Side> {
  const h = await startApiHarness({}, { RMT_MODELS: MODEL, RMT_MAX_PENDING_TEXT: String(MAX_PENDING), RMT_TOKENIZER_THREADS: String(threads) });
  // The real queue, watched: what each append was accepted as.
  const submitted = new Map<string, SessionRequest[]>();
  const submit = h.deps.queue.submit.bind(h.deps.queue);
  h.deps.queue.submit = (id, request, opts) => {
    submitted.set(id, [...(submitted.get(id) ?? []), request]);
    return submit(id, request, opts);
  };
  return { h, ws: (await h.listen()).replace(/^http/, 'ws'), submitted };
}

async function createSession(s: Side): Promise<string> {
  const res = await s.h.app.inject({ method: 'POST', url: '/v1/sessions', payload: { model: MODEL } });
  assert.equal(res.statusCode, 201, res.body);
  return res.json().id as string;
}

/** How each append was queued (what the API accepted into the session's log). */
async function queuedAs(s: Side, id: string, seqs: number): Promise<('text' | 'pieces')[]> {
  const out: ('text' | 'pieces')[] = [];
  const all = s.submitted.get(id) ?? [];
  assert.equal(all.length, seqs);
  for (const r0 of all) {
    const r = r0 as IngestRequest;
    assert.equal([r.text, r.pieces, r.ids].filter((x) => x !== undefined).length, 1, 'exactly one of text, ids, pieces');
    out.push(r.pieces ? 'pieces' : 'text');
  }
  return out;
}

/** The session as GET shows it (without what names it or its times) and its portable snapshot. */
async function sessionState(s: Side, id: string): Promise<{ session: object; snapshot: Buffer }> {
  const g = await s.h.app.inject({ method: 'GET', url: `/v1/sessions/${id}` });
  assert.equal(g.statusCode, 200, g.body);
  const { tokens_ingested, segments_committed, tokens_generated, pending_tokens, state_bytes } = g.json();
  const snap = await s.h.app.inject({ method: 'GET', url: `/v1/sessions/${id}/state` });
  assert.equal(snap.statusCode, 200);
  return { session: { tokens_ingested, segments_committed, tokens_generated, pending_tokens, state_bytes }, snapshot: snap.rawPayload };
}

/** Sends every append on one connection at once (so they tokenize together), waits for the acks and for the worker. */
async function streamAppends(s: Side, id: string): Promise<void> {
  const ws = new WebSocket(`${s.ws}/v1/sessions/${id}/stream`);
  const msgs: Record<string, any>[] = [];
  let wake: (() => void) | undefined;
  ws.on('message', (d: Buffer) => {
    msgs.push(JSON.parse(String(d)));
    wake?.();
  });
  const until = async (pred: () => boolean) => {
    while (!pred()) await new Promise<void>((r) => (wake = r));
  };
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  APPENDS.forEach((a, i) => ws.send(JSON.stringify({ type: 'append', seq: i + 1, ...a })));
  await until(() => msgs.filter((m) => m.type === 'ack' || m.type === 'error').length === APPENDS.length);
  const replies = msgs.filter((m) => m.type === 'ack' || m.type === 'error');
  assert.deepEqual(replies.map((m) => [m.type, m.seq]), APPENDS.map((_, i) => ['ack', i + 1]), JSON.stringify(replies).slice(0, 500));
  const closed = new Promise<void>((r) => ws.once('close', () => r()));
  ws.close();
  await closed;
  // A session's requests apply in order: the last one done, all are.
  const last = await s.h.deps.queue.result({ sessionId: id, seq: APPENDS.length }, 60_000);
  assert.equal(last.error, undefined);
}

describe('long appends tokenized by the API', { timeout: 180_000 }, () => {
  let on: Side;
  let off: Side;
  before(async () => {
    [on, off] = await Promise.all([startSide(2), startSide(0)]);
    assert.ok(on.h.deps.pretokenizer, 'RMT_TOKENIZER_THREADS=2 starts the pool');
    assert.equal(off.h.deps.pretokenizer, undefined, 'RMT_TOKENIZER_THREADS=0 does not');
  });
  after(async () => {
    await Promise.all([on?.h.close(), off?.h.close()]);
  });

  const expected = APPENDS.map((a) => ((splitAtBoundaries(a.text)?.middle.length ?? 0) >= PRETOKENIZE_MIN_CHARS ? 'pieces' : 'text'));

  test('REST appends: the same tokens and session as when the worker tokenizes', async () => {
    assert.deepEqual(expected, ['text', 'pieces', 'pieces', 'pieces', 'pieces']);
    const ids = { on: await createSession(on), off: await createSession(off) };
    for (const [i, a] of APPENDS.entries()) {
      const [r1, r0] = await Promise.all([
        on.h.app.inject({ method: 'POST', url: `/v1/sessions/${ids.on}/append`, payload: a }),
        off.h.app.inject({ method: 'POST', url: `/v1/sessions/${ids.off}/append`, payload: a }),
      ]);
      assert.equal(r1.statusCode, 200, r1.body);
      assert.equal(r0.statusCode, 200, r0.body);
      const [b1, b0] = [r1.json(), r0.json()];
      assert.deepEqual(
        [b1.tokens, b1.pending_tokens, b1.segments_committed, b1.session.tokens_ingested],
        [b0.tokens, b0.pending_tokens, b0.segments_committed, b0.session.tokens_ingested],
        `append ${i}`,
      );
    }
    assert.deepEqual(await queuedAs(on, ids.on, APPENDS.length), expected);
    assert.deepEqual(await queuedAs(off, ids.off, APPENDS.length), APPENDS.map(() => 'text'));
    const [s1, s0] = await Promise.all([sessionState(on, ids.on), sessionState(off, ids.off)]);
    assert.deepEqual(s1.session, s0.session);
    assert.ok((s1.session as { tokens_ingested: number }).tokens_ingested > 3000, 'several segments were ingested');
    assert.ok(s1.snapshot.equals(s0.snapshot), 'snapshots (state, tail, held-back text, counters) are byte-identical');
    // The time appends spent on the tokenizer threads is exported (one observation per pretokenized append at least).
    const metrics = (await on.h.app.inject({ method: 'GET', url: '/metrics' })).body;
    const count = Number(/^rmt_api_pretokenize_seconds_count\{outcome="pieces"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(count >= expected.filter((e) => e === 'pieces').length, `rmt_api_pretokenize_seconds_count{outcome="pieces"} = ${count}`);
  });

  test('websocket appends: the same session as when the worker tokenizes', async () => {
    const ids = { on: await createSession(on), off: await createSession(off) };
    await Promise.all([streamAppends(on, ids.on), streamAppends(off, ids.off)]);
    assert.deepEqual(await queuedAs(on, ids.on, APPENDS.length), expected);
    assert.deepEqual(await queuedAs(off, ids.off, APPENDS.length), APPENDS.map(() => 'text'));
    const [s1, s0] = await Promise.all([sessionState(on, ids.on), sessionState(off, ids.off)]);
    assert.deepEqual(s1.session, s0.session);
    assert.ok(s1.snapshot.equals(s0.snapshot), 'snapshots are byte-identical');
  });
});
