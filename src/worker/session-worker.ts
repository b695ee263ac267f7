// BullMQ worker that advances sessions. Requests of one session apply strictly in the order they were
// accepted (their seq): open-source BullMQ has no per-key groups, so a request is queued held back
// (delayed) until its predecessor starts, when the worker starting that one promotes it; one fetched
// before its predecessor is applied waits here for it (the predecessor runs in this process) or goes
// back to the delayed set. Many sessions' jobs run concurrently in one process and their segments
// meet in the engine's batches.
import { DelayedError, Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Engine } from '../engine/engine.ts';
import type { TextTokenizer } from '../engine/tokenizer.ts';
import { redisKeys } from '../state/keys.ts';
import { SessionError, type SessionRecord, type SessionStore } from '../state/session-store.ts';
import { RequestError, type RequestJobData, type RequestResult } from '../queue/request.ts';
import { QUEUE_NAME, jobIdFor } from '../queue/request-queue.ts';
import { applyRequest, type ApplyContext, type ApplyHooks, type RequestStart } from './apply-request.ts';
import { HandoffBoard, type Handoff } from './handoff.ts';
import type { WorkerMetrics } from '../telemetry/metrics.ts';

export interface SessionWorkerOptions {
  redis: Redis;
  store: SessionStore;
  engine: Engine;
  tokenizers: Map<string, TextTokenizer>;
  prefix: string;
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  maxPendingTextChars: number;
  /** Ingest commits at most every this many segments or milliseconds (apply-request.ts pipelineSegment). */
  commitEvery?: { segments: number; ms: number };
  /**
   * Fallback re-check delay for a job waiting on its session's previous request. The handoff itself
   * is immediate: whoever applies seq k promotes job k+1 (promoteNext), and a waiter that sees its
   * turn come while parking promotes itself. Polling every few ms instead made every queued append
   * of every session cost a Redis round trip and a delayed-set move per poll, which swamped the
   * worker's main thread at 64+ streaming sessions (BENCHMARKS.md).
   */
  turnDelayMs?: number;
  log?: (obj: Record<string, unknown>, msg: string) => void;
  metrics?: WorkerMetrics;
}

/** Longest fallback re-check delay of a parked request (see turnDelayMs). */
const MAX_TURN_RECHECK_MS = 30_000;

/** Gaps longer than this are a session that paused, not a handoff (rmt_worker_turn_gap_seconds). */
const TURN_GAP_HORIZON_MS = 10_000;

// Client mistakes are final: retrying cannot fix them.
function quiet(r: import('ioredis').Redis): import('ioredis').Redis {
  r.on('error', () => undefined); // reconnects by itself; BullMQ reports lasting trouble
  return r;
}

const ORPHAN_GRACE_MS = 30_000;
const FINAL_CODES = new Set(['session_not_found', 'empty_prompt', 'model_mismatch', 'state_mismatch', 'not_found', 'invalid_request']);

export class SessionWorker {
  readonly worker: Worker<RequestJobData, RequestResult>;
  private readonly queue: Queue<RequestJobData, RequestResult>;
  private readonly keys;
  private heartbeat?: NodeJS.Timeout;
  /** Requests in this process, by session and seq: settled when the request is done here, whatever its outcome. */
  private readonly local = new Map<string, Map<number, Promise<void>>>();
  /** Sessions with a request waiting here for its predecessor. */
  private readonly waiting = new Set<string>();
  /** What each session's running request offers its next one (handoff.ts). */
  private readonly handoffs = new HandoffBoard();
  /** When each session's last request finished here (for rmt_worker_turn_gap_seconds); pruned on the heartbeat. */
  private readonly lastDone = new Map<string, number>();
  private conn?: import('ioredis').Redis;
  /** What applyRequest needs of this worker: the same for every request. */
  private readonly ctx: ApplyContext;
  readonly id = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

