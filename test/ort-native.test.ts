// The onnxruntime IO-binding addon (src/engine/ort-native.ts; `npm run native:build`) against
// onnxruntime-node on the same graphs and feeds, CPU: every output bit-identical, for the shipped RMT's
// graphs (fp32, fp16), a fused-attention fixture and a state-conditioned one (three state inputs); a
// slot per set of input shapes, refilled on every run; runs asked for at once queued; and the engine with RMT_ORT_RUNNER=bound gives
// the states onnxruntime-node gives, bit for bit. Where the addon is not built the tests are
// skipped with the reason, unless RMT_REQUIRE_NATIVE=1 (CI builds it and sets that).
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createSession, int64, type Session, type Tensor, type ValueInfo } from '../src/engine/onnx-runtime.ts';
import { createBoundSession, loadBoundSessions } from '../src/engine/ort-native.ts';
import { startEngine } from '../src/engine/engine.ts';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const available = loadBoundSessions();
const skip = available instanceof Error && process.env.RMT_REQUIRE_NATIVE !== '1' ? available.message : false;

/** Feeds for `batch` rows of `tokens` tokens (row b shorter by b·3: padding in every row but the first). */
function feeds(inputs: readonly ValueInfo[], batch: number, tokens: number, seed: number): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const info of inputs) {
    const dims = info.shape.map((d) => (d === 'batch' ? batch : d === 'tokens' ? tokens : Number(d)));
    const n = dims.reduce((a, b) => a * b, 1);
    if (info.name === 'input_ids') out[info.name] = int64(Array.from({ length: n }, (_, i) => 2 + ((i * 37 + seed * 11) % 4000)), dims);
    else if (info.name === 'attention_mask') out[info.name] = int64(Array.from({ length: n }, (_, i) => (i % tokens < tokens - 3 * Math.floor(i / tokens) ? 1 : 0)), dims);
    else out[info.name] = { dtype: 'float32', data: Float32Array.from({ length: n }, (_, i) => 0.1 * Math.sin(i * 0.37 + seed)), dims };
  }
  return out;
}

async function same(a: Session, b: Session, f: Record<string, Tensor>, what: string): Promise<void> {
  const names = a.outputs.map((o) => o.name);
  const [x, y] = await Promise.all([a.run(f, names), b.run(f, names)]);
  for (const n of names) {
    assert.deepEqual(y[n]!.dims, x[n]!.dims, `${what} ${n}: dims`);
    assert.equal(y[n]!.dtype, x[n]!.dtype, `${what} ${n}: dtype`);
    assert.deepEqual(y[n]!.data, x[n]!.data, `${what} ${n}: values`);
  }
}

const graphs: [string, number][] = [
  ['models/rmt-brown-small/segment.onnx', 128],
  ['models/rmt-brown-small/segment.state.onnx', 128],
  ['models/rmt-brown-small/segment.fp16.onnx', 128],
  ['test/fixtures/rmt-tiny-fused/segment.state.onnx', 32],
  ['test/fixtures/armt-tiny/segment.onnx', 32],
];

describe('onnxruntime IO-binding addon (CPU)', { skip }, () => {
  for (const [file, tokens] of graphs) {
    test(`${file}: equals onnxruntime-node, slots reused`, async () => {
      const f = path.join(ROOT, file);
      const ref = await createSession(f, { executionProvider: 'cpu', intraOpThreads: 1 });
      const bound = createBoundSession(f, { executionProvider: 'cpu', intraOpThreads: 1 });
      try {
        assert.deepEqual(bound.inputs, ref.inputs);
        assert.deepEqual(bound.outputs.map((o) => o.name), ref.outputs.map((o) => o.name));
        await same(ref, bound, feeds(ref.inputs, 3, tokens, 1), 'batch 3');
        await same(ref, bound, feeds(ref.inputs, 1, tokens, 2), 'batch 1');
        assert.equal(bound.slots(), 2);
        // The batch-3 slot again, new values: its buffers are refilled, its outputs rewritten.
        await same(ref, bound, feeds(ref.inputs, 3, tokens, 3), 'batch 3 again');
        assert.equal(bound.slots(), 2);
        // Runs asked for at once are queued: each gets its own feeds' outputs.
        await Promise.all([4, 5, 6].map((seed) => same(ref, bound, feeds(ref.inputs, seed === 5 ? 1 : 3, tokens, seed), `at once, seed ${seed}`)));
      } finally {
        await ref.release();
        await bound.release();
      }
    });
  }

  test('feeds are checked with the graph and shape named; fixed dimensions need no override', async () => {
    const f = path.join(ROOT, 'models/rmt-brown-small/segment.state.onnx');
    const bound = createBoundSession(f, { executionProvider: 'cpu', intraOpThreads: 1, freeDims: { batch: 2 } });
    try {
      const ok = feeds(bound.inputs, 2, 128, 1);
      const out = await bound.run(ok, ['next_state.memory']);
      assert.deepEqual(out['next_state.memory']!.dims, [2, 16, 256]);
      const bad = { ...ok, 'state.memory': { ...ok['state.memory']!, dims: [2, 8, 256] } } as Record<string, Tensor>;
      await assert.rejects(bound.run(bad), /segment\.state\.onnx: input 'state\.memory' expects shape \[2, 16, 256\]|expects shape \[batch, 16, 256\]/);
      await assert.rejects(bound.run(ok, ['nope']), /unknown outputs requested: nope/);
    } finally {
      await bound.release();
    }
  });
});

describe('engine with ortRunner bound (CPU)', { skip }, () => {
  test('concurrent sessions, chains and single advances: the same states as onnxruntime-node, bit for bit', async () => {
    const models = ['rmt-tiny-masked', 'rmt-tiny-fused', 'armt-tiny'];
    const common = { modelsDir: path.join(ROOT, 'test/fixtures'), models, executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 4, maxBatchTokens: 4096 };
    const ref = await startEngine(common);
    // Two engine threads: each loads the addon (one initialises it) and runs its own sessions' batches.
    const bound = await startEngine({ ...common, ortRunner: 'bound', threads: 2 });
    const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    try {
      for (const m of models) {
        const S = ref.model(m).segmentLength;
        const init = ref.model(m).initState;
        // Three sessions of 5 segments (the last short), run at once: batches of several rows and of one.
        const segs = (s: number) => [0, 1, 2, 3, 4].map((k) => Array.from({ length: k === 4 ? 7 + s : S }, (_, i) => 2 + ((i * 31 + k * 7 + s * 13) % 4000)));
        const run = (eng: typeof ref) => Promise.all([0, 1, 2].map(async (s) => {
          const chained = await eng.advanceMany(m, segs(s), init, { stream: `c-${s}` });
          let one = init;
          for (const ids of segs(s)) one = await eng.advance(m, ids, one, `a-${s}`);
          return [chained, one];
        }));
        const [want, got] = await Promise.all([run(ref), run(bound)]);
        for (let s = 0; s < 3; s++) {
          assert.ok(bits(got[s]![0]!).equals(bits(want[s]![0]!)), `${m} session ${s}: chain`);
          assert.ok(bits(got[s]![1]!).equals(bits(want[s]![1]!)), `${m} session ${s}: advances`);
        }
      }
    } finally {
      await ref.close();
      await bound.close();
    }
  });
});
