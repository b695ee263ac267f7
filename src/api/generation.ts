// What the OpenAI-compatible generation routes share (POST /v1/completions, POST /v1/chat/completions):
// validation errors as OpenAI-style 400s, sampling parameters, the request's session (the caller's,
// continued, or an ephemeral one deleted afterwards), running a generation to its result, and
// server-sent events fed from the session's progress channel, with cancel on client disconnect.
// The routes differ only in their bodies and in the shape of their responses and chunks.
import { randomInt } from 'node:crypto';
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type, type TSchema } from 'typebox';
import type { CatalogModel } from '../model/model-catalog.ts';
import type { TextTokenizer } from '../text/tokenizer.ts';
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from '../text/sampling.ts';
import type { FinishReason, GenerateRequest, ProgressEvent, RequestResult } from '../queue/request.ts';
import type { Submitted } from '../queue/request-queue.ts';
import type { ApiDeps } from './deps.ts';
import { ApiError, fromCode, modelNotFound } from './errors.ts';
import { MAX_STOP_SEQUENCES } from '../queue/generate-request.ts';
import { apiMetrics, requestModel } from './metrics.ts';
import { CompletionEventStreamSchema, errorResponses } from './schemas.ts';
import { fromQueueError } from './queue-errors.ts';
import { sessionOfModel } from './session-access.ts';

/** Longest a request waits for its result before answering 503 (the worker still finishes it). */
export const RESULT_TIMEOUT_MS = 10 * 60_000;

export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** `stop` as every route and the websocket accept it. */
export const StopSchema = Nullable(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: MAX_STOP_SEQUENCES })]));
export const STOP_SHAPE = `stop must be null, a string or an array of at most ${MAX_STOP_SEQUENCES} strings`;

// Schema errors are rendered by one function for every route (validation-error.ts); re-exported for the routes.
export { validationError, type AjvError } from './validation-error.ts';

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

/** The request field of each SamplingParams field (text/sampling.ts names them in camelCase). */
const SAMPLING_FIELDS: Record<string, keyof SamplingFields> = {
  temperature: 'temperature', topK: 'top_k', topP: 'top_p', presencePenalty: 'presence_penalty',
  frequencyPenalty: 'frequency_penalty', repetitionPenalty: 'repetition_penalty', seed: 'seed',
};

/**
 * A request's sampling parameters, defaults (DEFAULT_SAMPLING) filled in; a value out of range is a 400
 * invalid_sampling naming the request's field (`top_p`, not the engine's `topP`). Every route and the
 * websocket's generate message use this, so one body gets one sampling whichever way it came.
 */
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
    const msg = (err as Error).message;
    const field = Object.keys(SAMPLING_FIELDS).find((k) => msg.startsWith(`${k} `));
    const param = field ? SAMPLING_FIELDS[field]! : null;
    throw new ApiError('invalid_request', field ? `${param}${msg.slice(field.length)}` : msg, param, 'invalid_sampling');
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

export function jobFailure(err: unknown): ApiError {
  const mapped = fromQueueError(err);
  if (mapped instanceof ApiError) return mapped;
  const msg = err instanceof Error ? err.message : String(err);
  return new ApiError('internal', `generation failed: ${msg}`, null, 'generation_failed');
}

/** The client went away before its answer: the request is cancelled (not run, or stopped between tokens). */
/** The requests to cancel when a reply's client goes away: one 'close' listener per reply, however many choices it runs. */
const toCancel = new WeakMap<FastifyReply, Submitted[]>();

export function cancelOnDisconnect(deps: ApiDeps, reply: FastifyReply, s: Submitted): void {
  const unanswered = () => !reply.raw.writableEnded;
  // Gone already (while the request was being accepted), or later.
  if (reply.raw.destroyed || reply.raw.socket?.destroyed) {
    if (unanswered()) void deps.queue.cancel(s).catch(() => undefined);
    return;
  }
  const list = toCancel.get(reply);
  if (list) {
    list.push(s);
    return;
  }
  toCancel.set(reply, [s]);
  reply.raw.once('close', () => {
    if (!unanswered()) return;
    for (const x of toCancel.get(reply) ?? []) void deps.queue.cancel(x).catch(() => undefined);
  });
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
  deps: ApiDeps, owner: string | undefined, model: CatalogModel, sessionId: string | undefined, emptyPrompt?: ApiError,
): Promise<GenerationSession> {
  if (sessionId !== undefined) {
    const rec = await sessionOfModel(deps, owner, sessionId, model);
    return { id: rec.id, ephemeral: false, cleanup: async () => undefined };
  }
  if (emptyPrompt) throw emptyPrompt;
  const id = await freshSession(deps, model, owner);
  return { id, ephemeral: true, cleanup: async () => void (await deps.store.delete(id).catch(() => undefined)) };
}