  constructor(private readonly o: SessionWorkerOptions) {
    this.keys = redisKeys(o.prefix);
    this.ctx = {
      engine: o.engine,
      store: o.store,
      tokenizer: (m) => {
        const t = o.tokenizers.get(m);
        if (!t) throw new RequestError('model_not_loaded', `model ${m} is not loaded by this worker`);
        return t;
      },
      maxPendingTextChars: o.maxPendingTextChars,
      ...(o.commitEvery ? { commitEvery: o.commitEvery } : {}),
    };
    this.worker = new Worker<RequestJobData, RequestResult>(QUEUE_NAME, (job, token) => this.process(job, token), {
      connection: (this.conn = quiet(o.redis.duplicate({ maxRetriesPerRequest: null }))),
      prefix: this.keys.queuePrefix(),
      concurrency: o.concurrency,
      lockDuration: o.lockDurationMs,
      stalledInterval: o.stalledIntervalMs,
      maxStalledCount: 10,
      autorun: false,
    });
    this.queue = new Queue<RequestJobData, RequestResult>(QUEUE_NAME, { connection: o.redis, prefix: this.keys.queuePrefix() });
    this.worker.on('error', (err) => o.log?.({ err: String(err) }, 'worker error'));
  }

  async start(): Promise<void> {
    await this.worker.waitUntilReady();
    void this.worker.run();
    const beat = () => void this.o.redis.zadd(this.keys.workers(), Date.now(), this.id).catch(() => undefined);
    beat();
    this.heartbeat = setInterval(() => {
      beat();
      const old = performance.now() - TURN_GAP_HORIZON_MS;
      for (const [id, t] of this.lastDone) if (t < old) this.lastDone.delete(id);
    }, 2000);
    this.heartbeat.unref();
  }

