// Where a request starts, the same for ingest and generation: the session (as stored, or as the previous
// request's offer leaves it, handoff.ts), the request's tokens from where an earlier attempt stopped, cut
// into segments, whether they are scored, and the commit policy its commits go through. Then how those
// segments run: as one chain in the engine, or one by one, scored.
//
// Tokens go into the tail; a full tail is written to memory through the segment graph when the next
// token arrives, so a tail always has 1..segment_length tokens and its next-token logits can be
// recomputed.
import { performance } from 'node:perf_hooks';
import type { ChainRef } from '../engine/engine.ts';
import type { ModelInfo } from '../model/model-spec.ts';
import { RequestError, type LoggedRequest } from '../queue/request.ts';
import type { SessionRecord } from '../state/session-record.ts';
import type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';
import { CommitPolicy } from './commit-policy.ts';
import { requestTokens } from './request-tokens.ts';
import { TokenScorer } from './token-scorer.ts';

export interface RequestPlan {
  data: LoggedRequest;
  /** The session as the request starts (after an offer: with its memory as the state, unless continuing in the engine). */
  rec: SessionRecord;
  model: ModelInfo;
  /** The request's tokens (text or prompt), and the text the session holds back after it. */
  ids: number[];
  pendingAfter: string;
  /** Where the last commit of an earlier attempt left this request (past ids: into the generation), and where its tokens resume. */
  resumeAt: number;
  from: number;
  /** The full segments from `from` on; `ends[j]` is the request offset after segment j. */
  segments: number[][];
  ends: number[];
  /** The tail after the request's tokens (1..segment_length of them, or none in an empty session). */
  tail: number[];
  /** Top alternatives per scored token (0: the token's own log-probability), when the request is scored. */
  scoreTop: number | undefined;
  /** Scored and with tokens left: its segments run one by one, committed only at the end. */
  scoring: boolean;
  /** The previous request's chain in the engine, continued from (handoff.ts). */
  continueFrom: ChainRef | undefined;
  commits: CommitPolicy;
}

function specOf(m: ModelInfo) {
  return { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
}

/** The session the request applies to (the offer's record, or the stored one checked against its model), and its model. */
export async function openSession(ctx: ApplyContext, data: LoggedRequest, start: RequestStart): Promise<{ rec: SessionRecord; model: ModelInfo }> {
  let rec: SessionRecord;
  if ('handoff' in start) {
    rec = start.handoff.record;
  } else {
    const first = start.stored === undefined ? await ctx.store.get(data.sessionId) : start.stored;
    if (!first) throw new RequestError('session_not_found', `session ${data.sessionId} does not exist (deleted or expired)`);
    rec = ctx.store.verify(first, specOf(ctx.engine.model(first.model)));
  }
  return { rec, model: ctx.engine.model(rec.model) };
}

/** Plans a request not yet applied, from `rec` as openSession() gave it. */
export async function planRequest(
  ctx: ApplyContext, data: LoggedRequest, hooks: ApplyHooks, start: RequestStart, opened: { rec: SessionRecord; model: ModelInfo },
): Promise<RequestPlan> {
  const { model } = opened;
  let rec = opened.rec;
  const handoff = 'handoff' in start ? start.handoff : undefined;
  const S = model.segmentLength;
  const { ids, pendingAfter } = requestTokens(ctx.tokenizer(rec.model), rec.pendingText, data.request, ctx.maxPendingTextChars);
  const resumeAt = rec.curSeq === data.seq ? rec.curOffset : 0;
  const from = Math.min(resumeAt, ids.length);
  // A segment is written to memory once the token after it arrives (a tail keeps 1..S tokens).
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
  const commits = new CommitPolicy({
    ctx, rec, model, seq: data.seq, requestTokens: ids.length, from, keepResult: data.wantResult === true, progress: (ev) => hooks.progress(ev),
    base: handoff?.applied, eager: 'eager' in start && start.eager === true,
  });
  return { data, rec, model, ids, pendingAfter, resumeAt, from, segments, ends, tail, scoreTop, scoring, continueFrom, commits };
}

/** The request's segments as one chain in the engine (continuing the previous request's, when it can). */
export async function chainAll(p: RequestPlan, hooks: ApplyHooks, chain?: ChainRef): Promise<void> {
  await p.commits.chainSegments(p.segments, p.ends, { ...(p.continueFrom ? { from: p.continueFrom } : {}), ...(chain ? { chain } : {}) });
  if (p.continueFrom?.continued) hooks.continuedInEngine?.();
}

/** A scored request's segments, then its partial last one (scored, not committed: the next commit keeps it as the tail). */
export async function scoreAll(ctx: ApplyContext, p: RequestPlan): Promise<TokenScorer> {
  const { commits } = p;
  const scorer = new TokenScorer(ctx.engine, p.model, p.rec.id, p.rec.tail.length, p.scoreTop!);
  const first = commits.rec.segmentsCommitted + 1;
  for (let j = 0; j < p.segments.length; j++) {
    const out = await scorer.chunk(p.segments[j]!, commits.memory, first + j, true);
    commits.ranSegment(out!.nextState, p.ends[j]!);
  }
  await scorer.chunk(p.tail, commits.memory, first + p.segments.length, false);
  return scorer;
}
