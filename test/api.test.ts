// The HTTP API end to end: real redis-server, in-process worker, app.inject.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { encodeSnapshot, decodeSnapshot } from '../src/api/state-snapshot.ts';
import { readiness } from '../src/api/routes/health.ts';
import { familyNames, histogram, sampleValue } from './support/prom-text.ts';
import { pollUntil } from './support/poll.ts';

const TEXT = 'The Fulton County Grand Jury said Friday an investigation of recent primary election produced no evidence that any irregularities took place. ';

function assertApiError(r: LightMyRequestResponse, status: number, what: string): { message: string; type: string; param: string | null; code: string | null } {
  assert.equal(r.statusCode, status, `${what}: expected ${status}, got ${r.statusCode} ${r.body}`);
  assert.doesNotMatch(r.body, /\n\s+at |"stack"/, `${what}: body leaks a stack trace`);
  const body = r.json() as { error?: Record<string, unknown> };
  assert.ok(body.error, `${what}: no error object in ${r.body}`);
  const e = body.error as { message: string; type: string; param: string | null; code: string | null };
  assert.equal(typeof e.message, 'string', what);
  assert.ok(e.message.length > 0, what);
  assert.equal(typeof e.type, 'string', what);
  assert.ok(e.param === null || typeof e.param === 'string', what);
  assert.ok(e.code === null || typeof e.code === 'string', what);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type'], what);
  return e;
}

async function createSession(app: FastifyInstance, model?: string, headers: Record<string, string> = {}): Promise<Record<string, any>> {
  const r = await app.inject({ method: 'POST', url: '/v1/sessions', headers, payload: model ? { model } : {} });
  assert.equal(r.statusCode, 201, r.body);
  return r.json();
}

async function append(app: FastifyInstance, id: string, body: object): Promise<Record<string, any>> {
  const r = await app.inject({ method: 'POST', url: `/v1/sessions/${id}/append`, payload: body });
  assert.equal(r.statusCode, 200, r.body);
  return r.json();
}

async function exportState(app: FastifyInstance, id: string): Promise<Buffer> {
  const r = await app.inject({ method: 'GET', url: `/v1/sessions/${id}/state` });
  assert.equal(r.statusCode, 200, r.body);
  assert.match(String(r.headers['content-type']), /^application\/octet-stream/);
  return r.rawPayload;
}

function importState(app: FastifyInstance, id: string, bytes: Buffer): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'PUT', url: `/v1/sessions/${id}/state`, headers: { 'content-type': 'application/octet-stream' }, payload: bytes });
}

const counters = (s: Record<string, any>) => ({
  model: s.model, tokens_ingested: s.tokens_ingested, segments_committed: s.segments_committed, tokens_generated: s.tokens_generated,
  pending_tokens: s.pending_tokens, state_bytes: s.state_bytes,
});

