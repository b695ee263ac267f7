// One set of limits, defaults and errors across the ways in: POST /v1/completions,
// POST /v1/chat/completions, the session routes and the websocket's generate message. Each test sends
// the same mistake (or the same request) every way and asserts the same answer: the status, `code` and
// `param` of the OpenAI error over REST, the `code` and `param` of the error message on the websocket.
// The limits come from src/queue/generate-request.ts, so a change there is checked everywhere at once.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { InjectOptions } from 'fastify';
import { DEFAULT_COMPLETION_MAX_TOKENS, DEFAULT_STREAM_MAX_TOKENS, MAX_STOP_SEQUENCES, MAX_TOKENS } from '../src/queue/generate-request.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { Client, WebSocket, connectStream, type Msg } from './support/ws-client.ts';

const MODEL = 'rmt-brown-small';
const A = { authorization: 'Bearer key-a' };
const B = { authorization: 'Bearer key-b' };
const PROMPT = ' Mary went to the kitchen. John went to the garden.';

let h: ApiHarness;
let wsBase = '';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function call(method: InjectOptions['method'], url: string, payload?: object, headers: Record<string, string> = A) {
  const res = await h.app.inject({ method, url, headers, ...(payload !== undefined ? { payload } : {}) });
  return { status: res.statusCode, body: res.json() as ErrorBody & Record<string, any> };
}

/** The refusal of a websocket upgrade: its HTTP status and OpenAI error body. */
async function refusedUpgrade(id: string, headers: Record<string, string> = A): Promise<{ status: number; body: ErrorBody }> {
  const ws = new WebSocket(`${wsBase}/v1/sessions/${encodeURIComponent(id)}/stream`, { headers });
  return new Promise((resolve, reject) => {
    ws.once('open', () => reject(new Error('upgraded')));
    ws.once('error', () => undefined);
    ws.once('unexpected-response', (_req: unknown, r: NodeJS.ReadableStream & { statusCode: number }) => {
      let body = '';
      r.on('data', (d: Buffer) => (body += String(d)));
      r.on('end', () => resolve({ status: r.statusCode, body: JSON.parse(body) as ErrorBody }));
    });
  });
}

async function newSession(headers = A): Promise<string> {
  const res = await call('POST', '/v1/sessions', { model: MODEL }, headers);
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.id as string;
}

/** Sends a generate message and returns the error it got (the socket stays open). */
async function wsError(c: Client, msg: object): Promise<Msg> {
  c.send({ type: 'generate', ...msg });
  const m = await c.next((x) => x.type === 'error' || x.type === 'done');
  assert.equal(m.type, 'error', `expected an error for ${JSON.stringify(msg)}, got ${JSON.stringify(m)}`);
  return m;
}

function assertRest(res: { status: number; body: ErrorBody }, status: number, code: string, param: string | null, what: string): void {
  assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
  assert.equal(res.body.error.code, code, `${what}: code`);
  assert.equal(res.body.error.param, param, `${what}: param`);
}

