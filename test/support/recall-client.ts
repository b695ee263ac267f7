// Asks one recall sample through the service's HTTP API, as a client would: a fresh session, the
// context appended as token ids in chunks, the question as a greedy completion on the session, and
// the same question on no session (the "reset" ablation: the initial memory). Shared by
// bench/recall-service.ts and test/long-recall.test.ts.
import type { RecallSample } from './recall-samples.ts';

export interface RecallOutcome {
  /** Generated after the context; correct = it starts with the answer (e.g. " kitchen."). */
  text: string;
  correct: boolean;
  /** Generated for the question alone, on no session. */
  resetText: string;
  resetCorrect: boolean;
}

export interface AskOptions {
  /** Ids per append (the body limit bounds it: about 6 bytes an id in JSON). */
  chunkIds?: number;
  /** Default: the answer's tokens and one more (" cinema." is 3 tokens). */
  maxTokens?: number;
  /** Skip the reset ablation's request. */
  noReset?: boolean;
}

async function call<T>(base: string, method: string, route: string, body?: unknown): Promise<T> {
  for (;;) {
    const res = await fetch(`${base}${route}`, {
      method, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
    });
    // Overloaded (more sessions waiting than RMT_MAX_QUEUE_DEPTH): wait as told, then resend.
    if (res.status === 429) {
      await res.arrayBuffer();
      await new Promise((r) => setTimeout(r, 1000 * Number(res.headers.get('retry-after') ?? 1)));
      continue;
    }
    if (!res.ok) throw new Error(`${method} ${route}: HTTP ${res.status} ${await res.text()}`);
    return (res.status === 204 ? undefined : await res.json()) as T;
  }
}

interface Completion {
  choices: { text: string }[];
}

export async function askRecall(base: string, model: string, sample: RecallSample, opts: AskOptions = {}): Promise<RecallOutcome> {
  const chunk = opts.chunkIds ?? 65_536;
  const gen = { model, prompt: sample.question, max_tokens: opts.maxTokens ?? sample.answerTokens + 1, temperature: 0 };
  const { id } = await call<{ id: string }>(base, 'POST', '/v1/sessions', { model });
  try {
    for (let from = 0; from < sample.contextTokens; from += chunk) {
      await call(base, 'POST', `/v1/sessions/${id}/append`, { ids: sample.ids(from, from + chunk) });
    }
    // The alignment the distance depends on: the context is whole segments, the last one held as the
    // full tail until the next token arrives (request-plan.ts), so the question opens a segment.
    type Counters = { tokens_ingested: number; segments_committed: number; pending_tokens: number };
    const S = sample.contextTokens / (1 + sample.distance);
    const before = await call<Counters>(base, 'GET', `/v1/sessions/${id}`);
    const text = (await call<Completion>(base, 'POST', '/v1/completions', { ...gen, session_id: id })).choices[0]!.text;
    const after = await call<Counters>(base, 'GET', `/v1/sessions/${id}`);
    if (before.tokens_ingested !== sample.contextTokens || before.segments_committed !== sample.distance || before.pending_tokens !== S
      || after.segments_committed !== 1 + sample.distance || after.pending_tokens >= S) {
      throw new Error(`session ${id}: ${JSON.stringify({ before, after })}, expected ${sample.contextTokens} tokens, then the question opening segment ${1 + sample.distance}`);
    }
    const resetText = opts.noReset ? '' : (await call<Completion>(base, 'POST', '/v1/completions', gen)).choices[0]!.text;
    return { text, correct: text.startsWith(sample.answer), resetText, resetCorrect: !opts.noReset && resetText.startsWith(sample.answer) };
  } finally {
    // Redis keeps only live samples' sessions, however many a run asks.
    await call(base, 'DELETE', `/v1/sessions/${id}`).catch(() => undefined);
  }
}
