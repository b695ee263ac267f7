// One worker turn on one session: take its lease, apply its log in seq order, let go (session-log.ts
// owns the order; this only follows it). Consecutive unscored appends overlap: the next one starts
// from the previous one's offer (handoff.ts) before that one has landed, so a streaming session keeps
// its place in the engine's batches. Whatever goes wrong ends in one of four places: the request is
// completed with an error its submitter reads (a client mistake, a cancellation), the session fails
// visibly (it cannot be applied), the turn ends quietly (the session is gone or another worker has
// it), or the turn throws and BullMQ retries it (a passing fault; the next lease counts an attempt).
import { performance } from 'node:perf_hooks';
import type { ModelInfo } from '../model/model-spec.ts';
import type { LoggedRequest, ProgressEvent, RequestResult } from '../queue/request.ts';
import { RequestError, type RequestErrorCode } from '../queue/request.ts';
import type { SessionLog } from '../queue/session-log.ts';
import { SessionError, type SessionErrorCode } from '../state/session-error.ts';
import type { SessionRecord } from '../state/session-record.ts';
import type { SessionStore } from '../state/session-store.ts';
import type { WorkerMetrics } from '../telemetry/metrics.ts';
import type { ApplyContext, ApplyHooks, RequestStart } from './apply-context.ts';
import { applyRequest } from './apply-request.ts';
import type { Handoff } from './handoff.ts';

export interface RunnerOptions {
  log: SessionLog;
  store: SessionStore;
  /** What applyRequest needs; each turn adds its lease. */
  ctx: ApplyContext;
  workerId: string;
  leaseMs: number;
  maxAttempts: number;
  publish(sessionId: string, ev: ProgressEvent): void;
  /** The session has no work left and its lease was let go (the sweeper's index can forget it). */
  released?(sessionId: string): void;
  /** Make sure a worker will take the session again (a turn stopping with work left: shutdown). */
  wake(sessionId: string): Promise<void>;
  metrics?: WorkerMetrics;
  logger?: (obj: Record<string, unknown>, msg: string) => void;
}

export type TurnOutcome = { kind: 'done' } | { kind: 'later'; delayMs: number };

/** Requests read from the log at a time. */
const PREFETCH = 4;
/** A client mistake: the request is completed with the error (its submitter gets it), the session goes on. */
const CLIENT_ERRORS = new Set<string>(['empty_prompt', 'invalid_request'] satisfies RequestErrorCode[]);
/** The session cannot be applied by any worker: it fails visibly at this request. */
const SESSION_ERRORS = new Set<string>(['model_mismatch', 'state_mismatch', 'model_not_loaded', 'lost_progress'] satisfies (RequestErrorCode | SessionErrorCode)[]);

/** A request being applied: settles when it is done (or failed); `offered` when it can be continued from. */
interface Running {
  entry: LoggedRequest;
  /** Settles once this request and every one before it in flight settled; rejects with the first failure. */
  done: Promise<void>;
  offered: Promise<Handoff | undefined>;
  /** The request it continued from, while that one may still be landing. */
  before: Promise<void> | undefined;
}

/** A turn's hold on a session: the requests it runs, for cancellations; aborted when its lease is lost. */
interface Turn {
  owner: string;
  lost: AbortController;
  cancelled: Set<number>;
  /** Segments committed as last reported (rmt_segments_committed_total adds what is new). */
  segments: number;
  renew?: NodeJS.Timeout;
}

export class SessionRunner {
  private readonly turns = new Map<string, Turn>();
  private turnNo = 0;
  /** Set on shutdown: turns stop after the requests in flight and hand their sessions back. */
  stopping = false;

  constructor(private readonly o: RunnerOptions) {}

  /** Shutdown past its grace: stop renewing every lease, so other workers take the sessions over once they lapse. */
  abandon(): void {
    this.stopping = true;
    for (const t of this.turns.values()) clearInterval(t.renew);
  }

  /** A request's submitter went away (control channel): a generation in this process stops before its next token. */
  cancel(sessionId: string, seq: number): void {
    this.turns.get(sessionId)?.cancelled.add(seq);
  }

  async run(sessionId: string): Promise<TurnOutcome> {
    const owner = `${this.o.workerId}:${++this.turnNo}`;
    const got = await this.o.log.acquire(sessionId, owner, this.o.leaseMs, this.o.maxAttempts);
    this.o.metrics?.turns.inc({ outcome: got.kind });
    if (got.kind === 'busy') return { kind: 'later', delayMs: got.retryInMs + 10 };
    if (got.kind === 'failed' && got.now) this.o.logger?.({ sessionId, seq: got.seq }, 'session failed: a request was started too often without progress');
    if (got.kind === 'failed') await this.announceFailure(sessionId, got.seq, got.now === true);
    if (got.kind === 'idle') this.o.released?.(sessionId);
    if (got.kind !== 'ok') return { kind: 'done' };

    const turn: Turn = { owner, lost: new AbortController(), cancelled: new Set(), segments: 0 };
    this.turns.set(sessionId, turn);
    turn.renew = setInterval(() => {
      this.o.log.renew(sessionId, owner, this.o.leaseMs).then((mine) => mine || turn.lost.abort(), () => undefined);
    }, Math.max(100, Math.floor(this.o.leaseMs / 3)));
    let released = false;
    try {
      released = await this.applyLog(sessionId, turn);
      return { kind: 'done' };
    } finally {
      clearInterval(turn.renew);
      this.turns.delete(sessionId);
      if (!released) await this.o.log.release(sessionId, owner, true).catch(() => undefined);
    }
  }

