// The one owner of a session's order. A request is accepted into the session's log in Redis (one Lua
// script gives it the session's next seq and stores it, atomically); a worker holding the session's
// lease applies the log in seq order and removes each entry with the commit that applies it. So an
// accepted request is applied exactly once, or the session enters a visible failed state that its
// owner resets; nothing depends on a queue job surviving (BullMQ jobs only say "this session has
// work": work-queue.ts).
//
//   accept   -> log[seq] = request, log[a<seq>] = now (accept.lua; API, CLI)
//   acquire  -> lease, head attempts counted          (acquire.lua; a worker's turn: session-runner.ts)
//   commit   -> state + appliedSeq, log[seq] removed  (commit.lua, through SessionStore)
//   release  -> lease let go unless more was accepted (release.lua)
//   fail / reset / cancel                             (fail.lua, reset.lua, cancel.lua)
import type { RedisClient } from '../state/redis-connection.ts';
import { NO_WAIT, type Durability } from '../state/durable-ack.ts';
import { redisKeys, type KeyLayout, type RedisKeys } from '../state/keys.ts';
import { loadScript, runScript, runScriptDurable, scriptError, text, type ScriptArg } from '../state/lua-scripts.ts';
import { SessionError } from '../state/session-error.ts';
import { SESSION_LAYOUT } from '../state/session-record.ts';
import type { LoggedRequest, SessionRequest, TokenLogprob } from './request.ts';

const SCRIPTS = {
  accept: loadScript('accept'),
  acquire: loadScript('acquire'),
  renew: loadScript('renew'),
  release: loadScript('release'),
  fail: loadScript('fail'),
  reset: loadScript('reset'),
  cancel: loadScript('cancel'),
};

/** Why a request cannot be accepted or a session reset (mapped to API errors in one table). */
export type OrderErrorCode = 'session_failed' | 'client_seq' | 'not_failed';

export class OrderError extends Error {
  constructor(
    readonly code: OrderErrorCode,
    message: string,
    /** session_failed: the failed seq; client_seq: the stored client seq. */
    readonly at: number,
  ) {
    super(message);
    this.name = 'OrderError';
  }
}

export type Acquired =
  | { kind: 'ok'; attempts: number }
  | { kind: 'idle' }
  | { kind: 'busy'; retryInMs: number }
  | { kind: 'failed'; seq: number; now?: true }
  | { kind: 'gone' };

export interface AcceptOptions {
  /** A websocket append's number: accepted only as the session's clientSeq + 1. */
  clientSeq?: number;
  /** The submitter waits for the result (kept in the session's results until read); default true. */
  wantResult?: boolean;
}

export class SessionLog {
  readonly keys: RedisKeys;
  private readonly ttlMs: number;
  private readonly durability: Durability;

  constructor(
    private readonly redis: RedisClient,
    opts: { prefix: string; ttlSeconds: number; layout?: KeyLayout; durability?: Durability },
  ) {
    this.keys = redisKeys(opts.prefix, opts.layout);
    this.durability = opts.durability ?? NO_WAIT;
    this.ttlMs = Math.max(1, Math.round(opts.ttlSeconds * 1000));
  }

  /**
   * Durably accepts a request: when this resolves it is in the session's log and has its seq (and, with
   * RMT_REDIS_WAIT_REPLICAS, on that many replicas: else NotDurableError).
   */
  async accept(sessionId: string, request: SessionRequest, opts: AcceptOptions = {}): Promise<number> {
    const args: ScriptArg[] = [SESSION_LAYOUT, this.ttlMs, JSON.stringify(request), opts.clientSeq ?? '', opts.wantResult === false ? '' : '1'];
    const k = this.keys.sessionKeys(sessionId);
    try {
      return Number(await runScriptDurable(this.redis, SCRIPTS.accept, [k.session, k.log, k.results], args, this.durability));
    } catch (err) {
      throw this.mapError(err, sessionId);
    }
  }

  /** The session's accepted requests `from`..`to` (fewer if some are gone: applied meanwhile). */
  async read(sessionId: string, from: number, to: number): Promise<LoggedRequest[]> {
    const fields: string[] = [];
    for (let seq = from; seq <= to; seq++) fields.push(`${seq}`, `c${seq}`, `w${seq}`, `x${seq}`, `g${seq}`, `a${seq}`);
    if (fields.length === 0) return [];
    const values = await this.redis.hmget(this.keys.sessionKeys(sessionId).log, ...fields);
    const out: LoggedRequest[] = [];
    for (let i = 0, seq = from; seq <= to; seq++, i += 6) {
      const [body, client, want, cancelled, generated, accepted] = values.slice(i, i + 6);
      if (body === null || body === undefined) break;
      const gen = generated ? (JSON.parse(generated) as { ids: number[]; logprobs?: TokenLogprob[]; prompt?: (TokenLogprob | null)[] }) : undefined;
      out.push({
        sessionId, seq, request: JSON.parse(body) as SessionRequest,
        ...(client ? { clientSeq: Number(client) } : {}),
        ...(want ? { wantResult: true } : {}),
        ...(cancelled ? { cancelled: true } : {}),
        ...(gen ? { generated: gen.ids, ...(gen.logprobs ? { generatedLogprobs: gen.logprobs } : {}), ...(gen.prompt ? { promptLogprobs: gen.prompt } : {}) } : {}),
        ...(accepted ? { acceptedAt: Number(accepted) } : {}),
      });
    }
    return out;
  }

  /** The first request not applied yet (appliedSeq + 1), read without the rest of the session. */
  async head(sessionId: string): Promise<number> {
    return Number((await this.redis.hget(this.keys.session(sessionId), 'appliedSeq')) ?? 0) + 1;
  }

