// POST /v1/completions, OpenAI-compatible. Without session_id a fresh session of the model is created
// for the request and deleted afterwards; with session_id the caller's session is continued (its
// memory and tail are the context) and prompt + completion are appended to it by the worker.
// stream=true answers with server-sent events fed from the session's progress channel.
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { CatalogModel } from '../../engine/model-catalog.ts';
import type { GenerateRequest, TokenLogprob } from '../../queue/request.ts';
import type { ApiDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import { observeRequests } from '../metrics.ts';
import { admit } from '../queue-errors.ts';
import {
  completionOf, countTokens, generateOnce, Nullable, openAiFinish, openSession, samplingOf, STOP_SHAPE, StopSchema, stopList,
  streamGeneration, usageOf, validationError, type AjvError,
} from '../generation.ts';

const TokenIds = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 });

export const CompletionBody = Type.Object(
  {
    model: Type.String({ minLength: 1 }),
    prompt: Type.Union([
      Type.String(),
      Type.Array(Type.String(), { minItems: 1, maxItems: 1 }),
      TokenIds,
      Type.Array(TokenIds, { minItems: 1, maxItems: 1 }),
    ]),
    suffix: Type.Optional(Nullable(Type.String())),
    max_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: 4096 }))),
    temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2 }))),
    top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
    top_k: Type.Optional(Nullable(Type.Integer({ minimum: 0 }))),
    n: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    best_of: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
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
    session_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  },
  { additionalProperties: false },
);
export type CompletionBody = Static<typeof CompletionBody>;

/** What a union-typed field accepts, for error messages (ajv's first-branch message would mislead). */
const FIELD_SHAPES: Record<string, string> = {
  prompt: 'prompt must be a string, an array of one string, an array of token ids (integers >= 0) or an array of one array of token ids',
  stop: STOP_SHAPE,
};

type Prompt = { text: string } | { ids: number[] };

function normalizePrompt(p: CompletionBody['prompt'], model: CatalogModel): Prompt {
  const first = Array.isArray(p) ? p[0] : p;
  if (typeof p === 'string') return { text: p };
  if (typeof first === 'string') return { text: first };
  const ids = (Array.isArray(first) ? first : p) as number[];
  const bad = ids.findIndex((id) => id >= model.vocabSize);
  if (bad >= 0) {
    throw new ApiError('invalid_request', `prompt token id ${ids[bad]} at position ${bad} is out of range: ${model.name} has a vocabulary of ${model.vocabSize} ids (0..${model.vocabSize - 1})`, 'prompt', 'invalid_token_id');
  }
  return { ids };
}

interface OpenAiLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/** OpenAI's legacy completions logprobs object, for the generated tokens (not the echoed prompt). */
function openAiLogprobs(ids: readonly number[], lps: readonly TokenLogprob[], text: (id: number) => string, offset: number): OpenAiLogprobs {
  const out: OpenAiLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let at = offset;
  ids.forEach((id, i) => {
    const t = text(id);
    out.tokens.push(t);
    out.token_logprobs.push(lps[i]!.logprob);
    out.top_logprobs.push(Object.fromEntries(lps[i]!.top.map((c) => [text(c.id), c.logprob])));
    out.text_offset.push(at);
    at += t.length;
  });
  return out;
}

/** Refuses OpenAI features this service does not implement, each with a 400 naming the parameter. */
function refuseUnsupported(b: CompletionBody): void {
  if ((b.n ?? 1) !== 1) throw new ApiError('invalid_request', `n = ${b.n} is not supported: rmt-serve returns exactly one choice per request (n must be 1)`, 'n', 'unsupported_parameter');
  if ((b.best_of ?? 1) !== 1) throw new ApiError('invalid_request', `best_of = ${b.best_of} is not supported (best_of must be 1)`, 'best_of', 'unsupported_parameter');
  if (b.suffix !== undefined && b.suffix !== null && b.suffix !== '') throw new ApiError('invalid_request', 'suffix is not supported: the models only continue text', 'suffix', 'unsupported_parameter');
  if (b.logit_bias && Object.keys(b.logit_bias).length > 0) throw new ApiError('invalid_request', 'logit_bias is not supported (send null or {})', 'logit_bias', 'unsupported_parameter');
}

export default async function completionsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(app);

  r.post('/v1/completions', { schema: { body: CompletionBody }, attachValidation: true }, async (req, reply) => {
    const startedAt = performance.now();
    if (req.validationError) throw validationError(req.validationError as Error & { validation?: AjvError[] }, FIELD_SHAPES);
    const body = req.body;
    refuseUnsupported(body);

    const model = deps.catalog.get(body.model);
    if (!model) throw new ApiError('not_found', `The model '${body.model}' does not exist`, 'model', 'model_not_found');
    const tokenizer = deps.tokenizers.get(model.name);
    if (!tokenizer) throw new ApiError('unavailable', `model ${model.name} has no tokenizer loaded`, 'model', 'model_not_loaded');

    const prompt = normalizePrompt(body.prompt, model);
    const sampling = samplingOf(body);
    await admit(deps, reply);
    const request: GenerateRequest = {
      kind: 'generate', ...prompt, maxTokens: body.max_tokens ?? 16, sampling, stop: stopList(body.stop),
      ...((body.logprobs ?? 0) > 0 ? { logprobs: body.logprobs! } : {}),
    };
    const tokenText = (tid: number) => tokenizer.decode([tid]);
    const promptText = 'text' in prompt ? prompt.text : tokenizer.decode(prompt.ids);

    // The session: the caller's (continued) or a fresh one for this request only.
    const emptyPrompt = 'text' in prompt && prompt.text === '' ? new ApiError('invalid_request', 'prompt must not be empty', 'prompt', 'empty_prompt') : undefined;
    const session = await openSession(deps, req.owner, model, body.session_id, emptyPrompt);

    const id = `cmpl-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const extra = body.session_id !== undefined ? { session_id: body.session_id } : {};

    if (!body.stream) {
      const result = await generateOnce(deps, reply, session, request);
      const c = completionOf(result);
      countTokens(result);
      return {
        id, object: 'text_completion' as const, created, model: model.name,
        choices: [{
          text: (body.echo ? promptText : '') + c.text, index: 0,
          logprobs: c.logprobs ? openAiLogprobs(c.ids, c.logprobs, tokenText, body.echo ? promptText.length : 0) : null,
          finish_reason: openAiFinish(c.finishReason),
        }],
        usage: usageOf(result),
        ...extra,
      };
    }

    // Streamed: text_completion chunks.
    const echo = body.echo ? promptText : '';
    const includeUsage = body.stream_options?.include_usage === true;
    const chunk = (text: string, finish: 'stop' | 'length' | null, logprobs: OpenAiLogprobs | null = null) => ({
      id, object: 'text_completion', created, model: model.name,
      choices: [{ text, index: 0, logprobs, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });
    return streamGeneration(deps, req, reply, { session, request, startedAt }, {
      opening: echo ? [chunk(echo, null)] : [],
      token: (ev, streamed) => {
        // With logprobs every token gets its chunk (its text may be '' while a stop prefix or a split
        // character is held back); text_offset counts the text streamed so far.
        if (ev.logprob) return chunk(ev.text, null, openAiLogprobs([ev.id], [ev.logprob], tokenText, echo.length + streamed.length));
        return ev.text === '' ? undefined : chunk(ev.text, null);
      },
      text: (text) => chunk(text, null),
      finish: (reason) => chunk('', reason),
      ...(includeUsage ? { usage: (usage) => ({ id, object: 'text_completion', created, model: model.name, choices: [], usage, ...extra }) } : {}),
    });
  });
}