/**
 * A new session of `model` at its initial state, owned by `owner` (the caller deletes it).
 * A stateless completion runs in one too, on purpose: the queue's guarantees are per session (its
 * request log, the compare-and-set commits a retried job resumes from when its worker dies mid-prompt,
 * results, cancel and progress channels), and the session costs one Redis hash of the model's initial
 * memory (kilobytes), deleted when the request ends.
 */
export async function freshSession(deps: ApiDeps, model: CatalogModel, owner: string | undefined): Promise<string> {
  return (await deps.store.create({ model: model.name, shape: model.stateShape, dtype: model.stateDtype }, model.initState, { owner })).id;
}

/** The model a generation route names, and its tokenizer; tags the request's metrics with it. */
export function generationModel(deps: ApiDeps, req: FastifyRequest, name: string): { model: CatalogModel; tokenizer: TextTokenizer } {
  const model = deps.catalog.get(name);
  if (!model) throw modelNotFound(name);
  requestModel(req, model.name);
  const tokenizer = deps.tokenizers.get(model.name);
  if (!tokenizer) throw new ApiError('unavailable', `model ${model.name} has no tokenizer loaded`, 'model', 'model_not_loaded');
  return { model, tokenizer };
}

/** A generation route's responses: the object (JSON) or its server-sent events, and its own error statuses. */
export function generationResponses(what: string, json: TSchema) {
  return {
    200: {
      description: `The ${what} (JSON), or with stream: true its server-sent events`,
      content: { 'application/json': { schema: json }, 'text/event-stream': { schema: CompletionEventStreamSchema } },
    },
    ...errorResponses(404, 409, 429),
  };
}

/** Submits `request` to the session and waits for its result (cancelled if the client leaves). */
export async function runToResult(deps: ApiDeps, reply: FastifyReply, sessionId: string, request: GenerateRequest): Promise<RequestResult> {
  const submitted = await deps.queue.submit(sessionId, request, { wantResult: true }).catch((err: unknown) => {
    throw fromQueueError(err);
  });
  cancelOnDisconnect(deps, reply, submitted);
  try {
    return await deps.queue.result(submitted, RESULT_TIMEOUT_MS);
  } catch (err) {
    throw jobFailure(err);
  }
}

/** Runs a generation to its result (not streamed); the session is cleaned up either way. */
export async function generateOnce(deps: ApiDeps, reply: FastifyReply, session: GenerationSession, request: GenerateRequest): Promise<RequestResult> {
  try {
    return await runToResult(deps, reply, session.id, request);
  } finally {
    await session.cleanup();
  }
}

export type TokenEvent = Extract<ProgressEvent, { type: 'token' }>;

/** The route's chunks of a streamed generation (each is sent as one `data:` event); `index`: the choice's. */
export interface StreamFormat {
  /** Sent before any token of the choice. */
  opening(index: number): unknown[];
  /** The chunk for a generated token, or undefined for none; `streamed`: the choice's text streamed before it. */
  token(index: number, ev: TokenEvent, streamed: string): unknown;
  /** A chunk of plain text (the worker held it back, or its events were missed). */
  text(index: number, text: string): unknown;
  /** The last chunk of the choice. */
  finish(index: number, reason: 'stop' | 'length'): unknown;
  /** The usage chunk, after every choice finished; undefined: none is sent. */
  usage?(usage: Usage): unknown;
}

/** One streamed choice: a generate request on its own session (several choices: several sessions). */
export interface StreamJob {
  index: number;
  sessionId: string;
  request: GenerateRequest;
}

export interface StreamOptions {
  /** performance.now() when the request arrived (time to first token). */
  startedAt: number;
  /** Prompt tokens read before the stream (a prompt read once for several choices), for usage. */
  promptTokens?: number;
  /** Runs when the stream ends (the request's ephemeral sessions are deleted). */
  cleanup(): Promise<void>;
}

/** Submits every job, each subscribed first so no token event is missed; on a failure none stays subscribed. */
async function submitAll(deps: ApiDeps, jobs: StreamJob[], onEvent: (job: number, ev: ProgressEvent) => void): Promise<{ subs: Submitted[]; unsubscribe(): Promise<void> }> {
  const unsubs: (() => Promise<void>)[] = [];
  const unsubscribe = async () => {
    for (const u of unsubs) await u().catch(() => undefined);
  };
  try {
    const subs: Submitted[] = [];
    for (const [j, job] of jobs.entries()) {
      unsubs.push(await deps.progress.subscribe(job.sessionId, (ev) => onEvent(j, ev)));
      subs.push(await deps.queue.submit(job.sessionId, job.request, { wantResult: true }));
    }
    return { subs, unsubscribe };
  } catch (err) {
    await unsubscribe();
    throw fromQueueError(err);
  }
}

