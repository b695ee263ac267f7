// POST /v1/completions, OpenAI-compatible. Without session_id a fresh session of the model is created
// for each prompt and deleted afterwards; with session_id the caller's session is continued (its
// memory and tail are the context) and prompt + completion are appended to it by the worker.
// Several choices of one prompt (n, best_of) are sampled from one memory: the prompt is read once
// into a session, which is then forked per choice. echo + logprobs scores every prompt token
// (token-scorer.ts). stream=true answers with server-sent events (completion-stream.ts).
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { CatalogModel } from '../../model/model-catalog.ts';
import type { TextTokenizer } from '../../text/tokenizer.ts';
import type { SamplingParams } from '../../text/sampling.ts';
import type { GenerateRequest } from '../../queue/request.ts';
import type { ApiDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import { DEFAULT_COMPLETION_MAX_TOKENS, MAX_TOKENS, generateRequest } from '../../queue/generate-request.ts';
import { sessionOfModel } from '../session-access.ts';
import { observeRequests } from '../metrics.ts';
import { admit } from '../queue-errors.ts';
import { concatLogprobs, meanLogprob, openAiLogprobs, type OpenAiLogprobs } from '../completion-format.ts';
import {
  completionOf, freshSession, generationModel, generationResponses, Nullable, openAiFinish, runToResult, samplingOf, STOP_SHAPE, StopSchema, stopList,
  streamGeneration, validationError,
  type AjvError, type StreamJob,
} from '../generation.ts';
import { CompletionChoiceSchema, CompletionSchema, SessionIdSchema } from '../schemas.ts';

/** Most prompts in one request, and most choices (prompts x best_of) it may ask for. */
const MAX_PROMPTS = 32;
const MAX_CHOICES = 64;

const TokenIds = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 });

export const CompletionBody = Type.Object(
  {
    model: Type.String({ minLength: 1 }),
    prompt: Type.Union([
      Type.String(),
      Type.Array(Type.String(), { minItems: 1, maxItems: MAX_PROMPTS }),
      TokenIds,
      Type.Array(TokenIds, { minItems: 1, maxItems: MAX_PROMPTS }),
    ]),
    suffix: Type.Optional(Nullable(Type.String())),
    max_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: MAX_TOKENS, description: `default ${DEFAULT_COMPLETION_MAX_TOKENS}; 0 only with echo (score the prompt, generate nothing)` }))),
    temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2 }))),
    top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
    top_k: Type.Optional(Nullable(Type.Integer({ minimum: 0 }))),
    n: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: MAX_CHOICES }))),
    best_of: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: MAX_CHOICES }))),
    stream: Type.Optional(Nullable(Type.Boolean())),
    stream_options: Type.Optional(Nullable(Type.Object({ include_usage: Type.Optional(Nullable(Type.Boolean())) }, { additionalProperties: false }))),
    logprobs: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: 5 }))),
    echo: Type.Optional(Nullable(Type.Boolean())),
    stop: Type.Optional(StopSchema),
    presence_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    repetition_penalty: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 10 }))),
    seed: Type.Optional(Nullable(Type.Integer())),
    user: Type.Optional(Nullable(Type.String())),
    logit_bias: Type.Optional(Nullable(Type.Record(Type.String(), Type.Number()))),
    session_id: Type.Optional(SessionIdSchema),
  },
  { additionalProperties: false, title: 'CompletionRequest' },
);
export type CompletionBody = Static<typeof CompletionBody>;

/** What a union-typed field accepts, for error messages (ajv's first-branch message would mislead). */
const FIELD_SHAPES: Record<string, string> = {
  prompt: `prompt must be a string, an array of 1..${MAX_PROMPTS} strings, an array of token ids (integers >= 0) or an array of 1..${MAX_PROMPTS} arrays of token ids`,
  stop: STOP_SHAPE,
};

type Prompt = { text: string } | { ids: number[] };

