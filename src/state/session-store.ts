// Sessions in Redis: create, read, commit, fork and delete. A session is one hash (its record and
// layout: session-record.ts). One hash means one Lua script can compare-and-set and write all of it
// atomically, and the stored size stays constant however many tokens a session has read.
import { masters, publishTo, type RedisClient } from './redis-connection.ts';
import { NO_WAIT, type Durability } from './durable-ack.ts';
import { assertSessionId, redisKeys, type KeyLayout, type RedisKeys } from './keys.ts';
import { loadScript, runScript, runScriptDurable, scriptError, type ScriptArg as Arg } from './lua-scripts.ts';
import { assertCount, assertSpec, describe, encodeState, encodeTail, newId, specBytes, type StateSpec } from './session-codec.ts';
import { SessionError } from './session-error.ts';
import { SESSION_LAYOUT, parseSessionHash, sessionHashFields, type SessionRecord } from './session-record.ts';

/** A worker's lease on the session (session-log.ts): its commits are refused once another holds it. */
export interface CommitLease {
  owner: string;
  ms: number;
}

export interface CommitUpdate {
  state: Float32Array;
  tail: readonly number[];
  pendingText: string;
  addTokensIngested: number;
  addSegments: number;
  addTokensGenerated: number;
  curSeq: number;
  curOffset: number;
  /** Set when the request finished. */
  appliedSeq?: number;
  /** With appliedSeq: the request's result (JSON), kept for its submitter. */
  result?: string;
}

/** Results kept per session: a submitter reads its own long before this many later requests apply. */
export const RESULTS_KEPT = 1024;

const SCRIPTS = {
  create: loadScript('create'),
  get: loadScript('get'),
  commit: loadScript('commit'),
};

// ---------------------------------------------------------------------------------------------

export class SessionStore {
  readonly keys: RedisKeys;
  private readonly redis: RedisClient;
  private readonly ttlMs: number;
  private readonly durability: Durability;

  constructor(redis: RedisClient, opts: { prefix: string; ttlSeconds: number; layout?: KeyLayout; durability?: Durability }) {
    if (!(opts.ttlSeconds > 0) || !Number.isFinite(opts.ttlSeconds)) {
      throw new RangeError(`ttlSeconds must be a positive number, got ${opts.ttlSeconds}`);
    }
    this.redis = redis;
    this.keys = redisKeys(opts.prefix, opts.layout);
    this.durability = opts.durability ?? NO_WAIT;
    this.ttlMs = Math.max(1, Math.round(opts.ttlSeconds * 1000));
  }

  async create(spec: StateSpec, init: Float32Array, opts: { id?: string; owner?: string } = {}): Promise<SessionRecord> {
    assertSpec(spec);
    if (!(init instanceof Float32Array)) throw new TypeError('init state must be a Float32Array');
    if (init.byteLength !== specBytes(spec)) {
      throw new SessionError(
        'state_mismatch',
        `initial state for ${spec.model}: expected ${describe(spec.dtype, spec.shape)} (${specBytes(spec)} bytes), got ${init.length} float32 values (${init.byteLength} bytes)`,
      );
    }
    const now = Date.now();
    const record: SessionRecord = {
      id: opts.id ?? newId(),
      model: spec.model,
      version: 0,
      state: new Float32Array(init), // the caller keeps its buffer
      stateShape: [...spec.shape],
      stateDtype: spec.dtype,
      tail: [],
      pendingText: '',
      tokensIngested: 0,
      segmentsCommitted: 0,
      tokensGenerated: 0,
      acceptedSeq: 0,
      appliedSeq: 0,
      clientSeq: 0,
      status: 'ok',
      dropped: { from: 0, to: 0 },
      curSeq: 0,
      curOffset: 0,
      createdAt: now,
      lastUsedAt: now,
      owner: opts.owner ?? '',
    };
    await this.insert(record);
    return record;
  }

  async get(id: string): Promise<SessionRecord | null> {
    let reply: unknown;
    try {
      reply = await runScript(this.redis, SCRIPTS.get, this.keyList(id), [SESSION_LAYOUT, this.ttlMs]);
    } catch (err) {
      throw this.mapError(err, id);
    }
    if (reply === null || reply === undefined) return null;
    return parseSessionHash(id, reply as Buffer[]);
  }

