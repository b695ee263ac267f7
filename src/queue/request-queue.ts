// What submitters (the API, the CLI) see of the data plane: submit a request to a session, wait for
// its result, cancel it, read the queue depth. A submitted request is in the session's log
// (session-log.ts), its session is in the sweeper's index, and a job says the session has work
// (work-queue.ts) — all three before submit() resolves, so an acknowledged request always reaches a
// worker. Results come back over the session's progress channel, with the session's results hash as
// the fallback (a pub/sub message lost to a reconnect is read from there).
import type { RedisClient } from '../state/redis-connection.ts';
import { SessionError } from '../state/session-error.ts';
import type { ProgressHub } from './progress-hub.ts';
import type { ProgressEvent, RequestResult, SessionRequest } from './request.ts';
import { OrderError, SessionLog, type AcceptOptions } from './session-log.ts';
import { WorkQueue } from './work-queue.ts';
import type { Durability } from '../state/durable-ack.ts';
import type { KeyLayout } from '../state/keys.ts';

/** A request in a session's log. */
export interface Submitted {
  sessionId: string;
  seq: number;
}

export interface RequestQueueOptions {
  redis: RedisClient;
  prefix: string;
  ttlSeconds: number;
  /** One Redis (the default) or a cluster's layout (keys.ts). */
  layout?: KeyLayout;
  /** WAIT for replicas before a request counts as accepted (durable-ack.ts). */
  durability?: Durability;
  /** Where results are awaited (one subscriber connection per process). */
  progress: ProgressHub;
}

/** The wait for a result ran out; the request stays accepted and will still be applied. */
export class ResultTimeout extends Error {
  constructor(
    readonly seq: number,
    readonly ms: number,
  ) {
    super(`request ${seq} did not finish within ${ms / 1000} s; it stays queued and will be applied`);
    this.name = 'ResultTimeout';
  }
}

/** The request will not be applied: the owner dropped it when resetting the failed session. */
export class RequestDropped extends Error {
  constructor(readonly seq: number) {
    super(`request ${seq} was dropped when its session was reset`);
    this.name = 'RequestDropped';
  }
}

/** While a result is awaited, the session's results are also read this often (a lost pub/sub message). */
const RESULT_POLL_MS = 2_000;

export class RequestQueue {
  readonly log: SessionLog;
  readonly work: WorkQueue;

  constructor(private readonly o: RequestQueueOptions) {
    this.log = new SessionLog(o.redis, { prefix: o.prefix, ttlSeconds: o.ttlSeconds, ...(o.layout ? { layout: o.layout } : {}), ...(o.durability ? { durability: o.durability } : {}) });
    this.work = new WorkQueue(o.redis, this.log.keys);
  }

  /** Accepts a request (it is durable when this resolves) and makes sure a worker will see it. */
  async submit(sessionId: string, request: SessionRequest, opts: AcceptOptions = {}): Promise<Submitted> {
    const seq = await this.log.accept(sessionId, request, opts);
    await this.wake(sessionId);
    return { sessionId, seq };
  }

  /** The session has work: index it for the sweeper, then make sure a job says so (both idempotent). */
  async wake(sessionId: string): Promise<void> {
    await this.o.redis.zadd(this.log.keys.active(this.log.keys.queueShardOf(sessionId)), Date.now(), sessionId);
    await this.work.wake(sessionId);
  }

  /** Sessions waiting for a worker (work-queue.ts), read at most every `maxAgeMs`. */
  depth(maxAgeMs = 0): Promise<number> {
    return maxAgeMs > 0 ? this.work.depthCached(maxAgeMs) : this.work.depth();
  }

  /** The submitter went away: a request not started is completed without running; a generation stops between tokens. */
  async cancel(s: Submitted): Promise<void> {
    if (await this.log.cancel(s.sessionId, s.seq)) {
      // Classic PUBLISH even on a cluster: a cancel is for every worker, and a cluster broadcasts it to every node.
      await this.o.redis.publish(this.log.keys.controlChannel(), JSON.stringify({ type: 'cancel', sessionId: s.sessionId, seq: s.seq }));
    }
  }

  /**
   * The request's result (accepted with wantResult). Rejects with OrderError('session_failed') when the
   * session fails at or before it, RequestDropped, SessionError('not_found'), or ResultTimeout.
   */
  async result(s: Submitted, timeoutMs: number): Promise<RequestResult> {
    let settle!: { resolve(r: RequestResult): void; reject(e: unknown): void };
    const done = new Promise<RequestResult>((resolve, reject) => (settle = { resolve, reject }));
    const onEvent = (ev: ProgressEvent) => {
      if (ev.type === 'done' && ev.seq === s.seq) settle.resolve(ev.result);
      else if (ev.type === 'failed' && ev.failure.seq <= s.seq) settle.reject(failedError(s, ev.failure.seq));
      else if (ev.type === 'reset' && ev.from <= s.seq && s.seq <= ev.to) settle.reject(new RequestDropped(s.seq));
    };
    // Subscribed before the first read: a result is either seen on the channel or already stored.
    const unsubscribe = await this.o.progress.subscribe(s.sessionId, onEvent);
    const check = () => this.stored(s).then((r) => r && settle.resolve(r), (err: unknown) => settle.reject(err));
    const poll = setInterval(() => void check(), RESULT_POLL_MS);
    const timer = setTimeout(() => settle.reject(new ResultTimeout(s.seq, timeoutMs)), timeoutMs);
    try {
      void check();
      return await done;
    } finally {
      clearInterval(poll);
      clearTimeout(timer);
      await unsubscribe().catch(() => undefined);
      void this.o.redis.hdel(this.log.keys.sessionKeys(s.sessionId).results, String(s.seq)).catch(() => undefined);
    }
  }

  /** The stored result, or the reason there will be none; undefined while the request is pending. */
  private async stored(s: Submitted): Promise<RequestResult | undefined> {
    const k = this.log.keys.sessionKeys(s.sessionId);
    const [stored, fields] = await Promise.all([
      this.o.redis.hget(k.results, String(s.seq)),
      this.o.redis.hmget(k.session, 'status', 'failedSeq', 'appliedSeq', 'droppedFrom', 'droppedTo', 'tokensIngested', 'segmentsCommitted', 'tokensGenerated', 'model'),
    ]);
    if (stored) return JSON.parse(stored) as RequestResult;
    const [status, failedSeq, applied, droppedFrom, droppedTo, tokensIngested, segmentsCommitted, tokensGenerated, model] = fields.map((v) => v ?? '');
    if (model === '') throw new SessionError('not_found', `session ${s.sessionId} not found (deleted or expired)`);
    if (status === 'failed' && Number(failedSeq) <= s.seq) throw failedError(s, Number(failedSeq));
    if (Number(applied) < s.seq) return undefined;
    if (Number(droppedFrom) <= s.seq && s.seq <= Number(droppedTo)) throw new RequestDropped(s.seq);
    // Applied, and its result no longer kept (read by someone else, or trimmed): the counters are current.
    return {
      sessionId: s.sessionId, seq: s.seq, alreadyApplied: true, tokensIngested: Number(tokensIngested),
      segmentsCommitted: Number(segmentsCommitted), tokensGenerated: Number(tokensGenerated), pendingTokens: 0, promptTokens: 0,
    };
  }

  async close(): Promise<void> {
    await this.work.close();
  }
}

function failedError(s: Submitted, failedSeq: number): OrderError {
  return new OrderError('session_failed', `session ${s.sessionId} has failed at request ${failedSeq}; GET it for the reason, then reset it (POST /v1/sessions/${s.sessionId}/reset)`, failedSeq);
}
