// What the OpenAI-compatible generation routes share (POST /v1/completions, POST /v1/chat/completions):
// validation errors as OpenAI-style 400s, sampling parameters, the request's session (the caller's,
// continued, or an ephemeral one deleted afterwards), running a generation to its result, and
// server-sent events fed from the session's progress channel, with cancel on client disconnect.
// The routes differ only in their bodies and in the shape of their responses and chunks.
import { randomInt } from 'node:crypto';
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type, type TSchema } from 'typebox';
import type { CatalogModel } from '../engine/model-catalog.ts';
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from '../engine/sampling.ts';
import type { FinishReason, GenerateRequest, ProgressEvent, RequestResult } from '../queue/request.ts';
import type { Submitted } from '../queue/request-queue.ts';
import type { ApiDeps } from './deps.ts';
import { ApiError, fromCode } from './errors.ts';
import { apiMetrics } from './metrics.ts';
import { fromQueueError } from './queue-errors.ts';

/** Longest a request waits for its result before answering 503 (the worker still finishes it). */
export const RESULT_TIMEOUT_MS = 10 * 60_000;
/** After the job's result arrives, how long to wait for the progress channel's 'done' (late token events). */
export const DONE_GRACE_MS = 1_000;

export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** `stop` as both routes accept it. */
export const StopSchema = Nullable(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 4 })]));
export const STOP_SHAPE = 'stop must be null, a string or an array of at most 4 strings';

export interface AjvError {
  keyword?: string;
  instancePath?: string;
  message?: string;
  params?: { missingProperty?: string; additionalProperty?: string };
}

/**
 * Validation errors as OpenAI-style 400s that name the offending parameter. `shapes`: what a
 * union-typed top-level field accepts, for its message (ajv's first-branch message would mislead).
 */
export function validationError(err: Error & { validation?: AjvError[] }, shapes: Record<string, string>): ApiError {
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
  const shape = shapes[top];
  const message = shape ?? `${param ?? 'body'} ${first.message ?? 'is invalid'}`;
  return new ApiError('invalid_request', `invalid request body: ${message}`, param ?? null, 'invalid_type');
}

export function uint32Seed(seed: number | null | undefined, temperature: number): number {
  if (seed === undefined || seed === null) return temperature === 0 ? 0 : randomInt(0, 2 ** 32);
  const m = seed % 2 ** 32;
  return m < 0 ? m + 2 ** 32 : m;
}

export function openAiFinish(f: FinishReason): 'stop' | 'length' {
  // 'cancelled' reaches no client: its submitter is gone.
  return f === 'length' ? 'length' : 'stop';
}

/** The sampling fields of an OpenAI-style body (top_k and repetition_penalty are extensions). */
export interface SamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  seed?: number | null;
}

