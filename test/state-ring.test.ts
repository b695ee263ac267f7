// The shared ring that carries advances' memory from an engine thread to the main thread
// (src/engine/state-ring.ts): regions in order, a full ring refused until released, regions that
// would wrap start again at 0, and positions that wrap at 2^32.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createStateRing, StateRingReader, StateRingWriter } from '../src/engine/state-ring.ts';

const state = (n: number, v: number) => Float32Array.from({ length: n }, (_, i) => v + i / 1000);

describe('state ring', () => {
  test('sized for two runs of the largest batch, a power of two between 256 KiB and 128 MiB', () => {
    assert.equal(createStateRing(8, 4096).data.byteLength, 256 * 1024);
    assert.equal(createStateRing(8, 12288).data.byteLength, 1 << 20); // 196,608 floats -> 2^18
    assert.equal(createStateRing(256, 12288).data.byteLength, 32 << 20);
    assert.equal(createStateRing(256 * 4, 12288).data.byteLength, 128 << 20);
    assert.equal(createStateRing(4096 * 4, 12288).data.byteLength, 128 << 20);
  });

  test('states come out as written, each its own array; a full ring is refused until the reader releases', () => {
    const shared = createStateRing(1, 1024); // 65,536 floats
    const w = new StateRingWriter(shared);
    const r = new StateRingReader(shared);
    const first = w.write([state(16384, 1), state(16384, 2)])!;
    assert.deepEqual(first.slices, [{ ringAt: 0, length: 16384 }, { ringAt: 16384, length: 16384 }]);
    const second = w.write([state(32768, 3)])!;
    assert.deepEqual(second.slices, [{ ringAt: 32768, length: 32768 }]);
    assert.equal(w.write([state(1, 4)]), undefined, 'the ring is full');
    const out = r.read(first.slices[1]!);
    assert.deepEqual(out, state(16384, 2));
    assert.ok(!(out.buffer instanceof SharedArrayBuffer), 'a copy, not a view of the ring');
    r.release(first.end);
    // 32,768 floats free at the start; the tail is full, so a region goes to 0.
    assert.deepEqual(w.write([state(32768, 5)])!.slices, [{ ringAt: 0, length: 32768 }]);
    assert.equal(w.write([state(1, 6)]), undefined);
    assert.deepEqual(r.read(second.slices[0]!), state(32768, 3));
    r.release(second.end);
    assert.equal(w.write([state(65537, 7)]), undefined, 'larger than the ring: never fits');
  });

  test('a region that would run past the end starts at 0, the tail skipped and counted as used', () => {
    const shared = createStateRing(1, 1024);
    const w = new StateRingWriter(shared);
    const r = new StateRingReader(shared);
    const a = w.write([state(40000, 1)])!;
    r.release(a.end);
    const b = w.write([state(30000, 2)])!;
    assert.deepEqual(b.slices, [{ ringAt: 0, length: 30000 }]);
    assert.equal(b.end, 65536 + 30000);
    // Until b is released the skipped tail counts as used: free is 30,000..40,000 only.
    assert.equal(w.write([state(10001, 3)]), undefined);
    const c = w.write([state(10000, 3)])!;
    assert.deepEqual(c.slices, [{ ringAt: 30000, length: 10000 }]);
    assert.deepEqual(r.read(b.slices[0]!), state(30000, 2));
    r.release(b.end);
    // Only c (30,000..40,000) is held: the start is free again, and a region goes there.
    assert.deepEqual(w.write([state(25536, 4)])!.slices, [{ ringAt: 0, length: 25536 }]);
    // The tail skipped for it counts as used until it is released: 4,464 free, after it.
    assert.deepEqual(w.write([state(4464, 5)])!.slices, [{ ringAt: 25536, length: 4464 }]);
    assert.equal(w.write([state(1, 6)]), undefined);
  });

  test('while the reader keeps up, every region starts at 0 (the same stretch, still in the caches)', () => {
    const shared = createStateRing(1, 1024);
    const w = new StateRingWriter(shared);
    const r = new StateRingReader(shared);
    for (let k = 0; k < 5; k++) {
      const got = w.write([state(3000, k), state(3000, k + 1)])!;
      assert.deepEqual(got.slices, [{ ringAt: 0, length: 3000 }, { ringAt: 3000, length: 3000 }], `run ${k}`);
      assert.deepEqual(r.read(got.slices[1]!), state(3000, k + 1));
      r.release(got.end);
    }
    // Not released: the next region follows it; once the first is released (the second not yet), the
    // third goes back to 0, in front of the second.
    const first = w.write([state(3000, 9)])!;
    assert.deepEqual(first.slices, [{ ringAt: 0, length: 3000 }]);
    const second = w.write([state(3000, 10)])!;
    assert.deepEqual(second.slices, [{ ringAt: 3000, length: 3000 }]);
    r.release(first.end);
    assert.equal(w.write([state(3001, 11)])!.slices[0]!.ringAt, 6000, 'does not fit in front of the second');
    r.release((first.end + 3000) | 0); // the second
    const third = w.write([state(3000, 12)])!;
    assert.deepEqual(third.slices, [{ ringAt: 0, length: 3000 }], 'the start is free again (only 6000..9001 held)');
    assert.deepEqual(r.read(third.slices[0]!), state(3000, 12));
  });

  test('positions wrap at 2^32 (int32 arithmetic) without losing track of what is free', () => {
    const shared = createStateRing(1, 1024);
    const w = new StateRingWriter(shared);
    const r = new StateRingReader(shared);
    // Start just below the wrap, with everything released.
    const start = 0x7fffffff - 100_000 + 1;
    (w as unknown as { written: number }).written = start | 0;
    r.release(start | 0);
    for (let k = 0; k < 8; k++) {
      const got = w.write([state(20000, k)])!;
      assert.ok(got, `write ${k}`);
      assert.deepEqual(r.read(got.slices[0]!), state(20000, k));
      r.release(got.end);
    }
  });
});
