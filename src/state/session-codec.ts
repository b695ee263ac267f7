// How a session's fields are written into its Redis hash (session-record.ts): the state as raw
// little-endian float32 bytes, the tail as uint32 LE token ids, and the checks of a state's spec.
import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';

export type StateDtype = 'float32';

/** What a model expects of a session's state; shape excludes the batch axis, e.g. [16, 256]. */
export interface StateSpec {
  model: string;
  shape: number[];
  dtype: StateDtype;
}

export const DTYPE_BYTES: Record<StateDtype, number> = { float32: 4 };

// Binary encodings. Bytes are copied and swapped on big-endian hosts, never converted through
// JS numbers, so state bits (-0, subnormals, NaN payloads) round-trip exactly.

const BIG_ENDIAN = endianness() === 'BE';

function swap32(bytes: Buffer): void {
  if (BIG_ENDIAN) bytes.swap32();
}

export function encodeState(state: Float32Array): Buffer {
  const out = Buffer.from(new Uint8Array(state.buffer, state.byteOffset, state.byteLength)); // copy
  swap32(out);
  return out;
}

export function decodeState(bytes: Buffer): Float32Array {
  // A dedicated ArrayBuffer of exactly the state's size (never a slice of Node's Buffer pool),
  // so callers may transfer state.buffer to a worker thread.
  const ab = new ArrayBuffer(bytes.byteLength);
  const copy = Buffer.from(ab);
  bytes.copy(copy);
  swap32(copy);
  return new Float32Array(ab);
}

export function encodeTail(tail: readonly number[]): Buffer {
  const out = Buffer.alloc(tail.length * 4);
  tail.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t > 0xffffffff) {
      throw new RangeError(`tail[${i}] = ${t} is not a uint32 token id`);
    }
    out.writeUInt32LE(t, i * 4);
  });
  return out;
}

export function decodeTail(bytes: Buffer): number[] {
  const out: number[] = new Array(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readUInt32LE(i * 4);
  return out;
}

export function describe(dtype: string, shape: readonly number[]): string {
  return `${dtype}[${shape.join(',')}]`;
}

export function specBytes(spec: { shape: readonly number[]; dtype: StateDtype }): number {
  return spec.shape.reduce((a, b) => a * b, DTYPE_BYTES[spec.dtype]);
}

export function assertSpec(spec: StateSpec): void {
  if (typeof spec.model !== 'string' || spec.model.length === 0) throw new TypeError('StateSpec.model must be a non-empty string');
  if (!(spec.dtype in DTYPE_BYTES)) throw new TypeError(`unsupported state dtype ${JSON.stringify(spec.dtype)}`);
  if (!Array.isArray(spec.shape) || spec.shape.length === 0 || !spec.shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new TypeError(`StateSpec.shape must be a non-empty list of positive integers, got ${JSON.stringify(spec.shape)}`);
  }
}

export function assertCount(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${v}`);
}

export function newId(): string {
  return randomBytes(16).toString('base64url'); // 22 url-safe chars, 128 random bits
}