  /** Why the session failed, read without the rest of it (its state may be what made it fail). */
  async failureOf(sessionId: string): Promise<{ seq: number; code: string; message: string; clientSeq?: number } | undefined> {
    const [status, seq, code, message] = await this.redis.hmget(this.keys.session(sessionId), 'status', 'failedSeq', 'failCode', 'failMessage');
    if (status !== 'failed') return undefined;
    const clientSeq = await this.clientSeqOf(sessionId, Number(seq));
    return { seq: Number(seq), code: code ?? 'failed', message: message ?? '', ...(clientSeq !== undefined ? { clientSeq } : {}) };
  }

  /** The websocket append number request `seq` was accepted as, if any. */
  async clientSeqOf(sessionId: string, seq: number): Promise<number | undefined> {
    const v = await this.redis.hget(this.keys.sessionKeys(sessionId).log, `c${seq}`);
    return v === null ? undefined : Number(v);
  }

  /** Ids a generation produced so far, saved with its commits so a resumed one returns the whole text. */
  async saveGenerated(sessionId: string, seq: number, ids: number[], logprobs?: TokenLogprob[], prompt?: (TokenLogprob | null)[]): Promise<void> {
    await this.redis.hset(this.keys.sessionKeys(sessionId).log, `g${seq}`, JSON.stringify({ ids, ...(logprobs ? { logprobs } : {}), ...(prompt ? { prompt } : {}) }));
  }

  /** Takes the session's lease for a turn (acquire.lua: counts the head request's attempts). */
  async acquire(sessionId: string, owner: string, leaseMs: number, maxAttempts: number): Promise<Acquired> {
    const r = (await this.run(SCRIPTS.acquire, sessionId, [SESSION_LAYOUT, owner, leaseMs, maxAttempts], 1)) as unknown[];
    const kind = text(r[0]);
    switch (kind) {
      case 'ok':
        return { kind, attempts: Number(r[1]) };
      case 'busy':
        return { kind, retryInMs: Number(r[1]) };
      case 'failed':
        return { kind, seq: Number(r[1]), ...(Number(r[2]) === 1 ? { now: true as const } : {}) };
      case 'idle':
      case 'gone':
        return { kind };
      default:
        throw new Error(`acquire.lua returned ${kind}`);
    }
  }

  /** Extends the lease; false when it is no longer the caller's. */
  async renew(sessionId: string, owner: string, leaseMs: number): Promise<boolean> {
    return Number(await this.run(SCRIPTS.renew, sessionId, [owner, leaseMs], 1)) === 1;
  }

  /** 'released'; 'more' (requests were accepted meanwhile: the lease is still the caller's); 'lost'. */
  async release(sessionId: string, owner: string, force = false): Promise<'released' | 'more' | 'lost'> {
    const r = Number(await this.run(SCRIPTS.release, sessionId, [owner, force ? '1' : ''], 1));
    return r === 1 ? 'released' : r === 0 ? 'more' : 'lost';
  }

  /** The lease holder puts the session into its failed state at `seq`; false if it had failed already or is gone. */
  async fail(sessionId: string, owner: string, seq: number, code: string, message: string): Promise<boolean> {
    try {
      return Number(await this.run(SCRIPTS.fail, sessionId, [owner, seq, code, message.slice(0, 2000)], 1)) === 1;
    } catch (err) {
      throw this.mapError(err, sessionId);
    }
  }

  /** The owner resets a failed session; returns the dropped seqs (from > to: none). */
  async reset(sessionId: string, action: 'retry' | 'drop'): Promise<{ from: number; to: number }> {
    try {
      const [from, to] = (await this.run(SCRIPTS.reset, sessionId, [SESSION_LAYOUT, action, this.ttlMs])) as number[];
      return action === 'drop' ? { from: Number(from), to: Number(to) } : { from: 1, to: 0 };
    } catch (err) {
      throw this.mapError(err, sessionId);
    }
  }

  /** Marks an accepted request cancelled; false when it was applied (or dropped) already. */
  async cancel(sessionId: string, seq: number): Promise<boolean> {
    return Number(await runScript(this.redis, SCRIPTS.cancel, [this.keys.sessionKeys(sessionId).log], [seq])) === 1;
  }

  /** Runs a script on the session's keys; `n` = how many of hash, log, results it takes (in that order). */
  private run(script: typeof SCRIPTS.accept, sessionId: string, args: ScriptArg[], n = 3): Promise<unknown> {
    const k = this.keys.sessionKeys(sessionId);
    return runScript(this.redis, script, [k.session, k.log, k.results].slice(0, n), args);
  }

  private mapError(err: unknown, id: string): unknown {
    const e = scriptError(err);
    if (!e) return err;
    switch (e.code) {
      case 'NOTFOUND':
        return new SessionError('not_found', `session ${id} not found (never created, deleted or expired)`);
      case 'LAYOUT':
        return new SessionError('state_mismatch', `session ${id}: stored hash layout ${e.rest}, this build reads layout ${SESSION_LAYOUT}`);
      case 'LEASE':
        return new SessionError('lease_lost', `session ${id}: this worker no longer holds its lease (held by ${e.rest || 'nobody'})`);
      case 'FAILED':
        return new OrderError('session_failed', `session ${id} has failed at request ${e.rest}; GET it for the reason, then reset it (POST /v1/sessions/${id}/reset)`, Number(e.rest));
      case 'CLIENTSEQ':
        return new OrderError('client_seq', `session ${id}: the last accepted append is ${e.rest}`, Number(e.rest));
      case 'NOTFAILED':
        return new OrderError('not_failed', `session ${id} has not failed: there is nothing to reset`, 0);
      default:
        return err;
    }
  }
}
