// Packages exported with fused attention (`random-gpt2-small --attention fused`: padding after the
// write memory, onnxruntime's MultiHeadAttention / SkipLayerNormalization / FastGelu) compute what the
// masked graphs of the same weights compute. Fixtures: test/fixtures/rmt-tiny-{masked,fused}, made by
//   python -m rmt_toolkit random-gpt2-small --size tiny --attention {masked|fused} --precisions fp32 --name rmt-tiny-... --tokenizer models/rmt-brown-small/tokenizer.json
// (same seed, so the same weights). The CUDA side of the same graphs: bench/engine-limit.ts COMPARE_DIR.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { startEngine, type Engine } from '../src/engine/engine.ts';
import { loadModelPackage, type ModelPackage } from '../src/model/model-package.ts';
import { runSegment, runSegmentState } from '../src/engine/rmt-runner.ts';
import { maxAbsDiff } from './helpers.ts';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 2 + ((from + i * 37) % 4000));

describe('fused-attention graphs', () => {
  let masked: ModelPackage;
  let fused: ModelPackage;
  before(async () => {
    const load = (n: string) => loadModelPackage(path.join(FIXTURES, n), { intraOpThreads: 1 });
    [masked, fused] = await Promise.all([load('rmt-tiny-masked'), load('rmt-tiny-fused')]);
  });
  after(async () => {
    await Promise.all([masked?.release(), fused?.release()]);
  });

  test('the fixtures are what they claim: same weights, the fused one marked fused', () => {
    const meta = (n: string) => JSON.parse(readFileSync(path.join(FIXTURES, n, 'model.json'), 'utf8')) as { export: { segment_attention: string; state_graph?: string } };
    assert.equal(meta('rmt-tiny-masked').export.segment_attention, 'masked');
    assert.equal(meta('rmt-tiny-fused').export.segment_attention, 'fused');
    // The fused segment graph no longer holds the masked attention's Softmax; the op names sit in the protobuf.
    const graph = (n: string, f: string) => readFileSync(path.join(FIXTURES, n, f)).toString('latin1');
    assert.ok(graph('rmt-tiny-fused', 'segment.onnx').includes('MultiHeadAttention') && !/(?<!Log)Softmax/.test(graph('rmt-tiny-fused', 'segment.onnx')));
    assert.ok(graph('rmt-tiny-masked', 'segment.state.onnx').includes('Softmax') && !graph('rmt-tiny-masked', 'segment.state.onnx').includes('MultiHeadAttention'));
    // Its segment_state graph runs the last block at the write rows only (a Softmax over those M rows),
    // the blocks before it fused: the tests below compare it with the masked graphs.
    assert.equal(meta('rmt-tiny-fused').export.state_graph, 'write-rows');
    assert.ok(graph('rmt-tiny-fused', 'segment.state.onnx').includes('MultiHeadAttention'));
    assert.deepEqual(fused.initState.memory, masked.initState.memory);
  });

  test('next memory, logits and token log-probabilities agree on padded rows, over several segments', async () => {
    const S = masked.segmentLength;
    // Full, half, one-token and one-short rows: padding sits between tokens and write memory in the
    // masked layout and after the write memory in the fused one.
    const lengths = [S, S >> 1, 1, S - 1];
    let a = lengths.map(() => masked.initState.memory!);
    let b = lengths.map(() => fused.initState.memory!);
    for (let seg = 0; seg < 4; seg++) {
      const rowsA = lengths.map((n, r) => ({ ids: ids(n, seg * 100 + r), state: a[r]! }));
      const rowsB = lengths.map((n, r) => ({ ids: ids(n, seg * 100 + r), state: b[r]! }));
      const [fa, fb] = await Promise.all([runSegment(masked, rowsA), runSegment(fused, rowsB)]);
      for (let r = 0; r < lengths.length; r++) {
        assert.ok(maxAbsDiff(fa[r]!.nextState, fb[r]!.nextState) < 1e-5, `segment ${seg} row ${r}: next memory differs by ${maxAbsDiff(fa[r]!.nextState, fb[r]!.nextState)}`);
        assert.ok(maxAbsDiff(fa[r]!.logits, fb[r]!.logits) < 1e-4, `segment ${seg} row ${r}: logits differ`);
        assert.equal(fb[r]!.tokenLogprobs.length, lengths[r]);
        assert.ok(maxAbsDiff(fa[r]!.tokenLogprobs, fb[r]!.tokenLogprobs) < 1e-4, `segment ${seg} row ${r}: token log-probabilities differ`);
      }
      // The state-only graph of the fused package gives the full graph's next memory.
      const onlyState = await runSegmentState(fused, rowsB);
      for (let r = 0; r < lengths.length; r++) assert.ok(maxAbsDiff(onlyState[r]!, fb[r]!.nextState) < 1e-6);
      a = fa.map((o) => o.nextState);
      b = fb.map((o) => o.nextState);
    }
  });

  test('an engine serves a fused package: advance and generation across a segment boundary', async () => {
    const engines: Engine[] = await Promise.all(
      ['rmt-tiny-masked', 'rmt-tiny-fused'].map((m) =>
        startEngine({ modelsDir: FIXTURES, models: [m], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 1024 }),
      ),
    );
    try {
      const [em, ef] = engines as [Engine, Engine];
      const info = ef.model('rmt-tiny-fused');
      let sm = em.model('rmt-tiny-masked').initState;
      let sf = info.initState;
      for (let seg = 0; seg < 3; seg++) {
        const row = ids(info.segmentLength, 7 * seg);
        [sm, sf] = await Promise.all([em.advance('rmt-tiny-masked', row, sm), ef.advance('rmt-tiny-fused', row, sf)]);
      }
      assert.ok(maxAbsDiff(sm, sf) < 1e-5, `after 3 segments the memories differ by ${maxAbsDiff(sm, sf)}`);
      // Prefill (the decode graph, masked in both packages) from the fused package's memory.
      const [pm, pf] = await Promise.all([em.prefill('rmt-tiny-masked', ids(5, 3), sm), ef.prefill('rmt-tiny-fused', ids(5, 3), sf)]);
      assert.ok(maxAbsDiff(pm.logits, pf.logits) < 1e-4);
      em.releaseKv(pm.kv);
      ef.releaseKv(pf.kv);
    } finally {
      await Promise.all(engines.map((e) => e.close()));
    }
  });
});