  async load(id: string, expect: StateSpec): Promise<SessionRecord> {
    assertSpec(expect);
    const rec = await this.get(id);
    if (!rec) throw new SessionError('not_found', `session ${id} not found (never created, deleted or expired)`);
    return this.verify(rec, expect);
  }

  /** load()'s checks on a record already read: a state of the wrong model, shape or dtype is refused. */
  verify(rec: SessionRecord, expect: StateSpec): SessionRecord {
    const id = rec.id;
    if (rec.model !== expect.model) {
      throw new SessionError('model_mismatch', `session ${id} belongs to model ${JSON.stringify(rec.model)}, expected model ${JSON.stringify(expect.model)}`);
    }
    const sameShape = rec.stateShape.length === expect.shape.length && rec.stateShape.every((d, i) => d === expect.shape[i]);
    if (rec.stateDtype !== expect.dtype || !sameShape) {
      throw new SessionError(
        'state_mismatch',
        `session ${id} state: expected ${describe(expect.dtype, expect.shape)}, found ${describe(rec.stateDtype, rec.stateShape)}`,
      );
    }
    // parseSessionHash() already checked the bytes against the stored shape; this repeats it
    // against the caller's spec so a state of the wrong size can never be handed out, whatever
    // parsing does.
    if (rec.state.byteLength !== specBytes(expect)) {
      throw new SessionError(
        'state_mismatch',
        `session ${id} state: expected ${describe(expect.dtype, expect.shape)} = ${specBytes(expect)} bytes, found ${rec.state.byteLength} bytes`,
      );
    }
    return rec;
  }

  /**
   * Commits (part of) a request: a compare-and-set on the version the writer loaded (commit.lua).
   * With `lease`, only while the caller holds the session's lease (a worker); without, any time (a
   * snapshot import).
   */
  async commit(id: string, expectedVersion: number, u: CommitUpdate, lease?: CommitLease): Promise<number> {
    assertCount('expectedVersion', expectedVersion);
    if (!(u.state instanceof Float32Array)) throw new TypeError('commit state must be a Float32Array');
    assertCount('addTokensIngested', u.addTokensIngested);
    assertCount('addSegments', u.addSegments);
    assertCount('addTokensGenerated', u.addTokensGenerated);
    assertCount('curSeq', u.curSeq);
    assertCount('curOffset', u.curOffset);
    if (u.appliedSeq !== undefined) assertCount('appliedSeq', u.appliedSeq);
    if (typeof u.pendingText !== 'string') throw new TypeError('pendingText must be a string');
    const args: Arg[] = [
      SESSION_LAYOUT,
      expectedVersion,
      encodeState(u.state),
      encodeTail(u.tail),
      Buffer.from(u.pendingText, 'utf8'),
      u.addTokensIngested,
      u.addSegments,
      u.addTokensGenerated,
      u.curSeq,
      u.curOffset,
      u.appliedSeq === undefined ? '' : u.appliedSeq,
      this.ttlMs,
      lease?.owner ?? '',
      lease?.ms ?? 0,
      u.appliedSeq !== undefined && u.result !== undefined ? u.result : '',
      RESULTS_KEPT,
    ];
    // A commit outside a lease (a snapshot import) is acknowledged to a client; a worker's is not (a
    // lost one is redone from the last commit that survived).
    try {
      return Number(await runScriptDurable(this.redis, SCRIPTS.commit, this.keyList(id), args, lease ? NO_WAIT : this.durability));
    } catch (err) {
      throw this.mapError(err, id, expectedVersion);
    }
  }