/** The prompts of a request: a string, strings, token ids or lists of token ids. */
function normalizePrompts(p: CompletionBody['prompt'], model: CatalogModel): Prompt[] {
  if (typeof p === 'string') return [{ text: p }];
  const first = p[0];
  if (typeof first === 'string') return (p as string[]).map((text) => ({ text }));
  const lists = (Array.isArray(first) ? p : [p]) as number[][];
  return lists.map((ids, i) => {
    const bad = ids.findIndex((id) => id >= model.vocabSize);
    if (bad >= 0) {
      const which = lists.length > 1 ? `prompt ${i}: ` : '';
      throw new ApiError('invalid_request', `${which}token id ${ids[bad]} at position ${bad} is out of range: ${model.name} has a vocabulary of ${model.vocabSize} ids (0..${model.vocabSize - 1})`, 'prompt', 'invalid_token_id');
    }
    return { ids };
  });
}

/** Refuses what this service does not implement, and combinations OpenAI refuses too, each naming the parameter. */
function refuseUnsupported(b: CompletionBody, prompts: number): void {
  const n = b.n ?? 1;
  const bestOf = b.best_of ?? n;
  if (bestOf < n) throw new ApiError('invalid_request', `best_of (${bestOf}) must be at least n (${n})`, 'best_of', 'invalid_value');
  if (b.stream && bestOf > n) throw new ApiError('invalid_request', 'best_of > n cannot be streamed (the best choices are known only at the end)', 'best_of', 'unsupported_parameter');
  if (prompts * bestOf > MAX_CHOICES) {
    throw new ApiError('invalid_request', `${prompts} prompt(s) x ${bestOf} choices is over the limit of ${MAX_CHOICES} choices per request`, bestOf > n ? 'best_of' : n > 1 ? 'n' : 'prompt', 'too_many_choices');
  }
  if (b.session_id !== undefined && prompts > 1) throw new ApiError('invalid_request', 'session_id continues one session: send one prompt', 'prompt', 'invalid_value');
  if (b.session_id !== undefined && bestOf > 1) {
    throw new ApiError('invalid_request', 'n > 1 or best_of > 1 with session_id: only one completion can continue the session; fork it (POST /v1/sessions/{id}/fork) and ask each fork', bestOf > n ? 'best_of' : 'n', 'unsupported_parameter');
  }
  if (b.max_tokens === 0 && !b.echo) throw new ApiError('invalid_request', 'max_tokens 0 is only allowed with echo (to score the prompt)', 'max_tokens', 'invalid_value');
  if (b.suffix !== undefined && b.suffix !== null && b.suffix !== '') throw new ApiError('invalid_request', 'suffix is not supported: the models only continue text', 'suffix', 'unsupported_parameter');
  if (b.logit_bias && Object.keys(b.logit_bias).length > 0) throw new ApiError('invalid_request', 'logit_bias is not supported (send null or {})', 'logit_bias', 'unsupported_parameter');
}


interface Plan {
  body: CompletionBody;
  model: CatalogModel;
  tokenizer: TextTokenizer;
  sampling: SamplingParams;
  stop: string[];
  /** Top alternatives per echoed prompt token (echo with logprobs), else undefined. */
  echoTop: number | undefined;
  n: number;
  bestOf: number;
  owner: string | undefined;
  /** Sessions made for this request (deleted at the end). */
  ephemeral: string[];
}

/** A choice, with what its stream starts with (the echoed prompt and, scored before, its logprobs). */
interface ChoiceJob extends StreamJob {
  echo: string;
  echoLogprobs: OpenAiLogprobs | null;
}

/** A prompt's choices, ready to run: the generate requests, and the prompt's echo and scores. */
interface PreparedPrompt {
  jobs: ChoiceJob[];
  /** Prompt tokens already read (split plans), counted once for usage. */
  promptTokens: number;
}

function seeded(s: SamplingParams, j: number): SamplingParams {
  return j === 0 ? s : { ...s, seed: (s.seed + j) % 2 ** 32 };
}

/**
 * One prompt's choices. The common case is one request (prompt, then generation). Several choices, or
 * a stream that must start with the prompt's scores, read the prompt first (max_tokens 0), then
 * generate from that memory: on the session itself for the first choice, on forks for the others.
 */
