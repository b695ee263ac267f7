// The engine with several threads (turns, cohorts, packing, KV caches per thread), chained advances
// (advanceMany) on one thread and on two, and runs of the segment_state_steps graph, with the real
// onnxruntime-node on CPU.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startEngine, type BatchStat, type ChainRef, type Engine } from '../src/engine/engine.ts';
import { createStateRing } from '../src/engine/state-ring.ts';
import { maxAbsDiff } from './helpers.ts';
import { MODELS_DIR, SMALL, engineGreedy, corpus, recordStats } from './support/engine-fixtures.ts';

describe('engine threads (threads > 1), and chained advances on one and on two', () => {
  let one: Engine;
  let two: Engine;
  before(async () => {
    const base = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048 };
    [one, two] = await Promise.all([startEngine(base), startEngine({ ...base, threads: 2, deviceTurns: true })]);
  });
  after(async () => {
    await Promise.all([one?.close(), two?.close()]);
  });

  /** Four sessions stepping four segments each, concurrently (streams `${name}-0` .. `${name}-3`). */
  const fourSessions = (engine: Engine, name = 'session') =>
    Promise.all(
      [0, 1, 2, 3].map(async (s) => {
        let state = engine.model(SMALL).initState;
        for (let k = 0; k < 4; k++) state = await engine.advance(SMALL, corpus.slice(128 * k + s, 128 * k + s + 128), state, `${name}-${s}`);
        return state;
      }),
    );

  test('with deviceTurns false the threads run at once (runs overlap); results equal one thread\'s', async () => {
    const overlapping = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, threads: 2, deviceTurns: false });
    try {
      const expected = await fourSessions(one, 'turns');
      const rec = recordStats(overlapping);
      // Rounds until the two threads' runs have overlapped at least once (the first round almost always does).
      for (let round = 0; round < 20; round++) {
        const states = await fourSessions(overlapping, `overlap${round}`);
        for (let s = 0; s < 4; s++) assert.equal(maxAbsDiff(states[s]!, expected[s]!), 0, `round ${round} session ${s}: the state differs from one thread's`);
        const runs = [...rec.stats].sort((a, b) => a.startedAt - b.startedAt);
        if (runs.some((b, i) => i > 0 && b.lane !== runs[i - 1]!.lane && b.startedAt < runs[i - 1]!.startedAt + runs[i - 1]!.runMs - 0.1)) break;
        assert.ok(round < 19, 'in 20 rounds no run of one thread started while the other thread ran');
      }
      rec.stop();
      assert.deepEqual([...new Set(rec.stats.map((b) => b.lane))].sort(), [0, 1]);
    } finally {
      await overlapping.close();
    }
  });

  test('sessions split into one cohort per thread; the threads take turns; results equal one thread\'s', async () => {
    const expected = await fourSessions(one);
    const rec = recordStats(two);
    const states = await fourSessions(two);
    rec.stop();
    for (let s = 0; s < 4; s++) assert.ok(maxAbsDiff(states[s]!, expected[s]!) === 0, `session ${s}: the state differs from one thread's`);
    // Two sessions per thread: every run holds at most 2 rows, and both threads ran.
    assert.deepEqual([...new Set(rec.stats.map((b) => b.lane))].sort(), [0, 1]);
    assert.equal(rec.stats.reduce((a, b) => a + b.rows, 0), 16);
    assert.ok(rec.stats.every((b) => b.rows <= 2), `rows per run: ${rec.stats.map((b) => `${b.lane}:${b.rows}`).join(' ')}`);
    // One onnxruntime run at a time across the threads: no two overlap (0.1 ms for the clocks of two threads).
    const runs = [...rec.stats].sort((a, b) => a.startedAt - b.startedAt);
    assert.ok(runs.every((b) => b.runMs > 0 && b.runMs <= b.ms));
    for (let i = 1; i < runs.length; i++) {
      const prev = runs[i - 1]!;
      const early = prev.startedAt + prev.runMs - runs[i]!.startedAt;
      assert.ok(early <= 0.1, `run ${i} (thread ${runs[i]!.lane}) started ${early.toFixed(2)} ms before run ${i - 1} (thread ${prev.lane}) ended`);
    }
  });

  test('packStreams: new sessions fill one thread up to that many, then the next; idle ones stop counting; results equal one thread\'s', async () => {
    const packed = await startEngine({
      modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, threads: 2, packStreams: 4, streamIdleMs: 300,
    });
    try {
      const expected = await fourSessions(one);
      const runFour = async (name: string, lane: number) => {
        const rec = recordStats(packed);
        const states = await fourSessions(packed, name);
        rec.stop();
        for (let s = 0; s < 4; s++) assert.ok(maxAbsDiff(states[s]!, expected[s]!) === 0, `${name} four, session ${s}: the state differs from one thread's`);
        assert.deepEqual([...new Set(rec.stats.map((b) => b.lane))], [lane], `${name} four ran on threads ${rec.stats.map((b) => b.lane).join(' ')}`);
        assert.ok(rec.stats.some((b) => b.rows > 2), `${name} four: rows per run ${rec.stats.map((b) => b.rows).join(' ')}`);
      };
      // The first four fill thread 0 (runs of up to 4 rows, not 2 per thread); the next four find it full.
      await runFour('first', 0);
      await runFour('second', 1);
      // Once idle for streamIdleMs, sessions no longer count: thread 0 takes new ones again.
      await new Promise((resolve) => setTimeout(resolve, 400));
      await runFour('third', 0);
    } finally {
      await packed.close();
    }
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', maxBatch: 4, maxBatchTokens: 512, threads: 2, packStreams: -1 }),
      /packStreams must be a positive integer, found -1/,
    );
  });

  test('KV caches stay on the thread that made them: generation equals one thread\'s; handles are unique', async () => {
    const prompts = [5, 17, 40, 90].map((n, i) => corpus.slice(300 + i * 7, 300 + i * 7 + n));
    const expected = await Promise.all(prompts.map((p) => engineGreedy(one, SMALL, p, 20)));
    const got = await Promise.all(prompts.map((p) => engineGreedy(two, SMALL, p, 20)));
    for (let i = 0; i < prompts.length; i++) assert.deepEqual(got[i]!.ids, expected[i]!.ids, `prompt ${i}`);
    // Unnamed prefills spread over the threads (least busy first); each handle is known to its thread only.
    const state = two.model(SMALL).initState;
    const handles = await Promise.all([0, 1, 2, 3].map((i) => two.prefill(SMALL, corpus.slice(i, i + 8), state)));
    const kvs = handles.map((h) => h.kv);
    assert.equal(new Set(kvs).size, 4, `handles ${kvs.join(', ')}`);
    assert.deepEqual([...new Set(kvs.map((k) => (k - 1) % 2))].sort(), [0, 1], `handles ${kvs.join(', ')} all on one thread`);
    for (const h of handles) assert.equal((await two.decode(SMALL, h.kv, 7)).logits.length, two.model(SMALL).vocabSize);
    two.releaseKv(kvs[0]!);
    await assert.rejects(two.decode(SMALL, kvs[0]!, 7), /KV handle \d+ is unknown or was released/);
    for (const k of kvs.slice(1)) two.releaseKv(k);
  });

  test('a thread that cannot load fails the start; threads must be a positive integer', async () => {
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL, 'no-such-model'], executionProvider: 'cpu', maxBatch: 4, maxBatchTokens: 512, threads: 2 }),
      /failed to load model 'no-such-model'/,
    );
    await assert.rejects(startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', maxBatch: 4, maxBatchTokens: 512, threads: 0 }), /threads must be a positive integer, found 0/);
  });

  describe('chained advance (advanceMany)', () => {
    // The one-thread and two-thread engines of the enclosing suite.
    /** Session s's segments: four full ones and a short last one, from its own place in the corpus. */
    const segmentsOf = (s: number) => [0, 1, 2, 3, 4].map((k) => corpus.slice(128 * k + 9 * s, 128 * k + 9 * s + (k === 4 ? 37 : 128)));

    test('equals advance() segment by segment, bit for bit, on one thread and on two; onState sees every memory in order', async () => {
      const init = one.model(SMALL).initState;
      const expected = await Promise.all(
        [0, 1, 2, 3].map(async (s) => {
          const states: Float32Array[] = [];
          let state = init;
          for (const ids of segmentsOf(s)) states.push((state = await one.advance(SMALL, ids, state, `plain-${s}`)));
          return states;
        }),
      );
      for (const engine of [one, two]) {
        const rec = recordStats(engine);
        const seen = await Promise.all(
          [0, 1, 2, 3].map(async (s) => {
            const states: { index: number; state: Float32Array }[] = [];
            const last = await engine.advanceMany(SMALL, segmentsOf(s), init, { stream: `chain-${s}`, onState: (index, state) => states.push({ index, state }) });
            return { states, last };
          }),
        );
        rec.stop();
        for (let s = 0; s < 4; s++) {
          const { states, last } = seen[s]!;
          assert.deepEqual(states.map((x) => x.index), [0, 1, 2, 3, 4], `session ${s}: onState indices`);
          for (let k = 0; k < 5; k++) assert.ok(maxAbsDiff(states[k]!.state, expected[s]![k]!) === 0, `session ${s} segment ${k}: the memory differs from advance()'s`);
          assert.ok(maxAbsDiff(last, expected[s]![4]!) === 0, `session ${s}: the result is not the last memory`);
        }
        // The chains go back to the front of the queue after each run: a thread's sessions run together
        // in every one of its runs (4 sessions on one thread; 2 per thread on two): the first four
        // segments in one run of the package's 4-step graph, the fifth in a run of its own.
        const perThread = 4 / (engine === one ? 1 : 2);
        assert.deepEqual(rec.stats.map((b) => b.rows), new Array(rec.stats.length).fill(perThread), `rows per run: ${rec.stats.map((b) => b.rows).join(' ')}`);
        assert.deepEqual(rec.stats.map((b) => b.steps).sort(), new Array(4 / perThread).fill([1, 4]).flat().sort());
      }
    });

    test('the engine thread goes on through the chain while the main thread is busy', async () => {
      const init = one.model(SMALL).initState;
      const rec = recordStats(one);
      const before = one.progress().runs;
      let during = -1;
      // Block this thread once the first memory is back, until the engine's shared counter says the
      // chain's second run finished too: with a trip through this thread between segments it never
      // could. The minute only bounds the wait (a failure), it is no speed target.
      await one.advanceMany(SMALL, segmentsOf(0), init, { onState: (i) => {
        if (i !== 0) return;
        const deadline = Date.now() + 60_000;
        while (one.progress().runs - before < 2 && Date.now() < deadline) {
          // busy: no message is handled here
        }
        during = one.progress().runs - before;
      } });
      rec.stop();
      // Segments 0-3 in one 4-step run, segment 4 in the next: both while this thread was blocked.
      assert.deepEqual(rec.stats.map((b) => b.steps), [4, 1]);
      assert.equal(during, 2, `runs finished while the main thread was busy: ${during} of 2`);
    });

    test('memory handed back while the main thread is behind: the ring fills, the rest comes in buffers of its own, every state intact', async () => {
      const init = one.model(SMALL).initState;
      // More segments than the thread's ring holds states (one engine: maxBatch 8, runs of 4 steps).
      const ringStates = createStateRing(8 * 4, init.length).data.byteLength / 4 / init.length;
      const segs = Array.from({ length: ringStates + 8 }, (_, k) => corpus.slice((64 * k) % (corpus.length - 128), ((64 * k) % (corpus.length - 128)) + 128));
      const collect = async (block: boolean) => {
        const states: { index: number; state: Float32Array }[] = [];
        const before = one.progress().segments;
        let during = 0;
        const last = await one.advanceMany(SMALL, segs, init, { onState: (index, state) => {
          states.push({ index, state });
          if (!block || index !== 0) return;
          // Busy once the first memory is back, until the engine's shared counter says every segment
          // ran: the thread runs on and its replies wait here. The minute only bounds the wait.
          const deadline = Date.now() + 60_000;
          while (one.progress().segments - before < segs.length && Date.now() < deadline) {
            // busy: no message is handled here
          }
          during = one.progress().segments - before;
        } });
        // Segments run before this thread handled anything again (4 per run of the 4-step graph).
        return { states, last, during };
      };
      const free = await collect(false);
      const behind = await collect(true);
      assert.ok(behind.during > ringStates + 1, `segments run while the main thread was busy: ${behind.during}, the ring holds ${ringStates}`);
      assert.deepEqual(behind.states.map((x) => x.index), segs.map((_, k) => k));
      for (let k = 0; k < segs.length; k++) assert.ok(maxAbsDiff(behind.states[k]!.state, free.states[k]!.state) === 0, `segment ${k}: memory differs`);
      assert.ok(maxAbsDiff(behind.last, free.last) === 0);
      // Copied out of the ring on arrival (a later run may write over its region), never views of it.
      assert.ok(behind.states.every((x) => !(x.state.buffer instanceof SharedArrayBuffer)), 'a memory handed on is a view of the ring');
    });

    test('a continuation sent while its chain runs starts in the run right after the chain\'s last, bit for bit as one chain', async () => {
      const init = one.model(SMALL).initState;
      const segs = segmentsOf(1);
      for (const engine of [one, two]) {
        const whole = await engine.advanceMany(SMALL, segs, init, { stream: `whole-${engine === one ? 1 : 2}` });
        const rec = recordStats(engine);
        const ref: ChainRef = {};
        const stream = `continued-${engine === one ? 1 : 2}`;
        const first = engine.advanceMany(SMALL, segs.slice(0, 2), init, { stream, chain: ref });
        // Sent before the first chain has run: the thread holds it until that chain's last segment ran.
        const steps: number[] = [];
        const second = engine.advanceMany(SMALL, segs.slice(2), ref, { stream, onState: (i) => steps.push(i) });
        const [a, b] = await Promise.all([first, second]);
        rec.stop();
        assert.equal(ref.continued, true, 'the continuation went to the thread before the first chain ended');
        assert.equal(maxAbsDiff(a, ref.final!), 0);
        assert.equal(maxAbsDiff(b, whole), 0, 'two chains, the second continuing the first, differ from one chain');
        assert.deepEqual(steps, [0, 1, 2]);
        // Five segments, one row each, on one thread: the chain's two and the continuation's first two
        // in one run of the 4-step graph, the last in the next run.
        assert.deepEqual(rec.stats.map((x) => [x.rows, x.steps]), [[1, 4], [1, 1]]);
        assert.equal(new Set(rec.stats.map((x) => x.lane)).size, 1);
        // Sent after the first chain's reply: it starts from ref.final, as any advanceMany from a state.
        const later = await engine.advanceMany(SMALL, segs.slice(2), ref, { stream });
        assert.equal(maxAbsDiff(later, whole), 0);
      }
    });

    test('a continuation fails with its chain (aborted or failed); a ref never sent is refused', async () => {
      const init = one.model(SMALL).initState;
      await assert.rejects(one.advanceMany(SMALL, [[1, 2]], {}), /advanceMany\(rmt-brown-small\): the chain to continue from was never sent/);
      const long = Array.from({ length: 20 }, (_, k) => corpus.slice(k * 37 % 1000, (k * 37 % 1000) + 128));
      const stop = new AbortController();
      const ref: ChainRef = {};
      const chain = one.advanceMany(SMALL, long, init, { stream: 'doomed', chain: ref, signal: stop.signal, onState: (i) => {
        if (i === 1) stop.abort(new Error('client went away'));
      } });
      const next = one.advanceMany(SMALL, [corpus.slice(0, 128)], ref, { stream: 'doomed' });
      await assert.rejects(chain, /client went away/);
      await assert.rejects(next, /request \d+, continued from, was cancelled/);
      assert.equal(ref.failed, true);
      await assert.rejects(one.advanceMany(SMALL, [[1, 2]], ref), /the chain to continue from failed/);
      // The engine goes on: a fresh chain runs.
      assert.equal((await one.advanceMany(SMALL, [corpus.slice(0, 128)], init)).length, init.length);
    });

    test('errors name the segment; aborting drops the segments not run yet and the engine carries on', async () => {
      const init = one.model(SMALL).initState;
      await assert.rejects(one.advanceMany(SMALL, [], init), /advanceMany\(rmt-brown-small\): segments must be a non-empty array/);
      await assert.rejects(one.advanceMany(SMALL, [corpus.slice(0, 128), []], init), /advanceMany\(rmt-brown-small\) segment 1: 0 ids, expected 1\.\.128/);
      await assert.rejects(one.advanceMany(SMALL, [corpus.slice(0, 129)], init), /segment 0: 129 ids, expected 1\.\.128/);
      await assert.rejects(one.advanceMany(SMALL, [[1, 2, 99999]], init), /segment 0: ids\[2\] = 99999 is not a token id/);
      await assert.rejects(one.advanceMany(SMALL, [[1, 2]], init.subarray(1)), /advanceMany\(rmt-brown-small\): state has/);
      const early = new AbortController();
      early.abort(new Error('not wanted'));
      await assert.rejects(one.advanceMany(SMALL, [[1, 2]], init, { signal: early.signal }), /not wanted/);

      const rec = recordStats(one);
      const stop = new AbortController();
      const long = Array.from({ length: 40 }, (_, k) => corpus.slice(k * 31 % 1000, (k * 31 % 1000) + 128));
      const indices: number[] = [];
      const chain = one.advanceMany(SMALL, long, init, { stream: 'cancelled', signal: stop.signal, onState: (i) => {
        indices.push(i);
        if (i === 1) stop.abort(new Error('client went away'));
      } });
      await assert.rejects(chain, /client went away/);
      // Ops reach the thread in order, so the cancel comes before these; were the chain still running,
      // each of their runs would carry its row too.
      for (let k = 0; k < 5; k++) assert.equal((await one.advance(SMALL, corpus.slice(k, k + 128), init, 'after')).length, init.length);
      rec.stop();
      const rows = rec.stats.map((b) => b.rows);
      assert.deepEqual(rows.slice(-4), [1, 1, 1, 1], `rows per run: ${rows.join(' ')}`);
      const chainRows = rows.reduce((a, b) => a + b, 0) - 5;
      assert.ok(chainRows >= 2 && chainRows <= 4, `the chain ran ${chainRows} of its 40 segments after an abort at its second`);
      assert.deepEqual(indices.slice(0, 2), [0, 1]);
    });
  });
});

