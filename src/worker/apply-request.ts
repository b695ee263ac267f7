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

/** A request's result from the session as its final commit leaves it (kept for its submitter when it waits). */
type ResultOf = (after: SessionRecord) => RequestResult;

function specOf(m: ModelInfo) {
  return { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
}

class SessionCursor {
  // Mirrors the stored session; every commit goes through here so version and counters stay in step.
  constructor(
    private readonly ctx: ApplyContext,
    public rec: SessionRecord,
    private readonly model: ModelInfo,
    private readonly seq: number,
    /** Continuing from an offer: the record the previous request's final commit writes, adopted before this one's first commit. */
    private base?: Promise<SessionRecord>,
    /** Commit after the first segment, then as commitEvery says (RequestStart's `eager`). */
    private eager = false,
  ) {
    this.latest = rec.state;
  }
  ingestedSinceCommit = 0;
  generatedSinceCommit = 0;

  /** One segment through the engine: the memory alone, without projecting every position onto the vocabulary. */
  private runSegment(tail: number[], state: Float32Array): Promise<Float32Array> {
    // The session id lets the batcher expect this session's next segment (RMT_BATCH_WAIT_MS).
    return this.ctx.engine.advance(this.model.name, tail, state, this.rec.id);
  }

  async commitSegment(consumed: number, nextTail: number[]): Promise<void> {
    await this.settle();
    const nextState = await this.runSegment(this.rec.tail, this.rec.state);
    this.latest = nextState;
    this.ahead++;
    await this.commit({ state: nextState, tail: nextTail, pendingText: this.rec.pendingText, addSegments: 1, curOffset: consumed });
  }

  /** Whether uncommitted segments should be committed now (commitEvery: so many segments, or so long since the last commit). */
  private commitDue(): boolean {
    const every = this.ctx.commitEvery ?? { segments: 1, ms: 0 };
    return this.uncommitted > 0 && (this.eager || this.uncommitted >= every.segments || performance.now() - this.lastCommitAt >= every.ms);
  }

  /**
   * The ingest loop's segments without scores, as one chain: the engine runs them back to back and
   * hands over each segment's memory as it is made, so the session keeps its place in every batch
   * instead of waiting for this thread between segments (bench/gpu-suite.sh, bench/results/gpu-5). Commits are batched:
   * one every `commitEvery.segments` segments or `commitEvery.ms` milliseconds, whichever comes first
   * (a commit writes the whole state to Redis and a progress event: per segment that cost more
   * main-thread time than the segment's engine step); a crash loses at most that much work, never
   * data: a retry resumes at the last commit. At most one is in flight; one that comes due while
   * another is in flight starts when that one lands, with the newest memory. `ends[j]` is the request
   * offset after segment j; `counted(end)` counts the request's tokens up to there. A failed commit
   * stops the chain and is what this throws.
   */
  async chainSegments(
    segments: number[][], ends: number[], counted: (end: number) => void, after: (consumed: number) => void,
    links: { from?: ChainRef; chain?: ChainRef } = {},
  ): Promise<void> {
    const stop = new AbortController();
    let commitError: unknown;
    let latestEnd = 0;
    const startCommit = () => {
      const consumed = latestEnd;
      const addSegments = this.uncommitted;
      this.uncommitted = 0;
      const p: Promise<void> = this.commit({ state: this.latest, tail: [], pendingText: this.rec.pendingText, addSegments, curOffset: consumed }).then(() => {
        if (this.inFlight === p) this.inFlight = undefined;
        after(consumed);
        if (this.commitDue()) startCommit();
      });
      p.catch((err: unknown) => {
        commitError ??= err;
        stop.abort(err);
      });
      this.inFlight = p;
    };
    const onState = (j: number, state: Float32Array) => {
      if (commitError !== undefined) return;
      this.latest = state;
      this.ahead++;
      this.uncommitted++;
      latestEnd = ends[j]!;
      counted(latestEnd);
      if (this.inFlight === undefined && this.commitDue()) startCommit();
    };
    // The previous request failing to apply makes this chain's work void: stop it at once.
    this.base?.catch((err: unknown) => stop.abort(err));
    try {
      await this.ctx.engine.advanceMany(this.model.name, segments, links.from ?? this.latest, { stream: this.rec.id, onState, signal: stop.signal, ...(links.chain ? { chain: links.chain } : {}) });
    } catch (err) {
      // Continuing the previous request's chain, which failed: that request did not apply (HandoffLost).
      const lost = links.from && this.base ? await this.base.then(() => undefined, (e: unknown) => e) : undefined;
      throw commitError ?? lost ?? err;
    }
  }

  /**
   * Waits for the commit in flight, then commits what is still uncommitted (the newest state, `tail`
   * and the other fields given): afterwards rec is the latest state.
   */
  async finish(u: { tail: number[]; pendingText: string; curOffset: number; appliedSeq?: number }, onlyIfUncommitted = false, result?: ResultOf): Promise<number> {
    await this.settle();
    if (onlyIfUncommitted && this.uncommitted === 0) return 0;
    const addSegments = this.uncommitted;
    this.uncommitted = 0;
    await this.commit({ state: this.latest, addSegments, ...u }, result);
    return addSegments;
  }

  /** A segment run outside the pipeline (scored requests): its memory is committed by finish(). */
  ranSegment(nextState: Float32Array): void {
    this.latest = nextState;
    this.ahead++;
    this.uncommitted++;
  }

  /** The newest memory (the state the next commit writes). */
  get memory(): Float32Array {
    return this.latest;
  }

  /** Waits for the commits in flight (chainSegments: one may start another as it lands). */
  async settle(): Promise<void> {
    while (this.inFlight !== undefined) {
      const p = this.inFlight;
      try {
        await p;
      } finally {
        if (this.inFlight === p) this.inFlight = undefined;
      }
    }
  }

  private inFlight: Promise<void> | undefined;
  /** Segments run but not yet in rec (committing or uncommitted), and those not yet committing. */
  private ahead = 0;
  private uncommitted = 0;
  private lastCommitAt = performance.now();
  /** The newest state: ahead of rec.state while segments are uncommitted or a commit is in flight. */
  private latest: Float32Array;

  /** Commits `u`; with appliedSeq and `result`, the request's result is kept with the same commit. */
  async commit(u: { state: Float32Array; tail: number[]; pendingText: string; addSegments: number; curOffset: number; appliedSeq?: number }, result?: ResultOf): Promise<void> {
    const ingested = this.ingestedSinceCommit;
    const generated = this.generatedSinceCommit;
    this.ingestedSinceCommit = 0;
    this.generatedSinceCommit = 0;
    if (this.base) {
      // The version to compare against is the one the previous request's last commit writes.
      this.rec = await this.base;
      this.base = undefined;
    }
    const next: SessionRecord = {
      ...this.rec,
      state: u.state,
      tail: u.tail,
      pendingText: u.pendingText,
      tokensIngested: this.rec.tokensIngested + ingested,
      tokensGenerated: this.rec.tokensGenerated + generated,
      segmentsCommitted: this.rec.segmentsCommitted + u.addSegments,
      curSeq: this.seq,
      curOffset: u.curOffset,
      appliedSeq: u.appliedSeq ?? this.rec.appliedSeq,
    };
    const version = await this.ctx.store.commit(this.rec.id, this.rec.version, {
      state: u.state,
      tail: u.tail,
      pendingText: u.pendingText,
      addTokensIngested: ingested,
      addSegments: u.addSegments,
      addTokensGenerated: generated,
      curSeq: this.seq,
      curOffset: u.curOffset,
      ...(u.appliedSeq !== undefined ? { appliedSeq: u.appliedSeq } : {}),
      ...(u.appliedSeq !== undefined && result ? { result: JSON.stringify(result(next)) } : {}),
    }, this.ctx.lease);
    this.rec = { ...next, version };
    this.ahead -= u.addSegments;
    this.lastCommitAt = performance.now();
    this.eager = false;
  }
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
  const base = (r: SessionRecord, promptTokens: number): RequestResult => ({
    sessionId: r.id,
    seq: data.seq,
    tokensIngested: r.tokensIngested,
    segmentsCommitted: r.segmentsCommitted,
    tokensGenerated: r.tokensGenerated,
    pendingTokens: r.tail.length,
    promptTokens,
  });
  if (rec.appliedSeq >= data.seq) return { ...base(rec, 0), alreadyApplied: true };

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
  const cur = new SessionCursor(ctx, rec, model, data.seq, handoff?.applied, 'eager' in start && start.eager === true);

  const segmentProgress = (consumed: number) =>
    hooks.progress({
      type: 'segment', seq: data.seq, segmentsCommitted: cur.rec.segmentsCommitted, tokensIngested: cur.rec.tokensIngested,
      requestTokens: ids.length, requestConsumed: consumed,
    });
  let countedTo = from;
  const count = (end: number) => {
    cur.ingestedSinceCommit += end - countedTo;
    countedTo = end;
  };

  /** The request's segments as one chain in the engine (continuing the previous request's, when it can). */
  const chainAll = async (chain?: ChainRef) => {
    await cur.chainSegments(segments, ends, count, segmentProgress, { ...(continueFrom ? { from: continueFrom } : {}), ...(chain ? { chain } : {}) });
    if (continueFrom?.continued) hooks.continuedInEngine?.();
  };
  /** A scored request's segments, then its partial last one (scored, not committed: finish() keeps it as the tail). */
  const scoreAll = async (): Promise<TokenScorer> => {
    const scorer = new TokenScorer(ctx.engine, model, rec.id, rec.tail.length, scoreTop!);
    const first = cur.rec.segmentsCommitted + 1;
    for (let j = 0; j < segments.length; j++) {
      const out = await scorer.chunk(segments[j]!, cur.memory, first + j, true);
      cur.ranSegment(out!.nextState);
      count(ends[j]!);
      segmentProgress(ends[j]!);
    }
    await scorer.chunk(tail, cur.memory, first + segments.length, false);
    return scorer;
  };

  if (data.request.kind === 'ingest') {
    let scores: SegmentScore[] | undefined;
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
      // The request's last tokens count only once no commit can start any more: a commit the chain's
      // commits started as they landed records its own offset, and must not take tokens past it (a retry
      // after a failed final commit resumes there and counts them again).
      await cur.settle();
      count(ids.length);
      // Segments of the last, partial batch are committed with the request: report them too.
      const resultOf: ResultOf = (r) => ({ ...base(r, ids.length), ...(scores ? { scores } : {}) });
      if ((await cur.finish({ tail, pendingText: pendingAfter, curOffset: ids.length, appliedSeq: data.seq }, false, data.wantResult ? resultOf : undefined)) > 0) segmentProgress(ids.length);
      offer?.applied(cur.rec);
    } catch (err) {
      offer?.lost(err);
      throw err;
    }
    const result: RequestResult = { ...base(cur.rec, ids.length), ...(scores ? { scores } : {}) };
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
  // As for ingest: after the commits in flight, which record their own offsets.
  await cur.settle();
  count(ids.length);

  // 2. Generation, from the committed state (prefill reads rec.state). Tokens generated before the last
  // commit (an earlier attempt) are already in the state.
  if ((await cur.finish({ tail, pendingText: '', curOffset: ids.length }, true)) > 0) segmentProgress(ids.length);
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
      cur.generatedSinceCommit++;
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
        cur.rec.tail = tail;
        // `next` opens the new tail, stored with this commit, so it counts as consumed.
        await hooks.saveGenerated(generated, wantLogprobs ? logprobs : undefined, promptLogprobs);
        await cur.commitSegment(ids.length + generated.length, [next]);
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
  const resultOf: ResultOf = (r) => ({ ...base(r, ids.length), completion, ...prompt });
  await cur.commit({ state: cur.rec.state, tail, pendingText: '', addSegments: 0, curOffset: ids.length + generated.length, appliedSeq: data.seq }, data.wantResult ? resultOf : undefined);
  const result: RequestResult = resultOf(cur.rec);
  hooks.progress({ type: 'done', seq: data.seq, result });
  return result;
}
