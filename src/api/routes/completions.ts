// POST /v1/completions, OpenAI-compatible. Without session_id a fresh session of the model is created
// for the request and deleted afterwards; with session_id the caller's session is continued (its
// memory and tail are the context) and prompt + completion are appended to it by the worker.
// stream=true answers with server-sent events fed from the session's progress channel.
import { randomInt, randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static, type TSchema } from 'typebox';
import type { CatalogModel } from '../../engine/model-catalog.ts';
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from '../../engine/sampling.ts';
import type { FinishReason, GenerateRequest, ProgressEvent, RequestResult, TokenLogprob } from '../../queue/request.ts';
import type { ApiDeps } from '../deps.ts';
import { ApiError, fromCode } from '../errors.ts';
import { apiMetrics, observeRequests } from '../metrics.ts';
import { admit, fromQueueError } from '../queue-errors.ts';
import type { Submitted } from '../../queue/request-queue.ts';
import { CompletionEventStreamSchema, CompletionSchema, errorResponses } from '../schemas.ts';

/** Longest a request waits for its result before answering 503 (the worker still finishes it). */
const RESULT_TIMEOUT_MS = 10 * 60_000;
/** After the job's result arrives, how long to wait for the progress channel's 'done' (late token events). */
const DONE_GRACE_MS = 1_000;

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

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
    stop: Type.Optional(Nullable(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 4 })]))),
    presence_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    repetition_penalty: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 10 }))),
    seed: Type.Optional(Nullable(Type.Integer())),
    user: Type.Optional(Nullable(Type.String())),
    logit_bias: Type.Optional(Nullable(Type.Record(Type.String(), Type.Number()))),
    session_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  },
  { additionalProperties: false, title: 'CompletionRequest' },
);
export type CompletionBody = Static<typeof CompletionBody>;

/** What a union-typed field accepts, for error messages (ajv's first-branch message would mislead). */
const FIELD_SHAPES: Record<string, string> = {
  prompt: 'prompt must be a string, an array of one string, an array of token ids (integers >= 0) or an array of one array of token ids',
  stop: 'stop must be null, a string or an array of at most 4 strings',
};

interface AjvError {
  keyword?: string;
  instancePath?: string;
  message?: string;
  params?: { missingProperty?: string; additionalProperty?: string };
}

