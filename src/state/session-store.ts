// Sessions in Redis. A session is one hash (keys.ts: session(id)) holding everything about it:
// meta fields as decimal strings, `state` as raw little-endian float32 bytes and `tail` as uint32
// LE token ids. One hash means one Lua script can compare-and-set and write all of it atomically,
// and the stored size stays constant however many tokens a session has read.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import type { Redis } from 'ioredis';
import { assertSessionId, redisKeys, type RedisKeys } from './keys.ts';

export type StateDtype = 'float32';

/** What a model expects of a session's state; shape excludes the batch axis, e.g. [16, 256]. */
export interface StateSpec {
  model: string;
  shape: number[];
  dtype: StateDtype;
}

export interface SessionRecord {
  id: string;
  model: string;
  /** Increments on every commit; the compare-and-set token for commit(). */
  version: number;
  state: Float32Array;
  stateShape: number[];
  stateDtype: StateDtype;
  /** Uncommitted token ids (fewer than a segment), stored as uint32 LE. */
  tail: number[];
  /** Text not yet tokenized (a trailing partial word). */
  pendingText: string;
  tokensIngested: number;
  segmentsCommitted: number;
  tokensGenerated: number;
  /** Last request sequence number handed out (accept). */
  acceptedSeq: number;
  /** Last request fully applied. */
  appliedSeq: number;
  /** Request curSeq has consumed curOffset of its tokens. */
  curSeq: number;
  curOffset: number;
  /** ms epoch */
  createdAt: number;
  lastUsedAt: number;
  /** Opaque (API key hash) or ''. */
  owner: string;
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
}

export type SessionErrorCode = 'not_found' | 'model_mismatch' | 'state_mismatch' | 'conflict';

export class SessionError extends Error {
  readonly code: SessionErrorCode;
  constructor(code: SessionErrorCode, message: string) {
    super(message);
    this.name = 'SessionError';
    this.code = code;
  }
}

/** Hash layout version; bump when fields change meaning so old code refuses new hashes. */
export const SESSION_LAYOUT = 1;

const DTYPE_BYTES: Record<StateDtype, number> = { float32: 4 };

// Fields read back as numbers. Kept in one list so parse and fork cannot drift apart.
const INT_FIELDS = [
  'version',
  'tokensIngested',
  'segmentsCommitted',
  'tokensGenerated',
  'acceptedSeq',
  'appliedSeq',
  'curSeq',
  'curOffset',
  'createdAt',
  'lastUsedAt',
] as const;

// ---------------------------------------------------------------------------------------------
// Lua scripts: one file each under ./lua, run by EVALSHA with an EVAL fallback on NOSCRIPT
// (a restarted or failed-over Redis has an empty script cache).

interface LuaScript {
  name: string;
  lua: string;
  sha: string;
}

function loadScript(name: string): LuaScript {
  const lua = readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8');
  return { name, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

const SCRIPTS = {
  create: loadScript('create'),
  get: loadScript('get'),
  acceptRequest: loadScript('accept-request'),
  markStarted: loadScript('mark-started'),
  commit: loadScript('commit'),
};

type Arg = string | Buffer | number;

async function runScript(redis: Redis, script: LuaScript, keys: string[], args: Arg[]): Promise<unknown> {
  // callBuffer so binary fields come back as Buffers, not lossy UTF-8 strings.
  try {
    return await redis.callBuffer('evalsha', [script.sha, keys.length, ...keys, ...args]);
  } catch (err) {
    if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
    return await redis.callBuffer('eval', [script.lua, keys.length, ...keys, ...args]);
  }
}

/** Splits a script's error reply "CODE rest" (see the lua headers); null for other errors. */
function scriptError(err: unknown): { code: string; rest: string } | null {
  if (!(err instanceof Error)) return null;
  const m = /^(EXISTS|NOTFOUND|LAYOUT|CONFLICT|STATE)\b ?(.*)$/s.exec(err.message);
  return m ? { code: m[1]!, rest: m[2] ?? '' } : null;
}

// ---------------------------------------------------------------------------------------------
// Binary encodings. Bytes are copied and swapped on big-endian hosts, never converted through
// JS numbers, so state bits (-0, subnormals, NaN payloads) round-trip exactly.

const BIG_ENDIAN = endianness() === 'BE';

function swap32(bytes: Buffer): void {
  if (BIG_ENDIAN) bytes.swap32();
}

function encodeState(state: Float32Array): Buffer {
  const out = Buffer.from(new Uint8Array(state.buffer, state.byteOffset, state.byteLength)); // copy
  swap32(out);
  return out;
}

function decodeState(bytes: Buffer): Float32Array {
  // A dedicated ArrayBuffer of exactly the state's size (never a slice of Node's Buffer pool),
  // so callers may transfer state.buffer to a worker thread.
  const ab = new ArrayBuffer(bytes.byteLength);
  const copy = Buffer.from(ab);
  bytes.copy(copy);
  swap32(copy);
  return new Float32Array(ab);
}

function encodeTail(tail: readonly number[]): Buffer {
  const out = Buffer.alloc(tail.length * 4);
  tail.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t > 0xffffffff) {
      throw new RangeError(`tail[${i}] = ${t} is not a uint32 token id`);
    }
    out.writeUInt32LE(t, i * 4);
  });
  return out;
}

