// The shared ring that carries advances' memory from an engine thread to the main thread
// (src/engine/state-ring.ts): regions in order, a full ring refused until released, regions that
// would wrap start again at 0, and positions that wrap at 2^32.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createStateRing, StateRingReader, StateRingWriter } from '../src/engine/state-ring.ts';

const state = (n: number, v: number) => Float32Array.from({ length: n }, (_, i) => v + i / 1000);

describe('state ring', () => {
  test('sized for two runs of the largest batch, a power of two between 256 KiB and 32 MiB', () => {
    assert.equal(createStateRing(8, 4096).data.byteLength, 256 * 1024);
    assert.equal(createStateRing(8, 12288).data.byteLength, 1 << 20); // 196,608 floats -> 2^18
    assert.equal(createStateRing(256, 12288).data.byteLength, 32 << 20);
    assert.equal(createStateRing(4096, 12288).data.byteLength, 32 << 20);
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
    assert.deepEqual(w.write([state(25536, 4)])!.slices, [{ ringAt: 40000, length: 25536 }], 'the tail, free again');
    assert.equal(w.write([state(30001, 5)]), undefined, 'c is not released: 30,000 free at 0');
    assert.deepEqual(w.write([state(30000, 5)])!.slices, [{ ringAt: 0, length: 30000 }]);
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
