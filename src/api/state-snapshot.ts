// Portable session snapshots (GET/PUT /v1/sessions/:id/state).
//
//   "RMTS"                      4 bytes magic
//   format version              u32 LE (SNAPSHOT_VERSION)
//   header length               u32 LE
//   header                      UTF-8 JSON {model, dtype, shape, tail_tokens, tokens_ingested,
//                               segments_committed, tokens_generated, pending_text}
//   state                       product(shape) float32, little-endian
//   tail                        tail_tokens uint32, little-endian
//   sha256                      32 bytes, of everything before it
//
// Nothing in a snapshot names the session or a time, so exporting the same memory twice, from any
// session, gives the same bytes. Bytes are copied (and swapped on big-endian hosts), never converted
// through JS numbers, so every state bit survives.
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';

export const SNAPSHOT_MAGIC = Buffer.from('RMTS', 'ascii');
export const SNAPSHOT_VERSION = 1;
const PREFIX_BYTES = 12;
const CHECKSUM_BYTES = 32;
/** Longest JSON header accepted (pending text is bounded by the worker; this is generous). */
export const MAX_HEADER_BYTES = 1 << 20;
/**
 * Largest counter (tokens_ingested, segments_committed, tokens_generated, tail_tokens) a snapshot may
 * carry: 2^50, about 1.1e15. The session keeps adding to its counters after the import, and they must
 * stay exact integers (below 2^53) or later commits no longer match and the session turns unreadable;
 * 2^50 leaves 8x headroom and is still a million tokens a second for 35 years.
 */
export const MAX_SNAPSHOT_COUNTER = 2 ** 50;

export interface SnapshotHeader {
  model: string;
  dtype: 'float32';
  shape: number[];
  tail_tokens: number;
  tokens_ingested: number;
  segments_committed: number;
  tokens_generated: number;
  pending_text: string;
}

export interface Snapshot {
  header: SnapshotHeader;
  state: Float32Array;
  tail: number[];
}

export type SnapshotErrorCode = 'invalid_snapshot' | 'snapshot_truncated' | 'snapshot_checksum' | 'unsupported_snapshot_version';

export class SnapshotError extends Error {
  constructor(
    readonly code: SnapshotErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SnapshotError';
  }
}

const BIG_ENDIAN = endianness() === 'BE';

export interface SnapshotSource {
  model: string;
  stateDtype: 'float32';
  stateShape: number[];
  state: Float32Array;
  tail: readonly number[];
  pendingText: string;
  tokensIngested: number;
  segmentsCommitted: number;
  tokensGenerated: number;
}