async function preparePrompt(deps: ApiDeps, reply: FastifyReply, p: Plan, prompt: Prompt, promptIndex: number, sessionId: string | undefined): Promise<PreparedPrompt> {
  const promptText = 'text' in prompt ? prompt.text : p.tokenizer.decode(prompt.ids);
  if (sessionId === undefined && 'text' in prompt && prompt.text === '') throw new ApiError('invalid_request', 'prompt must not be empty', 'prompt', 'empty_prompt');
  // Without session_id the prompt gets a session of its own, deleted when the request ends. A stateless
  // completion still goes through a (throwaway) Redis session because the request log, the lease and
  // the progress channel are per session: any worker can run it, and one that crashes mid-completion
  // leaves it to be resumed by another, as for any session's request.
  const session = sessionId ?? (await freshSession(deps, p.model, p.owner));
  if (sessionId === undefined) p.ephemeral.push(session);
  const wantLogprobs = p.body.logprobs !== undefined && p.body.logprobs !== null ? p.body.logprobs : p.bestOf > p.n ? 0 : undefined;
  const generate = (base: Prompt, j: number, promptLogprobs?: number): GenerateRequest => generateRequest({
    ...base, maxTokens: p.body.max_tokens ?? DEFAULT_COMPLETION_MAX_TOKENS, sampling: seeded(p.sampling, j), stop: p.stop,
    ...(wantLogprobs !== undefined ? { logprobs: wantLogprobs } : {}),
    ...(promptLogprobs !== undefined ? { promptLogprobs } : {}),
  });
  const echo = p.body.echo ? promptText : '';
  const split = p.bestOf > 1 || (p.body.stream === true && p.echoTop !== undefined);
  if (!split) {
    const request = generate(prompt, 0, p.echoTop);
    return { jobs: [{ index: promptIndex, sessionId: session, request, echo, echoLogprobs: null }], promptTokens: 0 };
  }
  const read = await runToResult(deps, reply, session, generateRequest({
    ...prompt, maxTokens: 0, sampling: p.sampling, stop: [], ...(p.echoTop !== undefined ? { promptLogprobs: p.echoTop } : {}),
  }));
  completionOf(read);
  const echoLogprobs = read.prompt ? openAiLogprobs(read.prompt.ids, read.prompt.logprobs, (t) => p.tokenizer.decode([t]), 0) : null;
  const sessions = [session];
  for (let j = 1; j < p.bestOf; j++) {
    const fork = await deps.store.fork(session, p.owner !== undefined ? { owner: p.owner } : {});
    p.ephemeral.push(fork.id);
    sessions.push(fork.id);
  }
  const jobs = sessions.map((s, j) => ({ index: promptIndex * p.n + j, sessionId: s, request: generate({ text: '' }, j), echo, echoLogprobs }));
  return { jobs, promptTokens: read.promptTokens };
}

