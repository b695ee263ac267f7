// A ring of memory states in shared memory, from an engine thread to the main thread. A chain's
// memory after each segment goes to the main thread (step replies); copying a run's states into a new
// buffer and transferring it is the engine thread's time between dependent runs, while the device
// waits (allocation, zeroing, the transfer: bench/state-handoff.ts, bench/gpu-suite.sh, bench/results/gpu-14). Written
// here, the states cost one copy; the main thread copies each out as
// its reply arrives and then frees the run's region. One writer (the engine thread), one reader (the
// main thread, in message order); when the reader is behind and a run's states do not fit, the writer
// says so and the caller sends its own buffer as before.

/** What the two threads share: the states, and [end of what the reader has released] (Int32). */
export interface StateRingShared {
  data: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

/** Where a state lies in the ring (floats from the start), to copy out on arrival. */
export interface RingSlice {
  ringAt: number;
  length: number;
}

const MIN_FLOATS = 1 << 16;
// 128 MiB: two runs of 256 rows × 4 steps of a GPT-2-small memory (48 KiB). Pages the ring never reaches
// are never touched (a region goes back to the start whenever that is free).
const MAX_FLOATS = 1 << 25;

/**
 * A ring for runs of up to `rows` states of `stateFloats` floats: room for two such runs (the reader
 * frees one as soon as its message is handled), as a power of two between 256 KiB and 128 MiB.
 */
export function createStateRing(rows: number, stateFloats: number): StateRingShared {
  let floats = MIN_FLOATS;
  while (floats < 2 * rows * stateFloats && floats < MAX_FLOATS) floats *= 2;
  return { data: new SharedArrayBuffer(floats * 4), control: new SharedArrayBuffer(4) };
}

/**
 * The engine thread's side. Positions count floats written since the start and wrap at 2^32 (int32
 * arithmetic); the ring's size is a power of two, so a position's place in it is its low bits.
 */
export class StateRingWriter {
  private readonly data: Float32Array;
  private readonly released: Int32Array;
  private readonly mask: number;
  private written = 0;

  constructor(readonly shared: StateRingShared) {
    this.data = new Float32Array(shared.data);
    this.released = new Int32Array(shared.control);
    this.mask = this.data.length - 1;
  }

  /** The position after everything written so far: the reader may release up to it once it has every slice written before. */
  get end(): number {
    return this.written;
  }

  /**
   * Copies `states` into one region of the ring: their slices, and the position after the region (the
   * reader releases up to it once it has copied them out); undefined when they do not fit now.
   */
  write(states: readonly Float32Array[]): { slices: RingSlice[]; end: number } | undefined {
    const size = this.data.length;
    const total = states.reduce((n, s) => n + s.length, 0);
    const at = this.written & this.mask;
    const used = (this.written - Atomics.load(this.released, 0)) | 0;
    // A region does not wrap: one that would starts at 0, the ring's tail left unused this round. So
    // does every region that finds the start free (what is not released yet lies in at-used..at): while
    // the main thread keeps up, runs reuse the first stretches, still in the CPU's caches, instead of
    // going round megabytes of a ring sized for the largest batch (the ring's copy took 0.069 ms per
    // 8-row run of GPT-2-small states on the H200 going round, bench/gpu-suite.sh, bench/results/gpu-14).
    const skip = at !== 0 && (at - used >= total || at + total > size) ? size - at : 0;
    if (total === 0 || used + skip + total > size) return undefined;
    let pos = skip === 0 ? at : 0;
    const slices = states.map((s) => {
      this.data.set(s, pos);
      const slice = { ringAt: pos, length: s.length };
      pos += s.length;
      return slice;
    });
    this.written = (this.written + skip + total) | 0;
    return { slices, end: this.written };
  }
}

/** The main thread's side: copies states out, then releases their run's region. */
export class StateRingReader {
  private readonly data: Float32Array;
  private readonly released: Int32Array;

  constructor(shared: StateRingShared) {
    this.data = new Float32Array(shared.data);
    this.released = new Int32Array(shared.control);
  }

  /** The state as its own array (the ring's region is written again once released). */
  read(s: RingSlice): Float32Array {
    return this.data.slice(s.ringAt, s.ringAt + s.length);
  }

  /** Frees everything written before `end` (a replies message's ringEnd, once its states are copied). */
  release(end: number): void {
    Atomics.store(this.released, 0, end);
  }
}
