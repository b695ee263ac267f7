// A session as read from and written to its Redis hash (keys.ts: session(id)): meta fields as
// decimal strings, `state` as raw little-endian float32 bytes and `tail` as uint32 LE token ids
// (session-codec.ts). Both directions live here, beside SESSION_LAYOUT, so the layout is one place.
import type { ScriptArg as Arg } from './lua-scripts.ts';
import { DTYPE_BYTES, decodeState, decodeTail, describe, encodeState, encodeTail, specBytes, type StateDtype } from './session-codec.ts';
import { SessionError } from './session-error.ts';

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
  /** Last request sequence number handed out (session-log.ts accept). */
  acceptedSeq: number;
  /** Last request fully applied. */
  appliedSeq: number;
  /** The last websocket append accepted (the client's own numbering). */
  clientSeq: number;
  /** 'failed': a request could not be applied; nothing more is until the owner resets the session. */
  status: SessionStatus;
  failure?: SessionFailure;
  /** The seqs the last reset dropped (0, 0: none). */
  dropped: { from: number; to: number };
  /** Request curSeq has consumed curOffset of its tokens. */
  curSeq: number;
  curOffset: number;
  /** ms epoch */
  createdAt: number;
  lastUsedAt: number;
  /** Opaque (API key hash) or ''. */
  owner: string;
}

export type SessionStatus = 'ok' | 'failed';

export interface SessionFailure {
  /** The request that could not be applied (every later one waits behind it). */
  seq: number;
  code: string;
  message: string;
  /** ms epoch */
  at: number;
}

/** Hash layout version; bump when fields change meaning so old code refuses new hashes. */
export const SESSION_LAYOUT = 2;

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

/** The create script's field/value pairs for a new hash (create and fork in session-store.ts). */
export function sessionHashFields(rec: SessionRecord): Arg[] {
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
  return fields;
}

/** The record in a get script's reply (HGETALL's flat field/value list); a corrupt hash is refused. */
export function parseSessionHash(id: string, flat: Buffer[]): SessionRecord {
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

  // Fields a session gains as it is used (absent: 0).
  const opt = (f: string): number => (h.has(f) ? int(f) : 0);
  const status: SessionStatus = h.get('status')?.toString('utf8') === 'failed' ? 'failed' : 'ok';

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
    clientSeq: opt('clientSeq'),
    status,
    ...(status === 'failed'
      ? { failure: { seq: opt('failedSeq'), code: h.get('failCode')?.toString('utf8') ?? 'failed', message: h.get('failMessage')?.toString('utf8') ?? '', at: opt('failedAt') } }
      : {}),
    dropped: { from: opt('droppedFrom'), to: opt('droppedTo') },
    curSeq: int('curSeq'),
    curOffset: int('curOffset'),
    createdAt: int('createdAt'),
    lastUsedAt: int('lastUsedAt'),
    owner: str('owner'),
  };
}