/**
 * Streams generations as server-sent events, their chunks interleaved: per choice the format's opening
 * chunks, a chunk per token event of its session's progress channel, the rest of the text and the
 * finish chunk; then the usage chunk and `[DONE]`. Errors before the stream starts are thrown (plain
 * JSON errors); later ones are sent as an error event.
 */
export async function streamGeneration(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, jobs: StreamJob[], fmt: StreamFormat, o: StreamOptions): Promise<FastifyReply> {
  // Events before a job's seq is known are buffered; events of other requests of a session are ignored.
  const early: [number, ProgressEvent][] = [];
  let handle: ((j: number, ev: ProgressEvent) => void) | null = null;
  let over = false;
  let submitted: Awaited<ReturnType<typeof submitAll>>;
  try {
    submitted = await submitAll(deps, jobs, (j, ev) => {
      if (over) return;
      if (handle) handle(j, ev);
      else early.push([j, ev]);
    });
  } catch (err) {
    await o.cleanup();
    throw err;
  }
  for (const s of submitted.subs) cancelOnDisconnect(deps, reply, s);

  // Everything from here on is reported inside the stream.
  const out = new PassThrough();
  out.on('error', () => undefined);
  let closed = false;
  out.on('close', () => (closed = true));
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) closed = true;
  });
  const send = (data: unknown) => {
    if (data === undefined || closed || out.destroyed || out.writableEnded) return;
    out.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };

  // finished: its rest and finish chunk were sent; a token event arriving after that is not sent again.
  const state = jobs.map((job) => ({ job, streamed: '', nextIndex: 0, finished: false }));
  let lastTokenAt: number | undefined;
  for (const s of state) for (const c of fmt.opening(s.job.index)) send(c);
  handle = (j, ev) => {
    const s = state[j]!;
    if (ev.seq !== submitted.subs[j]!.seq || s.finished) return;
    if (ev.type === 'token') {
      // A retried job re-publishes nothing it already published, but guard against duplicates anyway.
      if (ev.index < s.nextIndex) return;
      s.nextIndex = ev.index + 1;
      const now = performance.now();
      if (lastTokenAt === undefined) apiMetrics.ttft.observe((now - o.startedAt) / 1000);
      else apiMetrics.interToken.observe((now - lastTokenAt) / 1000);
      lastTokenAt = now;
      const c = fmt.token(s.job.index, ev, s.streamed);
      s.streamed += ev.text;
      send(c);
    }
  };
  for (const [j, ev] of early) handle(j, ev);

  const finishOne = async (j: number): Promise<{ prompt: number; generated: number }> => {
    const s = state[j]!;
    // The result has one source, the queue. It resolves on the session's 'done' event, which the one
    // progress hub (deps-factory.ts) delivers after every token event of the request; if that event
    // was missed and the stored result answered instead, the text not streamed goes out below.
    let result: RequestResult;
    try {
      result = await deps.queue.result(submitted.subs[j]!, RESULT_TIMEOUT_MS);
    } catch (err) {
      throw jobFailure(err);
    }
    const c = completionOf(result);
    // Text the worker held back (a possible stop-sequence prefix, flushed at the end) or events missed.
    const rest = c.text.startsWith(s.streamed) ? c.text.slice(s.streamed.length) : '';
    s.finished = true;
    if (rest) send(fmt.text(s.job.index, rest));
    send(fmt.finish(s.job.index, openAiFinish(c.finishReason)));
    return { prompt: result.promptTokens, generated: c.ids.length };
  };

  void (async () => {
    try {
      const counts = await Promise.all(state.map((_, j) => finishOne(j)));
      const prompt = (o.promptTokens ?? 0) + counts.reduce((a, c) => a + c.prompt, 0);
      const generated = counts.reduce((a, c) => a + c.generated, 0);
      if (fmt.usage) send(fmt.usage({ prompt_tokens: prompt, completion_tokens: generated, total_tokens: prompt + generated }));
    } catch (err) {
      const api = err instanceof ApiError ? err : jobFailure(err);
      if (api.status >= 500) req.log.error({ err }, 'streamed generation failed');
      send(api.body());
    } finally {
      send('[DONE]');
      if (!out.destroyed && !out.writableEnded) out.end();
      over = true;
      await submitted.unsubscribe();
      await o.cleanup();
    }
  })();

  return reply
    .header('content-type', 'text/event-stream')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
    .send(out);
}