  private async process(job: Job<RequestJobData, RequestResult>, token?: string): Promise<RequestResult> {
    const { sessionId, seq } = job.data;
    // Registered before any await, so a later request of the session fetched after this one finds it.
    let finished = () => {};
    const here = this.local.get(sessionId) ?? new Map<number, Promise<void>>();
    here.set(seq, new Promise<void>((resolve) => (finished = resolve)));
    this.local.set(sessionId, here);
    try {
      const handoff = await this.awaitHandoff(job);
      const rec = handoff ? undefined : await this.waitForTurn(job, token);
      const started = performance.now();
      // Let the session's next request be fetched now, to wait in this process while this one runs:
      // once startedSeq says so, a request accepted later is queued at once (request-queue.ts), and
      // one held back already is promoted here.
      void this.o.store.markStarted(sessionId, seq).then(() => this.promoteNext(sessionId, seq)).catch(() => undefined);
      const prev = this.lastDone.get(sessionId);
      if (!handoff && prev !== undefined && started - prev < TURN_GAP_HORIZON_MS) this.o.metrics?.turnGapSeconds.observe((started - prev) / 1000);
      let segmentsSeen = rec?.segmentsCommitted ?? 0;
      const hooks: ApplyHooks = {
        progress: (ev) => {
          if (ev.type === 'segment') {
            // One event per commit, which may hold several segments.
            this.o.metrics?.segments.inc(ev.segmentsCommitted - segmentsSeen);
            segmentsSeen = ev.segmentsCommitted;
          }
          void this.o.store.publishProgress(sessionId, ev).catch(() => undefined);
        },
        saveGenerated: async (ids, logprobs) => {
          await job.updateData({ ...job.data, generated: ids, ...(logprobs ? { generatedLogprobs: logprobs } : {}) });
        },
        offer: (h) => this.handoffs.offer(sessionId, h),
        continued: (idleMs) => this.o.metrics?.turnGapSeconds.observe(idleMs / 1000),
        continuedInEngine: () => this.o.metrics?.engineContinuations.inc(),
      };
      const apply = (start: RequestStart) => {
        this.handoffs.open(sessionId, seq);
        return applyRequest(this.ctx, job.data, hooks, start);
      };
      let result: RequestResult;
      if (handoff) {
        segmentsSeen = handoff.record.segmentsCommitted;
        this.o.metrics?.handoffs.inc();
        try {
          result = await apply({ handoff });
        } catch {
          // Whatever failed (the previous request, or this one on top of it), start again the ordinary
          // way once the previous request is done: from what Redis holds, resuming at this request's
          // last commit; an error of this request's own comes back there and is handled as usual.
          this.o.metrics?.handoffsLost.inc();
          await this.local.get(sessionId)?.get(seq - 1);
          const now = await this.waitForTurn(job, token);
          segmentsSeen = now?.segmentsCommitted ?? 0;
          result = await apply({ stored: now });
        }
      } else {
        result = await apply({ stored: rec });
      }
      // Applied: from here the session's next request may start (the gap metric counts from now).
      this.lastDone.set(sessionId, performance.now());
      await this.promoteNext(sessionId, seq);
      this.o.metrics?.requestSeconds.observe({ kind: job.data.request.kind }, (performance.now() - started) / 1000);
      this.o.metrics?.requests.inc({ kind: job.data.request.kind, outcome: result.alreadyApplied ? 'duplicate' : 'ok' });
      if (!result.alreadyApplied) {
        this.o.metrics?.tokensIngested.inc(result.promptTokens);
        this.o.metrics?.tokensGenerated.inc(result.completion?.ids.length ?? 0);
      }
      return result;
    } catch (err) {
      if (err instanceof DelayedError) throw err;
      const code = err instanceof RequestError || err instanceof SessionError ? err.code : undefined;
      const final = (code !== undefined && FINAL_CODES.has(code)) || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      if (final) {
        await this.skipFailed(sessionId, seq, err).catch(() => undefined); // a broken session cannot move on
        await this.promoteNext(sessionId, seq);
      }
      if (code !== undefined && FINAL_CODES.has(code)) {
        // Complete the job with the error: the caller gets it, and the session moves on.
        const result: RequestResult = {
          sessionId, seq, tokensIngested: 0, segmentsCommitted: 0, tokensGenerated: 0, pendingTokens: 0, promptTokens: 0,
          error: { code, message: (err as Error).message },
        };
        void this.o.store.publishProgress(sessionId, { type: 'done', seq, result }).catch(() => undefined);
        this.o.metrics?.requests.inc({ kind: job.data.request.kind, outcome: code });
        return result;
      }
      throw err;
    } finally {
      this.handoffs.close(sessionId, seq);
      here.delete(seq);
      if (here.size === 0 && this.local.get(sessionId) === here) this.local.delete(sessionId);
      finished();
    }
  }

  /**
   * An unscored ingest whose previous request runs in this process continues from that request's
   * offer (handoff.ts): it need not wait for it to land. One waiter per session, as in waitForTurn.
   */
  private async awaitHandoff(job: Job<RequestJobData, RequestResult>): Promise<Handoff | undefined> {
    const { sessionId, seq, request } = job.data;
    if (request.kind !== 'ingest' || request.score) return undefined;
    const offered = this.handoffs.take(sessionId, seq - 1);
    return offered && (await this.waitAsTheWaiter(sessionId, offered));
  }

  /**
   * Awaits `p` as the session's one waiter in this process (so a client that queued many requests
   * ahead holds at most a few concurrency slots); undefined at once when another request waits.
   */
  private async waitAsTheWaiter<T>(sessionId: string, p: Promise<T>): Promise<T | undefined> {
    if (this.waiting.has(sessionId)) return undefined;
    this.waiting.add(sessionId);
    try {
      return await p;
    } finally {
      this.waiting.delete(sessionId);
    }
  }