  /** Applies the session's log until it is empty; true once the lease was let go. */
  private async applyLog(sessionId: string, turn: Turn): Promise<boolean> {
    const ctx: ApplyContext = { ...this.o.ctx, lease: { owner: turn.owner, ms: this.o.leaseMs } };
    for (;;) {
      let rec: SessionRecord | null = null;
      try {
        rec = await this.o.store.get(sessionId);
        if (!rec) return false; // deleted: nothing to apply, nobody to tell
        const model = this.modelOf(rec);
        if (typeof model === 'string') return this.fail(sessionId, turn, rec.appliedSeq + 1, 'model_not_loaded', model);
        rec = this.o.store.verify(rec, { model: model.name, shape: model.stateShape, dtype: model.stateDtype });
        turn.segments = rec.segmentsCommitted;
        const ended = await this.applyFrom(ctx, turn, rec);
        if (ended === 'released') return true;
        if (ended === 'stopped') {
          await this.o.log.release(sessionId, turn.owner, true);
          await this.o.wake(sessionId);
          return true;
        }
        return false; // the lease was lost: another worker has the session
      } catch (err) {
        // The request that failed, or the head when the session itself cannot be read.
        const { seq, error } = err instanceof AtRequest ? err : { seq: rec ? rec.appliedSeq + 1 : await this.o.log.head(sessionId), error: err };
        const code = errorCode(error);
        if (code === 'not_found' || code === 'session_not_found' || code === 'lease_lost') return false;
        if (code !== undefined && SESSION_ERRORS.has(code)) return this.fail(sessionId, turn, seq, code, (error as Error).message);
        if (code === undefined || !CLIENT_ERRORS.has(code)) throw error;
        await this.complete(ctx, sessionId, seq, { code, message: (error as Error).message });
      }
    }
  }

  /**
   * Applies requests from `rec.appliedSeq + 1` on, two at a time at most (the one landing, the next
   * starting from its offer). A failed request throws AtRequest once everything in flight settled.
   */
  private async applyFrom(ctx: ApplyContext, turn: Turn, rec: SessionRecord): Promise<'released' | 'stopped' | 'lost'> {
    const sessionId = rec.id;
    let next = rec.appliedSeq + 1;
    let prev: Running | undefined;
    // The record read at the turn's start is current only for its first request: one started after the
    // log ran dry and refilled ('more' below) reads the session again (it may follow requests applied since).
    let current: SessionRecord | undefined = rec;
    try {
      for (;;) {
        if (turn.lost.signal.aborted) return 'lost';
        if (this.stopping) return 'stopped';
        const batch = await this.o.log.read(sessionId, next, next + PREFETCH - 1);
        if (batch.length === 0) {
          await settled(prev);
          prev = undefined;
          const r = await this.o.log.release(sessionId, turn.owner);
          if (r === 'more') continue;
          if (r === 'released') this.o.released?.(sessionId);
          return r === 'released' ? 'released' : 'lost';
        }
        for (const entry of batch) {
          if (turn.lost.signal.aborted || this.stopping) break;
          prev = await this.start(ctx, turn, entry, prev, rec.model, current);
          current = undefined;
          next = entry.seq + 1;
        }
      }
    } finally {
      await settled(prev).catch(() => undefined);
    }
  }

