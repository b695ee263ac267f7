// Server-sent events for /v1/completions: each choice is a generate request on its own session, fed
// from that session's progress channel; their chunks interleave in one stream (choice `index`), then
// the usage chunk (stream_options.include_usage) and [DONE].
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { GenerateRequest, ProgressEvent, RequestResult } from '../queue/request.ts';
import type { Submitted } from '../queue/request-queue.ts';
import type { ApiDeps } from './deps.ts';
import { ApiError } from './errors.ts';
import { apiMetrics } from './metrics.ts';
import { fromQueueError } from './queue-errors.ts';
import { completionOf, openAiFinish, openAiLogprobs, usage, type OpenAiLogprobs } from './completion-format.ts';

/** Longest a request waits for its result before answering 503 (the worker still finishes it). */
export const RESULT_TIMEOUT_MS = 10 * 60_000;
/** After the job's result arrives, how long to wait for the progress channel's 'done' (late token events). */
const DONE_GRACE_MS = 1_000;

/** One choice: a generate request on a session, and what its stream starts with (the echoed prompt). */
export interface ChoiceJob {
  index: number;
  sessionId: string;
  request: GenerateRequest;
  echo: string;
  echoLogprobs: OpenAiLogprobs | null;
}

export interface StreamMeta {
  id: string;
  created: number;
  model: string;
  extra: Record<string, unknown>;
  tokenText(id: number): string;
  includeUsage: boolean;
  /** Prompt tokens already counted for usage (prompts scored before the stream). */
  promptTokens: number;
  /** performance.now() when the request arrived (time to first token). */
  startedAt: number;
  cleanup(): Promise<void>;
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

/** Submits every job (subscribed first, so no token is missed); on a failure, none stays subscribed. */
async function submitAll(deps: ApiDeps, jobs: ChoiceJob[], onEvent: (job: number, ev: ProgressEvent) => void): Promise<{ subs: Submitted[]; unsubscribe(): Promise<void> }> {
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

export async function streamCompletion(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, jobs: ChoiceJob[], m: StreamMeta): Promise<FastifyReply> {
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
    await m.cleanup();
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
    if (closed || out.destroyed || out.writableEnded) return;
    out.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  };
  const chunk = (index: number, text: string, finish: 'stop' | 'length' | null, logprobs: OpenAiLogprobs | null = null) => ({
    id: m.id, object: 'text_completion', created: m.created, model: m.model,
    choices: [{ text, index, logprobs, finish_reason: finish }],
    ...(m.includeUsage ? { usage: null } : {}),
    ...m.extra,
  });

  const state = jobs.map((job) => {
    let signal!: () => void;
    const done = new Promise<void>((resolve) => (signal = resolve));
    return { job, streamed: '', nextIndex: 0, doneEvent: undefined as RequestResult | undefined, done, signal };
  });
  let lastTokenAt: number | undefined;
  for (const s of state) if (s.job.echo || s.job.echoLogprobs) send(chunk(s.job.index, s.job.echo, null, s.job.echoLogprobs));
  handle = (j, ev) => {
    const s = state[j]!;
    if (ev.seq !== submitted.subs[j]!.seq) return;
    if (ev.type === 'token') {
      // A retried job re-publishes nothing it already published, but guard against duplicates anyway.
      if (ev.index < s.nextIndex) return;
      s.nextIndex = ev.index + 1;
      const now = performance.now();
      if (lastTokenAt === undefined) apiMetrics.ttft.observe((now - m.startedAt) / 1000);
      else apiMetrics.interToken.observe((now - lastTokenAt) / 1000);
      lastTokenAt = now;
      if (ev.logprob) {
        // With logprobs every token gets its chunk (its text may be '' while a stop prefix or a split
        // character is held back); text_offset counts the text streamed so far.
        const lp = openAiLogprobs([ev.id], [ev.logprob], m.tokenText, s.job.echo.length + s.streamed.length);
        s.streamed += ev.text;
        send(chunk(s.job.index, ev.text, null, lp));
        return;
      }
      if (ev.text === '') return;
      s.streamed += ev.text;
      send(chunk(s.job.index, ev.text, null));
    } else if (ev.type === 'done') {
      s.doneEvent = ev.result;
      s.signal();
    }
  };
  for (const [j, ev] of early) handle(j, ev);

  const finishOne = async (j: number): Promise<{ prompt: number; generated: number }> => {
    const s = state[j]!;
    let result: RequestResult;
    try {
      result = await Promise.race([deps.queue.result(submitted.subs[j]!, RESULT_TIMEOUT_MS), s.done.then(() => s.doneEvent!)]);
    } catch (err) {
      throw jobFailure(err);
    }
    // The job's result can overtake the last token events (another connection): give them a moment.
    if (!s.doneEvent) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([s.done, new Promise<void>((res) => (t = setTimeout(res, DONE_GRACE_MS)))]);
      clearTimeout(t);
    }
    const c = completionOf(result);
    // Text the worker held back (a possible stop-sequence prefix, flushed at the end) or events missed.
    const rest = c.text.startsWith(s.streamed) ? c.text.slice(s.streamed.length) : '';
    if (rest) send(chunk(s.job.index, rest, null));
    send(chunk(s.job.index, '', openAiFinish(c.finishReason)));
    return { prompt: result.promptTokens, generated: c.ids.length };
  };

  void (async () => {
    try {
      const counts = await Promise.all(state.map((_, j) => finishOne(j)));
      const prompt = m.promptTokens + counts.reduce((a, c) => a + c.prompt, 0);
      const generated = counts.reduce((a, c) => a + c.generated, 0);
      if (m.includeUsage) send({ id: m.id, object: 'text_completion', created: m.created, model: m.model, choices: [], usage: usage(prompt, generated), ...m.extra });
    } catch (err) {
      const api = err instanceof ApiError ? err : jobFailure(err);
      if (api.status >= 500) req.log.error({ err }, 'streamed completion failed');
      send(api.body());
    } finally {
      send('[DONE]');
      if (!out.destroyed && !out.writableEnded) out.end();
      over = true;
      await submitted.unsubscribe();
      await m.cleanup();
    }
  })();

  return reply
    .header('content-type', 'text/event-stream')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
    .send(out);
}
