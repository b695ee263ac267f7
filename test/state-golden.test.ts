// The state-conditioned packages (Transformer-XL, LaMemo, the Memory Transformer family) through the
// engine's runner, with no code of their own: golden.json replayed with the state carried across
// segments, padded batches equal to each row alone (bit for bit at the engine's fixed width), the
// state's entries as slices of one flat array, and KV-cached generation fed the state on every call.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { decodeBatch, prefillBatch } from '../src/engine/batch-decode.ts';
import { greedyGenerate } from '../src/engine/greedy-generate.ts';
import { kvCapacity, kvPrefix } from '../src/engine/kv-cache.ts';
import { runSegment, runSegmentState } from '../src/engine/rmt-runner.ts';
import { segmentFeeds, type FeedScratch } from '../src/engine/segment-feeds.ts';
import { loadModelPackage, type ModelPackage } from '../src/model/model-package.ts';
import { modelInfo } from '../src/model/model-spec.ts';
import { maxAbsDiff, topK } from './helpers.ts';
import { STATE_PACKAGES, entryDiffs, goldenFlat, loadStateGolden } from './support/state-packages.ts';

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

for (const fixture of STATE_PACKAGES) describe(`state package ${fixture.architecture} (runner, fp32, cpu)`, () => {
  const golden = loadStateGolden(fixture.dir);
  const tol = golden.tolerance;
  let pkg: ModelPackage;
  before(async () => {
    pkg = await loadModelPackage(fixture.dir, { intraOpThreads: 1 });
  });
  after(async () => {
    await pkg?.release();
  });

  const assertState = (actual: Float32Array, expected: Float32Array, label: string) => {
    const d = entryDiffs(pkg.stateLayout, actual, expected);
    assert.ok(Object.values(d).every((x) => x <= tol.state), `${label}: per-entry max abs diff ${JSON.stringify(d)} > ${tol.state}`);
  };
  const assertClose = (a: ArrayLike<number>, b: ArrayLike<number>, limit: number, label: string) => {
    const d = maxAbsDiff(a, b);
    assert.ok(d <= limit, `${label}: max abs diff ${d} > ${limit}`);
  };

  test("the manifest's entries are slices of one flat state; decode is state-conditioned, the cache holds tokens only", () => {
    const manifest = JSON.parse(readFileSync(path.join(fixture.dir, 'model.json'), 'utf8'));
    assert.equal(golden.architecture, fixture.architecture);
    assert.equal(pkg.architecture, fixture.architecture);
    assert.deepEqual(pkg.conditioning, { kind: 'state' });
    assert.ok(manifest.state.length >= 2, 'several entries');
    let offset = 0;
    manifest.state.forEach((e: { name: string; shape: number[]; init: string }, i: number) => {
      const size = e.shape.reduce((a, b) => a * b, 1);
      assert.deepEqual(pkg.stateLayout.slots[i], { name: e.name, shape: e.shape, offset, size });
      const raw = readFileSync(path.join(fixture.dir, e.init));
      assert.ok(bits(pkg.initFlat.subarray(offset, offset + size)).equals(raw), `${e.name}: the init file's bytes at offset ${offset}`);
      offset += size;
    });
    assert.equal(pkg.stateLayout.size, offset);
    assert.equal(pkg.initFlat.length, offset);
    const info = modelInfo(fixture.name, pkg);
    assert.deepEqual(info.stateShape, [offset], 'several entries: sessions carry [total floats]');
    assert.equal(info.stateBytes, offset * 4);
    assert.deepEqual(info.stateEntries, pkg.stateLayout.slots);
    assert.ok(bits(info.initState).equals(bits(pkg.initFlat)));
    assert.equal(info.memoryTokens, manifest.memory_tokens);
    assert.equal(kvPrefix(pkg), 0);
    assert.equal(kvCapacity(pkg), pkg.segmentLength);
  });

  test('sequence: the state carried across consecutive segments matches golden, entry by entry', async () => {
    let state = pkg.initFlat;
    for (const [i, seg] of golden.sequence.segments.entries()) {
      const [r] = await runSegment(pkg, [{ ids: seg.input_ids, state }]);
      assertState(r!.nextState, goldenFlat(pkg.stateLayout, seg.state_after), `segment ${i} carried state`);
      assertClose(r!.tokenLogprobs, seg.token_logprobs, tol.token_logprobs, `segment ${i} token_logprobs`);
      const top = topK(r!.logits, seg.top_logits.ids.length);
      assert.deepEqual(top.ids, seg.top_logits.ids, `segment ${i} top ids`);
      assertClose(top.values, seg.top_logits.values, tol.logits, `segment ${i} top logits`);
      state = r!.nextState;
    }
  });

  test('padded_batch: matches golden; at the fixed width each row equals itself alone, bit for bit', async () => {
    const pb = golden.padded_batch;
    const S = pkg.segmentLength;
    const rows = pb.input_ids.map((ids, b) => ({ ids: ids.filter((_, t) => pb.attention_mask[b]![t] === 1), state: pkg.initFlat }));
    const batched = await runSegment(pkg, rows, { width: S });
    for (const [b, r] of batched.entries()) {
      const n = rows[b]!.ids.length;
      assertState(r.nextState, goldenFlat(pkg.stateLayout, pb.next_state[b]!), `row ${b} next_state`);
      assertClose(r.tokenLogprobs, pb.token_logprobs[b]!.slice(0, n), tol.token_logprobs, `row ${b} token_logprobs`);
      assert.deepEqual(topK(r.logits, 5).ids, pb.top_logits[b]!.ids, `row ${b} top ids`);
      const [alone] = await runSegment(pkg, [rows[b]!], { width: S });
      assert.ok(bits(r.nextState).equals(bits(alone!.nextState)), `row ${b}: next state batched != alone`);
      assert.ok(bits(r.logits).equals(bits(alone!.logits)), `row ${b}: logits batched != alone`);
      assert.ok(bits(r.tokenLogprobs).equals(bits(alone!.tokenLogprobs)), `row ${b}: token_logprobs batched != alone`);
    }
  });

  test('segment_state gives what segment gives; feeds in reused buffers and views change no bit', async () => {
    const S = pkg.segmentLength;
    const segs = golden.sequence.segments;
    // Rows with carried (not initial) states, so every entry is non-trivial.
    const rows = [0, 1, 2].map((i) => ({ ids: segs[i + 1]!.input_ids.slice(0, S - 5 * i), state: goldenFlat(pkg.stateLayout, segs[i]!.state_after) }));
    const full = await runSegment(pkg, rows, { width: S });
    const fresh = await runSegmentState(pkg, rows, { width: S });
    rows.forEach((_, b) => assertState(fresh[b]!, full[b]!.nextState, `row ${b}: segment_state vs segment`));
    const scratch: FeedScratch = {};
    for (const batch of [rows, rows.slice(1), [...rows, ...rows]]) {
      const a = segmentFeeds(pkg, batch, { width: S }).feeds;
      const b = segmentFeeds(pkg, batch, { width: S, scratch }).feeds;
      assert.deepEqual(Object.keys(a), ['input_ids', 'attention_mask', ...pkg.stateLayout.slots.map((s) => `state.${s.name}`)]);
      for (const name of Object.keys(a)) {
        assert.deepEqual(b[name]!.dims, a[name]!.dims, name);
        assert.deepEqual(Array.from(b[name]!.data as ArrayLike<unknown>), Array.from(a[name]!.data as ArrayLike<unknown>), name);
      }
    }
    const reused = await runSegmentState(pkg, rows, { width: S, scratch });
    const views = await runSegmentState(pkg, rows, { width: S, views: true });
    rows.forEach((_, b) => {
      assert.ok(bits(reused[b]!).equals(bits(fresh[b]!)), `row ${b}: reused buffers`);
      assert.ok(bits(views[b]!).equals(bits(fresh[b]!)), `row ${b}: views`);
    });
    // A chain's views feed its next run: the same bits as copies.
    const next = (states: Float32Array[]) => runSegmentState(pkg, states.map((state, b) => ({ ids: rows[b]!.ids, state })), { width: S });
    const [fromViews, fromCopies] = [await next(views), await next(fresh)];
    rows.forEach((_, b) => assert.ok(bits(fromViews[b]!).equals(bits(fromCopies[b]!)), `row ${b}: fed from views`));
  });

  test('greedy: KV-cached generation (the state on every decode call) reproduces golden, and so does segment.onnx alone', async () => {
    const g = golden.greedy;
    const kv = await greedyGenerate(pkg, g.prompt_ids, g.max_new_tokens);
    assert.deepEqual(kv.ids, g.expected_ids);
    assert.equal(kv.segmentsCommitted, g.segments_committed_during_generation);
    const seg = await greedyGenerate(pkg, g.prompt_ids, g.max_new_tokens, { via: 'segment' });
    assert.deepEqual(seg.ids, g.expected_ids);
    assert.ok(bits(seg.state).equals(bits(kv.state)), 'the committed state does not depend on how the tokens were chosen');
  });

  test('batched prefill and decode: each row keeps its state with its cache; logits equal segment.onnx over the same tokens', async () => {
    const S = pkg.segmentLength;
    const segs = golden.sequence.segments;
    const rows = [
      { ids: segs[4]!.input_ids.slice(0, 9), state: goldenFlat(pkg.stateLayout, segs[3]!.state_after) },
      { ids: segs[5]!.input_ids.slice(0, 3), state: pkg.initFlat },
      { ids: segs[6]!.input_ids.slice(0, S - 3), state: goldenFlat(pkg.stateLayout, segs[5]!.state_after) },
    ];
    const pre = await prefillBatch(pkg, rows);
    pre.forEach((p, b) => {
      assert.equal(p.kv.length, rows[b]!.ids.length, `row ${b}: the cache holds the tokens only`);
      assert.equal(p.kv.capacity, S);
      assert.equal(p.kv.conditioning, rows[b]!.state, `row ${b}: the cache keeps the row's state`);
    });
    const tokens = rows.map((r) => [...r.ids]);
    let logits = pre.map((p) => p.logits);
    for (let step = 0; step < 3; step++) {
      for (const [b, r] of rows.entries()) {
        const [want] = await runSegment(pkg, [{ ids: tokens[b]!, state: r.state }]);
        assertClose(logits[b]!, want!.logits, tol.logits, `row ${b} after ${tokens[b]!.length} tokens`);
      }
      const next = rows.map((_, b) => 7 + 13 * b + step);
      next.forEach((t, b) => tokens[b]!.push(t));
      logits = await decodeBatch(pkg, pre.map((p, b) => ({ token: next[b]!, kv: p.kv })), { pastLength: kvCapacity(pkg) - 1 });
    }
    // At the engine's fixed past length a row's decode does not depend on the other rows' caches (up to
    // the float rounding of a batched GEMM: test/support/engine-fixtures.ts's BATCH_TOL).
    const alone = await prefillBatch(pkg, [rows[1]!], undefined, { width: Math.max(...rows.map((r) => r.ids.length)) });
    let l = alone[0]!.logits;
    for (let step = 0; step < 3; step++) l = (await decodeBatch(pkg, [{ token: 7 + 13 + step, kv: alone[0]!.kv }], { pastLength: kvCapacity(pkg) - 1 }))[0]!;
    assertClose(l, logits[1]!, 1e-5, 'row 1 decoded alone vs in the batch');
  });
});
