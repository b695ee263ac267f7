// POST /v1/completions on the real stack (redis-server, in-process worker, listening app), driven by
// the official openai client where it can be, and by fetch for raw SSE and malformed requests.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';

const LM = 'rmt-brown-lm';
const RECALL = 'rmt-brown-small';
const PROMPT = 'The jury said';

let h: ApiHarness;
let base: string;
let client: OpenAI;

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function post(body: unknown, raw = false): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: raw ? (body as string) : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json, headers: res.headers };
}

/** Raw SSE: the `data:` payloads in order. */
async function sse(body: unknown): Promise<{ status: number; contentType: string | null; events: string[] }> {
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice('data: '.length));
  return { status: res.status, contentType: res.headers.get('content-type'), events };
}

async function sessionKeys(): Promise<string[]> {
  return h.deps.redis.keys(`${h.config.keyPrefix}:session:*`);
}

async function newSession(model: string) {
  const m = h.deps.catalog.get(model)!;
  return h.deps.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState, { owner: '' });
}

function assertOpenAiError(r: { status: number; json: any }, status: number, param?: string | null): ErrorBody['error'] {
  assert.equal(r.status, status, JSON.stringify(r.json));
  const e = (r.json as ErrorBody).error;
  assert.ok(e && typeof e.message === 'string' && e.message.length > 0, JSON.stringify(r.json));
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e, JSON.stringify(e));
  if (param !== undefined) assert.equal(e.param, param, JSON.stringify(e));
  return e;
}