describe('the same limits, defaults and errors over REST and the websocket', { timeout: 120_000 }, () => {
  let c: Client;
  let streamSession: string;

  before(async () => {
    h = await startApiHarness({ apiKeys: ['key-a', 'key-b'] }, { RMT_MODELS: MODEL });
    wsBase = (await h.listen()).replace(/^http/, 'ws');
    streamSession = await newSession();
    ({ c } = await connectStream(wsBase, streamSession, A));
  });

  after(async () => {
    await c?.close();
    await h?.close();
  });

  test(`max_tokens above ${MAX_TOKENS} is refused everywhere, naming max_tokens`, async () => {
    const over = MAX_TOKENS + 1;
    assertRest(await call('POST', '/v1/completions', { model: MODEL, prompt: PROMPT, max_tokens: over }), 400, 'invalid_type', 'max_tokens', 'completions');
    const messages = [{ role: 'user', content: 'Where is Mary?' }];
    assertRest(await call('POST', '/v1/chat/completions', { model: MODEL, messages, max_tokens: over }), 400, 'invalid_type', 'max_tokens', 'chat max_tokens');
    assertRest(await call('POST', '/v1/chat/completions', { model: MODEL, messages, max_completion_tokens: over }), 400, 'invalid_type', 'max_completion_tokens', 'chat max_completion_tokens');
    const e = await wsError(c, { max_tokens: over });
    assert.deepEqual([e.code, e.param], ['invalid_field', 'max_tokens'], JSON.stringify(e));
    assert.match(e.message, new RegExp(`\\[1, ${MAX_TOKENS}\\]`));
  });

  test(`more than ${MAX_STOP_SEQUENCES} stop sequences are refused everywhere, naming stop`, async () => {
    const stop = Array.from({ length: MAX_STOP_SEQUENCES + 1 }, (_, i) => `s${i}`);
    assertRest(await call('POST', '/v1/completions', { model: MODEL, prompt: PROMPT, stop }), 400, 'invalid_type', 'stop', 'completions');
    assertRest(await call('POST', '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x' }], stop }), 400, 'invalid_type', 'stop', 'chat');
    const e = await wsError(c, { stop });
    assert.deepEqual([e.code, e.param], ['invalid_field', 'stop'], JSON.stringify(e));
  });

  test('a sampling parameter out of range is refused everywhere, naming it in snake_case', async () => {
    for (const [field, value] of [['top_p', 0], ['temperature', 3], ['repetition_penalty', 0], ['top_k', -1]] as const) {
      assertRest(await call('POST', '/v1/completions', { model: MODEL, prompt: PROMPT, [field]: value }), 400, 'invalid_type', field, `completions ${field}`);
      assertRest(await call('POST', '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x' }], [field]: value }), 400, 'invalid_type', field, `chat ${field}`);
      const e = await wsError(c, { [field]: value });
      assert.deepEqual([e.code, e.param], ['invalid_field', field], JSON.stringify(e));
      assert.ok(e.message.startsWith(`${field} `), `websocket message names ${field}: ${e.message}`);
    }
  });

  test('the same defaults: no max_tokens, no temperature, a seed: the websocket generates what /v1/completions does', async () => {
    // Defaults only (temperature 1, top_p 1, max_tokens 16) and a seed: equal texts mean equal defaults.
    assert.equal(DEFAULT_STREAM_MAX_TOKENS, DEFAULT_COMPLETION_MAX_TOKENS);
    const rest = await call('POST', '/v1/completions', { model: MODEL, prompt: PROMPT, seed: 7 });
    assert.equal(rest.status, 200, JSON.stringify(rest.body));
    const restChoice = rest.body.choices[0];
    const s = await newSession();
    const { c: c2 } = await connectStream(wsBase, s, A);
    try {
      c2.send({ type: 'generate', text: PROMPT, seed: 7 });
      const done = await c2.next((m) => m.type === 'done' || m.type === 'error', 60_000);
      assert.equal(done.type, 'done', JSON.stringify(done));
      assert.ok(restChoice.text.length > 0, 'something was generated');
      assert.equal(done.text, restChoice.text, 'same text');
      assert.equal(done.finish_reason, restChoice.finish_reason, 'same finish_reason vocabulary (stop | length)');
      assert.deepEqual(done.usage, rest.body.usage, 'same usage fields and counts');
      assert.ok(done.usage.completion_tokens <= DEFAULT_COMPLETION_MAX_TOKENS);
    } finally {
      await c2.close();
    }
  });

  test('an unknown model is 404 model_not_found (param model) on every route that names one', async () => {
    const cases: [string, InjectOptions['method'], string, object | undefined][] = [
      ['create session', 'POST', '/v1/sessions', { model: 'gpt-17' }],
      ['completions', 'POST', '/v1/completions', { model: 'gpt-17', prompt: 'x' }],
      ['chat', 'POST', '/v1/chat/completions', { model: 'gpt-17', messages: [{ role: 'user', content: 'x' }] }],
      ['get model', 'GET', '/v1/models/gpt-17', undefined],
    ];
    const messages = new Set<string>();
    for (const [what, method, url, payload] of cases) {
      const res = await call(method, url, payload);
      assertRest(res, 404, 'model_not_found', 'model', what);
      assert.equal(res.body.error.type, 'not_found_error', what);
      messages.add(res.body.error.message);
    }
    assert.equal(messages.size, 1, `one message: ${[...messages].join(' | ')}`);
  });

  test("an unknown session and another key's session are the same 404 session_not_found everywhere, the websocket's upgrade included", async () => {
    const others = await newSession(B);
    for (const id of ['never-created', others]) {
      const body = (param: string) => ({ status: 404, code: 'session_not_found', param });
      const got: [string, { status: number; body: ErrorBody }, ReturnType<typeof body>][] = [
        ['get', await call('GET', `/v1/sessions/${id}`), body('id')],
        ['delete', await call('DELETE', `/v1/sessions/${id}`), body('id')],
        ['append', await call('POST', `/v1/sessions/${id}/append`, { text: 'x' }), body('id')],
        ['fork', await call('POST', `/v1/sessions/${id}/fork`), body('id')],
        ['state', await call('GET', `/v1/sessions/${id}/state`), body('id')],
        ['reset', await call('POST', `/v1/sessions/${id}/reset`, { action: 'retry' }), body('id')],
        ['completions', await call('POST', '/v1/completions', { model: MODEL, prompt: 'x', session_id: id }), body('session_id')],
        ['chat', await call('POST', '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x' }], session_id: id }), body('session_id')],
        ['websocket upgrade', await refusedUpgrade(id), body('id')],
      ];
      for (const [what, res, want] of got) {
        assertRest(res, want.status, want.code, want.param, `${what} ${id === others ? "(another key's)" : '(unknown)'}`);
        assert.equal(res.body.error.type, 'not_found_error', what);
      }
    }
  });

  test('a malformed session id is a 400 naming where it was sent, wherever it was sent', async () => {
    const bad = 'not a valid id!';
    assertRest(await call('GET', `/v1/sessions/${encodeURIComponent(bad)}`), 400, 'invalid_type', 'id', 'get');
    assertRest(await call('POST', '/v1/completions', { model: MODEL, prompt: 'x', session_id: bad }), 400, 'invalid_type', 'session_id', 'completions');
    assertRest(await call('POST', '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x' }], session_id: bad }), 400, 'invalid_type', 'session_id', 'chat');
    assertRest(await refusedUpgrade(bad), 400, 'invalid_type', 'id', 'websocket upgrade');
  });
});
