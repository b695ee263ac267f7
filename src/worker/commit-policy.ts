// The one commit policy for a request (ingest and generation alike): what a commit writes to Redis and
// when. Every commit is a versioned compare-and-set under the turn's lease that also records how far
// into this request it got (curSeq, curOffset), so a retry resumes at the last commit: no segment is
// applied twice and none is skipped. A request commits
// - its unscored segments as they come out of the engine's chain: batched (commitEvery), at most one
//   commit in flight (chainSegments);
// - a generation's full tail at once, before decoding goes on in the next segment (commitSegment);
// - what is left uncommitted of a generation's prompt before decoding starts (flush);
// - once at its end: the rest, appliedSeq and, for a submitter that waits, its result (commitFinal).
// Token counts ride with the first commit that covers them; each commit that adds segments is followed
// by a segment event carrying the session's totals. A request continuing from an offer (handoff.ts)
// commits against the version its predecessor's final commit writes.
import { performance } from 'node:perf_hooks';
import type { ChainRef } from '../engine/engine.ts';
import type { ModelInfo } from '../model/model-spec.ts';
import type { ProgressEvent, RequestResult } from '../queue/request.ts';
import type { SessionRecord } from '../state/session-record.ts';
import type { ApplyContext } from './apply-context.ts';

/** A request's result, from the session as its final commit leaves it (before what only its kind adds). */
export function requestResult(r: SessionRecord, seq: number, promptTokens: number): RequestResult {
  return {
    sessionId: r.id,
    seq,
    tokensIngested: r.tokensIngested,
    segmentsCommitted: r.segmentsCommitted,
    tokensGenerated: r.tokensGenerated,
    pendingTokens: r.tail.length,
    promptTokens,
  };
}

export interface CommitPolicyOptions {
  ctx: ApplyContext;
  /** The session as the request starts (the record to compare against, but for `base`). */
  rec: SessionRecord;
  model: ModelInfo;
  seq: number;
  /** The request's tokens, and where this attempt starts among them (an earlier one's last commit). */
  requestTokens: number;
  from: number;
  /** Keep the result with the final commit (its submitter waits for it). */
  keepResult: boolean;
  progress(ev: ProgressEvent): void;
  /** Continuing from an offer: the record the previous request's final commit writes, adopted before this one's first commit. */
  base?: Promise<SessionRecord> | undefined;
  /** Commit after the first segment, then as commitEvery says (RequestStart's `eager`). */
  eager: boolean;
}

interface Update {
  state: Float32Array;
  tail: number[];
  pendingText: string;
  addSegments: number;
  curOffset: number;
  appliedSeq?: number;
}

/** The stored session as this request's commits leave it; every commit goes through here so version and counters stay in step. */
export class CommitPolicy {
  rec: SessionRecord;
  private readonly ctx: ApplyContext;
  private readonly model: ModelInfo;
  private readonly seq: number;
  private readonly requestTokens: number;
  private readonly keepResult: boolean;
  private readonly progress: (ev: ProgressEvent) => void;
  private base: Promise<SessionRecord> | undefined;
  private eager: boolean;
  /** The request offset the ingested-token count has reached. */
  private countedTo: number;
  private ingestedSinceCommit = 0;
  private generatedSinceCommit = 0;
  private inFlight: Promise<void> | undefined;
  /** Segments run but not yet committing. */
  private uncommitted = 0;
  private lastCommitAt = performance.now();
  /** The newest state: ahead of rec.state while segments are uncommitted or a commit is in flight. */
  private latest: Float32Array;

  constructor(o: CommitPolicyOptions) {
    this.ctx = o.ctx;
    this.rec = o.rec;
    this.model = o.model;
    this.seq = o.seq;
    this.requestTokens = o.requestTokens;
    this.countedTo = o.from;
    this.keepResult = o.keepResult;
    this.progress = o.progress;
    this.base = o.base;
    this.eager = o.eager;
    this.latest = o.rec.state;
  }

  /** The newest memory (the state the next commit writes). */
  get memory(): Float32Array {
    return this.latest;
  }

  /** The request's tokens up to offset `end` are ingested: the next commit counts them. */
  private count(end: number): void {
    this.ingestedSinceCommit += end - this.countedTo;
    this.countedTo = end;
  }

  /** A generated token: the next commit counts it. */
  generatedToken(): void {
    this.generatedSinceCommit++;
  }