describe('API', () => {
  let h: ApiHarness;
  let app: FastifyInstance;

  before(async () => {
    h = await startApiHarness({ bodyLimitBytes: 256 * 1024 });
    app = h.app;
  });
  after(async () => {
    await h?.close();
  });

  test('GET /v1/models lists the catalog in the OpenAI shape', async () => {
    const r = await app.inject({ method: 'GET', url: '/v1/models' });
    assert.equal(r.statusCode, 200);
    const body = r.json();
    assert.equal(body.object, 'list');
    assert.deepEqual(body.data.map((m: any) => m.id), h.deps.catalog.list().map((m) => m.name));
    for (const m of body.data) {
      assert.equal(m.object, 'model');
      assert.equal(m.owned_by, 'rmt-serve');
      assert.ok(Number.isInteger(m.created));
      assert.ok(m.segment_length > 0 && m.memory_tokens > 0 && m.state_bytes > 0);
      assert.equal(typeof m.description, 'string');
    }
  });

  test('session create / get / delete, 404 after delete', async () => {
    const noBody = await app.inject({ method: 'POST', url: '/v1/sessions' });
    assert.equal(noBody.statusCode, 201, noBody.body);
    assert.equal(noBody.json().model, h.deps.catalog.defaultModel);

    const s = await createSession(app, 'rmt-brown-small');
    assert.equal(s.object, 'session');
    assert.equal(s.model, 'rmt-brown-small');
    assert.deepEqual(
      { ti: s.tokens_ingested, sc: s.segments_committed, tg: s.tokens_generated, pt: s.pending_tokens, v: s.version },
      { ti: 0, sc: 0, tg: 0, pt: 0, v: 0 },
    );
    assert.equal(s.state_bytes, h.deps.catalog.get('rmt-brown-small')!.stateBytes);
    const g = await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` });
    assert.equal(g.statusCode, 200);
    assert.deepEqual(g.json(), s);

    const d = await app.inject({ method: 'DELETE', url: `/v1/sessions/${s.id}` });
    assert.equal(d.statusCode, 204);
    assert.equal(d.body, '');
    assertApiError(await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` }), 404, 'get after delete');
    assertApiError(await app.inject({ method: 'DELETE', url: `/v1/sessions/${s.id}` }), 404, 'delete twice');
  });

  test('append text, then GET shows the tokens; perplexity only on request', async () => {
    const s = await createSession(app);
    const seg = h.deps.catalog.get(s.model)!.segmentLength;
    const a = await append(app, s.id, { text: TEXT.repeat(12) });
    assert.ok(a.tokens > seg, `expected more than one segment of tokens, got ${a.tokens}`);
    assert.equal(a.perplexity, undefined);
    assert.equal(a.session.tokens_ingested, a.tokens);
    assert.equal(a.segments_committed, a.session.segments_committed);
    assert.ok(a.segments_committed >= 1);
    assert.equal(a.pending_tokens, a.session.pending_tokens);
    assert.equal(a.segments_committed * seg + a.pending_tokens, a.tokens);

    const g = (await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` })).json();
    assert.equal(g.tokens_ingested, a.tokens);
    assert.equal(g.segments_committed, a.segments_committed);
    assert.ok(g.version > 0);

    const p = await append(app, s.id, { text: TEXT.repeat(12), perplexity: true });
    assert.ok(Array.isArray(p.perplexity) && p.perplexity.length >= 1, JSON.stringify(p));
    for (const x of p.perplexity) {
      assert.ok(Number.isInteger(x.segment) && x.segment > a.segments_committed);
      assert.ok(x.tokens > 0);
      assert.ok(Number.isFinite(x.nll) && x.nll > 0);
      assert.ok(Math.abs(x.perplexity - Math.exp(x.nll)) < 1e-6 * x.perplexity);
    }
    assert.equal(p.session.tokens_ingested, a.tokens + p.tokens);

    const ids = await append(app, s.id, { ids: [5, 6, 7, 8] });
    assert.equal(ids.tokens, 4);
    assert.equal(ids.session.tokens_ingested, a.tokens + p.tokens + 4);
  });

  test('fork is independent of its source', async () => {
    const s = await createSession(app);
    await append(app, s.id, { text: TEXT });
    const before = (await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` })).json();
    const f = await app.inject({ method: 'POST', url: `/v1/sessions/${s.id}/fork` });
    assert.equal(f.statusCode, 201, f.body);
    const fork = f.json();
    assert.notEqual(fork.id, s.id);
    assert.deepEqual(counters(fork), counters(before));
    assert.deepEqual(await exportState(app, fork.id), await exportState(app, s.id));

    const fa = await append(app, fork.id, { text: TEXT.repeat(4) });
    assert.ok(fa.session.tokens_ingested > before.tokens_ingested);
    const afterSrc = (await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` })).json();
    assert.deepEqual(counters(afterSrc), counters(before));
    assert.equal(afterSrc.version, before.version);
    assertApiError(await app.inject({ method: 'POST', url: '/v1/sessions/nope/fork' }), 404, 'fork missing');
  });

  test('state export -> import into a fresh session gives identical counters, bytes and behaviour', async () => {
    const a = await createSession(app);
    await append(app, a.id, { text: TEXT.repeat(5) + 'unfinished wor', flush: false });
    const bytes = await exportState(app, a.id);
    const snap = decodeSnapshot(bytes);
    assert.equal(snap.header.model, a.model);
    assert.ok(snap.header.pending_text.length > 0, 'held-back text travels with the snapshot');

    const b = await createSession(app, a.model);
    const r = await importState(app, b.id, bytes);
    assert.equal(r.statusCode, 200, r.body);
    assert.equal(r.json().id, b.id);
    const ga = (await app.inject({ method: 'GET', url: `/v1/sessions/${a.id}` })).json();
    const gb = (await app.inject({ method: 'GET', url: `/v1/sessions/${b.id}` })).json();
    assert.deepEqual(counters(gb), counters(ga));
    assert.deepEqual(await exportState(app, b.id), bytes);

    // The imported memory behaves like the original: the same continuation scores the same.
    const ids = Array.from({ length: 200 }, (_, i) => 100 + ((i * 37) % 3000));
    const pa = await append(app, a.id, { ids, perplexity: true });
    const pb = await append(app, b.id, { ids, perplexity: true });
    assert.ok(pa.perplexity.length >= 1);
    assert.deepEqual(pb.perplexity, pa.perplexity);
    assert.deepEqual(await exportState(app, b.id), await exportState(app, a.id));
  });

  test('bad snapshots are refused with 422 in the OpenAI error shape', async () => {
    const a = await createSession(app);
    await append(app, a.id, { text: TEXT });
    const good = await exportState(app, a.id);
    const target = await createSession(app);
    const before = await exportState(app, target.id);

    const garbage = Buffer.from('this is not a snapshot at all, just some bytes');
    assert.equal(assertApiError(await importState(app, target.id, garbage), 422, 'garbage').type, 'invalid_request_error');
    assertApiError(await importState(app, target.id, Buffer.alloc(0)), 422, 'empty');
    assertApiError(await importState(app, target.id, good.subarray(0, 8)), 422, 'truncated prefix');
    const truncated = assertApiError(await importState(app, target.id, good.subarray(0, good.length - 100)), 422, 'truncated');
    assert.match(truncated.message, /truncated/);
    const flipped = Buffer.from(good);
    flipped[flipped.length - 500]! ^= 0x40;
    const ck = assertApiError(await importState(app, target.id, flipped), 422, 'bad checksum');
    assert.match(ck.message, /checksum/);
    const extra = Buffer.concat([good, Buffer.from([0])]);
    assertApiError(await importState(app, target.id, extra), 422, 'trailing bytes');

    const other = await createSession(app, 'rmt-brown-small');
    const wrongModel = assertApiError(await importState(app, other.id, good), 422, 'wrong model');
    assert.match(wrongModel.message, /rmt-brown-small/);
    assert.match(wrongModel.message, /rmt-brown-lm/);

    const snap = decodeSnapshot(good);
    const [d0, d1] = snap.header.shape as [number, number];
    const wrongShape = encodeSnapshot({
      model: snap.header.model, stateDtype: 'float32', stateShape: [d1, d0 * 2], state: new Float32Array(d0 * d1 * 2), tail: [],
      pendingText: '', tokensIngested: 0, segmentsCommitted: 0, tokensGenerated: 0,
    });
    assert.match(assertApiError(await importState(app, target.id, wrongShape), 422, 'wrong shape').message, /shape/);
    const nonFinite = encodeSnapshot({
      model: snap.header.model, stateDtype: 'float32', stateShape: snap.header.shape, state: new Float32Array(snap.state.length).fill(NaN),
      tail: [], pendingText: '', tokensIngested: 0, segmentsCommitted: 0, tokensGenerated: 0,
    });
    assertApiError(await importState(app, target.id, nonFinite), 422, 'non-finite state');

    assertApiError(
      await app.inject({ method: 'PUT', url: `/v1/sessions/${target.id}/state`, payload: { state: 'x' } }), 415, 'json instead of bytes',
    );
    assertApiError(await importState(app, 'missing-session', good), 404, 'import into missing session');
    assertApiError(await importState(app, target.id, Buffer.alloc(1 << 20)), 413, 'oversize snapshot');
    // None of that touched the target.
    assert.deepEqual(await exportState(app, target.id), before);
  });

  test('bad input on every route is a 4xx in the OpenAI error shape', async () => {
    const s = await createSession(app);
    const gone = await createSession(app);
    await app.inject({ method: 'DELETE', url: `/v1/sessions/${gone.id}` });
    const json = { 'content-type': 'application/json' };
    const cases: [string, InjectOptions, number][] = [
      ['create: malformed JSON', { method: 'POST', url: '/v1/sessions', headers: json, payload: '{"model":' }, 400],
      ['create: wrong type', { method: 'POST', url: '/v1/sessions', payload: { model: 42 } }, 400],
      ['create: unknown field', { method: 'POST', url: '/v1/sessions', payload: { model: 'rmt-brown-lm', temperature: 1 } }, 400],
      ['create: unknown model', { method: 'POST', url: '/v1/sessions', payload: { model: 'gpt-17' } }, 404],
      ['create: array body', { method: 'POST', url: '/v1/sessions', payload: [1, 2] }, 400],
      ['create: text/plain', { method: 'POST', url: '/v1/sessions', headers: { 'content-type': 'text/plain' }, payload: 'hi' }, 400],
      ['get: missing', { method: 'GET', url: '/v1/sessions/does-not-exist' }, 404],
      ['get: deleted', { method: 'GET', url: `/v1/sessions/${gone.id}` }, 404],
      ['get: bad id', { method: 'GET', url: '/v1/sessions/bad%20id!' }, 400],
      ['delete: missing', { method: 'DELETE', url: '/v1/sessions/does-not-exist' }, 404],
      ['append: malformed JSON', { method: 'POST', url: `/v1/sessions/${s.id}/append`, headers: json, payload: '{"text": "a",}' }, 400],
      ['append: invalid UTF-8', { method: 'POST', url: `/v1/sessions/${s.id}/append`, headers: json, payload: Buffer.from([0x7b, 0x22, 0x74, 0x65, 0x78, 0x74, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]) }, 400],
      ['append: lone surrogate', { method: 'POST', url: `/v1/sessions/${s.id}/append`, headers: json, payload: '{"text":"abc \\ud800 def"}' }, 400],
      ['append: wrong type', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { text: 5 } }, 400],
      ['append: ids not integers', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { ids: [1.5] } }, 400],
      ['append: flush not boolean', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { text: 'a', flush: 'yes' } }, 400],
      ['append: unknown field', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { text: 'a', prompt: 'b' } }, 400],
      ['append: both text and ids', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { text: 'a', ids: [1] } }, 400],
      ['append: neither text nor ids', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: {} }, 400],
      ['append: no body', { method: 'POST', url: `/v1/sessions/${s.id}/append` }, 400],
      ['append: id too large', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { ids: [1, 4096] } }, 400],
      ['append: negative id', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { ids: [-1] } }, 400],
      ['append: missing session', { method: 'POST', url: '/v1/sessions/does-not-exist/append', payload: { text: 'a' } }, 404],
      ['append: deleted session', { method: 'POST', url: `/v1/sessions/${gone.id}/append`, payload: { text: 'a' } }, 404],
      ['append: oversize body', { method: 'POST', url: `/v1/sessions/${s.id}/append`, payload: { text: 'x'.repeat(300 * 1024) } }, 413],
      ['fork: deleted', { method: 'POST', url: `/v1/sessions/${gone.id}/fork` }, 404],
      ['state: deleted', { method: 'GET', url: `/v1/sessions/${gone.id}/state` }, 404],
      ['models: unknown', { method: 'GET', url: '/v1/models/gpt-17' }, 404],
      ['unknown route', { method: 'GET', url: '/v1/nothing' }, 404],
    ];
    for (const [what, req, status] of cases) {
      const e = assertApiError(await app.inject(req), status, what);
      if (what.endsWith('unknown model')) assert.equal(e.param, 'model', what);
      if (what.endsWith('id too large')) assert.equal(e.param, 'ids.1', what);
    }
    // None of those moved the session.
    const g = (await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}` })).json();
    assert.equal(g.tokens_ingested, 0);
    assert.equal(g.version, 0);
  });

  test('healthz, readyz with a live worker, metrics', async () => {
    const hz = await app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(hz.statusCode, 200);
    assert.deepEqual(hz.json(), { status: 'ok' });
    const rz = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(rz.statusCode, 200, rz.body);
    assert.equal(rz.json().status, 'ok');
    // No fresh heartbeat under another prefix: not ready, and the body says which check failed.
    const other = await readiness({ ...h.deps, config: { ...h.deps.config, keyPrefix: 'no-workers-here' } });
    assert.equal(other.status, 'unavailable');
    assert.equal(other.checks.redis, 'ok');
    assert.match(other.checks.workers, /^failed/);
    // scope=pod (the Kubernetes readiness probe) checks only what this process needs: ready without a worker.
    const pod = await readiness({ ...h.deps, config: { ...h.deps.config, keyPrefix: 'no-workers-here' } }, 'pod');
    assert.equal(pod.status, 'ok', JSON.stringify(pod));
    assert.match(pod.checks.workers, /^skipped/);
    const rp = await app.inject({ method: 'GET', url: '/readyz?scope=pod' });
    assert.equal(rp.statusCode, 200, rp.body);
    assert.deepEqual(rp.json().checks, { redis: 'ok', models: 'ok', workers: 'skipped: scope=pod', queue: 'skipped: scope=pod' });
    assert.equal((await app.inject({ method: 'GET', url: '/readyz?scope=everything' })).statusCode, 400);

    const m = await app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(m.statusCode, 200);
    assert.match(m.body, /rmt_api_requests_total\{method="GET",route="\/readyz",status="200"\} \d+/);
    assert.match(m.body, /rmt_api_request_seconds_bucket\{/);
    assert.match(m.body, /rmt_queue_depth \d+/);
    assert.match(m.body, /rmt_session_state_bytes\{model="rmt-brown-lm"\} \d+/);
    // Tokens are counted once, by the (in-process) worker: the API's own copies are gone.
    assert.ok(sampleValue(m.body, 'rmt_tokens_ingested_total', { model: 'rmt-brown-lm' }) > 0, 'tokens ingested not counted');
    assert.deepEqual(familyNames(m.body).filter((n) => n.startsWith('rmt_api_tokens_')), []);
    // The in-process worker's engine metrics are on the same /metrics (as with `serve`).
    assert.match(m.body, /rmt_engine_batch_rows_count\{graph="segment",model="rmt-brown-lm"\} [1-9]/);
    assert.match(m.body, /rmt_engine_step_seconds_bucket\{/);
    const live = await h.deps.store.count();
    assert.ok(live > 0, 'no sessions to count');
    assert.match(m.body, new RegExp(`rmt_active_sessions ${live}\\b`));
  });

  test('metrics of one known completion and one append: by model, counted once, with their histograms', async () => {
    const model = 'rmt-brown-lm';
    const scrape = async () => (await app.inject({ method: 'GET', url: '/metrics' })).body;
    const gen = { model, kind: 'generate' };
    const ing = { model, kind: 'ingest' };
    const read = (body: string) => ({
      generated: sampleValue(body, 'rmt_tokens_generated_total', { model }),
      ingested: sampleValue(body, 'rmt_tokens_ingested_total', { model }),
      genTokens: histogram(body, 'rmt_request_generation_tokens', { model }),
      promptGen: histogram(body, 'rmt_request_prompt_tokens', gen),
      promptIng: histogram(body, 'rmt_request_prompt_tokens', ing),
      queueGen: histogram(body, 'rmt_request_queue_seconds', gen),
      queueIng: histogram(body, 'rmt_request_queue_seconds', ing),
      e2eGen: histogram(body, 'rmt_request_e2e_seconds', gen),
      e2eIng: histogram(body, 'rmt_request_e2e_seconds', ing),
      workerGen: sampleValue(body, 'rmt_worker_requests_total', { ...gen, outcome: 'ok' }),
      apiCompletions: sampleValue(body, 'rmt_api_model_requests_total', { model, route: '/v1/completions', status: '200' }),
      apiCompletionSeconds: histogram(body, 'rmt_api_model_request_seconds', { model, route: '/v1/completions', status: '200' }),
      apiAppends: sampleValue(body, 'rmt_api_model_requests_total', { model, route: '/v1/sessions/:id/append', status: '200' }),
      apiAll: sampleValue(body, 'rmt_api_requests_total', { method: 'POST', route: '/v1/completions', status: '200' }),
    });
    const before = read(await scrape());

    const t0 = Date.now();
    const c = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model, prompt: TEXT, max_tokens: 8, temperature: 0 } });
    const wall = (Date.now() - t0) / 1000;
    assert.equal(c.statusCode, 200, c.body);
    const usage = c.json().usage as { prompt_tokens: number; completion_tokens: number };
    assert.equal(c.json().choices[0].finish_reason, 'length');
    assert.equal(usage.completion_tokens, 8);
    const s = await createSession(app, model);
    const a = await append(app, s.id, { text: TEXT });
    // Unknown model: an HTTP request like any other, never a model label of the client's choosing.
    assert.equal((await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'gpt-17', prompt: 'x' } })).statusCode, 404);

    // The worker observes as a request finishes; its submitter may hear of it a moment earlier.
    let after = read(await scrape());
    await pollUntil('the worker to observe both requests', async () => {
      after = read(await scrape());
      return after.e2eGen.count > before.e2eGen.count && after.e2eIng.count > before.e2eIng.count;
    }, 5000);
    assert.equal(after.generated - before.generated, 8);
    assert.deepEqual([after.genTokens.count - before.genTokens.count, after.genTokens.sum - before.genTokens.sum], [1, 8]);
    assert.equal(after.ingested - before.ingested, usage.prompt_tokens + a.tokens);
    assert.deepEqual([after.promptGen.count - before.promptGen.count, after.promptGen.sum - before.promptGen.sum], [1, usage.prompt_tokens]);
    assert.deepEqual([after.promptIng.count - before.promptIng.count, after.promptIng.sum - before.promptIng.sum], [1, a.tokens]);
    for (const k of ['queueGen', 'queueIng', 'e2eGen', 'e2eIng'] as const) assert.equal(after[k].count - before[k].count, 1, k);
    // Queue time is part of the request's end-to-end time; both are within the test's own time.
    assert.ok(after.e2eGen.sum - before.e2eGen.sum >= after.queueGen.sum - before.queueGen.sum);
    // Seconds, not milliseconds: the completion's end-to-end time fits in the test's own (containment, not speed).
    assert.ok(after.e2eGen.sum - before.e2eGen.sum <= wall + 0.05, `e2e ${after.e2eGen.sum - before.e2eGen.sum} s longer than the request's ${wall} s`);
    assert.equal(after.workerGen - before.workerGen, 1);
    assert.equal(after.apiCompletions - before.apiCompletions, 1);
    assert.equal(after.apiCompletionSeconds.count - before.apiCompletionSeconds.count, 1);
    assert.equal(after.apiAppends - before.apiAppends, 1);
    assert.equal(after.apiAll - before.apiAll, 1, 'the HTTP metric still counts the completion');
    const body = await scrape();
    assert.doesNotMatch(body, /model="(gpt-17)?"/, 'an unknown or empty model label');
    assert.ok(sampleValue(body, 'rmt_api_requests_total', { method: 'POST', route: '/v1/completions', status: '404' }) >= 1);
  });
});

