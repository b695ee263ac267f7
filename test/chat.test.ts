// POST /v1/chat/completions: chat templates (package loading, rendering) and the route on the real
// stack (redis-server, in-process worker, listening app), driven by the official openai client,
// LangChain's ChatOpenAI / OpenAI, and fetch for raw SSE and malformed requests.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { ChatOpenAI, OpenAI as LangChainOpenAI } from '@langchain/openai';
import { ChatTemplateError, renderChatTemplate } from '../src/text/chat-template.ts';
import { loadCatalog } from '../src/model/model-catalog.ts';
import { loadModelPackage } from '../src/model/model-package.ts';
import { loadTokenizer } from '../src/text/tokenizer.ts';
import { ApiError } from '../src/api/errors.ts';
import { renderConversation } from '../src/api/routes/chat-completions.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { pollUntil } from './support/poll.ts';

const LM = 'rmt-brown-lm'; // no chat template
const RECALL = 'rmt-brown-small';
const MODELS = path.resolve(import.meta.dirname, '../models');
const FACTS = 'Mary went to the kitchen. Daniel journeyed to the garden.';
const ASK = [{ role: 'system' as const, content: FACTS }, { role: 'user' as const, content: 'Where is Mary?' }];

describe('chat templates', () => {
  const temp: string[] = [];
  after(async () => {
    await Promise.all(temp.map((d) => rm(d, { recursive: true, force: true })));
  });

  /** A models folder whose one package is rmt-brown-lm's files with this tokenizer_config.json. */
  async function packageWith(config: object): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-chat-'));
    temp.push(dir);
    await mkdir(path.join(dir, LM));
    for (const f of ['model.json', 'state.memory.f32', 'tokenizer.json']) await symlink(path.join(MODELS, LM, f), path.join(dir, LM, f));
    await writeFile(path.join(dir, LM, 'tokenizer_config.json'), JSON.stringify(config));
    return dir;
  }

  test('the catalog reads chat_template, bos_token and eos_token (strings or AddedToken objects) from tokenizer_config.json', async () => {
    const shipped = await loadCatalog(MODELS, [RECALL, LM]);
    assert.match(shipped.get(RECALL)!.chatTemplate ?? '', /Question: Where is/);
    assert.equal(shipped.get(RECALL)!.eosToken, '<|endoftext|>');
    assert.equal(shipped.get(LM)!.chatTemplate, undefined);

    const dir = await packageWith({ chat_template: '{{ bos_token }}{{ messages[0].content }}{{ eos_token }}', bos_token: { content: '<s>', lstrip: false }, eos_token: '</s>' });
    const m = (await loadCatalog(dir, [LM])).get(LM)!;
    assert.deepEqual([m.chatTemplate, m.bosToken, m.eosToken], ['{{ bos_token }}{{ messages[0].content }}{{ eos_token }}', '<s>', '</s>']);
    assert.equal(renderConversation(m, [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }]), '<s>ab</s>');

    // transformers' list of named templates: the one named "default".
    const named = await packageWith({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] });
    assert.equal((await loadCatalog(named, [LM])).get(LM)!.chatTemplate, 'D');
    await assert.rejects(loadCatalog(await packageWith({ chat_template: 42 }), [LM]), /chat_template/);
  });

  test('the engine loads the template with the package', async () => {
    const pkg = await loadModelPackage(path.join(MODELS, RECALL));
    try {
      assert.equal(pkg.chatTemplate, (await loadCatalog(MODELS, [RECALL])).get(RECALL)!.chatTemplate);
    } finally {
      await pkg.release();
    }
  });

  test("rmt-brown-small's template renders conversations into the recall prompt format", async () => {
    const m = (await loadCatalog(MODELS, [RECALL])).get(RECALL)!;
    assert.equal(renderConversation(m, [{ role: 'user', content: 'Where is Mary?' }]), '\nQuestion: Where is Mary?\nAnswer: Mary is in the');
    assert.equal(renderConversation(m, ASK), ' Mary went to the kitchen. Daniel journeyed to the garden.\nQuestion: Where is Mary?\nAnswer: Mary is in the');
    assert.equal(
      renderConversation(m, [{ role: 'user', content: ' Where is Mary? ' }, { role: 'assistant', content: 'kitchen.' }, { role: 'user', content: 'Where is Daniel?' }]),
      '\nQuestion: Where is Mary?\nAnswer: Mary is in the kitchen.\nQuestion: Where is Daniel?\nAnswer: Daniel is in the',
    );
    assert.equal(renderChatTemplate(m.chatTemplate!, [{ role: 'user', content: 'Where is Mary?' }], { addGenerationPrompt: false }), '\nQuestion: Where is Mary?');
  });

  test("a token's bytes (logprobs): byte-level pieces, so tokens of a split character add up to its UTF-8", async () => {
    const tok = await loadTokenizer(path.join(MODELS, RECALL, 'tokenizer.json'));
    const text = 'naïve café — “quoted” 東京 <|endoftext|>';
    const ids = tok.encode(text);
    assert.ok(ids.some((id) => tok.decode([id]).includes('\uFFFD')), 'no token splits a character: the check says nothing');
    assert.deepEqual(ids.flatMap((id) => tok.tokenBytes!(id)), [...Buffer.from(text, 'utf8')]);
  });

  test('a model without a template, a template that does not parse or raises: 400s naming the model', async () => {
    const m = (await loadCatalog(MODELS, [LM])).get(LM)!;
    assert.throws(() => renderConversation(m, ASK), (e: unknown) => e instanceof ApiError && e.status === 400 && e.code === 'chat_template_missing' &&
      e.message.includes(`'${LM}'`) && e.message.includes('tokenizer_config.json') && e.message.includes('chat_template'));
    assert.throws(() => renderChatTemplate('{% for %}', []), ChatTemplateError);
    assert.throws(() => renderConversation({ ...m, chatTemplate: "{{ raise_exception('only user messages') }}" }, ASK),
      (e: unknown) => e instanceof ApiError && e.status === 400 && e.code === 'chat_template_error' && e.message.includes('only user messages'));
  });
});