describe('POST /v1/completions', { timeout: 120_000 }, () => {
  let greedy: string;

  before(async () => {
    h = await startApiHarness();
    base = await h.listen();
    client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0 });
  });

  after(async () => {
    await h?.close();
  });

  test('logprobs: each generated token with its log-probability and top alternatives, streamed or not', async () => {
    const r = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3 });
    const lp = r.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, 12);
    assert.equal(lp.tokens!.join(''), r.choices[0]!.text, 'tokens do not spell the text');
    lp.token_logprobs!.forEach((v, i) => {
      const top = Object.values(lp.top_logprobs![i]!);
      assert.ok(top.length >= 1 && top.length <= 3, `top ${top.length}`);
      assert.ok(v <= 0, `logprob ${v} > 0`);
      // Greedy: the chosen token is the most likely one.
      assert.ok(Math.abs(v - Math.max(...top)) < 1e-5, `token ${i}: ${v} vs best ${Math.max(...top)}`);
    });
    assert.deepEqual(lp.text_offset, lp.tokens!.map((_, i) => lp.tokens!.slice(0, i).join('').length));
    const stream = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3, stream: true });
    const streamed: number[] = [];
    for await (const ch of stream) streamed.push(...(ch.choices[0]?.logprobs?.token_logprobs ?? []));
    assert.equal(streamed.length, 12);
    streamed.forEach((v, i) => assert.ok(Math.abs(v - lp.token_logprobs![i]!) < 1e-6, `streamed logprob ${i} differs`));
  });

  test('openai client: greedy completion, finish_reason length, usage; the request\'s session is deleted', async () => {
    // Keys, not a count: a session of an earlier test may still be going away meanwhile (seen once in CI).
    const before = new Set(await sessionKeys());
    const r = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 20, temperature: 0 });
    assert.match(r.id, /^cmpl-/);
    assert.equal(r.object, 'text_completion');
    assert.equal(r.model, LM);
    assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 120);
    assert.equal(r.choices.length, 1);
    const c = r.choices[0]!;
    assert.equal(c.index, 0);
    assert.equal(c.logprobs, null);
    assert.equal(c.finish_reason, 'length');
    assert.ok(c.text.trim().length > 0, JSON.stringify(c.text));
    assert.equal(r.usage!.completion_tokens, 20);
    assert.ok(r.usage!.prompt_tokens >= 2);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + 20);
    greedy = c.text;
    assert.deepEqual((await sessionKeys()).filter((k) => !before.has(k)), [], 'the per-request session was not deleted');

    // Greedy is deterministic; prompt given as a one-element list, and as token ids, gives the same text.
    const again = await client.completions.create({ model: LM, prompt: [PROMPT], max_tokens: 20, temperature: 0 });
    assert.equal(again.choices[0]!.text, greedy);
    const ids = h.deps.tokenizers.get(LM)!.encode(PROMPT);
    const byIds = await client.completions.create({ model: LM, prompt: ids, max_tokens: 20, temperature: 0 });
    assert.equal(byIds.choices[0]!.text, greedy);
    assert.equal(byIds.usage!.prompt_tokens, ids.length);
    const nested = await client.completions.create({ model: LM, prompt: [ids], max_tokens: 20, temperature: 0 });
    assert.equal(nested.choices[0]!.text, greedy);

    // echo prepends the prompt.
    const echoed = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 20, temperature: 0, echo: true });
    assert.equal(echoed.choices[0]!.text, PROMPT + greedy);
  });

  test('openai client streaming: chunks concatenate to the non-streamed greedy text; usage chunk', async () => {
    assert.ok(greedy, 'needs the first test');
    const stream = await client.completions.create({
      model: LM, prompt: PROMPT, max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let chunks = 0;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const ch of stream) {
      if (ch.usage) usage = ch.usage;
      for (const c of ch.choices) {
        text += c.text;
        chunks++;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(text, greedy);
    assert.ok(chunks >= 10, `only ${chunks} chunks: text was not streamed token by token`);
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 20);
    assert.equal(usage?.total_tokens, usage!.prompt_tokens + 20);
  });

  test('raw SSE: event-stream content type, echo first, finish chunk, [DONE] last', async () => {
    const r = await sse({ model: LM, prompt: PROMPT, max_tokens: 8, temperature: 0, stream: true, echo: true });
    assert.equal(r.status, 200);
    assert.match(r.contentType ?? '', /^text\/event-stream/);
    assert.equal(r.events.at(-1), '[DONE]');
    const chunks = r.events.slice(0, -1).map((e) => JSON.parse(e));
    assert.equal(chunks[0].choices[0].text, PROMPT);
    for (const c of chunks) assert.equal(c.object, 'text_completion');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'length');
    assert.ok(greedy.startsWith(chunks.slice(1).map((c) => c.choices[0].text).join('')));
  });

  test('stop sequences: non-streamed and streamed agree, finish_reason stop, stop text excluded', async () => {
    const long = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 40, temperature: 0 });
    const full = long.choices[0]!.text;
    const stop = full.slice(12, 16);
    assert.ok(stop.length === 4);
    const at = full.indexOf(stop);
    const r = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 40, temperature: 0, stop: [stop, 'zzzzqqq'] });
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    assert.equal(r.choices[0]!.text, full.slice(0, at));
    const s = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 40, temperature: 0, stop, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const ch of s) for (const c of ch.choices) {
      text += c.text;
      finish = c.finish_reason ?? finish;
    }
    assert.equal(text, full.slice(0, at));
    assert.equal(finish, 'stop');
  });

  test('session_id: two completions continue the session; counters grow; session_id echoed', async () => {
    const s = await newSession(LM);
    const first = await post({ model: LM, prompt: PROMPT, max_tokens: 12, temperature: 0, session_id: s.id });
    assert.equal(first.status, 200, JSON.stringify(first.json));
    assert.equal(first.json.session_id, s.id);
    assert.ok(greedy.startsWith(first.json.choices[0].text), 'a fresh session continues like a per-request one');
    const r1 = (await h.deps.store.get(s.id))!;
    assert.equal(r1.tokensGenerated, first.json.usage.completion_tokens);
    assert.equal(r1.tokensIngested, first.json.usage.prompt_tokens);

    const second = await post({ model: LM, prompt: ' Then', max_tokens: 12, temperature: 0, session_id: s.id });
    assert.equal(second.status, 200, JSON.stringify(second.json));
    assert.equal(second.json.usage.completion_tokens, 12);
    const r2 = (await h.deps.store.get(s.id))!;
    assert.equal(r2.tokensGenerated, r1.tokensGenerated + 12);
    assert.ok(r2.tokensIngested > r1.tokensIngested);
    assert.ok(r2.appliedSeq === 2);

    // The continuation depends on the session: the same prompt in a fresh session gives other text.
    const fresh = await post({ model: LM, prompt: ' Then', max_tokens: 12, temperature: 0 });
    assert.notEqual(fresh.json.choices[0].text, second.json.choices[0].text);

    // Streaming on a session also works and also appends.
    const st = await sse({ model: LM, prompt: ' And', max_tokens: 5, temperature: 0, stream: true, session_id: s.id });
    assert.equal(st.events.at(-1), '[DONE]');
    assert.equal(JSON.parse(st.events[0]!).session_id, s.id);
    assert.equal((await h.deps.store.get(s.id))!.tokensGenerated, r2.tokensGenerated + 5);
    // The session survives (only per-request sessions are deleted).
    assert.ok(await h.deps.store.get(s.id));
  });

  test('a prompt of more than 20 segments completes; memory commits the full segments', async () => {
    const text = heldOutText().slice(0, 21 * 128 * 6);
    const ids = h.deps.tokenizers.get(LM)!.encode(text);
    assert.ok(ids.length >= 20 * 128, `only ${ids.length} tokens`);
    const s = await newSession(LM);
    const r = await post({ model: LM, prompt: text, max_tokens: 10, temperature: 0, session_id: s.id });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.usage.prompt_tokens, ids.length);
    assert.equal(r.json.usage.completion_tokens, 10);
    assert.ok(r.json.choices[0].text.length > 0);
    const rec = (await h.deps.store.get(s.id))!;
    assert.ok(rec.segmentsCommitted >= 20, `segments committed: ${rec.segmentsCommitted}`);
    // Without a session too.
    const r2 = await client.completions.create({ model: LM, prompt: text, max_tokens: 10, temperature: 0 });
    assert.equal(r2.choices[0]!.text, r.json.choices[0].text);
  });

  test('recall model end to end: facts, noise segments, then the question (token-id prompt)', async () => {
    const tok = h.deps.tokenizers.get(RECALL)!;
    const S = h.deps.catalog.get(RECALL)!.segmentLength;
    const body = heldOutText().slice(100_000, 100_000 + 12 * S * 6);
    const text = body.slice(0, 500) + ' Mary went to the kitchen.' + body.slice(500, 1500) + ' Daniel journeyed to the garden.' + body.slice(1500);
    // The model was trained with the question opening a segment: noise cut to whole segments.
    const noise = tok.encode(text).slice(0, 10 * S);
    assert.equal(noise.length, 10 * S);
    for (const [name, place] of [['Mary', 'kitchen'], ['Daniel', 'garden']] as const) {
      const q = tok.encode(`\nQuestion: Where is ${name}?\nAnswer: ${name} is in the`);
      const r = await client.completions.create({ model: RECALL, prompt: [...noise, ...q], max_tokens: 2, temperature: 0 });
      assert.equal(r.choices[0]!.text, ` ${place}.`, name);
    }
  });

  test('same seed and temperature 0.8 give the same text; another seed other text', async () => {
    const req = { model: LM, prompt: PROMPT, max_tokens: 24, temperature: 0.8, top_p: 0.95, seed: 1234 };
    const a = await client.completions.create(req);
    const b = await client.completions.create(req);
    assert.equal(a.choices[0]!.text, b.choices[0]!.text);
    const texts = new Set<string>();
    for (const seed of [1, 2, 3]) texts.add((await client.completions.create({ ...req, seed })).choices[0]!.text);
    texts.add(a.choices[0]!.text);
    assert.ok(texts.size >= 2, 'different seeds all gave the same text');
  });

  test('client disconnect mid-stream: the server keeps serving and still deletes the request\'s session', async () => {
    const before = (await sessionKeys()).length;
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ model: LM, prompt: PROMPT, max_tokens: 200, temperature: 0, stream: true }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    await reader.read(); // the first chunk
    ac.abort();
    await reader.cancel().catch(() => undefined);
    const r = await client.completions.create({ model: LM, prompt: PROMPT, max_tokens: 5, temperature: 0 });
    assert.equal(r.choices[0]!.text, greedy.slice(0, r.choices[0]!.text.length));
    const deadline = Date.now() + 30_000;
    while ((await sessionKeys()).length > before && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    assert.equal((await sessionKeys()).length, before);
  });

  test('an error after the stream started arrives as an SSE error event, then [DONE]', async () => {
    const s = await newSession(LM);
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: LM, prompt: PROMPT, max_tokens: 100, temperature: 0, stream: true, session_id: s.id }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    // The session disappears mid-generation: the worker's next commit fails.
    assert.ok(await h.deps.store.delete(s.id));
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
    assert.equal(events.at(-1), '[DONE]');
    const err = JSON.parse(events.at(-2)!);
    assert.equal(err.error?.code, 'session_not_found', events.at(-2));
    assert.ok(!events.some((e) => e !== '[DONE]' && JSON.parse(e).choices?.[0]?.finish_reason), 'no finish chunk after an error');
  });

  test('bad inputs: 4xx in the OpenAI error shape, naming the parameter', async () => {
    const ok = { model: LM, prompt: PROMPT, max_tokens: 4 };
    assert.match(assertOpenAiError(await post({ ...ok, n: 3, best_of: 2 }), 400, 'best_of').message, /at least n/);
    assertOpenAiError(await post({ ...ok, n: 65 }), 400, 'n');
    assertOpenAiError(await post({ ...ok, n: 2, best_of: 3, stream: true }), 400, 'best_of');
    assert.equal(assertOpenAiError(await post({ ...ok, prompt: Array(32).fill('a'), n: 3 }), 400, 'n').code, 'too_many_choices');
    assertOpenAiError(await post({ ...ok, prompt: Array(33).fill('a') }), 400, 'prompt');
    const nf = assertOpenAiError(await post({ ...ok, model: 'gpt-9' }), 404, 'model');
    assert.equal(nf.code, 'model_not_found');
    for (const max_tokens of [0, -1, 100000, 1.5, '8']) assertOpenAiError(await post({ ...ok, max_tokens }), 400, 'max_tokens');
    assertOpenAiError(await post({ ...ok, temperature: 'hot' }), 400, 'temperature');
    assertOpenAiError(await post({ ...ok, temperature: 3 }), 400, 'temperature');
    assertOpenAiError(await post({ ...ok, top_p: 0 }), 400, 'top_p');
    assert.equal(assertOpenAiError(await post('{"model": "rmt-brown-lm", "prompt": ', true), 400).code, 'invalid_json');
    assertOpenAiError(await post({ model: LM }), 400, 'prompt');
    assertOpenAiError(await post({ prompt: PROMPT }), 400, 'model');
    assertOpenAiError(await post({ ...ok, prompt: [1, 2, 99999] }), 400, 'prompt');
    assertOpenAiError(await post({ ...ok, prompt: [1, -2] }), 400);
    assertOpenAiError(await post({ ...ok, prompt: ['a', ''] }), 400, 'prompt');
    assertOpenAiError(await post({ ...ok, prompt: 42 }), 400, 'prompt');
    assertOpenAiError(await post({ ...ok, prompt: '' }), 400, 'prompt');
    assertOpenAiError(await post({ ...ok, session_id: 'nope' }), 404, 'session_id');
    // A malformed id is refused by the schema, as in a path (GET /v1/sessions/{id}): 400, not 404.
    assertOpenAiError(await post({ ...ok, session_id: 'bad id!' }), 400, 'session_id');
    assert.match(assertOpenAiError(await post({ ...ok, logprobs: 6 }), 400, 'logprobs').message, /logprobs/);
    assertOpenAiError(await post({ ...ok, suffix: 'end' }), 400, 'suffix');
    assertOpenAiError(await post({ ...ok, logit_bias: { '50': 10 } }), 400, 'logit_bias');
    assertOpenAiError(await post({ ...ok, stop: ['a', 'b', 'c', 'd', 'e'] }), 400, 'stop');
    assertOpenAiError(await post({ ...ok, stream: 'yes' }), 400, 'stream');
    assertOpenAiError(await post({ ...ok, echo: 1 }), 400, 'echo');
    assertOpenAiError(await post({ ...ok, seed: 'x' }), 400, 'seed');
    assertOpenAiError(await post({ ...ok, frequency_penalty: 5 }), 400, 'frequency_penalty');
    assert.match(assertOpenAiError(await post({ ...ok, max_token: 5 }), 400, 'max_token').message, /max_token/);
    assertOpenAiError(await post([ok]), 400);
    // A session of another model.
    const s = await newSession(RECALL);
    assert.equal(assertOpenAiError(await post({ ...ok, session_id: s.id }), 409, 'model').code, 'model_mismatch');
    const own = await newSession(LM);
    assertOpenAiError(await post({ ...ok, session_id: own.id, n: 2 }), 400, 'n');
    assertOpenAiError(await post({ ...ok, session_id: own.id, prompt: ['a', 'b'] }), 400, 'prompt');
    // Errors before a stream starts are plain JSON errors.
    const st = await post({ ...ok, stream: true, model: 'nope' });
    assertOpenAiError(st, 404, 'model');
    assert.match(st.headers.get('content-type') ?? '', /json/);
    // The openai client surfaces them as typed errors.
    await assert.rejects(client.completions.create({ model: LM, prompt: PROMPT, n: 2, best_of: 1 }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'best_of');
    await assert.rejects(client.completions.create({ model: 'nope', prompt: PROMPT }), (e: unknown) => e instanceof OpenAI.NotFoundError);
    // Accepted OpenAI fields that are no-ops here.
    const fine = await post({ ...ok, n: 1, best_of: 1, logprobs: null, suffix: null, logit_bias: {}, user: 'u', presence_penalty: 0.5, stream: false, stop: null });
    assert.equal(fine.status, 200, JSON.stringify(fine.json));
  });
});