export function samplingOf(b: SamplingFields): SamplingParams {
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

export function stopList(stop: string | string[] | null | undefined): string[] {
  return stop === undefined || stop === null ? [] : typeof stop === 'string' ? [stop] : stop;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(r: RequestResult): Usage {
  const completion = r.completion?.ids.length ?? 0;
  return { prompt_tokens: r.promptTokens, completion_tokens: completion, total_tokens: r.promptTokens + completion };
}

/** A finished request's completion, or the API error it ended with. */
export function completionOf(r: RequestResult): NonNullable<RequestResult['completion']> {
  if (r.error) throw fromCode(r.error.code, r.error.message);
  if (!r.completion) {
    throw new ApiError('internal', 'the request was applied but its completion text was not kept (a retried request); the session holds the result', null, 'completion_lost');
  }
  return r.completion;
}

export function countTokens(r: RequestResult): void {
  apiMetrics.tokensGenerated.inc(r.completion?.ids.length ?? 0);
  apiMetrics.tokensIngested.inc(r.promptTokens);
}

export function jobFailure(err: unknown): ApiError {
  const mapped = fromQueueError(err);
  if (mapped instanceof ApiError) return mapped;
  const msg = err instanceof Error ? err.message : String(err);
  return new ApiError('internal', `generation failed: ${msg}`, null, 'generation_failed');
}

/** The client went away before its answer: the request is cancelled (not run, or stopped between tokens). */
export function cancelOnDisconnect(deps: ApiDeps, reply: FastifyReply, s: Submitted): void {
  const cancel = () => {
    if (!reply.raw.writableEnded) void deps.queue.cancel(s).catch(() => undefined);
  };
  // Gone already (while the request was being accepted), or later.
  if (reply.raw.destroyed || reply.raw.socket?.destroyed) cancel();
  else reply.raw.once('close', cancel);
}

export interface GenerationSession {
  id: string;
  /** Created for this request: deleted by cleanup(). */
  ephemeral: boolean;
  cleanup(): Promise<void>;
}

/**
 * The session a generation runs in: the caller's (sessionId, checked for owner and model) or a fresh
 * one of the model for this request only. `emptyPrompt`: thrown instead of creating a fresh session
 * (a fresh session with nothing to continue from).
 */
export async function openSession(
  deps: ApiDeps, owner: string, model: CatalogModel, sessionId: string | undefined, emptyPrompt?: ApiError,
): Promise<GenerationSession> {
  if (sessionId !== undefined) {
    const rec = await deps.store.get(sessionId).catch(() => null);
    if (!rec || rec.owner !== owner) {
      throw new ApiError('not_found', `session ${sessionId} not found`, 'session_id', 'session_not_found');
    }
    if (rec.model !== model.name) {
      throw new ApiError('conflict', `session ${rec.id} belongs to model '${rec.model}', not '${model.name}'`, 'model', 'model_mismatch');
    }
    return { id: rec.id, ephemeral: false, cleanup: async () => undefined };
  }
  if (emptyPrompt) throw emptyPrompt;
  const rec = await deps.store.create({ model: model.name, shape: model.stateShape, dtype: model.stateDtype }, model.initState, { owner });
  return { id: rec.id, ephemeral: true, cleanup: async () => void (await deps.store.delete(rec.id).catch(() => undefined)) };
}

/** Runs a generation to its result (not streamed); the session is cleaned up either way. */
export async function generateOnce(deps: ApiDeps, reply: FastifyReply, session: GenerationSession, request: GenerateRequest): Promise<RequestResult> {
  try {
    const submitted = await deps.queue.submit(session.id, request, { wantResult: true }).catch((err: unknown) => {
      throw fromQueueError(err);
    });
    cancelOnDisconnect(deps, reply, submitted);
    try {
      return await deps.queue.result(submitted, RESULT_TIMEOUT_MS);
    } catch (err) {
      throw jobFailure(err);
    }
  } finally {
    await session.cleanup();
  }
}

export type TokenEvent = Extract<ProgressEvent, { type: 'token' }>;

/** The route's chunks of a streamed generation (each is sent as one `data:` event). */
export interface StreamFormat {
  /** Sent before any token. */
  opening: unknown[];
  /** The chunk for a generated token, or undefined for none; `streamed`: the text streamed before it. */
  token(ev: TokenEvent, streamed: string): unknown;
  /** A chunk of plain text (the worker held it back, or its events were missed). */
  text(text: string): unknown;
  /** The last chunk of the choice. */
  finish(reason: 'stop' | 'length'): unknown;
  /** The usage chunk; undefined: none is sent. */
  usage?(usage: Usage): unknown;
}

export interface StreamJob {
  session: GenerationSession;
  request: GenerateRequest;
  /** performance.now() when the request arrived (time to first token). */
  startedAt: number;
}

/**
 * Streams a generation as server-sent events: the format's opening chunks, a chunk per token event of
 * the session's progress channel, the rest of the text, the finish chunk, the usage chunk, `[DONE]`.
 * Errors before the stream starts are thrown (plain JSON errors); later ones are sent as an error event.
 */
export async function streamGeneration(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, j: StreamJob, fmt: StreamFormat): Promise<FastifyReply> {
  // Subscribe before submitting so no token event can be missed; events of other requests of the
  // session (other seqs) are ignored. Events before the seq is known are buffered.
  const early: ProgressEvent[] = [];
  let onEvent: ((ev: ProgressEvent) => void) | null = null;
  let over = false;
  let unsubscribe: (() => Promise<void>) | undefined;
  let submitted: Submitted;
  try {
    unsubscribe = await deps.progress.subscribe(j.session.id, (ev) => {
      if (over) return;
      if (onEvent) onEvent(ev);
      else early.push(ev);
    });
    submitted = await deps.queue.submit(j.session.id, j.request, { wantResult: true });
  } catch (err) {
    await unsubscribe?.();
    await j.session.cleanup();
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
    if (data === undefined || closed || out.destroyed || out.writableEnded) return;
    out.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };

  let streamed = '';
  let nextIndex = 0;
  let lastTokenAt: number | undefined;
  let doneEvent: RequestResult | undefined;
  let signalDone: (() => void) | undefined;
  const donePromise = new Promise<void>((resolve) => (signalDone = resolve));

  for (const c of fmt.opening) send(c);
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
      const c = fmt.token(ev, streamed);
      streamed += ev.text;
      send(c);
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
      if (rest) send(fmt.text(rest));
      send(fmt.finish(openAiFinish(c.finishReason)));
      if (fmt.usage) send(fmt.usage(usageOf(result)));
    } catch (err) {
      const api = err instanceof ApiError ? err : jobFailure(err);
      if (api.status >= 500) req.log.error({ err }, 'streamed completion failed');
      send(api.body());
    } finally {
      send('[DONE]');
      if (!out.destroyed && !out.writableEnded) out.end();
      over = true;
      await unsubscribe?.().catch(() => undefined);
      await j.session.cleanup();
    }
  })();
  void finish;

  return reply
    .header('content-type', 'text/event-stream')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
    .send(out);
}