  /**
   * Starts `entry` once `prev` allows: at once from prev's offer (an unscored append), else after prev.
   * `current`: the session as stored, when known to be current (the turn's first request); else it is read.
   */
  private async start(
    ctx: ApplyContext, turn: Turn, entry: LoggedRequest, prev: Running | undefined, model: string, current: SessionRecord | undefined,
  ): Promise<Running> {
    const sessionId = entry.sessionId;
    const continues = entry.request.kind === 'ingest' && !entry.request.score && !entry.cancelled;
    // Two requests in flight at most: the one landing and the next; a third waits for the first.
    await prev?.before?.catch(() => undefined);
    const offer = continues && prev ? await prev.offered : undefined;
    let begin: RequestStart;
    if (offer) {
      begin = { handoff: offer };
      this.o.metrics?.handoffs.inc();
    } else {
      await settled(prev);
      // The turn's first request commits after its first segment (apply-request.ts RequestStart `eager`).
      begin = prev ? { stored: await this.o.store.get(sessionId) } : { stored: current, eager: true };
    }
    if (entry.cancelled || turn.cancelled.has(entry.seq)) {
      await this.complete(ctx, sessionId, entry.seq, { code: 'cancelled', message: `request ${entry.seq} was cancelled: its submitter went away` });
      return { entry, done: Promise.resolve(), offered: Promise.resolve(undefined), before: undefined };
    }
    let offered!: (h: Handoff | undefined) => void;
    const offeredP = new Promise<Handoff | undefined>((resolve) => (offered = resolve));
    const hooks: ApplyHooks = {
      progress: (ev) => {
        if (ev.type === 'segment') {
          // One event per commit, carrying the session's total.
          this.o.metrics?.segments.inc(Math.max(0, ev.segmentsCommitted - turn.segments));
          turn.segments = Math.max(turn.segments, ev.segmentsCommitted);
        }
        this.o.publish(sessionId, ev);
      },
      saveGenerated: (ids, logprobs, prompt) => this.o.log.saveGenerated(sessionId, entry.seq, ids, logprobs, prompt),
      offer: (h) => offered(h),
      continued: (idleMs) => this.o.metrics?.turnGapSeconds.observe(idleMs / 1000),
      continuedInEngine: () => this.o.metrics?.engineContinuations.inc(),
      cancelled: () => turn.cancelled.has(entry.seq),
    };
    const t0 = performance.now();
    const startedAt = Date.now();
    const kind = entry.request.kind;
    const own = applyRequest(ctx, entry, hooks, begin).then(
      (result) => {
        this.o.metrics?.requestSeconds.observe({ model, kind }, (performance.now() - t0) / 1000);
        this.o.metrics?.requests.inc({ model, kind, outcome: result.alreadyApplied ? 'duplicate' : 'ok' });
        if (!result.alreadyApplied) this.o.metrics?.observeFinished(model, entry, result, startedAt);
      },
      (err: unknown) => {
        this.o.metrics?.requests.inc({ model, kind, outcome: errorCode(err) ?? 'error' });
        throw new AtRequest(entry.seq, err);
      },
    );
    own.catch(() => undefined).finally(() => offered(undefined));
    // Settles after prev too, with prev's failure first: this one then only lost its start (HandoffLost).
    const done = offer ? settled(prev).then(() => own, (err: unknown) => own.then(() => { throw err; }, () => { throw err; })) : own;
    done.catch(() => undefined);
    return { entry, done, offered: offeredP, before: offer ? prev!.done : undefined };
  }

  /** Completes request `seq` without applying it: its result is the error (a client mistake, a cancellation). */
  private async complete(ctx: ApplyContext, sessionId: string, seq: number, error: { code: string; message: string }): Promise<void> {
    const rec = await this.o.store.get(sessionId);
    if (!rec || rec.appliedSeq >= seq) return;
    const result: RequestResult = {
      sessionId, seq, tokensIngested: rec.tokensIngested, segmentsCommitted: rec.segmentsCommitted, tokensGenerated: rec.tokensGenerated,
      pendingTokens: rec.tail.length, promptTokens: 0, error,
    };
    await this.o.store.commit(sessionId, rec.version, {
      state: rec.state, tail: rec.tail, pendingText: rec.pendingText, addTokensIngested: 0, addSegments: 0, addTokensGenerated: 0,
      curSeq: seq, curOffset: 0, appliedSeq: seq, result: JSON.stringify(result),
    }, ctx.lease);
    this.o.publish(sessionId, { type: 'done', seq, result });
  }

  /** The session fails at `seq` (fail.lua), and says so to whoever listens. */
  private async fail(sessionId: string, turn: Turn, seq: number, code: string, message: string): Promise<boolean> {
    const now = await this.o.log.fail(sessionId, turn.owner, seq, code, message);
    this.o.logger?.({ sessionId, seq, code, message }, 'session failed');
    await this.announceFailure(sessionId, seq, now);
    return true;
  }

  /** Tells whoever listens that the session failed (`now`: this worker's call failed it, so it is counted). */
  private async announceFailure(sessionId: string, seq: number, now: boolean): Promise<void> {
    const failure = await this.o.log.failureOf(sessionId);
    if (!failure) return;
    if (now) this.o.metrics?.sessionsFailed.inc({ code: failure.code });
    this.o.publish(sessionId, { type: 'failed', seq, failure });
  }

  private modelOf(rec: SessionRecord): ModelInfo | string {
    const m = this.o.ctx.engine.models().find((x) => x.name === rec.model);
    return m ?? `model ${rec.model} of session ${rec.id} is not loaded by this deployment's workers`;
  }
}

/** A request's failure, with its seq (the one the session fails at, or completes with the error). */
class AtRequest extends Error {
  constructor(
    readonly seq: number,
    readonly error: unknown,
  ) {
    super(error instanceof Error ? error.message : String(error), { cause: error });
  }
}

function errorCode(err: unknown): string | undefined {
  const e = err instanceof AtRequest ? err.error : err;
  return e instanceof RequestError || e instanceof SessionError ? e.code : undefined;
}

/** Waits for a running request; rethrows its failure. */
async function settled(r: Running | undefined): Promise<void> {
  if (r) await r.done;
}