/** Validation errors as OpenAI-style 400s that name the offending parameter. */
function validationError(err: Error & { validation?: AjvError[] }): ApiError {
  const errors = err.validation ?? [];
  const extra = errors.find((e) => e.keyword === 'additionalProperties' && e.params?.additionalProperty);
  if (extra) {
    const path = (extra.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.');
    const name = path ? `${path}.${extra.params!.additionalProperty}` : extra.params!.additionalProperty!;
    return new ApiError('invalid_request', `Unrecognized request argument supplied: ${name}`, name, 'unknown_parameter');
  }
  const first = errors[0];
  if (!first) return new ApiError('invalid_request', err.message, null, 'invalid_request');
  if (first.keyword === 'required' && first.params?.missingProperty) {
    const p = first.params.missingProperty;
    return new ApiError('invalid_request', `you must provide a ${p} parameter`, p, 'missing_required_parameter');
  }
  const param = (first.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.') || null;
  const top = param?.split('.')[0] ?? '';
  const shape = FIELD_SHAPES[top];
  const message = shape ?? `${param ?? 'body'} ${first.message ?? 'is invalid'}`;
  return new ApiError('invalid_request', `invalid request body: ${message}`, param ?? null, 'invalid_type');
}

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

function uint32Seed(seed: number | null | undefined, temperature: number): number {
  if (seed === undefined || seed === null) return temperature === 0 ? 0 : randomInt(0, 2 ** 32);
  const m = seed % 2 ** 32;
  return m < 0 ? m + 2 ** 32 : m;
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

function openAiFinish(f: FinishReason): 'stop' | 'length' {
  // 'cancelled' reaches no client: its submitter is gone.
  return f === 'length' ? 'length' : 'stop';
}

/** Refuses OpenAI features this service does not implement, each with a 400 naming the parameter. */
function refuseUnsupported(b: CompletionBody): void {
  if ((b.n ?? 1) !== 1) throw new ApiError('invalid_request', `n = ${b.n} is not supported: rmt-serve returns exactly one choice per request (n must be 1)`, 'n', 'unsupported_parameter');
  if ((b.best_of ?? 1) !== 1) throw new ApiError('invalid_request', `best_of = ${b.best_of} is not supported (best_of must be 1)`, 'best_of', 'unsupported_parameter');
  if (b.suffix !== undefined && b.suffix !== null && b.suffix !== '') throw new ApiError('invalid_request', 'suffix is not supported: the models only continue text', 'suffix', 'unsupported_parameter');
  if (b.logit_bias && Object.keys(b.logit_bias).length > 0) throw new ApiError('invalid_request', 'logit_bias is not supported (send null or {})', 'logit_bias', 'unsupported_parameter');
}

function samplingOf(b: CompletionBody): SamplingParams {
  const temperature = b.temperature ?? DEFAULT_SAMPLING.temperature;
  const s: SamplingParams = {
    temperature,
    topK: b.top_k ?? DEFAULT_SAMPLING.topK,
    topP: b.top_p ?? DEFAULT_SAMPLING.topP,
    presencePenalty: b.presence_penalty ?? DEFAULT_SAMPLING.presencePenalty,
    frequencyPenalty: b.frequency_penalty ?? DEFAULT_SAMPLING.frequencyPenalty,
    repetitionPenalty: b.repetition_penalty ?? DEFAULT_SAMPLING.repetitionPenalty,
    seed: uint32Seed(b.seed, temperature),
  };
  try {
    return validateSampling(s);
  } catch (err) {
    throw new ApiError('invalid_request', (err as Error).message, null, 'invalid_sampling');
  }
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

function usageOf(r: RequestResult): Usage {
  const completion = r.completion?.ids.length ?? 0;
  return { prompt_tokens: r.promptTokens, completion_tokens: completion, total_tokens: r.promptTokens + completion };
}

/** A finished request's completion, or the API error it ended with. */
function completionOf(r: RequestResult): NonNullable<RequestResult['completion']> {
  if (r.error) throw fromCode(r.error.code, r.error.message);
  if (!r.completion) {
    throw new ApiError('internal', 'the request was applied but its completion text was not kept (a retried request); the session holds the result', null, 'completion_lost');
  }
  return r.completion;
}

function countTokens(r: RequestResult): void {
  apiMetrics.tokensGenerated.inc(r.completion?.ids.length ?? 0);
  apiMetrics.tokensIngested.inc(r.promptTokens);
}

function jobFailure(err: unknown): ApiError {
  const mapped = fromQueueError(err);
  if (mapped instanceof ApiError) return mapped;
  const msg = err instanceof Error ? err.message : String(err);
  return new ApiError('internal', `generation failed: ${msg}`, null, 'generation_failed');
}

/** The client went away before its answer: the request is cancelled (not run, or stopped between tokens). */
function cancelOnDisconnect(deps: ApiDeps, reply: FastifyReply, s: Submitted): void {
  const cancel = () => {
    if (!reply.raw.writableEnded) void deps.queue.cancel(s).catch(() => undefined);
  };
  // Gone already (while the request was being accepted), or later.
  if (reply.raw.destroyed || reply.raw.socket?.destroyed) cancel();
  else reply.raw.once('close', cancel);
}

export default async function completionsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(app);

  r.post('/v1/completions', {
    schema: {
      operationId: 'createCompletion', tags: ['completions'], summary: 'Create a completion',
      description: 'OpenAI-compatible. Without session_id the prompt runs in a fresh session deleted afterwards; with session_id ' +
        "the caller's session is continued and prompt + completion are appended to it. stream: true answers with server-sent events.",
      body: CompletionBody,
      response: {
        200: {
          description: 'The completion (JSON), or with stream: true its server-sent events',
          content: { 'application/json': { schema: CompletionSchema }, 'text/event-stream': { schema: CompletionEventStreamSchema } },
        },
        ...errorResponses(404, 409, 429),
      },
    },
    attachValidation: true,
  }, async (req, reply) => {
    const startedAt = performance.now();
    if (req.validationError) throw validationError(req.validationError as Error & { validation?: AjvError[] });
    const body = req.body;
    refuseUnsupported(body);

    const model = deps.catalog.get(body.model);
    if (!model) throw new ApiError('not_found', `The model '${body.model}' does not exist`, 'model', 'model_not_found');
    const tokenizer = deps.tokenizers.get(model.name);
    if (!tokenizer) throw new ApiError('unavailable', `model ${model.name} has no tokenizer loaded`, 'model', 'model_not_loaded');

    const prompt = normalizePrompt(body.prompt, model);
    const sampling = samplingOf(body);
    await admit(deps, reply);
    const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
    const request: GenerateRequest = {
      kind: 'generate', ...prompt, maxTokens: body.max_tokens ?? 16, sampling, stop,
      ...((body.logprobs ?? 0) > 0 ? { logprobs: body.logprobs! } : {}),
    };
    const tokenText = (tid: number) => tokenizer.decode([tid]);
    const promptText = 'text' in prompt ? prompt.text : tokenizer.decode(prompt.ids);

    // The session: the caller's (continued) or a fresh one for this request only.
    let sessionId: string;
    let ephemeral = false;
    if (body.session_id !== undefined) {
      const rec = await deps.store.get(body.session_id).catch(() => null);
      if (!rec || rec.owner !== req.owner) {
        throw new ApiError('not_found', `session ${body.session_id} not found`, 'session_id', 'session_not_found');
      }
      if (rec.model !== model.name) {
        throw new ApiError('conflict', `session ${rec.id} belongs to model '${rec.model}', not '${model.name}'`, 'model', 'model_mismatch');
      }
      sessionId = rec.id;
    } else {
      if ('text' in prompt && prompt.text === '') throw new ApiError('invalid_request', 'prompt must not be empty', 'prompt', 'empty_prompt');
      const rec = await deps.store.create({ model: model.name, shape: model.stateShape, dtype: model.stateDtype }, model.initState, { owner: req.owner });
      sessionId = rec.id;
      ephemeral = true;
    }
    const cleanup = async () => {
      if (ephemeral) await deps.store.delete(sessionId).catch(() => undefined);
    };

    const id = `cmpl-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const extra = body.session_id !== undefined ? { session_id: body.session_id } : {};

    if (!body.stream) {
      try {
        const submitted = await deps.queue.submit(sessionId, request, { wantResult: true }).catch((err: unknown) => {
          throw fromQueueError(err);
        });
        cancelOnDisconnect(deps, reply, submitted);
        let result: RequestResult;
        try {
          result = await deps.queue.result(submitted, RESULT_TIMEOUT_MS);
        } catch (err) {
          throw jobFailure(err);
        }
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
      } finally {
        await cleanup();
      }
    }

    return streamCompletion(deps, req, reply, {
      sessionId, request, id, created, model: model.name, extra, cleanup, startedAt,
      echo: body.echo ? promptText : '',
      tokenText,
      includeUsage: body.stream_options?.include_usage === true,
    });
  });
}

interface StreamJob {
  sessionId: string;
  request: GenerateRequest;
  id: string;
  created: number;
  model: string;
  extra: Record<string, unknown>;
  echo: string;
  tokenText(id: number): string;
  includeUsage: boolean;
  /** performance.now() when the request arrived (time to first token). */
  startedAt: number;
  cleanup(): Promise<void>;
}

async function streamCompletion(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, j: StreamJob): Promise<FastifyReply> {
  // Subscribe before submitting so no token event can be missed; events of other requests of the
  // session (other seqs) are ignored. Events before the seq is known are buffered.
  const early: ProgressEvent[] = [];
  let onEvent: ((ev: ProgressEvent) => void) | null = null;
  let over = false;
  let unsubscribe: (() => Promise<void>) | undefined;
  let submitted: Submitted;
  try {
    unsubscribe = await deps.progress.subscribe(j.sessionId, (ev) => {
      if (over) return;
      if (onEvent) onEvent(ev);
      else early.push(ev);
    });
    submitted = await deps.queue.submit(j.sessionId, j.request, { wantResult: true });
  } catch (err) {
    await unsubscribe?.();
    await j.cleanup();
    throw fromQueueError(err);
  }
  const seq = submitted.seq;
  cancelOnDisconnect(deps, reply, submitted);

  // Everything from here on is reported inside the stream.
  const out = new PassThrough();
  out.on('error', () => undefined);
  let closed = false;
  const markClosed = () => (closed = true);
  out.on('close', markClosed);
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) markClosed();
  });
  const send = (data: unknown) => {
    if (closed || out.destroyed || out.writableEnded) return;
    out.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  const chunk = (text: string, finish: 'stop' | 'length' | null, logprobs: OpenAiLogprobs | null = null) => ({
    id: j.id, object: 'text_completion', created: j.created, model: j.model,
    choices: [{ text, index: 0, logprobs, finish_reason: finish }],
    ...(j.includeUsage ? { usage: null } : {}),
    ...j.extra,
  });

  let streamed = '';
  let nextIndex = 0;
  let lastTokenAt: number | undefined;
  let doneEvent: RequestResult | undefined;
  let signalDone: (() => void) | undefined;
  const donePromise = new Promise<void>((resolve) => (signalDone = resolve));

  if (j.echo) send(chunk(j.echo, null));
  const handle = (ev: ProgressEvent) => {
    if (ev.seq !== seq) return;
    if (ev.type === 'token') {
      // A retried job re-publishes nothing it already published, but guard against duplicates anyway.
      if (ev.index < nextIndex) return;
      nextIndex = ev.index + 1;
      const now = performance.now();
      if (lastTokenAt === undefined) apiMetrics.ttft.observe((now - j.startedAt) / 1000);
      else apiMetrics.interToken.observe((now - lastTokenAt) / 1000);
      lastTokenAt = now;
      if (ev.logprob) {
        // With logprobs every token gets its chunk (its text may be '' while a stop prefix or a split
        // character is held back); text_offset counts the text streamed so far.
        const lp = openAiLogprobs([ev.id], [ev.logprob], j.tokenText, j.echo.length + streamed.length);
        streamed += ev.text;
        send(chunk(ev.text, null, lp));
        return;
      }
      if (ev.text === '') return;
      streamed += ev.text;
      send(chunk(ev.text, null));
    } else if (ev.type === 'done') {
      doneEvent = ev.result;
      signalDone?.();
    }
  };
  for (const ev of early) handle(ev);
  onEvent = handle;

  const finish = (async () => {
    try {
      let result: RequestResult;
      try {
        result = await Promise.race([
          deps.queue.result(submitted, RESULT_TIMEOUT_MS),
          donePromise.then(() => doneEvent!),
        ]);
      } catch (err) {
        throw jobFailure(err);
      }
      // The job's result can overtake the last token events (another connection): give them a moment.
      if (!doneEvent) {
        let t: NodeJS.Timeout | undefined;
        await Promise.race([donePromise, new Promise<void>((res) => (t = setTimeout(res, DONE_GRACE_MS)))]);
        clearTimeout(t);
      }
      const c = completionOf(result);
      countTokens(result);
      // Text the worker held back (a possible stop-sequence prefix, flushed at the end) or events missed.
      const rest = c.text.startsWith(streamed) ? c.text.slice(streamed.length) : '';
      if (rest) send(chunk(rest, null));
      send(chunk('', openAiFinish(c.finishReason)));
      if (j.includeUsage) send({ id: j.id, object: 'text_completion', created: j.created, model: j.model, choices: [], usage: usageOf(result), ...j.extra });
    } catch (err) {
      const api = err instanceof ApiError ? err : jobFailure(err);
      if (api.status >= 500) req.log.error({ err }, 'streamed completion failed');
      send(api.body());
    } finally {
      send('[DONE]');
      if (!out.destroyed && !out.writableEnded) out.end();
      over = true;
      await unsubscribe?.().catch(() => undefined);
      await j.cleanup();
    }
  })();
  void finish;

  return reply
    .header('content-type', 'text/event-stream')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
    .send(out);
}
