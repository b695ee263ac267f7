// Prompt scoring and several choices on /v1/completions, on the real stack: echo + logprobs through
// many segments (lm-evaluation-harness's request shape, checked against the engine's segment graph
// run here directly), appends with perplexity scoring every token (the partial last segment too),
// prompt lists, n and best_of, streamed and not.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { applyRequest, type ApplyContext, type ApplyHooks } from '../src/worker/apply-request.ts';
import { tokenLogprob } from '../src/worker/token-logprob.ts';
import type { Engine } from '../src/engine/engine.ts';
import type { GenerateRequest, TokenLogprob } from '../src/queue/request.ts';
import { DEFAULT_SAMPLING } from '../src/text/sampling.ts';

const LM = 'rmt-brown-lm';

let h: ApiHarness;
let base: string;

async function call(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${base}${url}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

async function sse(body: unknown): Promise<any[]> {
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body as object, stream: true }) });
  const text = await res.text();
  const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
  assert.equal(events.at(-1), '[DONE]');
  return events.slice(0, -1).map((e) => JSON.parse(e));
}

/**
 * The log-probability of every token after the first, from the initial memory, by the segment graph
 * alone (the service's echo with top alternatives uses the decode graph): token t >= 1 of a segment
 * from the segment's own positions, token 0 from the previous segment's last logits.
 */
async function reference(ids: number[]): Promise<number[]> {
  const m = h.worker.engine.model(LM);
  let state = h.deps.catalog.get(LM)!.initState;
  const out: number[] = [];
  let carry: Float32Array | undefined;
  for (let s = 0; s < ids.length; s += m.segmentLength) {
    const seg = ids.slice(s, s + m.segmentLength);
    const r = await h.worker.engine.segment(LM, seg, state);
    if (carry) out.push(tokenLogprob(carry, seg[0]!, 0).logprob);
    for (let t = 1; t < seg.length; t++) out.push(r.tokenLogprobs[t]!);
    carry = r.logits;
    state = r.nextState;
  }
  return out;
}