describe('segment_state_steps runs (segmentSteps)', () => {
  // The shipped package's 4-step graph against one segment per run, on the same thread and batch size.
  let stepped: Engine;
  let plain: Engine;
  before(async () => {
    const base = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 4096 };
    [stepped, plain] = await Promise.all([startEngine(base), startEngine({ ...base, segmentSteps: false })]);
  });
  after(async () => {
    await Promise.all([stepped?.close(), plain?.close()]);
  });

  /** Segment k of session s: full, except every chain's last (short). */
  const seg = (s: number, k: number, short: boolean) => corpus.slice((53 * s + 29 * k) % 900, ((53 * s + 29 * k) % 900) + (short ? 17 + s : 128));

  /**
   * Six sessions, each sending three chains at once (the second and third continuing the one before),
   * of 1..7 segments: chains end inside runs, continuations take over mid-run, a session's last run
   * has fewer than 4 segments to go. Every memory each chain hands back, in order, and the stats.
   */
  const sessions = async (engine: Engine) => {
    const rec = recordStats(engine);
    const init = engine.model(SMALL).initState;
    const out = await Promise.all(
      [0, 1, 2, 3, 4, 5].map(async (s) => {
        const lengths = [1 + (s % 3), 1 + ((s * 5) % 7), 2 + s];
        let k = 0;
        const chains = lengths.map((n) => Array.from({ length: n }, (_, j) => seg(s, k++, j === n - 1)));
        const refs: ChainRef[] = [{}, {}, {}];
        const seen: [number, number, Float32Array][] = [];
        const done = chains.map((segments, c) =>
          engine.advanceMany(SMALL, segments, c === 0 ? init : refs[c - 1]!, {
            stream: `steps-${s}`, chain: refs[c]!, onState: (i, st) => seen.push([c, i, st]),
          }),
        );
        return { seen, results: await Promise.all(done), lengths };
      }),
    );
    rec.stop();
    return { out, stats: rec.stats };
  };

  test('equal one segment per run bit for bit: every memory handed back, in order, across chain ends and continuations', async () => {
    const a = await sessions(stepped);
    const b = await sessions(plain);
    for (let s = 0; s < 6; s++) {
      const x = a.out[s]!;
      const y = b.out[s]!;
      // Each chain's memories in order (a chain's last comes as its promise resolves, so after the next
      // chain's first ones when one run held both).
      const byChain = (seen: typeof x.seen) => [0, 1, 2].map((c) => seen.filter(([cc]) => cc === c));
      const [xs, ys] = [byChain(x.seen), byChain(y.seen)];
      for (let c = 0; c < 3; c++) {
        assert.deepEqual(xs[c]!.map(([, i]) => i), Array.from({ length: x.lengths[c]! }, (_, i) => i), `session ${s} chain ${c}: onState indices`);
        assert.deepEqual(ys[c]!.map(([, i]) => i), xs[c]!.map(([, i]) => i));
        xs[c]!.forEach(([, i, st], n) => assert.equal(maxAbsDiff(st, ys[c]![n]![2]), 0, `session ${s} chain ${c} segment ${i}`));
      }
      x.results.forEach((st, c) => assert.equal(maxAbsDiff(st, y.results[c]!), 0, `session ${s} chain ${c}: result`));
    }
    const segments = (stats: BatchStat[]) => stats.reduce((n, st) => n + st.rows * st.steps, 0);
    const total = a.out.reduce((n, x) => n + x.lengths.reduce((p, q) => p + q, 0), 0);
    assert.equal(segments(a.stats), total);
    assert.equal(segments(b.stats), total);
    assert.ok(b.stats.every((st) => st.steps === 1));
    // The steps runs did most of the work, in fewer runs; their tokens count all four segments of a row.
    const fours = a.stats.filter((st) => st.steps === 4);
    assert.ok(fours.reduce((n, st) => n + st.rows * 4, 0) > total / 2, `segments in 4-step runs: ${fours.map((st) => st.rows).join(' ')}`);
    assert.ok(a.stats.length < b.stats.length);
    const tokens = (stats: BatchStat[]) => stats.reduce((n, st) => n + st.tokens, 0);
    assert.equal(tokens(a.stats), tokens(b.stats));
  });

  test('a package without the graph, or segmentSteps false, runs one segment per run', async () => {
    const init = plain.model(SMALL).initState;
    const rec = recordStats(plain);
    await plain.advanceMany(SMALL, [0, 1, 2, 3, 4, 5, 6, 7].map((k) => seg(0, k, false)), init);
    rec.stop();
    assert.deepEqual(rec.stats.map((st) => st.steps), new Array(8).fill(1));
  });
});
