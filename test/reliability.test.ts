// Nothing accepted is ever stranded, overload is shed, and a session that cannot go on says so:
// against the real stack (private redis-server, in-process worker, BullMQ, onnxruntime, the app).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { loadConfig } from '../src/config/config.ts';
import type { TextTokenizer } from '../src/text/tokenizer.ts';
import type { ProgressEvent } from '../src/queue/request.ts';
import { WORK_QUEUE } from '../src/queue/work-queue.ts';
import { startClientRuntime } from '../src/queue/client-runtime.ts';
import { startWorkerRuntime } from '../src/worker/runtime.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { bytesOf } from './support/chunks.ts';
import { connectStream } from './support/ws-client.ts';
import { pollUntil } from './support/poll.ts';

const MODEL = 'rmt-brown-small';
const TEXT = heldOutText().slice(30_000, 36_000);

let h: ApiHarness;
let base: string;

async function call(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${base}${path}`, {
    method, ...(signal ? { signal } : {}),
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null, headers: res.headers };
}

async function newSession(): Promise<string> {
  const r = await call('POST', '/v1/sessions', { model: MODEL });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  return r.json.id as string;
}

function assertError(r: { status: number; json: any }, status: number, code: string): void {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.equal(r.json?.error?.code, code, JSON.stringify(r.json));
  assert.equal(typeof r.json.error.message, 'string');
}

const metric = async (name: string): Promise<number> =>
  Number(new RegExp(`^${name.replace(/[{}]/g, '\\$&')} (\\d+)`, 'm').exec(await (await fetch(`${base}/metrics`)).text())?.[1] ?? 0);

describe('reliability', { timeout: 180_000 }, () => {
  before(async () => {
    h = await startApiHarness({}, { RMT_MODELS: MODEL, RMT_LOCK_MS: '1000', RMT_STALLED_CHECK_MS: '500', RMT_REQUEST_ATTEMPTS: '3' });
    base = await h.listen();
  });
  after(async () => {
    await h?.close();
  });

  test('a request that fails every time it starts fails its session after RMT_REQUEST_ATTEMPTS starts: GET says why, later requests wait, reset drops or retries', async () => {
    // The real tokenizer, with one fault: text holding POISON throws, however often it is tried.
    const real = h.worker.tokenizers.get(MODEL)!;
    const poisoned: TextTokenizer = Object.assign(Object.create(real) as TextTokenizer, {
      encode: (t: string) => {
        if (t.includes('POISON')) throw new Error('injected: this text cannot be tokenized');
        return real.encode(t);
      },
    });
    h.worker.tokenizers.set(MODEL, poisoned);
    const failedBefore = await metric('rmt_worker_sessions_failed_total{code="attempts_exhausted"}');
    try {
      const id = await newSession();
      const { c } = await connectStream(base.replace(/^http/, 'ws'), id);
      assert.equal((await call('POST', `/v1/sessions/${id}/append`, { text: 'The jury said' })).status, 200);
      // Request 2 (POISON) fails three starts in a row: the session fails at it, visibly; request 3 waits behind it.
      const poison = call('POST', `/v1/sessions/${id}/append`, { text: ' a POISON pill' });
      await pollUntil('the poisoned append to be accepted', async () => (await h.deps.store.get(id))!.acceptedSeq === 2);
      await h.deps.queue.submit(id, { kind: 'ingest', text: ' and more.', flush: true }, { wantResult: false });
      assertError(await poison, 409, 'session_failed');
      const got = await call('GET', `/v1/sessions/${id}`);
      assert.equal(got.json.status, 'failed');
      assert.deepEqual([got.json.failure.seq, got.json.failure.code], [2, 'attempts_exhausted'], JSON.stringify(got.json));
      assert.equal(got.json.pending_requests, 2, 'the request and the one after it wait');
      const ev = await c.next((m) => m.type === 'error');
      assert.deepEqual([ev.code, ev.request_seq], ['session_failed', 2], JSON.stringify(ev));
      assert.equal(await metric('rmt_worker_sessions_failed_total{code="attempts_exhausted"}'), failedBefore + 1);
      // Refused until the owner resets it.
      assertError(await call('POST', `/v1/sessions/${id}/append`, { text: 'x' }), 409, 'session_failed');
      assertError(await call('POST', '/v1/completions', { model: MODEL, prompt: 'x', session_id: id, max_tokens: 1 }), 409, 'session_failed');
      assertError(await call('POST', `/v1/sessions/${id}/reset`, { action: 'undo' }), 400, 'invalid_type');

      // Retry while the fault is still there: it fails again.
      const retried = await call('POST', `/v1/sessions/${id}/reset`, { action: 'retry' });
      assert.equal(retried.status, 200, JSON.stringify(retried.json));
      await pollUntil('the retried request to fail again', async () => (await call('GET', `/v1/sessions/${id}`)).json.status === 'failed');
      // Drop it and the one after: the session goes on from what was applied.
      const dropped = await call('POST', `/v1/sessions/${id}/reset`, { action: 'drop' });
      assert.deepEqual([dropped.json.status, dropped.json.pending_requests], ['ok', 0], JSON.stringify(dropped.json));
      assertError(await call('POST', `/v1/sessions/${id}/reset`, { action: 'drop' }), 409, 'session_not_failed');
      const reset = await c.next((m) => m.type === 'reset' && m.action === 'drop');
      assert.equal(reset.last_seq, 0, 'no websocket append was dropped');
      const after = await call('POST', `/v1/sessions/${id}/append`, { text: ' The end.' });
      assert.equal(after.status, 200, JSON.stringify(after.json));
      assert.equal(after.json.session.status, 'ok');
      await c.close();
    } finally {
      h.worker.tokenizers.set(MODEL, real);
    }
  });

  test('a job failed through BullMQ\'s own stalled path: the sweeper wakes its session, every request applies exactly once', async () => {
    const env = { REDIS_URL: h.redis.url, RMT_PREFIX: `${h.config.keyPrefix}stall`, RMT_MODELS: MODEL, RMT_INTRA_OP_THREADS: '1', RMT_LOCK_MS: '1000', RMT_STALLED_CHECK_MS: '500' };
    const config = loadConfig(env);
    const client = startClientRuntime(config);
    const m = h.deps.catalog.get(MODEL)!;
    const spec = { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
    try {
      const s = await client.store.create(spec, m.initState);
      const ref = await client.store.create(spec, m.initState);
      const half = Math.floor(TEXT.length / 2);
      const a = await client.queue.submit(s.id, { kind: 'ingest', text: TEXT.slice(0, half) });
      const b = await client.queue.submit(s.id, { kind: 'ingest', text: TEXT.slice(half), flush: true });
      // A worker that takes the session's job and dies; BullMQ's stalled check (allowing no stall) fails it.
      const conns = [(client.redis as Redis).duplicate({ maxRetriesPerRequest: null }), (client.redis as Redis).duplicate({ maxRetriesPerRequest: null })];
      const opts = { connection: conns[0]!, prefix: client.store.keys.queuePrefix(), lockDuration: 500, stalledInterval: 200, maxStalledCount: 0 };
      let took!: () => void;
      const taken = new Promise<void>((r) => (took = r));
      const dying = new Worker(WORK_QUEUE, () => (took(), new Promise<void>(() => undefined)), opts);
      await taken;
      await dying.close(true);
      const checker = new Worker(WORK_QUEUE, async () => { throw new Error('not for this test'); }, { ...opts, connection: conns[1]! });
      const failed = await new Promise<string>((r) => checker.on('failed', (_job, err) => r(err.message)));
      await checker.close();
      for (const c of conns) c.disconnect(); // BullMQ leaves connections it was given open
      assert.match(failed, /stalled more than allowable limit/);
      assert.equal(await client.queue.depth(), 0, 'a job still says the session has work');
      // The real worker: nothing in the queue says the session has work; the sweeper finds it.
      const w = await startWorkerRuntime(config);
      try {
        const [ra, rb] = [await client.queue.result(a, 60_000), await client.queue.result(b, 60_000)];
        assert.equal(ra.error ?? rb.error, undefined);
        await client.queue.submit(ref.id, { kind: 'ingest', text: TEXT, flush: true }).then((r) => client.queue.result(r, 60_000));
        const [got, want] = [(await client.store.get(s.id))!, (await client.store.get(ref.id))!];
        assert.deepEqual([got.appliedSeq, got.tokensIngested, got.segmentsCommitted], [2, want.tokensIngested, want.segmentsCommitted]);
        assert.ok(bytesOf(got.state).equals(bytesOf(want.state)), 'the state differs from one uninterrupted append');
      } finally {
        await w.close(0);
      }
    } finally {
      await client.close();
    }
  });

  test('overload: past RMT_MAX_QUEUE_DEPTH appends and completions get 429 with Retry-After, the websocket \'overloaded\', /readyz 503; all recover', async () => {
    const config = h.deps.config as { maxQueueDepth: number };
    const bullWorker = h.worker.worker.worker;
    const limit = config.maxQueueDepth;
    config.maxQueueDepth = 1;
    await bullWorker.pause(true); // no worker takes anything: queued sessions wait
    try {
      const id = await newSession();
      // Sessions waiting for a worker (several: a fetch already under way when the worker paused may take one).
      for (let i = 0; i < 3; i++) await h.deps.queue.submit(await newSession(), { kind: 'ingest', text: 'waiting for a worker', flush: true });
      let refused: Awaited<ReturnType<typeof call>> | undefined;
      await pollUntil('an append to be refused', async () => {
        const r = await call('POST', `/v1/sessions/${id}/append`, { text: 'x' }, AbortSignal.timeout(2000)).catch(() => undefined);
        if (r?.status === 429) refused = r;
        return refused !== undefined;
      });
      assertError(refused!, 429, 'overloaded');
      assert.equal(refused!.json.error.type, 'rate_limit_error');
      assert.equal(refused!.headers.get('retry-after'), '2');
      assertError(await call('POST', '/v1/completions', { model: MODEL, prompt: 'x', max_tokens: 1 }), 429, 'overloaded');
      const ready = await call('GET', '/readyz');
      assert.equal(ready.status, 503);
      assert.match(ready.json.checks.queue, /^saturated: \d+ sessions waiting for a worker \(limit 1\)/);
      const { c, hello } = await connectStream(base.replace(/^http/, 'ws'), id);
      c.send({ type: 'append', seq: hello.last_seq + 1, text: 'over the websocket' });
      const over = await c.next((m) => m.type === 'error');
      assert.deepEqual([over.code, over.seq, over.last_seq, over.retry_after_ms], ['overloaded', hello.last_seq + 1, hello.last_seq, 2000]);
      // Workers again: the queue drains, and the client's resend from last_seq + 1 is accepted.
      bullWorker.resume();
      await pollUntil('readiness', async () => (await call('GET', '/readyz')).status === 200);
      await pollUntil('the resend to be accepted', async () => {
        c.send({ type: 'append', seq: hello.last_seq + 1, text: 'over the websocket' });
        const m = await c.next((x) => x.type === 'ack' || x.type === 'error');
        return m.type === 'ack';
      });
      await c.close();
      assert.equal((await call('POST', `/v1/sessions/${id}/append`, { text: ' again', flush: true })).status, 200);
    } finally {
      config.maxQueueDepth = limit;
      bullWorker.resume();
    }
  });

  test('a completion whose client goes away is cancelled: a running one stops between tokens, a queued one never runs', async () => {
    const id = await newSession();
    for (const stream of [false, true]) {
      const before = (await h.deps.store.get(id))!;
      const ac = new AbortController();
      const unsubscribe = await h.deps.progress.subscribe(id, (ev: ProgressEvent) => {
        if (ev.type === 'token') ac.abort();
      });
      const req = call('POST', '/v1/completions', { model: MODEL, prompt: TEXT.slice(0, 500), max_tokens: 4000, session_id: id, stream }, ac.signal);
      await assert.rejects(req, /abort/i);
      await unsubscribe();
      await pollUntil('the request to be applied', async () => {
        const r = (await h.deps.store.get(id))!;
        return r.appliedSeq === r.acceptedSeq && r.acceptedSeq === before.acceptedSeq + 1;
      });
      const after = (await h.deps.store.get(id))!;
      const generated = after.tokensGenerated - before.tokensGenerated;
      assert.ok(generated >= 1 && generated < 4000, `stream ${stream}: ${generated} tokens generated after the client left`);
    }
    // Queued behind a long append of its session: cancelled before it starts, it completes without running.
    const before = (await h.deps.store.get(id))!;
    const long = await h.deps.queue.submit(id, { kind: 'ingest', text: heldOutText().slice(0, 150_000), flush: true });
    const ac = new AbortController();
    const req = call('POST', '/v1/completions', { model: MODEL, prompt: ' More', max_tokens: 50, session_id: id }, ac.signal);
    await pollUntil('the completion to be accepted', async () => (await h.deps.store.get(id))!.acceptedSeq === long.seq + 1);
    ac.abort();
    await assert.rejects(req, /abort/i);
    const ingested = await h.deps.queue.result(long, 120_000);
    await pollUntil('the completion to be completed', async () => (await h.deps.store.get(id))!.appliedSeq === long.seq + 1);
    const after = (await h.deps.store.get(id))!;
    assert.equal(after.tokensGenerated, before.tokensGenerated, 'the cancelled completion generated');
    assert.equal(after.tokensIngested, ingested.tokensIngested, 'the cancelled completion\'s prompt was ingested');
  });

  test('the owner can always delete a session, even one whose stored state this build refuses', async () => {
    const id = await newSession();
    await h.deps.redis.hset(h.deps.store.keys.session(id), 'state', Buffer.alloc(3));
    assertError(await call('GET', `/v1/sessions/${id}`), 409, 'state_mismatch');
    assert.equal((await call('DELETE', `/v1/sessions/${id}`)).status, 204);
    assertError(await call('GET', `/v1/sessions/${id}`), 404, 'session_not_found');
    assertError(await call('DELETE', `/v1/sessions/${id}`), 404, 'session_not_found');
  });
});