describe('API keys', () => {
  let h: ApiHarness;
  before(async () => {
    h = await startApiHarness({ apiKeys: ['k1', 'k2'] });
  });
  after(async () => {
    await h?.close();
  });

  test('missing or wrong key is 401; a session is invisible to other keys', async () => {
    const app = h.app;
    const e1 = assertApiError(await app.inject({ method: 'GET', url: '/v1/models' }), 401, 'missing key');
    assert.equal(e1.type, 'authentication_error');
    assertApiError(await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer nope' } }), 401, 'wrong key');
    assertApiError(await app.inject({ method: 'POST', url: '/v1/sessions', payload: {} }), 401, 'create without key');

    const k1 = { authorization: 'Bearer k1' };
    const k2 = { authorization: 'Bearer k2' };
    const s = await createSession(app, undefined, k1);
    assert.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}`, headers: k1 })).statusCode, 200);
    for (const [method, suffix] of [['GET', ''], ['GET', '/state'], ['POST', '/fork'], ['DELETE', '']] as const) {
      assertApiError(await app.inject({ method, url: `/v1/sessions/${s.id}${suffix}`, headers: k2 }), 404, `${method} ${suffix} with k2`);
    }
    assertApiError(
      await app.inject({ method: 'POST', url: `/v1/sessions/${s.id}/append`, headers: k2, payload: { text: 'hello' } }), 404, 'append with k2',
    );
    const f = await app.inject({ method: 'POST', url: `/v1/sessions/${s.id}/fork`, headers: k1 });
    assert.equal(f.statusCode, 201);
    assertApiError(await app.inject({ method: 'GET', url: `/v1/sessions/${f.json().id}`, headers: k2 }), 404, 'fork with k2');
    // Probes stay open.
    assert.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    assert.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
  });
});