export function encodeSnapshot(s: SnapshotSource): Buffer {
  const header: SnapshotHeader = {
    model: s.model,
    dtype: s.stateDtype,
    shape: [...s.stateShape],
    tail_tokens: s.tail.length,
    tokens_ingested: s.tokensIngested,
    segments_committed: s.segmentsCommitted,
    tokens_generated: s.tokensGenerated,
    pending_text: s.pendingText,
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(PREFIX_BYTES);
  SNAPSHOT_MAGIC.copy(prefix, 0);
  prefix.writeUInt32LE(SNAPSHOT_VERSION, 4);
  prefix.writeUInt32LE(json.byteLength, 8);
  const state = Buffer.from(new Uint8Array(s.state.buffer, s.state.byteOffset, s.state.byteLength)); // copy
  if (BIG_ENDIAN) state.swap32();
  const tail = Buffer.alloc(s.tail.length * 4);
  s.tail.forEach((t, i) => tail.writeUInt32LE(t, i * 4));
  const body = Buffer.concat([prefix, json, state, tail]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and checks a snapshot's structure and checksum; throws SnapshotError saying what is wrong. */
export function decodeSnapshot(buf: Buffer): Snapshot {
  if (buf.byteLength < PREFIX_BYTES) {
    if (buf.byteLength >= 4 && !buf.subarray(0, 4).equals(SNAPSHOT_MAGIC)) throw new SnapshotError('invalid_snapshot', 'not an rmt-serve snapshot (bad magic)');
    throw new SnapshotError('snapshot_truncated', `snapshot truncated: ${buf.byteLength} bytes is shorter than the ${PREFIX_BYTES}-byte prefix`);
  }
  if (!buf.subarray(0, 4).equals(SNAPSHOT_MAGIC)) throw new SnapshotError('invalid_snapshot', 'not an rmt-serve snapshot (bad magic, expected "RMTS")');
  const version = buf.readUInt32LE(4);
  if (version !== SNAPSHOT_VERSION) {
    throw new SnapshotError('unsupported_snapshot_version', `snapshot format version ${version} is not supported (this build reads ${SNAPSHOT_VERSION})`);
  }
  const headerLen = buf.readUInt32LE(8);
  if (headerLen > MAX_HEADER_BYTES) throw new SnapshotError('invalid_snapshot', `snapshot header length ${headerLen} exceeds ${MAX_HEADER_BYTES}`);
  if (buf.byteLength < PREFIX_BYTES + headerLen) {
    throw new SnapshotError('snapshot_truncated', `snapshot truncated: header needs ${PREFIX_BYTES + headerLen} bytes, got ${buf.byteLength}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(PREFIX_BYTES, PREFIX_BYTES + headerLen)));
  } catch (err) {
    throw new SnapshotError('invalid_snapshot', `snapshot header is not UTF-8 JSON: ${(err as Error).message}`);
  }
  const h = raw as Partial<SnapshotHeader> | null;
  if (typeof h !== 'object' || h === null || Array.isArray(h)) throw new SnapshotError('invalid_snapshot', 'snapshot header is not a JSON object');
  if (typeof h.model !== 'string' || h.model.length === 0) throw new SnapshotError('invalid_snapshot', 'snapshot header: model must be a non-empty string');
  if (h.dtype !== 'float32') throw new SnapshotError('invalid_snapshot', `snapshot header: dtype ${JSON.stringify(h.dtype)} is not supported (float32)`);
  if (!Array.isArray(h.shape) || h.shape.length === 0 || h.shape.length > 8 || !h.shape.every((d) => isCount(d) && d > 0)) {
    throw new SnapshotError('invalid_snapshot', `snapshot header: shape ${JSON.stringify(h.shape)} is not a list of positive integers`);
  }
  for (const f of ['tail_tokens', 'tokens_ingested', 'segments_committed', 'tokens_generated'] as const) {
    if (!isCount(h[f])) throw new SnapshotError('invalid_snapshot', `snapshot header: ${f} must be a non-negative integer`);
    if (h[f] > MAX_SNAPSHOT_COUNTER) throw new SnapshotError('invalid_snapshot', `snapshot header: ${f} ${h[f]} is out of range (at most 2^50 = ${MAX_SNAPSHOT_COUNTER})`);
  }
  if (typeof h.pending_text !== 'string') throw new SnapshotError('invalid_snapshot', 'snapshot header: pending_text must be a string');
  const header = h as SnapshotHeader;
  const count = header.shape.reduce((a, b) => a * b, 1);
  const stateBytes = count * 4;
  const tailBytes = header.tail_tokens * 4;
  const total = PREFIX_BYTES + headerLen + stateBytes + tailBytes + CHECKSUM_BYTES;
  if (!Number.isSafeInteger(total)) throw new SnapshotError('invalid_snapshot', 'snapshot header: sizes overflow');
  if (buf.byteLength < total) throw new SnapshotError('snapshot_truncated', `snapshot truncated: expected ${total} bytes, got ${buf.byteLength}`);
  if (buf.byteLength > total) throw new SnapshotError('invalid_snapshot', `snapshot has ${buf.byteLength - total} trailing bytes (expected ${total} bytes)`);
  const bodyEnd = total - CHECKSUM_BYTES;
  const want = createHash('sha256').update(buf.subarray(0, bodyEnd)).digest();
  if (!want.equals(buf.subarray(bodyEnd))) throw new SnapshotError('snapshot_checksum', 'snapshot checksum (sha256) does not match its contents: the data is corrupt');

  const stateStart = PREFIX_BYTES + headerLen;
  const ab = new ArrayBuffer(stateBytes);
  const copy = Buffer.from(ab);
  buf.copy(copy, 0, stateStart, stateStart + stateBytes);
  if (BIG_ENDIAN) copy.swap32();
  const state = new Float32Array(ab);
  const tail: number[] = new Array(header.tail_tokens);
  for (let i = 0; i < header.tail_tokens; i++) tail[i] = buf.readUInt32LE(stateStart + stateBytes + i * 4);
  return { header, state, tail };
}
