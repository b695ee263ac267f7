// Applies one request to one session: tokens go into the tail; a full tail is committed through the
// segment graph when the next token arrives (so a tail always has 1..segment_length tokens and its
// next-token logits can be recomputed); every commit is a versioned compare-and-set in Redis that
// also records how far into this request it got, so a retry resumes at the last commit: no segment is
// applied twice and none is skipped. Generation continues the same recurrence: when the tail is full,
// it is committed and decoding goes on in the next segment.
import type { ChainRef, KvHandle } from '../engine/engine.ts';
import type { ModelInfo } from '../model/model-spec.ts';
import { StopSequenceMatcher, sampleNext } from '../text/sampling.ts';
import { IncrementalDetokenizer } from '../text/tokenizer.ts';
import type { SessionRecord } from '../state/session-store.ts';
import type { LoggedRequest, RequestResult, SegmentScore, FinishReason, TokenLogprob } from '../queue/request.ts';
import { RequestError } from '../queue/request.ts';
import { performance } from 'node:perf_hooks';
import { HandoffLost, type Handoff } from './handoff.ts';
import { TokenScorer } from './token-scorer.ts';
import type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';
import { tokenLogprob } from './token-logprob.ts';
import { requestTokens } from './request-tokens.ts';
import { CommitPolicy, requestResult } from './commit-policy.ts';

