// Replays golden.json (PyTorch reference outputs) through the ONNX graphs on CPU.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { loadModelPackage, type ModelPackage } from '../src/model/model-package.ts';
import { float32, int64 } from '../src/engine/onnx-runtime.ts';
import { greedyGenerate } from '../src/engine/greedy-generate.ts';
import { runSegment, runSegmentState } from '../src/engine/rmt-runner.ts';
import { segmentFeeds, type FeedScratch } from '../src/engine/segment-feeds.ts';
import { SHIPPED_PACKAGES, decodeF32, loadGolden, maxAbsDiff, topK, type TopLogits } from './helpers.ts';

function assertTop(actualLogits: Float32Array, expected: TopLogits, limit: number, label: string): void {
  const top = topK(actualLogits, expected.ids.length);
  assert.deepEqual(top.ids, expected.ids, `${label}: top-${expected.ids.length} ids`);
  const d = maxAbsDiff(top.values, expected.values);
  assert.ok(d <= limit, `${label}: top logits differ by ${d} > ${limit}`);
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, limit: number, label: string): void {
  const d = maxAbsDiff(actual, expected);
  assert.ok(d <= limit, `${label}: max abs diff ${d} > ${limit}`);
}

for (const shipped of SHIPPED_PACKAGES) describe(`golden: ${shipped.name} (fp32, cpu)`, () => {
  const golden = loadGolden(shipped.dir);
  const tol = golden.tolerance;
  const assertTopLogits = (actual: Float32Array, expected: TopLogits, label: string) =>
    assertTop(actual, expected, tol.logits, label);
  let pkg: ModelPackage;
  before(async () => {
    pkg = await loadModelPackage(shipped.dir);
  });
  after(async () => {
    await pkg.release();
  });

  test('sequence: each segment from golden\'s previous state (per-step accuracy)', async () => {
    // Feeding golden's own previous state isolates one segment call's error from recurrence drift.
    for (const [i, seg] of golden.sequence.segments.entries()) {
      const prev = i === 0 ? pkg.initState.memory! : decodeF32(golden.sequence.segments[i - 1]!.state_after);
      const [r] = await runSegment(pkg, [{ ids: seg.input_ids, state: prev }]);
      assertClose(r!.nextState, decodeF32(seg.state_after), tol.state, `segment ${i} state`);
      assertClose(r!.tokenLogprobs, seg.token_logprobs, tol.token_logprobs, `segment ${i} token_logprobs`);
      assertTopLogits(r!.logits, seg.top_logits, `segment ${i}`);
    }
  });

  test('sequence: memory carried across consecutive segments', async () => {
    // Our own state is carried, so per-step float error (~5e-6 here) compounds through the recurrence;
    // the trained memories are contractive enough that 10 segments stay inside tolerance.state.
    let state = pkg.initState.memory!;
    for (const [i, seg] of golden.sequence.segments.entries()) {
      const [r] = await runSegment(pkg, [{ ids: seg.input_ids, state }]);
      assertClose(r!.nextState, decodeF32(seg.state_after), tol.state, `segment ${i} carried state`);
      assertClose(r!.tokenLogprobs, seg.token_logprobs, tol.token_logprobs, `segment ${i} token_logprobs`);
      assertTopLogits(r!.logits, seg.top_logits, `segment ${i}`);
      state = r!.nextState;
    }
  });

  test('padded_batch: one batched call matches golden and each unpadded run', async () => {
    const pb = golden.padded_batch;
    const rows = pb.input_ids.map((ids, b) => ({
      ids: ids.filter((_, t) => pb.attention_mask[b]![t] === 1),
      state: pkg.initState.memory!,
    }));
    // The widest row is a full segment, so the batch has exactly golden's padded shape.
    assert.equal(Math.max(...rows.map((r) => r.ids.length)), pb.input_ids[0]!.length);
    const batched = await runSegment(pkg, rows);
    assert.equal(batched.length, rows.length);

    for (const [b, r] of batched.entries()) {
      const n = rows[b]!.ids.length;
      assertClose(r.nextState, decodeF32(pb.next_state[b]!), tol.state, `row ${b} next_state`);
      assertClose(r.tokenLogprobs, pb.token_logprobs[b]!.slice(0, n), tol.token_logprobs, `row ${b} token_logprobs`);
      assertTopLogits(r.logits, pb.top_logits[b]!, `row ${b}`);

      const [alone] = await runSegment(pkg, [rows[b]!]);
      assertClose(r.nextState, alone!.nextState, tol.state, `row ${b} batched vs unpadded state`);
      assertClose(r.logits, alone!.logits, tol.logits, `row ${b} batched vs unpadded logits`);
      assertClose(r.tokenLogprobs, alone!.tokenLogprobs, tol.token_logprobs, `row ${b} batched vs unpadded logprobs`);
    }
  });

  test('feeds built in reused buffers (FeedScratch) equal new ones, and so do the runs', async () => {
    const pb = golden.padded_batch;
    const rows = pb.input_ids.map((ids, b) => ({ ids: ids.filter((_, t) => pb.attention_mask[b]![t] === 1), state: pkg.initState.memory! }));
    const S = pkg.segmentLength;
    const scratch: FeedScratch = {};
    // Full rows first, so the buffers then hold stale ids and mask ones where the shorter rows pad;
    // then fewer rows (views of the buffers' start), then more again.
    const full = rows.map((r) => ({ ids: Array.from({ length: S }, (_, t) => 1 + ((t * 7 + r.ids.length) % 50)), state: r.state }));
    const batches = [full, rows, rows.slice(1), full.slice(0, 1), [...rows, ...full]];
    for (const [i, batch] of batches.entries()) {
      for (const width of [S, undefined]) {
        const fresh = segmentFeeds(pkg, batch, width === undefined ? {} : { width }).feeds;
        const reused = segmentFeeds(pkg, batch, width === undefined ? { scratch } : { width, scratch }).feeds;
        for (const name of Object.keys(fresh)) {
          assert.deepEqual(reused[name]!.dims, fresh[name]!.dims, `batch ${i} width ${width}: ${name} dims`);
          assert.deepEqual(Array.from(reused[name]!.data as ArrayLike<unknown>), Array.from(fresh[name]!.data as ArrayLike<unknown>), `batch ${i} width ${width}: ${name}`);
        }
      }
      const a = await runSegmentState(pkg, batch, { width: S });
      const b = await runSegmentState(pkg, batch, { width: S, scratch });
      a.forEach((state, r) => assert.equal(maxAbsDiff(state, b[r]!), 0, `batch ${i} row ${r}: next memory differs with reused buffers`));
    }
  });

  test("a chain's views feed its next run uncopied when in row order, and runs equal those of copies", async () => {
    const pb = golden.padded_batch;
    const rows = pb.input_ids.map((ids, b) => ({ ids: ids.filter((_, t) => pb.attention_mask[b]![t] === 1), state: pkg.initState.memory! }));
    const S = pkg.segmentLength;
    const views = await runSegmentState(pkg, rows, { width: S, views: true });
    const copies = await runSegmentState(pkg, rows, { width: S });
    const buffer = views[0]!.buffer;
    assert.ok(views.every((v) => v.buffer === buffer), 'views: every row a view of the one output buffer');
    assert.ok(copies.every((c) => c.buffer !== buffer && c.byteLength === c.buffer.byteLength), 'copies: each row its own buffer');
    // In row order: the state feed is the output buffer itself; in another order, a copy.
    const inOrder = rows.map((r, b) => ({ ids: r.ids, state: views[b]! }));
    const reordered = [...inOrder].reverse();
    const inOrderFeed = segmentFeeds(pkg, inOrder, { width: S }).feeds['state.memory']!.data as Float32Array;
    const reorderedFeed = segmentFeeds(pkg, reordered, { width: S }).feeds['state.memory']!.data as Float32Array;
    assert.equal(inOrderFeed.buffer, buffer);
    assert.notEqual(reorderedFeed.buffer, buffer);
    const fromViews = await runSegmentState(pkg, inOrder, { width: S });
    const fromCopies = await runSegmentState(pkg, rows.map((r, b) => ({ ids: r.ids, state: copies[b]! })), { width: S });
    const fromReordered = await runSegmentState(pkg, reordered, { width: S });
    fromViews.forEach((st, b) => {
      assert.equal(maxAbsDiff(st, fromCopies[b]!), 0, `row ${b}: fed from views vs copies`);
      assert.equal(maxAbsDiff(st, fromReordered[rows.length - 1 - b]!), 0, `row ${b}: in order vs reordered`);
    });
  });

  test('padded_batch: token_logprobs are exactly 0 at padding (raw graph call)', async () => {
    const pb = golden.padded_batch;
    const [batch, width] = [pb.input_ids.length, pb.input_ids[0]!.length];
    const states = new Float32Array(batch * pkg.memoryTokens * pkg.dModel);
    for (let b = 0; b < batch; b++) states.set(pkg.initState.memory!, b * pkg.memoryTokens * pkg.dModel);
    const out = await pkg.sessions.segment.run({
      input_ids: int64(pb.input_ids.flat(), [batch, width]),
      attention_mask: int64(pb.attention_mask.flat(), [batch, width]),
      'state.memory': float32(states, [batch, pkg.memoryTokens, pkg.dModel]),
    });
    const lp = out.token_logprobs!.data as Float32Array;
    pb.attention_mask.forEach((row, b) =>
      row.forEach((m, t) => {
        if (m === 0) assert.equal(Math.abs(lp[b * width + t]!), 0, `row ${b} pad position ${t}`);
      }),
    );
  });

  test('greedy: KV-cached generation reproduces expected ids', async () => {
    const g = golden.greedy;
    const result = await greedyGenerate(pkg, g.prompt_ids, g.max_new_tokens);
    assert.deepEqual(result.ids, g.expected_ids);
    assert.equal(result.segmentsCommitted, g.segments_committed_during_generation);
  });

  test('runSegment rejects rows longer than segment_length', async () => {
    const ids = new Array<number>(pkg.segmentLength + 1).fill(5);
    await assert.rejects(runSegment(pkg, [{ ids, state: pkg.initState.memory! }]), /expected 1\.\.128/);
  });
});
