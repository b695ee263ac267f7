// The segment_state_steps graph (rmt_toolkit steps-graph: the segment_state graph unrolled over K
// segments) computes what K runs of the segment_state graph compute, step by step, for every shipped
// package and precision and for the fused-attention fixture.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { loadModelPackage, type Precision } from '../src/model/model-package.ts';
import { runSegmentState, runSegmentSteps } from '../src/engine/rmt-runner.ts';
import { maxAbsDiff } from './helpers.ts';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 2 + ((from + i * 37) % 4000));

const cases: [string, Precision, number][] = [
  ['models/rmt-brown-small', 'fp32', 4],
  ['models/rmt-brown-small', 'fp16', 4],
  ['models/rmt-brown-lm', 'fp32', 4],
  ['models/rmt-brown-recall5', 'fp32', 4],
  ['test/fixtures/rmt-tiny-fused', 'fp32', 3],
  ['test/fixtures/rmt-tiny-masked', 'fp32', 3],
];

describe('segment_state_steps graphs', () => {
  for (const [dir, precision, K] of cases) {
    test(`${dir} (${precision}): ${K} steps per run equal ${K} single runs`, async () => {
      const pkg = await loadModelPackage(path.join(ROOT, dir), { intraOpThreads: 1, precision });
      try {
        assert.equal(pkg.steps, K);
        const L = pkg.segmentLength;
        // Three rows: full segments; a short last segment; short segments throughout (padding at every step).
        const segs = [
          Array.from({ length: K }, (_, j) => ids(L, 11 * j)),
          Array.from({ length: K }, (_, j) => ids(j === K - 1 ? Math.ceil(L / 3) : L, 5 + 7 * j)),
          Array.from({ length: K }, (_, j) => ids(1 + ((j * 13) % L), 3 + j)),
        ];
        const init = pkg.initState.memory!;
        const start = [init, init.map((v, i) => v + 0.01 * Math.sin(i)), init.map((v, i) => v - 0.02 * Math.cos(i))];
        const width = L;
        const got = await runSegmentSteps(pkg, segs.map((s, b) => ({ segments: s, state: start[b]! })), { width });
        let states = start;
        for (let j = 0; j < K; j++) {
          states = await runSegmentState(pkg, segs.map((s, b) => ({ ids: s[j]!, state: states[b]! })), { width });
          for (let b = 0; b < 3; b++) {
            const d = maxAbsDiff(got.steps[b]![j]!, states[b]!);
            // The same kernels on the same inputs: float rounding of a differently optimised graph at most
            // (fp16: a unit in the last place of half floats of magnitude 4..8 is 1/256; fp16 vs fp32 differ by up to 0.05).
            const tolerance = precision === "fp16" ? 4 / 256 : 0;
            console.log(dir, precision, b, j, d);
            assert.ok(d <= tolerance, `row ${b} step ${j}: differs by ${d} (> ${tolerance})`);
          }
        }
        for (let b = 0; b < 3; b++) assert.deepEqual(got.last[b], got.steps[b]![K - 1]);
        // The steps really differ from each other (a graph returning its input K times would fail above too).
        assert.ok(maxAbsDiff(got.steps[0]![0]!, got.steps[0]![1]!) > 1e-3);
      } finally {
        await pkg.release();
      }
    });
  }

  test('rows of another step count, and packages without the graph, are refused with the counts', async () => {
    const pkg = await loadModelPackage(path.join(ROOT, 'models/rmt-brown-small'), { intraOpThreads: 1 });
    try {
      const state = pkg.initState.memory!;
      await assert.rejects(runSegmentSteps(pkg, [{ segments: [ids(5, 0), ids(5, 1)], state }]), /steps row 0 has 2 segments, expected 4/);
      await assert.rejects(
        runSegmentSteps({ ...pkg, sessions: { ...pkg.sessions, segmentSteps: undefined }, steps: undefined }, [{ segments: [ids(5, 0)], state }]),
        /has no segment_state_steps graph/,
      );
    } finally {
      await pkg.release();
    }
  });
});
