// `ingest` and `generate` without the HTTP API: an in-process worker on the same Redis, requests
// submitted through the same queue. Progress counts what the worker has *applied* (the session's
// progress events), and a command returns once its requests are applied, never when merely sent.
// What they print is in the API's shapes: the session as GET /v1/sessions/{id} shows it.
import { readFile } from 'node:fs/promises';
import { ConfigError, type Config } from '../config/config.ts';
import { DEFAULT_SAMPLING } from '../text/sampling.ts';
import { DEFAULT_COMPLETION_MAX_TOKENS, generateRequest } from '../queue/generate-request.ts';
import { uint32Seed } from '../api/generation.ts';
import { sessionObject } from '../api/routes/sessions.ts';
import { ProgressHub } from '../queue/progress-hub.ts';
import { keyLayout } from '../state/redis-connection.ts';
import type { ProgressEvent, RequestResult, SegmentScore, SessionRequest } from '../queue/request.ts';
import { startClientRuntime } from '../queue/client-runtime.ts';
import { startWorkerRuntime, type WorkerRuntime } from '../worker/runtime.ts';
import type { Log } from '../telemetry/log.ts';
import type { Values } from './args.ts';
import { ProgressBar } from './progress-bar.ts';

/** The CLI waits for each request as long as it takes (an hour bounds a wait that never ends). */
const RESULT_WAIT_MS = 3_600_000;

interface Opened {
  rt: WorkerRuntime;
  sessionId: string;
  events: ProgressHub;
  onEvent(fn: (ev: ProgressEvent) => void): void;
}

async function openSession(config: Config, log: Log, modelArg: string | undefined, sessionArg: string | undefined): Promise<Opened> {
  const rt = await startWorkerRuntime(config, log);
  try {
    let sessionId = sessionArg;
    if (sessionId) {
      if (!(await rt.store.get(sessionId))) throw new ConfigError(`session ${sessionId} not found (never created, deleted or expired; prefix ${config.keyPrefix})`);
    } else {
      const model = rt.engine.model(modelArg ?? config.models[0]!);
      sessionId = (await rt.store.create({ model: model.name, shape: model.stateShape, dtype: model.stateDtype }, model.initState)).id;
    }
    const events = new ProgressHub(rt.redis, config.keyPrefix, keyLayout(config));
    const listeners: ((ev: ProgressEvent) => void)[] = [];
    await events.subscribe(sessionId, (ev) => listeners.forEach((l) => l(ev)));
    return { rt, sessionId, events, onEvent: (fn) => listeners.push(fn) };
  } catch (err) {
    await rt.close(0);
    throw err;
  }
}

/** Splits text into pieces of about `chars` UTF-16 units, never inside a surrogate pair (each piece is valid Unicode). */
export function splitText(text: string, chars: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; ) {
    let end = Math.min(text.length, i + chars);
    const c = text.charCodeAt(end - 1);
    if (end < text.length && c >= 0xd800 && c <= 0xdbff) end++;
    out.push(text.slice(i, end));
    i = end;
  }
  return out;
}

/**
 * Applied share of a run of requests, from the worker's events: requests finished count whole, the
 * one running by its tokens consumed (segment events), weighted by characters so the total is known
 * before the worker has tokenized the later ones.
 */
class Applied {
  private readonly indexOf = new Map<number, number>();
  private finishedChars = 0;
  private runningChars = 0;
  tokens = 0;
  segments = 0;
  finished = 0;

  constructor(private readonly chars: number[], start: { tokens: number; segments: number }) {
    this.tokens = start.tokens;
    this.segments = start.segments;
  }

  submitted(index: number, seq: number): void {
    this.indexOf.set(seq, index);
  }

  event(ev: ProgressEvent): void {
    if (ev.type !== 'segment') return;
    this.tokens = Math.max(this.tokens, ev.tokensIngested);
    this.segments = Math.max(this.segments, ev.segmentsCommitted);
    const i = this.indexOf.get(ev.seq);
    if (i !== undefined && i >= this.finished && ev.requestTokens > 0) this.runningChars = this.chars[i]! * Math.min(1, ev.requestConsumed / ev.requestTokens);
  }

  done(r: RequestResult): void {
    this.finishedChars += this.chars[this.finished++]!;
    this.runningChars = 0;
    this.tokens = Math.max(this.tokens, r.tokensIngested);
    this.segments = Math.max(this.segments, r.segmentsCommitted);
  }

  fraction(): number {
    const total = this.chars.reduce((a, b) => a + b, 0);
    return total === 0 ? (this.finished === this.chars.length ? 1 : 0) : (this.finishedChars + this.runningChars) / total;
  }

  detail(): string {
    return `tokens ${this.tokens}, segments ${this.segments}, pending requests ${this.chars.length - this.finished}`;
  }
}

/** Submits in order and waits for each result (so for all to be applied); a failed request fails the command. */
async function submitAndWait(config: Config, s: Opened, requests: SessionRequest[], applied: Applied): Promise<RequestResult[]> {
  const client = startClientRuntime(config);
  try {
    const submitted = [];
    for (const [i, r] of requests.entries()) {
      const sub = await client.queue.submit(s.sessionId, r, { wantResult: true });
      applied.submitted(i, sub.seq);
      submitted.push(sub);
    }
    const results: RequestResult[] = [];
    for (const j of submitted) {
      const r = await client.queue.result(j, RESULT_WAIT_MS);
      if (r.error) throw new Error(`request ${j.seq} of session ${s.sessionId} failed: ${r.error.code}: ${r.error.message}`);
      applied.done(r);
      results.push(r);
    }
    return results;
  } finally {
    await client.close();
  }
}

