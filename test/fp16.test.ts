// float16 tensors across the onnxruntime boundary: the engine keeps half floats as IEEE bit patterns
// in a Uint16Array on every Node; onnxruntime-common uses Float16Array where the runtime has one
// (Node >= 24, or 22 with --js-float16array). src/engine/onnx-runtime.ts converts both ways without
// copying or rounding, and the fp16 decode path gives the same bits with and without Float16Array.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { float16, fromOrt, halfBits, toOrt } from '../src/engine/onnx-runtime.ts';
import { fp16Digest } from './support/fp16-digest.ts';

type F16Ctor = new (data: ArrayBufferLike | number[], byteOffset?: number, length?: number) => ArrayBufferView & ArrayLike<number>;
const F16 = (globalThis as { Float16Array?: F16Ctor }).Float16Array;

// Bit pattern -> value: zeros, ±1, -2, the largest half, the smallest subnormal, the largest
// subnormal, infinities and a NaN.
const HALVES: [number, number][] = [
  [0x0000, 0], [0x8000, -0], [0x3c00, 1], [0xbc00, -1], [0xc000, -2], [0x7bff, 65504],
  [0x0001, 2 ** -24], [0x03ff, 1023 * 2 ** -24], [0x7c00, Infinity], [0xfc00, -Infinity], [0x7e00, NaN],
];
const bits = () => Uint16Array.from(HALVES, ([b]) => b);
const values = HALVES.map(([, v]) => v);

describe('float16 across the onnxruntime boundary', () => {
  test('to onnxruntime: the binding is handed the same Uint16Array (no copy), the tensor reads the values', () => {
    const data = bits();
    const t = toOrt(float16(data, [HALVES.length]));
    assert.equal(t.type, 'float16');
    assert.deepEqual(t.dims, [HALVES.length]);
    assert.equal(t.data, data, 'tensor.data is the Uint16Array given, whatever ort.Tensor holds');
    if (F16) {
      const held = (t as unknown as { cpuData: unknown }).cpuData;
      assert.ok(held instanceof F16, 'where Float16Array exists ort.Tensor keeps one');
      assert.equal((held as ArrayBufferView).buffer, data.buffer);
      assert.deepEqual(Array.from(held as ArrayLike<number>), values);
    }
  });

  test('from onnxruntime: Uint16Array or Float16Array comes back as the same bits in a Uint16Array view', () => {
    const fromBits = fromOrt(new ort.Tensor('float16', bits(), [HALVES.length]), 'x.onnx', 'y');
    assert.equal(fromBits.dtype, 'float16');
    assert.ok(fromBits.data instanceof Uint16Array);
    assert.deepEqual(Array.from(fromBits.data), Array.from(bits()));
    if (!F16) return;
    const half = new F16(values);
    const out = fromOrt(new ort.Tensor('float16', half as unknown as Uint16Array, [HALVES.length]), 'x.onnx', 'y');
    assert.ok(out.data instanceof Uint16Array);
    assert.equal(out.data.buffer, half.buffer, 'a view, not a copy');
    assert.deepEqual(Array.from(out.data), Array.from(bits()));
    const sub = new F16(half.buffer, 4, 3);
    assert.deepEqual(Array.from(halfBits(sub)), Array.from(bits().subarray(2, 5)), 'byteOffset and length kept');
  });

  test('halfBits refuses data that is not half floats', () => {
    assert.throws(() => halfBits(new Float32Array(2)), /must be a Uint16Array or a Float16Array, found \[object Float32Array\]/);
    assert.throws(() => halfBits(new Int16Array(2)), /found \[object Int16Array\]/);
  });

  // V8's js-float16array flag exists from Node 22 (package.json engines); older Nodes are not supported.
  const major = Number(process.versions.node.split('.')[0]);
  test('the fp16 decode path gives the same bits with and without Float16Array', { skip: major < 22 ? `skipped: Node ${process.version} has no --js-float16array (needs Node >= 22)` : false }, async () => {
    const here = await fp16Digest();
    const has = F16 !== undefined;
    // The same script in a child whose V8 has the other representation (a V8 flag on Node 22 and 24).
    const script = fileURLToPath(new URL('./support/fp16-digest.ts', import.meta.url));
    const flag = has ? '--no-js-float16array' : '--js-float16array';
    const child = JSON.parse(execFileSync(process.execPath, [flag, '--import', 'tsx', script], { encoding: 'utf8' })) as { float16Array: boolean; digest: string };
    assert.equal(child.float16Array, !has, `${flag} gives the child the other representation`);
    assert.equal(child.digest, here, `fp16 logits and KV bits with Float16Array ${has ? 'present' : 'absent'} vs ${flag}`);
  });
});