  /** One event per commit that added segments (and per scored segment), carrying the session's totals. */
  private reportSegments(consumed: number): void {
    this.progress({
      type: 'segment', seq: this.seq, segmentsCommitted: this.rec.segmentsCommitted, tokensIngested: this.rec.tokensIngested,
      requestTokens: this.requestTokens, requestConsumed: consumed,
    });
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
   * offset after segment j. A failed commit stops the chain and is what this throws.
   */
  async chainSegments(segments: number[][], ends: number[], links: { from?: ChainRef; chain?: ChainRef } = {}): Promise<void> {
    const stop = new AbortController();
    let commitError: unknown;
    let latestEnd = 0;
    const startCommit = () => {
      const consumed = latestEnd;
      const addSegments = this.uncommitted;
      this.uncommitted = 0;
      const p: Promise<void> = this.commit({ state: this.latest, tail: [], pendingText: this.rec.pendingText, addSegments, curOffset: consumed }).then(() => {
        if (this.inFlight === p) this.inFlight = undefined;
        this.reportSegments(consumed);
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
      this.uncommitted++;
      latestEnd = ends[j]!;
      this.count(latestEnd);
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

  /** A segment run outside the chain (scored requests), up to request offset `end`: committed by flush() or commitFinal(). */
  ranSegment(nextState: Float32Array, end: number): void {
    this.latest = nextState;
    this.uncommitted++;
    this.count(end);
    this.reportSegments(end);
  }

  /**
   * The request's input is all run, up to offset `end`. Its last tokens count only once no commit can
   * start any more: a commit the chain's commits started as they landed records its own offset, and
   * must not take tokens past it (a retry after a failed final commit resumes there and counts them again).
   */
  async inputDone(end: number): Promise<void> {
    await this.settle();
    this.count(end);
  }

  /** Commits what is still uncommitted, if anything (a generation's prompt, before decoding from the stored state). */
  async flush(u: { tail: number[]; pendingText: string; curOffset: number }): Promise<void> {
    await this.settle();
    if (this.uncommitted === 0) return;
    const addSegments = this.uncommitted;
    this.uncommitted = 0;
    await this.commit({ state: this.latest, addSegments, ...u });
    this.reportSegments(u.curOffset);
  }

  /** A generation's full tail: run it through the segment graph and commit it, `nextTail` opening the next segment. */
  async commitSegment(tail: number[], consumed: number, nextTail: number[]): Promise<void> {
    await this.settle();
    // The session id lets the batcher expect this session's next segment (RMT_BATCH_WAIT_MS).
    const nextState = await this.ctx.engine.advance(this.model.name, tail, this.rec.state, this.rec.id);
    this.latest = nextState;
    await this.commit({ state: nextState, tail: nextTail, pendingText: this.rec.pendingText, addSegments: 1, curOffset: consumed });
  }

  /**
   * The request's last commit: whatever is still uncommitted, the newest state, `u`, appliedSeq and (when
   * its submitter waits) its result, all at once. Returns the result (`extra`: what the request's kind adds).
   */
  async commitFinal(u: { tail: number[]; pendingText: string; curOffset: number }, extra: Partial<RequestResult>): Promise<RequestResult> {
    await this.settle();
    const addSegments = this.uncommitted;
    this.uncommitted = 0;
    const resultOf = (r: SessionRecord): RequestResult => ({ ...requestResult(r, this.seq, this.requestTokens), ...extra });
    await this.commit({ state: this.latest, addSegments, ...u, appliedSeq: this.seq }, this.keepResult ? resultOf : undefined);
    // Segments of the last, partial batch are committed with the request: report them too.
    if (addSegments > 0) this.reportSegments(u.curOffset);
    return resultOf(this.rec);
  }

  /** Waits for the commits in flight (chainSegments: one may start another as it lands). */
  private async settle(): Promise<void> {
    while (this.inFlight !== undefined) {
      const p = this.inFlight;
      try {
        await p;
      } finally {
        if (this.inFlight === p) this.inFlight = undefined;
      }
    }
  }

  /** Commits `u`; with appliedSeq and `result`, the request's result is kept with the same commit. */
  private async commit(u: Update, result?: (after: SessionRecord) => RequestResult): Promise<void> {
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
    this.lastCommitAt = performance.now();
    this.eager = false;
  }
}