async function sessionJson(s: Opened): Promise<ReturnType<typeof sessionObject>> {
  const rec = await s.rt.store.get(s.sessionId);
  if (!rec) throw new Error(`session ${s.sessionId} disappeared (deleted or expired)`);
  return sessionObject(rec);
}

function positiveInt(values: Values, name: string, def: number): number {
  const raw = values[name];
  const n = raw === undefined ? def : Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(`--${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

export async function runIngest(config: Config, log: Log, values: Values): Promise<void> {
  if (typeof values.file !== 'string') throw new ConfigError('ingest needs --file PATH (rmt-serve ingest --help)');
  const text = await readFile(values.file, 'utf8');
  const pieces = splitText(text, positiveInt(values, 'chunk-chars', 65536));
  const s = await openSession(config, log, values.model as string | undefined, values.session as string | undefined);
  try {
    // The last piece flushes the text held back for exact tokenization: every token of the file is applied.
    const score = values.score === true;
    const requests: SessionRequest[] = pieces.map((t, i) => ({ kind: 'ingest', text: t, flush: i === pieces.length - 1, score }));
    if (requests.length === 0) requests.push({ kind: 'ingest', text: '', flush: true });
    const before = await sessionJson(s);
    const applied = new Applied(requests.map((r) => (r.kind === 'ingest' ? r.text?.length ?? 0 : 0)),
      { tokens: before.tokens_ingested, segments: before.segments_committed });
    const bar = new ProgressBar('ingest', { plain: values['no-progress'] === true });
    s.onEvent((ev) => {
      applied.event(ev);
      bar.update(applied.fraction(), applied.detail());
    });
    const results = await submitAndWait(config, s, requests, applied);
    const session = await sessionJson(s);
    bar.end(1, `tokens ${session.tokens_ingested}, segments ${session.segments_committed}, pending requests ${session.pending_requests}: applied`);
    const perplexity: SegmentScore[] = results.flatMap((r) => r.scores ?? []);
    process.stdout.write(JSON.stringify({ ...session, ...(score ? { perplexity } : {}) }) + '\n');
  } finally {
    await s.events.close();
    await s.rt.close(0);
  }
}

export async function runGenerate(config: Config, log: Log, values: Values): Promise<void> {
  const prompt = typeof values.file === 'string' ? await readFile(values.file, 'utf8') : typeof values.prompt === 'string' ? values.prompt : undefined;
  if (prompt === undefined && typeof values.session !== 'string') throw new ConfigError('generate needs --prompt TEXT, --file PATH or --session ID (rmt-serve generate --help)');
  const num = (k: string, d: number) => {
    const n = values[k] === undefined ? d : Number(values[k]);
    if (!Number.isFinite(n)) throw new ConfigError(`--${k} must be a number, got ${JSON.stringify(values[k])}`);
    return n;
  };
  // The API's defaults (DEFAULT_SAMPLING, max_tokens 16, a random seed unless greedy): the same request, the same behaviour.
  const temperature = num('temperature', DEFAULT_SAMPLING.temperature);
  const sampling = {
    ...DEFAULT_SAMPLING,
    temperature,
    topK: num('top-k', DEFAULT_SAMPLING.topK),
    topP: num('top-p', DEFAULT_SAMPLING.topP),
    seed: uint32Seed(values.seed === undefined ? undefined : num('seed', 0), temperature),
  };
  // The API's limits and defaults (queue/generate-request.ts); checked before a session is opened.
  const maxTokens = positiveInt(values, 'max-tokens', DEFAULT_COMPLETION_MAX_TOKENS);
  const stop = (values.stop as string[] | undefined) ?? [];
  let generate: (text: string) => SessionRequest;
  try {
    generateRequest({ maxTokens, sampling, stop });
    generate = (text) => generateRequest({ text, maxTokens, sampling, stop });
  } catch (err) {
    throw new ConfigError(`generate: ${(err as Error).message}`);
  }
  const s = await openSession(config, log, values.model as string | undefined, values.session as string | undefined);
  try {
    // A long prompt goes in as several requests; the last carries the generation.
    const pieces = splitText(prompt ?? '', 65536);
    const last = pieces.pop() ?? '';
    const requests: SessionRequest[] = pieces.map((t) => ({ kind: 'ingest', text: t }));
    requests.push(generate(last));
    const before = await sessionJson(s);
    const applied = new Applied([...pieces, last].map((p) => p.length), { tokens: before.tokens_ingested, segments: before.segments_committed });
    const bar = new ProgressBar('prompt', { plain: values['no-progress'] === true });
    let generating = false;
    s.onEvent((ev) => {
      applied.event(ev);
      if (ev.type === 'segment' && !generating) bar.update(applied.fraction(), applied.detail());
      if (ev.type === 'token') {
        if (!generating) bar.clear();
        generating = true;
        process.stdout.write(ev.text);
      }
    });
    const r = (await submitAndWait(config, s, requests, applied)).at(-1)!;
    process.stdout.write('\n');
    const completion = r.completion?.ids.length ?? 0;
    process.stderr.write(JSON.stringify({
      session: await sessionJson(s), finish_reason: r.completion?.finishReason ?? 'length',
      usage: { prompt_tokens: r.promptTokens, completion_tokens: completion, total_tokens: r.promptTokens + completion },
    }) + '\n');
  } finally {
    await s.events.close();
    await s.rt.close(0);
  }
}
