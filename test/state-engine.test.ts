// The engine thread serving the state-conditioned packages (test/fixtures/<arch>-tiny) beside an RMT
// one: golden.json replayed through engine.segment / prefill / decode, concurrent sessions batched ==
// each session alone, chained advances == advance() segment by segment, and a KV cache's steps fed
// the state its prefill was given (the registry keeps it with the cache).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startEngine, type BatchStat, type Engine } from '../src/engine/engine.ts';
import { maxAbsDiff } from './helpers.ts';
import { BATCH_TOL, argmax, engineGreedy } from './support/engine-fixtures.ts';
import { FIXTURES_DIR, STATE_PACKAGES, entryDiffs, goldenFlat, loadStateGolden } from './support/state-packages.ts';

const RMT = 'rmt-tiny-masked';
const NAMES = STATE_PACKAGES.map((p) => p.name);
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('engine: state-conditioned packages (worker thread, fp32, cpu)', () => {
  let eng: Engine; // batches up to 8 rows, every fixture
  let solo: Engine; // one row per run: "the row alone"
  before(async () => {
    const base = { modelsDir: FIXTURES_DIR, models: [...NAMES, RMT], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatchTokens: 8 * 32 };
    [eng, solo] = await Promise.all([startEngine({ ...base, maxBatch: 8 }), startEngine({ ...base, maxBatch: 1 })]);
  });
  after(async () => {
    await Promise.all([eng?.close(), solo?.close()]);
  });

  test('models(): one flat state of the declared entries; the RMT as before', () => {
    for (const p of STATE_PACKAGES) {
      const m = eng.model(p.name);
      assert.equal(m.architecture, p.architecture);
      const total = m.stateEntries.reduce((n, e) => n + e.size, 0);
      assert.ok(m.stateEntries.length >= 2);
      assert.deepEqual(m.stateShape, [total]);
      assert.equal(m.stateBytes, total * 4);
      assert.equal(m.initState.length, total);
    }
    const r = eng.model(RMT);
    assert.equal(r.architecture, 'rmt');
    assert.deepEqual(r.stateShape, [4, 64]);
    assert.deepEqual(r.stateEntries, [{ name: 'memory', shape: [4, 64], offset: 0, size: 256 }]);
  });

  for (const p of STATE_PACKAGES) {
    describe(p.architecture, () => {
      const golden = loadStateGolden(p.dir);
      const corpus = golden.sequence.segments.flatMap((s) => s.input_ids);

      test('golden: 10 carried segments and greedy generation through the engine', async () => {
        const tol = golden.tolerance;
        const layout = { slots: eng.model(p.name).stateEntries, size: eng.model(p.name).stateBytes / 4 };
        let state = eng.model(p.name).initState;
        for (const [i, seg] of golden.sequence.segments.entries()) {
          const r = await eng.segment(p.name, seg.input_ids, state);
          const d = entryDiffs(layout, r.nextState, goldenFlat(layout, seg.state_after));
          assert.ok(Object.values(d).every((x) => x <= tol.state), `segment ${i}: ${JSON.stringify(d)}`);
          assert.ok(maxAbsDiff(r.tokenLogprobs, seg.token_logprobs) <= tol.token_logprobs, `segment ${i} token_logprobs`);
          assert.equal(argmax(r.logits), seg.top_logits.ids[0], `segment ${i} top-1`);
          state = r.nextState;
        }
        const g = golden.greedy;
        const out = await engineGreedy(eng, p.name, g.prompt_ids, g.max_new_tokens, eng.model(p.name).initState);
        assert.deepEqual(out.ids, g.expected_ids);
        assert.equal(out.segmentsCommitted, g.segments_committed_during_generation);
      });

      test('6 concurrent sessions batched == each alone: states bit for bit, every decode step within a GEMM\'s rounding', async () => {
        const S = eng.model(p.name).segmentLength;
        const pieces = [[S, S], [S, 19], [7, S], [S, S], [1, S], [20, 20]];
        const tails = [3, 11, 17, 24, 29, 31];
        const run = async (engine: Engine, s: number) => {
          let state = engine.model(p.name).initState;
          const ingested: Float32Array[] = [];
          let pos = 13 * s;
          for (const n of pieces[s]!) {
            ingested.push((state = (await engine.segment(p.name, corpus.slice(pos, pos + n), state)).nextState));
            pos += n;
          }
          return { ingested, gen: await engineGreedy(engine, p.name, corpus.slice(pos, pos + tails[s]!), 12, state) };
        };
        const stats: BatchStat[] = [];
        const stop = eng.onBatch((b) => stats.push(b));
        const batched = await Promise.all(pieces.map((_, s) => run(eng, s)));
        stop();
        const alone: Awaited<ReturnType<typeof run>>[] = [];
        for (let s = 0; s < pieces.length; s++) alone.push(await run(solo, s));
        for (let s = 0; s < pieces.length; s++) {
          const [b, a] = [batched[s]!, alone[s]!];
          b.ingested.forEach((st, i) => assert.ok(bits(st).equals(bits(a.ingested[i]!)), `session ${s} ingest ${i}: state batched != alone`));
          assert.deepEqual(b.gen.ids, a.gen.ids, `session ${s} ids`);
          b.gen.seen.forEach((l, k) => assert.ok(maxAbsDiff(l, a.gen.seen[k]!) <= BATCH_TOL, `session ${s} step ${k}: logits batched vs alone ${maxAbsDiff(l, a.gen.seen[k]!)}`));
          const commits = (g: typeof a.gen) => g.states.slice(g.states.length - g.segmentsCommitted);
          commits(b.gen).forEach((st, i) => assert.ok(bits(st).equals(bits(commits(a.gen)[i]!)), `session ${s} generation commit ${i}`));
        }
        assert.ok(batched.some((b) => b.gen.segmentsCommitted > 0), 'some session commits a segment while generating');
        for (const graph of ['segment', 'prefill', 'decode'] as const) {
          const most = Math.max(0, ...stats.filter((b) => b.graph === graph && b.model === p.name).map((b) => b.rows));
          assert.ok(most > 1, `${graph} batches had ${most} rows at most`);
        }
        // Sessions' states differ, so a step fed another row's state would be seen above.
        assert.ok(maxAbsDiff(batched[0]!.gen.seen[1]!, batched[3]!.gen.seen[1]!) > 1e-3, 'sessions decode from different states');
      });

      test('a chain (advanceMany) == advance() segment by segment, bit for bit', async () => {
        const init = eng.model(p.name).initState;
        const segmentsOf = (s: number) => [0, 1, 2, 3].map((k) => corpus.slice(32 * k + 5 * s, 32 * k + 5 * s + (k === 3 ? 9 : 32)));
        const expected = await Promise.all([0, 1, 2].map(async (s) => {
          const out: Float32Array[] = [];
          let state = init;
          for (const ids of segmentsOf(s)) out.push((state = await eng.advance(p.name, ids, state, `plain-${s}`)));
          return out;
        }));
        const seen = await Promise.all([0, 1, 2].map(async (s) => {
          const states: Float32Array[] = [];
          const last = await eng.advanceMany(p.name, segmentsOf(s), init, { stream: `chain-${s}`, onState: (_, st) => states.push(st) });
          return { states, last };
        }));
        for (let s = 0; s < 3; s++) {
          seen[s]!.states.forEach((st, k) => assert.ok(bits(st).equals(bits(expected[s]![k]!)), `session ${s} segment ${k}`));
          assert.ok(bits(seen[s]!.last).equals(bits(expected[s]![3]!)), `session ${s}: last state`);
        }
      });

      test('each decode step is fed the state of its prefill: logits equal segment() over the tail; the cache holds segment_length tokens', async () => {
        const S = eng.model(p.name).segmentLength;
        const layout = { slots: eng.model(p.name).stateEntries, size: eng.model(p.name).stateBytes / 4 };
        const state = goldenFlat(layout, golden.sequence.segments[4]!.state_after);
        const tail = corpus.slice(200, 200 + S - 4);
        let { logits, kv } = await eng.prefill(p.name, tail, state);
        // Another session's cache in between, from another state: the registry keeps each cache's own.
        const other = await eng.prefill(p.name, corpus.slice(0, 5), eng.model(p.name).initState);
        for (let k = 0; k < 3; k++) {
          const want = await eng.segment(p.name, tail, state);
          assert.ok(maxAbsDiff(logits, want.logits) <= golden.tolerance.logits, `after ${tail.length} tokens: ${maxAbsDiff(logits, want.logits)}`);
          tail.push(100 + k);
          ({ logits } = await eng.decode(p.name, kv, 100 + k));
          await eng.decode(p.name, other.kv, 7 + k);
        }
        eng.releaseKv(other.kv);
        await eng.decode(p.name, kv, 5);
        await assert.rejects(eng.decode(p.name, kv, 6), new RegExp(`KV cache ${kv} is full \\(${S} tokens, segment_length ${S}\\)`));
        eng.releaseKv(kv);
        await assert.rejects(eng.prefill(p.name, [5], new Float32Array(7)), new RegExp(`state has 7 float32 values \\(28 bytes\\), expected ${eng.model(p.name).stateBytes / 4} \\(\\[${eng.model(p.name).stateBytes / 4}\\]`));
      });
    });
  }
});