  /**
   * Copies state, tail, pendingText and counters to a new session (version 0, request sequence
   * numbers reset). The source is read with one HGETALL (inside get()), so the copy is a
   * consistent snapshot even while the source is being committed to; the two keys are never
   * touched by one script, so this also works when they live on different cluster slots.
   * The owner is the source's unless opts.owner is given.
   */
  async fork(id: string, opts: { id?: string; owner?: string } = {}): Promise<SessionRecord> {
    const src = await this.get(id);
    if (!src) throw new SessionError('not_found', `session ${id} not found (never created, deleted or expired)`);
    const now = Date.now();
    const record: SessionRecord = {
      ...src,
      id: opts.id ?? newId(),
      version: 0,
      state: new Float32Array(src.state),
      stateShape: [...src.stateShape],
      tail: [...src.tail],
      acceptedSeq: 0,
      appliedSeq: 0,
      clientSeq: 0,
      status: 'ok',
      dropped: { from: 0, to: 0 },
      curSeq: 0,
      curOffset: 0,
      createdAt: now,
      lastUsedAt: now,
      owner: opts.owner ?? src.owner,
    };
    await this.insert(record);
    return record;
  }

  /** Live sessions (SCAN of every master, O(keys in the database)): for a gauge that is sampled, not for requests. */
  async count(): Promise<number> {
    let n = 0;
    for (const node of masters(this.redis)) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', this.keys.sessionPattern(), 'COUNT', 1000);
        cursor = next;
        n += keys.length;
      } while (cursor !== '0');
    }
    return n;
  }

  /** Deletes the session and its request log and results; true if it existed. */
  async delete(id: string): Promise<boolean> {
    const [session, ...rest] = this.keyList(id);
    const removed = await this.redis.del(session!);
    if (rest.length > 0) await this.redis.del(...rest);
    return removed > 0;
  }

  /**
   * The session's owner as stored, without reading (or judging) anything else of it: undefined when
   * there is no such session. Deleting a session needs only this, so even a session whose state or
   * counters this build refuses can always be deleted by its owner.
   */
  async owner(id: string): Promise<string | undefined> {
    const v = await this.redis.hget(this.keys.session(id), 'owner');
    return v ?? undefined;
  }

  /** Bytes Redis uses for the session (MEMORY USAGE over every field, not a sample); 0 if gone. */
  async storedBytes(id: string): Promise<number> {
    const n = await this.redis.memory('USAGE', this.keys.session(id), 'SAMPLES', 0);
    return n ?? 0;
  }

  async publishProgress(id: string, event: object): Promise<void> {
    await publishTo(this.redis, this.keys.progressChannel(id), JSON.stringify(event));
  }

  // -------------------------------------------------------------------------------------------

  private async insert(rec: SessionRecord): Promise<void> {
    assertSessionId(rec.id);
    const fields = sessionHashFields(rec);
    try {
      await runScriptDurable(this.redis, SCRIPTS.create, this.keyList(rec.id), [this.ttlMs, ...fields], this.durability);
    } catch (err) {
      throw this.mapError(err, rec.id);
    }
  }

  /** KEYS of the session scripts: hash, log, results (one cluster slot). */
  private keyList(id: string): string[] {
    const k = this.keys.sessionKeys(id);
    return [k.session, k.log, k.results];
  }

  private mapError(err: unknown, id: string, expectedVersion?: number): unknown {
    const e = scriptError(err);
    if (!e) return err;
    switch (e.code) {
      case 'EXISTS':
        return new SessionError('conflict', `session ${id} already exists`);
      case 'NOTFOUND':
        return new SessionError('not_found', `session ${id} not found (never created, deleted or expired)`);
      case 'CONFLICT':
        return new SessionError('conflict', `session ${id}: commit expected version ${expectedVersion}, stored version is ${e.rest}`);
      case 'LEASE':
        return new SessionError('lease_lost', `session ${id}: this worker no longer holds its lease (held by ${e.rest || 'nobody'})`);
      case 'LAYOUT':
        // A hash written by another (newer?) build: refuse rather than misread it.
        return new SessionError('state_mismatch', `session ${id}: stored hash layout ${e.rest}, this build reads layout ${SESSION_LAYOUT}`);
      case 'STATE': {
        const m = /^(\d+) (\d+)$/.exec(e.rest);
        return new SessionError(
          'state_mismatch',
          m ? `session ${id}: commit state is ${m[2]} bytes, the session's shape and dtype need ${m[1]}` : `session ${id}: stored state spec is unusable (${e.rest})`,
        );
      }
      default:
        return err;
    }
  }
}