function specOf(m: ModelInfo) {
  return { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
}

/**
 * Offers the session's next request a start (handoff.ts) and returns the calls that settle the
 * offer: the memory once the last segment ran, the record once the final commit landed, or lost.
 */
function offerNext(
  offer: (h: Handoff) => void, rec: SessionRecord, seq: number,
  after: { tail: number[]; pendingText: string; consumed: number; addSegments: number; addTokens: number },
  chain?: ChainRef,
): { memory(state: Float32Array): void; applied(r: SessionRecord): void; lost(err: unknown): void } {
  let setMemory!: (m: { state: Float32Array; at: number }) => void;
  let failMemory!: (e: unknown) => void;
  let setApplied!: (r: SessionRecord) => void;
  let failApplied!: (e: unknown) => void;
  const memory = new Promise<{ state: Float32Array; at: number }>((res, rej) => ((setMemory = res), (failMemory = rej)));
  const applied = new Promise<SessionRecord>((res, rej) => ((setApplied = res), (failApplied = rej)));
  // Nobody may take the offer: its rejections must not count as unhandled.
  memory.catch(() => undefined);
  applied.catch(() => undefined);
  offer({
    seq,
    record: {
      ...rec, state: new Float32Array(0), tail: [...after.tail], pendingText: after.pendingText,
      segmentsCommitted: rec.segmentsCommitted + after.addSegments, tokensIngested: rec.tokensIngested + after.addTokens,
      curSeq: seq, curOffset: after.consumed, appliedSeq: seq,
    },
    memory,
    applied,
    ...(chain ? { chain } : {}),
  });
  return {
    memory: (state) => setMemory({ state, at: performance.now() }),
    applied: (r) => setApplied(r),
    lost: (err) => {
      const lost = new HandoffLost(seq, err);
      failMemory(lost);
      failApplied(lost);
    },
  };
}

/**
 * `start`: the session as the caller just read it (one read per request; undefined: read here), or an
 * offer of the session's previous request, still landing (handoff.ts), to continue from.
 */
// The applier's signature types, for its callers.
export type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';

export async function applyRequest(ctx: ApplyContext, data: LoggedRequest, hooks: ApplyHooks, start: RequestStart = {}): Promise<RequestResult> {
  const handoff = 'handoff' in start ? start.handoff : undefined;
  const stored = 'stored' in start ? start.stored : undefined;
  let rec: SessionRecord;
  if (handoff) {
    rec = handoff.record;
  } else {
    const first = stored === undefined ? await ctx.store.get(data.sessionId) : stored;
    if (!first) throw new RequestError('session_not_found', `session ${data.sessionId} does not exist (deleted or expired)`);
    rec = ctx.store.verify(first, specOf(ctx.engine.model(first.model)));
  }
  const model = ctx.engine.model(rec.model);
  if (rec.appliedSeq >= data.seq) return { ...requestResult(rec, data.seq, 0), alreadyApplied: true };

  const S = model.segmentLength;
  const { ids, pendingAfter } = requestTokens(ctx.tokenizer(rec.model), rec.pendingText, data.request, ctx.maxPendingTextChars);
  const resumeAt = rec.curSeq === data.seq ? rec.curOffset : 0;
  const from = Math.min(resumeAt, ids.length);
  // The request's tokens (text or prompt), from where an earlier attempt stopped, as segments: a
  // segment is written to memory once the token after it arrives (a tail keeps 1..S tokens).
  // `ends[j]` is the request offset after segment j.
  const segments: number[][] = [];
  const ends: number[] = [];
  let tail = [...rec.tail];
  for (let i = from; i < ids.length; i++) {
    if (tail.length === S) {
      segments.push(tail);
      ends.push(i);
      tail = [];
    }
    tail.push(ids[i]!);
  }
  // Scored requests (an ingest with score, a generation scoring its prompt) run their segments one by
  // one and commit only at the end, so a retry scores the whole request again; a generation resumed
  // past its prompt has the prompt's scores from its log entry.
  const scoreTop = data.request.kind === 'ingest' ? (data.request.score ? 0 : undefined) : data.request.promptLogprobs;
  const scoring = scoreTop !== undefined && from < ids.length;
  if (scoring && from > 0) throw new RequestError('lost_progress', `request ${data.seq}: a scored request resumed at token ${from} of ${ids.length}`);
  // Continuing the previous request's chain still in the engine: this one's segments go there now and
  // start from its last memory in the run right after it (engine.ts, ChainRef), not a turn later.
  let continueFrom: ChainRef | undefined;
  if (handoff) {
    const prev = handoff.chain;
    const chained = segments.length > 0 && !scoring;
    if (chained && prev?.sent !== undefined && prev.final === undefined && !prev.failed) {
      continueFrom = prev;
      // Sent before the previous memory exists, the session sits no time idle: the gap is 0 unless that memory came first.
      const sentAt = performance.now();
      handoff.memory.then(({ at }) => hooks.continued?.(Math.max(0, sentAt - at)), () => undefined);
    } else {
      // Tokenized while the previous request ran; its memory is the state this one starts from.
      const { state, at } = await handoff.memory;
      hooks.continued?.(performance.now() - at);
      rec = { ...rec, state };
    }
  }
  const cur = new CommitPolicy({
    ctx, rec, model, seq: data.seq, requestTokens: ids.length, from, keepResult: data.wantResult === true, progress: hooks.progress,
    base: handoff?.applied, eager: 'eager' in start && start.eager === true,
  });

  /** The request's segments as one chain in the engine (continuing the previous request's, when it can). */
  const chainAll = async (chain?: ChainRef) => {
    await cur.chainSegments(segments, ends, { ...(continueFrom ? { from: continueFrom } : {}), ...(chain ? { chain } : {}) });
    if (continueFrom?.continued) hooks.continuedInEngine?.();
  };
  /** A scored request's segments, then its partial last one (scored, not committed: the next commit keeps it as the tail). */
  const scoreAll = async (): Promise<TokenScorer> => {
    const scorer = new TokenScorer(ctx.engine, model, rec.id, rec.tail.length, scoreTop!);
    const first = cur.rec.segmentsCommitted + 1;
    for (let j = 0; j < segments.length; j++) {
      const out = await scorer.chunk(segments[j]!, cur.memory, first + j, true);
      cur.ranSegment(out!.nextState, ends[j]!);
    }
    await scorer.chunk(tail, cur.memory, first + segments.length, false);
    return scorer;
  };

  if (data.request.kind === 'ingest') {
    let scores: SegmentScore[] | undefined;
    let result: RequestResult;
    // The chain the session's next request may continue from inside the engine (before this one lands).
    const chain: ChainRef | undefined = hooks.offer && !scoring && segments.length > 0 ? {} : undefined;
    const offer = hooks.offer
      ? offerNext(hooks.offer, rec, data.seq, { tail, pendingText: pendingAfter, consumed: ids.length, addSegments: segments.length, addTokens: ids.length - from }, chain)
      : undefined;
    try {
      if (scoring) {
        scores = (await scoreAll()).segmentScores();
      } else if (data.request.score) {
        scores = []; // a retry of a request already applied up to its end: nothing left to score
      } else if (segments.length > 0) {
        await chainAll(chain);
      }
      offer?.memory(cur.memory);
      await cur.inputDone(ids.length);
      result = await cur.commitFinal({ tail, pendingText: pendingAfter, curOffset: ids.length }, scores ? { scores } : {});
      offer?.applied(cur.rec);
    } catch (err) {
      offer?.lost(err);
      throw err;
    }
    hooks.progress({ type: 'done', seq: data.seq, result });
    return result;
  }

  const req = data.request;
  let promptLogprobs: (TokenLogprob | null)[] | undefined;
  if (scoring) {
    promptLogprobs = (await scoreAll()).logprobs;
    // Kept before the prompt's commit: a retry resumed past the prompt returns these scores.
    await hooks.saveGenerated([], req.logprobs !== undefined ? [] : undefined, promptLogprobs);
  } else if (segments.length > 0) await chainAll();
  if (req.promptLogprobs !== undefined && !scoring) promptLogprobs = data.promptLogprobs ?? [];
  await cur.inputDone(ids.length);

  // 2. Generation, from the committed state (prefill reads rec.state). Tokens generated before the last
  // commit (an earlier attempt) are already in the state.
  await cur.flush({ tail, pendingText: '', curOffset: ids.length });
  if (tail.length === 0) throw new RequestError('empty_prompt', 'generation needs a prompt or earlier text in the session');
  const generated = resumeAt > ids.length ? [...(data.generated ?? [])].slice(0, resumeAt - ids.length) : [];
  if (generated.length !== Math.max(0, resumeAt - ids.length)) {
    throw new RequestError('lost_progress', `request ${data.seq}: ${resumeAt - ids.length} tokens were committed but only ${generated.length} recorded`);
  }
  const wantLogprobs = req.logprobs !== undefined;
  const logprobs: TokenLogprob[] = wantLogprobs ? (data.generatedLogprobs ?? []).slice(0, generated.length) : [];
  const counts = new Map<number, number>();
  for (const t of generated) counts.set(t, (counts.get(t) ?? 0) + 1);
  const tok = ctx.tokenizer(model.name);
  const detok = new IncrementalDetokenizer(tok);
  const stops = new StopSequenceMatcher(req.stop);
  let text = '';
  for (const t of generated) text += stops.push(detok.push(t)).text;

  let kv: KvHandle | undefined;
  let finish: FinishReason = 'length';
  try {
    // max_tokens 0 (echo scoring the prompt alone): no prefill.
    let logits: Float32Array = new Float32Array(0);
    if (req.maxTokens > 0) ({ logits, kv } = await ctx.engine.prefill(model.name, tail, cur.rec.state));
    while (generated.length < req.maxTokens) {
      // Every generated token is in `tail` here: stopping now leaves the session consistent.
      if (hooks.cancelled?.()) {
        finish = 'cancelled';
        break;
      }
      const next = sampleNext(logits, req.sampling, counts, generated.length);
      if (next === model.specialTokens.eos) {
        finish = 'eos';
        break;
      }
      generated.push(next);
      const lp = wantLogprobs ? tokenLogprob(logits, next, req.logprobs!) : undefined;
      if (lp) logprobs.push(lp);
      counts.set(next, (counts.get(next) ?? 0) + 1);
      cur.generatedToken();
      const piece = stops.push(detok.push(next));
      text += piece.text;
      hooks.progress({ type: 'token', seq: data.seq, index: generated.length - 1, id: next, text: piece.text, ...(lp ? { logprob: lp } : {}) });
      if (piece.stopped) {
        finish = 'stop';
        tail.push(next);
        break;
      }
      if (generated.length === req.maxTokens) {
        tail.push(next);
        break;
      }
      if (tail.length === S) {
        // The segment is full: write it to memory and go on decoding in the next one.
        ctx.engine.releaseKv(kv!);
        kv = undefined;
        // `next` opens the new tail, stored with this commit, so it counts as consumed.
        await hooks.saveGenerated(generated, wantLogprobs ? logprobs : undefined, promptLogprobs);
        await cur.commitSegment(tail, ids.length + generated.length, [next]);
        tail = [next];
        ({ logits, kv } = await ctx.engine.prefill(model.name, tail, cur.rec.state));
      } else {
        tail.push(next);
        ({ logits } = await ctx.engine.decode(model.name, kv!, next));
      }
    }
  } finally {
    if (kv !== undefined) ctx.engine.releaseKv(kv);
  }
  if (finish !== 'stop') text += stops.flush();
  const completion = { ids: generated, text, finishReason: finish, ...(wantLogprobs ? { logprobs } : {}) };
  const prompt = promptLogprobs ? { prompt: { ids, logprobs: promptLogprobs } } : {};
  const result = await cur.commitFinal({ tail, pendingText: '', curOffset: ids.length + generated.length }, { completion, ...prompt });
  hooks.progress({ type: 'done', seq: data.seq, result });
  return result;
}