  /** Returns the session as read for the check, so the request does not read it again. */
  private async waitForTurn(job: Job<RequestJobData, RequestResult>, token?: string): Promise<SessionRecord | null> {
    const { sessionId, seq } = job.data;
    let rec = await this.o.store.get(sessionId);
    // The previous request is in this process: wait for it here (as the session's one waiter), so the
    // session goes on without a park, a promotion and a fetch in between.
    const prev = this.local.get(sessionId)?.get(seq - 1);
    if (rec && rec.appliedSeq < seq - 1 && prev && (await this.waitAsTheWaiter(sessionId, prev.then(() => true)))) {
      rec = await this.o.store.get(sessionId);
    }
    if (rec && rec.appliedSeq < seq - 1) {
      // Not this request's turn. If the predecessor's job does not exist (its producer died between
      // taking a seq and enqueuing), nothing will ever apply it: skip its seq instead of waiting forever.
      // A grace period covers a producer that took seq - 1 and is still about to enqueue it.
      const orphaned = rec.appliedSeq === seq - 2 && Date.now() - job.timestamp > ORPHAN_GRACE_MS &&
        (await this.queue.getJob(jobIdFor(sessionId, seq - 1))) === undefined;
      if (orphaned) {
        await this.o.store.commit(sessionId, rec.version, {
          state: rec.state, tail: rec.tail, pendingText: rec.pendingText, addTokensIngested: 0, addSegments: 0,
          addTokensGenerated: 0, curSeq: seq - 1, curOffset: 0, appliedSeq: seq - 1,
        });
      }
      this.o.metrics?.turnDelays.inc();
      // Promotion is the handoff; the delay is the fallback re-check, later for requests further back
      // (each re-check re-reads the job and the session), at most MAX_TURN_RECHECK_MS.
      const behind = Math.max(1, seq - 1 - rec.appliedSeq);
      await job.moveToDelayed(Date.now() + Math.min(MAX_TURN_RECHECK_MS, (this.o.turnDelayMs ?? 1000) * behind), token);
      // The predecessor may have been applied between the read above and the move: its worker then
      // found this job not yet delayed and could not promote it, so do it here.
      const now = await this.o.store.get(sessionId);
      if (!now || now.appliedSeq >= seq - 1) await job.promote().catch(() => undefined);
      throw new DelayedError();
    }
    return rec;
  }

  /** Seq `seq` is applied: the session's next request, if parked in the delayed set, runs now. */
  private async promoteNext(sessionId: string, seq: number): Promise<void> {
    try {
      const next = await this.queue.getJob(jobIdFor(sessionId, seq + 1));
      if (next && (await next.isDelayed())) await next.promote();
    } catch {
      // Not delayed any more (taken or promoted by someone else): nothing to do.
    }
  }

  /** A request that will not be applied still consumes its seq, so the session's later requests can run. */
  private async skipFailed(sessionId: string, seq: number, err: unknown): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const rec = await this.o.store.get(sessionId);
      if (!rec || rec.appliedSeq >= seq) return;
      try {
        await this.o.store.commit(sessionId, rec.version, {
          state: rec.state, tail: rec.tail, pendingText: rec.pendingText, addTokensIngested: 0, addSegments: 0,
          addTokensGenerated: 0, curSeq: seq, curOffset: 0, appliedSeq: seq,
        });
        this.o.log?.({ sessionId, seq, err: String(err) }, 'request failed; session moves on');
        return;
      } catch (e) {
        if (!(e instanceof SessionError && e.code === 'conflict')) throw e;
      }
    }
  }

  /** Finishes in-flight requests, or after graceMs hands them back (their locks lapse; another worker resumes them at the last commit). */
  async close(graceMs: number): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    await this.o.redis.zrem(this.keys.workers(), this.id).catch(() => undefined);
    // BullMQ's close() keeps its first call's promise, so a graceful close() followed by close(true)
    // still waits for every active job (a request that never ends held shutdown forever). Wait for
    // them here instead (pause: no new request is taken), then close once, forced if the grace ran out.
    let timer: NodeJS.Timeout | undefined;
    const finished =
      graceMs > 0 &&
      (await Promise.race([
        this.worker.pause().then(() => true, () => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs))),
      ]));
    clearTimeout(timer);
    await this.worker.close(!finished);
    await this.queue.close();
    this.conn?.disconnect();
  }
}