function decodeTail(bytes: Buffer): number[] {
  const out: number[] = new Array(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readUInt32LE(i * 4);
  return out;
}

function describe(dtype: string, shape: readonly number[]): string {
  return `${dtype}[${shape.join(',')}]`;
}

function specBytes(spec: { shape: readonly number[]; dtype: StateDtype }): number {
  return spec.shape.reduce((a, b) => a * b, DTYPE_BYTES[spec.dtype]);
}

function assertSpec(spec: StateSpec): void {
  if (typeof spec.model !== 'string' || spec.model.length === 0) throw new TypeError('StateSpec.model must be a non-empty string');
  if (!(spec.dtype in DTYPE_BYTES)) throw new TypeError(`unsupported state dtype ${JSON.stringify(spec.dtype)}`);
  if (!Array.isArray(spec.shape) || spec.shape.length === 0 || !spec.shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new TypeError(`StateSpec.shape must be a non-empty list of positive integers, got ${JSON.stringify(spec.shape)}`);
  }
}

function assertCount(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${v}`);
}

function newId(): string {
  return randomBytes(16).toString('base64url'); // 22 url-safe chars, 128 random bits
}

// ---------------------------------------------------------------------------------------------

export class SessionStore {
  readonly keys: RedisKeys;
  private readonly redis: Redis;
  private readonly ttlMs: number;

  constructor(redis: Redis, opts: { prefix: string; ttlSeconds: number }) {
    if (!(opts.ttlSeconds > 0) || !Number.isFinite(opts.ttlSeconds)) {
      throw new RangeError(`ttlSeconds must be a positive number, got ${opts.ttlSeconds}`);
    }
    this.redis = redis;
    this.keys = redisKeys(opts.prefix);
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
    const key = this.keys.session(id);
    let reply: unknown;
    try {
      reply = await runScript(this.redis, SCRIPTS.get, [key], [SESSION_LAYOUT, Date.now(), this.ttlMs]);
    } catch (err) {
      throw this.mapError(err, id);
    }
    if (reply === null || reply === undefined) return null;
    return this.parse(id, reply as Buffer[]);
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
    // parse() already checked the bytes against the stored shape; this repeats it against the
    // caller's spec so a state of the wrong size can never be handed out, whatever parse does.
    if (rec.state.byteLength !== specBytes(expect)) {
      throw new SessionError(
        'state_mismatch',
        `session ${id} state: expected ${describe(expect.dtype, expect.shape)} = ${specBytes(expect)} bytes, found ${rec.state.byteLength} bytes`,
      );
    }
    return rec;
  }

  /**
   * The request's seq, and whether its predecessor has started (or been applied) already: `started`
   * is the highest seq a worker started (markStarted) or applied. tag: the same {field, value} again
   * returns the seq it got the first time (a retried request).
   */
  async accept(id: string, tag?: { field: string; value: string }): Promise<{ seq: number; started: number }> {
    const key = this.keys.session(id);
    try {
      const args = [SESSION_LAYOUT, Date.now(), this.ttlMs, ...(tag ? [tag.field, tag.value] : [])];
      const [seq, started] = (await runScript(this.redis, SCRIPTS.acceptRequest, [key], args)) as [number, number];
      return { seq: Number(seq), started: Number(started) };
    } catch (err) {
      throw this.mapError(err, id);
    }
  }

  /** A worker starts applying request `seq`: startedSeq becomes at least `seq` (mark-started.lua). False when the session is gone. */
  async markStarted(id: string, seq: number): Promise<boolean> {
    assertCount('seq', seq);
    const r = await runScript(this.redis, SCRIPTS.markStarted, [this.keys.session(id)], [SESSION_LAYOUT, seq]);
    return Number(r) >= 0;
  }

  /** The highest request seq started (markStarted) or applied; 0 for a missing session. */
  async startedSeq(id: string): Promise<number> {
    const [started, applied] = await this.redis.hmget(this.keys.session(id), 'startedSeq', 'appliedSeq');
    return Math.max(Number(started ?? 0) || 0, Number(applied ?? 0) || 0);
  }

  async commit(id: string, expectedVersion: number, u: CommitUpdate): Promise<number> {
    const key = this.keys.session(id);
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
      Date.now(),
      this.ttlMs,
    ];
    try {
      return Number(await runScript(this.redis, SCRIPTS.commit, [key], args));
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
      curSeq: 0,
      curOffset: 0,
      createdAt: now,
      lastUsedAt: now,
      owner: opts.owner ?? src.owner,
    };
    await this.insert(record);
    return record;
  }

  /** Live sessions (SCAN, O(keys in the database)): for a gauge that is sampled, not for requests. */
  async count(): Promise<number> {
    let n = 0;
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', this.keys.sessionPattern(), 'COUNT', 1000);
      cursor = next;
      n += keys.length;
    } while (cursor !== '0');
    return n;
  }

  async delete(id: string): Promise<boolean> {
    return (await this.redis.del(this.keys.session(id))) > 0;
  }

  /** Bytes Redis uses for the session (MEMORY USAGE over every field, not a sample); 0 if gone. */
  async storedBytes(id: string): Promise<number> {
    const n = await this.redis.memory('USAGE', this.keys.session(id), 'SAMPLES', 0);
    return n ?? 0;
  }

  async publishProgress(id: string, event: object): Promise<void> {
    await this.redis.publish(this.keys.progressChannel(id), JSON.stringify(event));
  }

  // -------------------------------------------------------------------------------------------

  private async insert(rec: SessionRecord): Promise<void> {
    assertSessionId(rec.id);
    const fields: Arg[] = [
      'layout', SESSION_LAYOUT,
      'id', rec.id,
      'model', rec.model,
      'stateShape', rec.stateShape.join(','),
      'stateDtype', rec.stateDtype,
      'state', encodeState(rec.state),
      'tail', encodeTail(rec.tail),
      'pendingText', Buffer.from(rec.pendingText, 'utf8'),
      'owner', rec.owner,
    ];
    for (const f of INT_FIELDS) fields.push(f, rec[f]);
    try {
      await runScript(this.redis, SCRIPTS.create, [this.keys.session(rec.id)], [this.ttlMs, ...fields]);
    } catch (err) {
      throw this.mapError(err, rec.id);
    }
  }

  private parse(id: string, flat: Buffer[]): SessionRecord {
    const h = new Map<string, Buffer>();
    for (let i = 0; i + 1 < flat.length; i += 2) h.set(flat[i]!.toString('utf8'), flat[i + 1]!);
    const str = (f: string): string => {
      const v = h.get(f);
      if (v === undefined) throw new SessionError('state_mismatch', `session ${id} is corrupt: field ${f} is missing`);
      return v.toString('utf8');
    };
    const int = (f: string): number => {
      const s = str(f);
      const n = Number(s);
      if (!/^-?\d+$/.test(s) || !Number.isSafeInteger(n)) throw new SessionError('state_mismatch', `session ${id} is corrupt: field ${f} = ${JSON.stringify(s)}`);
      return n;
    };

    const dtype = str('stateDtype');
    if (!(dtype in DTYPE_BYTES)) {
      throw new SessionError('state_mismatch', `session ${id} state: found unknown dtype ${JSON.stringify(dtype)}, this build reads ${Object.keys(DTYPE_BYTES).join(', ')}`);
    }
    const stateDtype = dtype as StateDtype;
    const shapeStr = str('stateShape');
    const stateShape = shapeStr.split(',').map(Number);
    if (stateShape.some((d) => !Number.isSafeInteger(d) || d <= 0)) {
      throw new SessionError('state_mismatch', `session ${id} is corrupt: stateShape = ${JSON.stringify(shapeStr)}`);
    }
    const stateBytes = h.get('state');
    const want = specBytes({ shape: stateShape, dtype: stateDtype });
    if (stateBytes === undefined || stateBytes.byteLength !== want) {
      throw new SessionError(
        'state_mismatch',
        `session ${id} state: expected ${describe(stateDtype, stateShape)} = ${want} bytes, found ${stateBytes?.byteLength ?? 0} bytes`,
      );
    }
    const tailBytes = h.get('tail') ?? Buffer.alloc(0);
    if (tailBytes.byteLength % 4 !== 0) {
      throw new SessionError('state_mismatch', `session ${id} is corrupt: tail is ${tailBytes.byteLength} bytes, not a whole number of uint32`);
    }

    return {
      id: str('id'),
      model: str('model'),
      version: int('version'),
      state: decodeState(stateBytes),
      stateShape,
      stateDtype,
      tail: decodeTail(tailBytes),
      pendingText: str('pendingText'),
      tokensIngested: int('tokensIngested'),
      segmentsCommitted: int('segmentsCommitted'),
      tokensGenerated: int('tokensGenerated'),
      acceptedSeq: int('acceptedSeq'),
      appliedSeq: int('appliedSeq'),
      curSeq: int('curSeq'),
      curOffset: int('curOffset'),
      createdAt: int('createdAt'),
      lastUsedAt: int('lastUsedAt'),
      owner: str('owner'),
    };
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