describe('completions: prompt scoring, prompt lists, n and best_of', { timeout: 300_000 }, () => {
  before(async () => {
    h = await startApiHarness();
    base = await h.listen();
  });
  after(async () => {
    await h?.close();
  });

  test('lm-evaluation-harness loglikelihood requests: echo, max_tokens 1, logprobs 1, token-id prompts through several segments', async () => {
    const tok = h.worker.tokenizers.get(LM)!;
    const text = heldOutText();
    // Two (context, continuation) pairs, the first over three segments of 128 tokens.
    const pairs = [
      { ctx: tok.encode(text.slice(0, 1800)), cont: tok.encode(' of the jury') },
      { ctx: tok.encode(text.slice(5000, 5300)), cont: tok.encode(' said') },
    ];
    assert.ok(pairs[0]!.ctx.length > 2 * 128, `context of ${pairs[0]!.ctx.length} tokens`);
    // Exactly lm-eval's LocalCompletionsAPI payload for loglikelihood (tokenized requests, batched).
    const r = await call('/v1/completions', {
      model: LM, prompt: pairs.map((p) => [...p.ctx, ...p.cont]), max_tokens: 1, logprobs: 1, seed: 1234, temperature: 0, echo: true,
    });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    // ... and exactly its parse_logprobs.
    const choices = [...r.json.choices].sort((a: any, b: any) => a.index - b.index);
    assert.equal(choices.length, 2);
    for (const [i, choice] of choices.entries()) {
      const { ctx, cont } = pairs[i]!;
      const lp = choice.logprobs;
      assert.equal(lp.tokens.length, ctx.length + cont.length + 1, 'prompt tokens, then the one generated');
      assert.equal(lp.token_logprobs[0], null, 'the first token has nothing before it');
      assert.equal(lp.top_logprobs[0], null);
      const tokensLogprobs: number[] = lp.token_logprobs.slice(ctx.length, -1);
      const topLogprobs: Record<string, number>[] = lp.top_logprobs.slice(ctx.length, -1);
      const sum = tokensLogprobs.reduce((a, b) => a + b, 0);
      let greedy = true;
      for (const [k, v] of tokensLogprobs.entries()) if (v !== Math.max(...Object.values(topLogprobs[k]!))) greedy = false;
      // The independent computation: the segment graph, run here.
      const ref = await reference([...ctx, ...cont]);
      const refSum = ref.slice(ctx.length - 1).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum - refSum) < 1e-3 * cont.length, `pair ${i}: ${sum} vs ${refSum}`);
      // Every prompt token, across the segment boundaries.
      lp.token_logprobs.slice(1, -1).forEach((v: number, k: number) => assert.ok(Math.abs(v - ref[k]!) < 2e-3, `pair ${i} token ${k + 1}: ${v} vs ${ref[k]}`));
      assert.equal(typeof greedy, 'boolean');
      for (const top of lp.top_logprobs.slice(1, -1)) assert.equal(Object.keys(top).length, 1);
      assert.equal(choice.text.length > 0, true);
    }
    assert.equal(r.json.usage.prompt_tokens, pairs.reduce((a, p) => a + p.ctx.length + p.cont.length, 0));
    assert.equal(r.json.usage.completion_tokens, 2);
  });

  test('echo with max_tokens 0 scores the prompt alone; the numbers equal an append with perplexity', async () => {
    const prompt = heldOutText().slice(20_000, 21_500);
    const echo = await call('/v1/completions', { model: LM, prompt, max_tokens: 0, echo: true, logprobs: 0 });
    assert.equal(echo.status, 200, JSON.stringify(echo.json));
    const c = echo.json.choices[0];
    assert.equal(c.text, prompt);
    assert.equal(echo.json.usage.completion_tokens, 0);
    const lps: (number | null)[] = c.logprobs.token_logprobs;
    assert.equal(lps.length, echo.json.usage.prompt_tokens);
    // The same text appended with perplexity to a fresh session: per-segment means over the same tokens.
    const s = (await call('/v1/sessions', { model: LM })).json;
    const a = await call(`/v1/sessions/${s.id}/append`, { text: prompt, flush: true, perplexity: true });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    const scored = a.json.perplexity as { segment: number; tokens: number; nll: number }[];
    assert.equal(scored.reduce((n, x) => n + x.tokens, 0), lps.length - 1, 'every token but the first is scored');
    const total = -lps.slice(1).reduce((x: number, y) => x + y!, 0);
    const fromAppend = scored.reduce((x, sc) => x + sc.nll * sc.tokens, 0);
    assert.ok(Math.abs(total - fromAppend) < 1e-6 * Math.abs(total), `${total} vs ${fromAppend}`);
    // With top alternatives (the decode graph): the same numbers within the packages' tolerance.
    const top = (await call('/v1/completions', { model: LM, prompt, max_tokens: 0, echo: true, logprobs: 2 })).json.choices[0].logprobs;
    top.token_logprobs.slice(1).forEach((v: number, i: number) => assert.ok(Math.abs(v - lps[i + 1]!) < 2e-3, `token ${i + 1}`));
  });

  test('perplexity on appends scores every token, the partial last segment too, each once', async () => {
    const tok = h.worker.tokenizers.get(LM)!;
    const ids = tok.encode(heldOutText().slice(30_000, 31_200));
    const s1 = (await call('/v1/sessions', { model: LM })).json;
    const s2 = (await call('/v1/sessions', { model: LM })).json;
    // One append of 100 tokens (less than a segment), then the rest: against all of it at once.
    const first = await call(`/v1/sessions/${s1.id}/append`, { ids: ids.slice(0, 100), perplexity: true });
    assert.deepEqual(first.json.perplexity.map((x: any) => [x.segment, x.tokens]), [[1, 99]]);
    const rest = await call(`/v1/sessions/${s1.id}/append`, { ids: ids.slice(100), perplexity: true });
    const whole = await call(`/v1/sessions/${s2.id}/append`, { ids, perplexity: true });
    const sum = (xs: any[]) => xs.reduce((a, x) => a + x.nll * x.tokens, 0);
    const count = (xs: any[]) => xs.reduce((a, x) => a + x.tokens, 0);
    assert.equal(count(first.json.perplexity) + count(rest.json.perplexity), ids.length - 1);
    assert.equal(count(whole.json.perplexity), ids.length - 1);
    assert.equal(rest.json.perplexity[0].segment, 1, 'the second append goes on in the first segment');
    assert.equal(rest.json.perplexity[0].tokens, 28);
    assert.ok(Math.abs(sum(first.json.perplexity) + sum(rest.json.perplexity) - sum(whole.json.perplexity)) < 1e-6 * sum(whole.json.perplexity));
    // Nothing was committed twice: both sessions hold the same counters.
    const g1 = (await (await fetch(`${base}/v1/sessions/${s1.id}`)).json()) as any;
    const g2 = (await (await fetch(`${base}/v1/sessions/${s2.id}`)).json()) as any;
    assert.deepEqual([g1.segments_committed, g1.tokens_ingested], [g2.segments_committed, g2.tokens_ingested]);
  });

  test('prompt lists and n: one choice per prompt x n, each equal to its own request; best_of keeps the most likely', async () => {
    const before = (await h.deps.store.count());
    const prompts = ['The jury said', 'It was a dark'];
    const body = { model: LM, prompt: prompts, n: 2, max_tokens: 6, temperature: 1, seed: 7 };
    const r = await call('/v1/completions', body);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.deepEqual(r.json.choices.map((c: any) => c.index), [0, 1, 2, 3]);
    // Choice j of a prompt is sampled with seed + j from the prompt's memory: as its own request would be.
    for (const [pi, p] of prompts.entries()) {
      for (const j of [0, 1]) {
        const alone = await call('/v1/completions', { model: LM, prompt: p, max_tokens: 6, temperature: 1, seed: 7 + j });
        assert.equal(r.json.choices[pi * 2 + j].text, alone.json.choices[0].text, `prompt ${pi} choice ${j}`);
      }
    }
    assert.equal(r.json.usage.completion_tokens, 4 * 6);
    // Streamed: the same texts, chunks tagged with their index.
    const chunks = await sse(body);
    const texts = ['', '', '', ''];
    for (const ch of chunks) for (const c of ch.choices) texts[c.index] += c.text;
    assert.deepEqual(texts, r.json.choices.map((c: any) => c.text));
    // best_of 3, n 1: the candidate with the best mean token log-probability of the three.
    const three = await call('/v1/completions', { model: LM, prompt: prompts[0], n: 3, max_tokens: 6, temperature: 1, seed: 11, logprobs: 0 });
    const mean = (c: any) => c.logprobs.token_logprobs.reduce((a: number, b: number) => a + b, 0) / c.logprobs.token_logprobs.length;
    const best = [...three.json.choices].sort((a: any, b: any) => mean(b) - mean(a))[0];
    const pick = await call('/v1/completions', { model: LM, prompt: prompts[0], n: 1, best_of: 3, max_tokens: 6, temperature: 1, seed: 11 });
    assert.equal(pick.json.choices.length, 1);
    assert.equal(pick.json.choices[0].text, best.text);
    assert.equal(pick.json.choices[0].logprobs, null, 'logprobs only when asked');
    assert.equal(pick.json.usage.completion_tokens, 3 * 6, 'every candidate counts');
    // Lists of token-id lists too; and no session is left behind.
    const tok = h.worker.tokenizers.get(LM)!;
    const ids = await call('/v1/completions', { model: LM, prompt: prompts.map((p) => tok.encode(p)), max_tokens: 4, temperature: 0 });
    assert.equal(ids.json.choices.length, 2);
    assert.equal(await h.deps.store.count(), before, 'the request\'s sessions are deleted');
  });

  test('a generation resumed past its scored prompt returns the prompt\'s scores, kept before the prompt\'s commit', async () => {
    const m = h.deps.catalog.get(LM)!;
    const fresh = () => h.deps.store.create({ model: LM, shape: m.stateShape, dtype: m.stateDtype }, m.initState, { owner: '' });
    const request: GenerateRequest = {
      kind: 'generate', text: heldOutText().slice(40_000, 40_900), maxTokens: 3, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], promptLogprobs: 1,
    };
    const engine = h.worker.engine;
    // A worker that dies right after the prompt's commit: generation's first prefill throws (the
    // scorer's prefills, before that commit, run).
    let sessionId = '';
    const killAfterCommit = async (...args: Parameters<Engine['prefill']>) => {
      if ((await h.deps.store.get(sessionId))!.curSeq === 1) throw new Error('worker killed');
      return engine.prefill(...args);
    };
    const dying = new Proxy(engine, {
      get: (t, k) => (k === 'prefill' ? killAfterCommit : ((v) => (typeof v === 'function' ? v.bind(t) : v))(Reflect.get(t, k))),
    }) as Engine;
    const ctx = (e: Engine): ApplyContext => ({ engine: e, store: h.deps.store, tokenizer: (name) => h.worker.tokenizers.get(name)!, maxPendingTextChars: 4096 });
    let saved: { ids: number[]; prompt?: (TokenLogprob | null)[] } | undefined;
    const hooks: ApplyHooks = { progress: () => undefined, saveGenerated: async (ids, _lps, prompt) => void (saved = { ids, ...(prompt ? { prompt } : {}) }) };
    const s = await fresh();
    sessionId = s.id;
    await assert.rejects(applyRequest(ctx(dying), { sessionId: s.id, seq: 1, request }, hooks), /worker killed/);
    const mid = (await h.deps.store.get(s.id))!;
    assert.equal(mid.curSeq, 1, 'the prompt was committed');
    assert.ok(saved?.prompt && saved.prompt.length > 128, 'the prompt\'s scores were kept first');
    // The retry (another worker) reads them from the log entry instead of scoring a prompt it no longer reads.
    const resumed = await applyRequest(ctx(engine), { sessionId: s.id, seq: 1, request, promptLogprobs: saved.prompt!, generated: saved.ids }, hooks);
    const clean = await applyRequest(ctx(engine), { sessionId: (await fresh()).id, seq: 1, request }, hooks);
    assert.deepEqual(resumed.prompt, clean.prompt);
    assert.deepEqual(resumed.completion?.ids, clean.completion?.ids);
  });
});