let h: ApiHarness;
let base: string;
let client: OpenAI;

async function post(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${base}${url}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  try {
    return { status: res.status, json: JSON.parse(text) };
  } catch {
    return { status: res.status, json: text };
  }
}

/** Raw SSE: the `data:` payloads in order. */
async function sse(body: unknown): Promise<{ status: number; contentType: string | null; events: string[] }> {
  const res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), events: text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6)) };
}

function assertError(r: { status: number; json: any }, status: number, code: string, param?: string | null): string {
  assert.equal(r.status, status, JSON.stringify(r.json));
  const e = r.json.error;
  assert.ok(e && typeof e.message === 'string' && typeof e.type === 'string' && 'param' in e, JSON.stringify(r.json));
  assert.equal(e.code, code, JSON.stringify(e));
  if (param !== undefined) assert.equal(e.param, param, JSON.stringify(e));
  return e.message;
}

async function sessionKeys(): Promise<string[]> {
  return h.deps.redis.keys(`${h.config.keyPrefix}:session:*`);
}

function rendered(messages: Parameters<typeof renderConversation>[1]): string {
  return renderConversation(h.deps.catalog.get(RECALL)!, messages);
}

describe('POST /v1/chat/completions', { timeout: 180_000 }, () => {
  before(async () => {
    h = await startApiHarness();
    base = await h.listen();
    client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0 });
  });

  after(async () => {
    await h?.close();
  });

  test('openai client: the reply equals /v1/completions on the rendered prompt (seed, temperature 0); usage; the request\'s session is deleted', async () => {
    const keys = new Set(await sessionKeys());
    const chat = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 3, temperature: 0, seed: 7 });
    const legacy = await client.completions.create({ model: RECALL, prompt: rendered(ASK), max_tokens: 3, temperature: 0, seed: 7 });
    assert.equal(chat.object, 'chat.completion');
    assert.match(chat.id, /^chatcmpl-/);
    assert.equal(chat.model, RECALL);
    assert.equal(chat.choices.length, 1);
    const c = chat.choices[0]!;
    assert.equal(c.index, 0);
    assert.equal(c.message.role, 'assistant');
    assert.equal(c.message.content, legacy.choices[0]!.text);
    assert.match(c.message.content ?? '', /kitchen/);
    assert.equal(c.finish_reason, 'length');
    assert.equal(c.logprobs, null);
    assert.deepEqual(chat.usage, legacy.usage);
    assert.equal(chat.usage!.prompt_tokens, h.deps.tokenizers.get(RECALL)!.encode(rendered(ASK)).length);
    assert.equal(chat.usage!.completion_tokens, 3);
    assert.deepEqual((await sessionKeys()).filter((k) => !keys.has(k)), [], 'the per-request session was not deleted');

    // Streamed: the deltas concatenate to the same text; the usage chunk when asked for.
    const stream = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 3, temperature: 0, seed: 7, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const ch of stream) {
      assert.equal(ch.object, 'chat.completion.chunk');
      for (const x of ch.choices) {
        text += x.delta.content ?? '';
        finish = x.finish_reason ?? finish;
      }
      if (ch.usage) usage = ch.usage;
    }
    assert.equal(text, c.message.content);
    assert.equal(finish, 'length');
    assert.deepEqual(usage, chat.usage);
  });

  test('raw SSE: role chunk first, content deltas, finish chunk, usage chunk, [DONE]', async () => {
    const r = await sse({ model: RECALL, messages: ASK, max_tokens: 3, temperature: 0, stream: true, stream_options: { include_usage: true } });
    assert.equal(r.status, 200);
    assert.match(r.contentType ?? '', /^text\/event-stream/);
    assert.equal(r.events.at(-1), '[DONE]');
    const chunks = r.events.slice(0, -1).map((e) => JSON.parse(e));
    for (const ch of chunks) {
      assert.equal(ch.object, 'chat.completion.chunk');
      assert.equal(ch.id, chunks[0].id);
    }
    assert.deepEqual(chunks[0].choices, [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    assert.equal(usage.usage.completion_tokens, 3);
    const last = chunks.at(-2);
    assert.deepEqual(last.choices[0].delta, {});
    assert.equal(last.choices[0].finish_reason, 'length');
    const middle = chunks.slice(1, -2);
    assert.ok(middle.length > 0 && middle.every((ch) => typeof ch.choices[0].delta.content === 'string' && ch.choices[0].finish_reason === null && ch.usage === null));
    assert.match(middle.map((ch) => ch.choices[0].delta.content).join(''), /kitchen/);
  });

  test("LangChain: ChatOpenAI invoke and stream, OpenAI (legacy completions) invoke and generate with a prompt list", async () => {
    const chat = new ChatOpenAI({ model: RECALL, apiKey: 'x', temperature: 0, maxTokens: 3, maxRetries: 0, configuration: { baseURL: `${base}/v1` } });
    const msg = await chat.invoke([['system', FACTS], ['human', 'Where is Mary?']]);
    const expected = (await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 3, temperature: 0 })).choices[0]!.message.content;
    assert.equal(msg.content, expected);
    let streamed = '';
    for await (const ch of await chat.stream([['system', FACTS], ['human', 'Where is Mary?']])) streamed += typeof ch.content === 'string' ? ch.content : '';
    assert.equal(streamed, expected);

    const llm = new LangChainOpenAI({ model: LM, apiKey: 'x', temperature: 0, maxTokens: 8, maxRetries: 0, configuration: { baseURL: `${base}/v1` } });
    const out = await llm.invoke('The jury said');
    const legacy = await client.completions.create({ model: LM, prompt: 'The jury said', max_tokens: 8, temperature: 0 });
    assert.equal(out, legacy.choices[0]!.text);
    // generate() with several prompts sends them as one prompt list (batchSize 20 by default).
    const many = await llm.generate(['The jury said', 'It was a dark']);
    assert.equal(many.generations.length, 2);
    assert.equal(many.generations[0]![0]!.text, legacy.choices[0]!.text);
    const second = await client.completions.create({ model: LM, prompt: 'It was a dark', max_tokens: 8, temperature: 0 });
    assert.equal(many.generations[1]![0]!.text, second.choices[0]!.text);
  });

  test('recall through a session: a document with a fact appended in chunks, then "Where is Mary?" with session_id', async () => {
    const tok = h.deps.tokenizers.get(RECALL)!;
    const S = h.deps.catalog.get(RECALL)!.segmentLength;
    const body = heldOutText().slice(100_000, 100_000 + 12 * S * 6);
    const text = body.slice(0, 500) + ' Mary went to the kitchen.' + body.slice(500, 1500) + ' Daniel journeyed to the garden.' + body.slice(1500);
    // The model was trained with the question opening a segment: the document cut to whole segments.
    const ids = tok.encode(text).slice(0, 10 * S);
    assert.equal(ids.length, 10 * S);
    const created = await post('/v1/sessions', { model: RECALL });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const sid: string = created.json.id;
    for (let i = 0; i < ids.length; i += 300) {
      const r = await post(`/v1/sessions/${sid}/append`, { ids: ids.slice(i, i + 300) });
      assert.equal(r.status, 200, JSON.stringify(r.json));
    }
    const fork = await post(`/v1/sessions/${sid}/fork`, {});
    assert.equal(fork.status, 201, JSON.stringify(fork.json));

    const r = await post('/v1/chat/completions', { model: RECALL, messages: [{ role: 'user', content: 'Where is Mary?' }], max_tokens: 2, temperature: 0, session_id: sid });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.session_id, sid);
    assert.match(r.json.choices[0].message.content, /kitchen/);
    // The rendered question and the reply were appended to the session.
    const rec = (await h.deps.store.get(sid))!;
    assert.equal(rec.tokensIngested, ids.length + r.json.usage.prompt_tokens);
    assert.equal(rec.tokensGenerated, 2);

    // Streamed, on the fork (the same memory).
    const st = await sse({ model: RECALL, messages: [{ role: 'user', content: [{ type: 'text', text: 'Where is Daniel?' }] }], max_tokens: 2, temperature: 0, stream: true, session_id: fork.json.id });
    assert.equal(st.events.at(-1), '[DONE]');
    const chunks = st.events.slice(0, -1).map((e) => JSON.parse(e));
    assert.equal(chunks[0].session_id, fork.json.id);
    assert.match(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), /garden/);
    assert.equal((await h.deps.store.get(fork.json.id))!.tokensGenerated, 2);
  });

  test('logprobs: each generated token with its log-probability, bytes and top alternatives, streamed or not', async () => {
    const r = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
    const c = r.choices[0]!;
    const content = c.logprobs!.content!;
    assert.equal(content.length, 4);
    assert.equal(content.map((t) => t.token).join(''), c.message.content);
    for (const t of content) {
      assert.ok(t.logprob <= 0 && Number.isFinite(t.logprob));
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
      assert.equal(t.top_logprobs.length, 3);
      // Greedy: the chosen token is the most likely one.
      assert.equal(t.top_logprobs[0]!.token, t.token);
      assert.equal(t.top_logprobs[0]!.logprob, t.logprob);
      for (const a of t.top_logprobs) assert.ok(Array.isArray(a.bytes) && a.logprob <= t.logprob);
    }
    const none = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 4, temperature: 0, logprobs: true });
    assert.deepEqual(none.choices[0]!.logprobs!.content!.map((t) => [t.token, t.logprob, t.top_logprobs]), content.map((t) => [t.token, t.logprob, []]));

    const st = await sse({ model: RECALL, messages: ASK, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3, stream: true });
    const streamed = st.events.slice(0, -1).map((e) => JSON.parse(e)).flatMap((ch) => ch.choices[0]?.logprobs?.content ?? []);
    assert.deepEqual(streamed, content);
  });

  test('stop sequences: finish_reason stop, the stop text excluded, streamed or not', async () => {
    const long = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 12, temperature: 0 });
    const full = long.choices[0]!.message.content!;
    const stop = full.slice(4, 7);
    const at = full.indexOf(stop);
    const r = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 12, temperature: 0, stop: [stop, 'zzzq'] });
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    assert.equal(r.choices[0]!.message.content, full.slice(0, at));
    const s = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 12, temperature: 0, stop, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const ch of s) for (const x of ch.choices) {
      text += x.delta.content ?? '';
      finish = x.finish_reason ?? finish;
    }
    assert.equal(text, full.slice(0, at));
    assert.equal(finish, 'stop');
    // max_completion_tokens wins over max_tokens.
    const m = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 12, max_completion_tokens: 2, temperature: 0 });
    assert.equal(m.usage!.completion_tokens, 2);
  });

  test('client disconnect mid-stream: the request\'s session is still deleted', async () => {
    const keys = (await sessionKeys()).length;
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ model: RECALL, messages: ASK, max_tokens: 4000, temperature: 0, stream: true }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    await pollUntil('the per-request session to be deleted', async () => (await sessionKeys()).length === keys);
  });

  test('overload: past RMT_MAX_QUEUE_DEPTH a chat completion gets 429 with Retry-After, as completions do', async () => {
    const config = h.deps.config as { maxQueueDepth: number };
    const bullWorker = h.worker.worker.worker;
    const limit = config.maxQueueDepth;
    config.maxQueueDepth = 1;
    await bullWorker.pause(true); // no worker takes anything: queued sessions wait
    const m = h.deps.catalog.get(RECALL)!;
    const waiting: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = await h.deps.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState, { owner: '' });
        waiting.push(s.id);
        await h.deps.queue.submit(s.id, { kind: 'ingest', text: 'waiting for a worker', flush: true });
      }
      let refused: { status: number; json: any; retryAfter: string | null } | undefined;
      await pollUntil('a chat completion to be refused', async () => {
        const res = await fetch(`${base}/v1/chat/completions`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(2000),
          body: JSON.stringify({ model: RECALL, messages: ASK, max_tokens: 1 }),
        }).catch(() => undefined);
        if (res?.status === 429) refused = { status: 429, json: await res.json(), retryAfter: res.headers.get('retry-after') };
        else await res?.body?.cancel();
        return refused !== undefined;
      });
      assertError(refused!, 429, 'overloaded');
      assert.equal(refused!.json.error.type, 'rate_limit_error');
      assert.ok(Number(refused!.retryAfter) > 0);
    } finally {
      config.maxQueueDepth = limit;
      bullWorker.resume();
    }
    await pollUntil('the waiting sessions to be served', async () => {
      const recs = await Promise.all(waiting.map((id) => h.deps.store.get(id)));
      return recs.every((r) => r !== null && r.appliedSeq >= 1);
    });
    const ok = await client.chat.completions.create({ model: RECALL, messages: ASK, max_tokens: 1, temperature: 0 });
    assert.equal(ok.usage!.completion_tokens, 1);
  });

  test('400s in the OpenAI error shape: no template, template errors, n > 1, tools, unknown and malformed fields', async () => {
    const noTemplate = assertError(await post('/v1/chat/completions', { model: LM, messages: ASK }), 400, 'chat_template_missing', 'model');
    assert.match(noTemplate, new RegExp(`'${LM}'.*chat_template.*tokenizer_config\\.json`));
    await assert.rejects(client.chat.completions.create({ model: LM, messages: ASK }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.code === 'chat_template_missing');

    // A template that fails: the catalog entry's template swapped for the length of this check.
    const m = h.deps.catalog.get(RECALL)!;
    const shipped = m.chatTemplate;
    try {
      m.chatTemplate = '{% for m in messages %}{{ m.content }}';
      assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK }), 400, 'chat_template_error', 'messages');
      m.chatTemplate = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}";
      assert.match(assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK }), 400, 'chat_template_error'), /System role not supported/);
      m.chatTemplate = '{{ "" }}';
      assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK }), 400, 'empty_prompt', 'messages');
    } finally {
      m.chatTemplate = shipped;
    }

    await assert.rejects(client.chat.completions.create({ model: RECALL, messages: ASK, n: 2 }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'n' && e.code === 'unsupported_parameter');
    const tools = [{ type: 'function' as const, function: { name: 'locate', parameters: { type: 'object', properties: {} } } }];
    await assert.rejects(client.chat.completions.create({ model: RECALL, messages: ASK, tools }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'tools' && e.code === 'unsupported_parameter');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, tool_choice: 'auto' }), 400, 'unsupported_parameter', 'tool_choice');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, response_format: { type: 'json_object' } }), 400, 'unsupported_parameter', 'response_format');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, top_logprobs: 2 }), 400, 'invalid_value', 'top_logprobs');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, functions: [] }), 400, 'unknown_parameter', 'functions');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: [{ role: 'user', content: 'x', extra: 1 }] }), 400, 'unknown_parameter', 'messages.0.extra');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: [{ role: 'robot', content: 'x' }] }), 400, 'invalid_type', 'messages.0.role');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }), 400, 'invalid_type');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: [] }), 400, 'invalid_type', 'messages');
    assertError(await post('/v1/chat/completions', { model: RECALL }), 400, 'missing_required_parameter', 'messages');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, top_logprobs: 6, logprobs: true }), 400, 'invalid_type', 'top_logprobs');
    assertError(await post('/v1/chat/completions', { model: 'nope', messages: ASK }), 404, 'model_not_found', 'model');
    assertError(await post('/v1/chat/completions', { model: RECALL, messages: ASK, session_id: 'nope' }), 404, 'session_not_found', 'session_id');
    // Accepted no-ops.
    const ok = await post('/v1/chat/completions', {
      model: RECALL, messages: ASK, max_tokens: 1, tools: [], tool_choice: 'none', response_format: { type: 'text' }, logit_bias: {}, user: 'u',
      presence_penalty: 0, frequency_penalty: 0, top_p: 1, n: 1, parallel_tool_calls: null,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
  });
});