export default async function completionsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(app);

  r.post('/v1/completions', {
    schema: {
      operationId: 'createCompletion', tags: ['completions'], summary: 'Create a completion',
      description: 'OpenAI-compatible. Without session_id each prompt runs in a fresh session deleted afterwards; with session_id ' +
        "the caller's session is continued and prompt + completion are appended to it. Several prompts, n and best_of sample " +
        "choices from forks of the prompt's memory; echo with logprobs scores every prompt token. stream: true answers with server-sent events.",
      body: CompletionBody,
      response: generationResponses('completion', CompletionSchema),
    },
    attachValidation: true,
  }, async (req, reply) => {
    const startedAt = performance.now();
    if (req.validationError) throw validationError(req.validationError as Error & { validation?: AjvError[] }, FIELD_SHAPES);
    const body = req.body;
    const { model, tokenizer } = generationModel(deps, req, body.model);
    const prompts = normalizePrompts(body.prompt, model);
    refuseUnsupported(body, prompts.length);
    const n = body.n ?? 1;
    const plan: Plan = {
      body, model, tokenizer, sampling: samplingOf(body), n, bestOf: body.best_of ?? n, owner: req.owner, ephemeral: [],
      stop: stopList(body.stop),
      echoTop: body.echo && body.logprobs !== undefined && body.logprobs !== null ? body.logprobs : undefined,
    };
    const sessionId = body.session_id !== undefined ? (await sessionOfModel(deps, req.owner, body.session_id, model)).id : undefined;
    await admit(deps, reply);
    const cleanup = async () => {
      for (const s of plan.ephemeral) await deps.store.delete(s).catch(() => undefined);
    };
    const tokenText = (tid: number) => tokenizer.decode([tid]);
    const id = `cmpl-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const extra = body.session_id !== undefined ? { session_id: body.session_id } : {};

    let prepared: PreparedPrompt[];
    try {
      prepared = await Promise.all(prompts.map((p, i) => preparePrompt(deps, reply, plan, p, i, sessionId)));
    } catch (err) {
      await cleanup();
      throw err;
    }
    const jobs = prepared.flatMap((p) => p.jobs);
    const promptTokens = prepared.reduce((a, p) => a + p.promptTokens, 0);
    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage === true;
      const chunk = (index: number, text: string, finish: 'stop' | 'length' | null, logprobs: OpenAiLogprobs | null = null) => ({
        id, object: 'text_completion', created, model: model.name,
        choices: [{ text, index, logprobs, finish_reason: finish }],
        ...(includeUsage ? { usage: null } : {}),
        ...extra,
      });
      const byIndex = new Map(jobs.map((j) => [j.index, j]));
      return streamGeneration(deps, req, reply, jobs, {
        opening: (i) => {
          const j = byIndex.get(i)!;
          return j.echo || j.echoLogprobs ? [chunk(i, j.echo, null, j.echoLogprobs)] : [];
        },
        token: (i, ev, streamed) => {
          // With logprobs every token gets its chunk (its text may be '' while a stop prefix or a split
          // character is held back); text_offset counts the text streamed so far.
          if (ev.logprob) return chunk(i, ev.text, null, openAiLogprobs([ev.id], [ev.logprob], tokenText, byIndex.get(i)!.echo.length + streamed.length));
          return ev.text === '' ? undefined : chunk(i, ev.text, null);
        },
        text: (i, t) => chunk(i, t, null),
        finish: (i, reason) => chunk(i, '', reason),
        ...(includeUsage ? { usage: (usage) => ({ id, object: 'text_completion', created, model: model.name, choices: [], usage, ...extra }) } : {}),
      }, { startedAt, promptTokens, cleanup });
    }
    try {
      const results = await Promise.all(jobs.map((j) => runToResult(deps, reply, j.sessionId, j.request)));
      const choices: Static<typeof CompletionChoiceSchema>[] = [];
      let generated = 0;
      let prompted = promptTokens;
      for (let pi = 0; pi < prepared.length; pi++) {
        const own = prepared[pi]!.jobs.map((job) => ({ job, result: results[jobs.indexOf(job)]! }));
        const done = own.map(({ job, result }) => {
          const c = completionOf(result);
          generated += c.ids.length;
          prompted += result.promptTokens;
          return { job, result, c };
        });
        // best_of: the n candidates with the highest mean token log-probability, best first.
        const kept = plan.bestOf > n ? [...done].sort((a, b) => meanLogprob(b.c) - meanLogprob(a.c)).slice(0, n) : done;
        kept.forEach(({ job, result, c }, j) => {
          const promptLps = job.echoLogprobs ?? (result.prompt ? openAiLogprobs(result.prompt.ids, result.prompt.logprobs, tokenText, 0) : null);
          const echoed = body.echo ? job.echo : '';
          let logprobs: OpenAiLogprobs | null = null;
          if (body.logprobs !== undefined && body.logprobs !== null) {
            const gen = openAiLogprobs(c.ids, c.logprobs ?? [], tokenText, echoed.length);
            logprobs = promptLps ? concatLogprobs(promptLps, gen) : gen;
          }
          choices.push({ text: echoed + c.text, index: pi * n + j, logprobs, finish_reason: openAiFinish(c.finishReason) });
        });
      }
      const usage = { prompt_tokens: prompted, completion_tokens: generated, total_tokens: prompted + generated };
      return { id, object: 'text_completion' as const, created, model: model.name, choices, usage, ...extra };
    } finally {
      await cleanup();
    }
  });
}
