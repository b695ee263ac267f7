// The engine's scheduling with the real onnxruntime-node on CPU: the batch window (batchWaitMs),
// batch-size buckets and their warm-up, and the engine's lifecycle (load errors, close).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bucketOf, bucketSizes } from '../src/engine/batch-buckets.ts';
import { chunksOf, MAX_LOGITS_ROWS } from '../src/engine/logits-rows.ts';
import { startEngine, type ChainRef, type Engine } from '../src/engine/engine.ts';
import { maxAbsDiff } from './helpers.ts';
import { MODELS_DIR, SMALL, LM, corpus, recordStats } from './support/engine-fixtures.ts';

/** Stream 'gone' runs a segment and never sends again; then stream 'other' runs one: how long that took (ms). */
async function afterGone(engine: Engine): Promise<void> {
  const init = engine.model(SMALL).initState;
  await engine.advance(SMALL, corpus.slice(0, 128), init, 'gone');
  await engine.advance(SMALL, corpus.slice(128, 256), init, 'other');
}

describe('batch window (batchWaitMs)', () => {
  // Four sessions, each sending its next segment a different time after its reply (0 to 90 ms, as a
  // main thread busy with other work would): without a window the runs split into small batches; with
  // one, the engine waits for the sessions it just answered and runs them together. The delays and
  // the window are far apart (90 ms, 2 s) so that a busy machine cannot blur them; a window that
  // sees all its sessions back runs at once, so its length costs nothing here.
  async function cohort(batchWaitMs: number): Promise<{ rows: number[]; states: Float32Array[] }> {
    const engine = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, batchWaitMs });
    const rows: number[] = [];
    const stop = engine.onBatch((s) => rows.push(s.rows));
    try {
      const init = engine.model(SMALL).initState;
      const states = await Promise.all(
        [0, 30, 60, 90].map(async (delay, s) => {
          let state = init;
          for (let k = 0; k < 4; k++) {
            state = await engine.advance(SMALL, corpus.slice(128 * k + s, 128 * k + s + 128), state, `session-${s}`);
            await new Promise((resolve) => setTimeout(resolve, delay));
          }
          return state;
        }),
      );
      return { rows, states };
    } finally {
      stop();
      await engine.close();
    }
  }

  test('sessions answered moments ago are waited for, so they share runs; results are unchanged', async () => {
    const greedy = await cohort(0);
    const windowed = await cohort(2000);
    assert.equal(windowed.rows.reduce((a, b) => a + b, 0), 16);
    // After the first run (all four arrive at once) every later run waits for all four.
    assert.deepEqual(windowed.rows, [4, 4, 4, 4], `windowed runs: ${windowed.rows.join(', ')}`);
    assert.ok(greedy.rows.length > 4, `without the window the runs should split: ${greedy.rows.join(', ')}`);
    for (let s = 0; s < 4; s++) assert.ok(maxAbsDiff(windowed.states[s]!, greedy.states[s]!) === 0, `session ${s}: batching changed the state`);
  });

  // 'gone' is waited for until its answer is 300 ms old, then never again: no call hangs on it. The
  // test's own timeout is the bound on that wait (not a speed target).
  test('a stream that does not come back costs at most the window', { timeout: 60_000 }, async () => {
    const engine = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, batchWaitMs: 300 });
    try {
      await afterGone(engine);
      await engine.advance(SMALL, corpus.slice(256, 384), engine.model(SMALL).initState, 'other');
    } finally {
      await engine.close();
    }
  });
});

for (const deviceTurns of [true, false]) describe(`batch window with several engine threads (${deviceTurns ? 'taking turns' : 'runs overlapping'})`, () => {
  const base = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, threads: 2, deviceTurns };

  // Both streams on thread 0 (packStreams 16); thread 1 has nothing, so no run holds the device. The
  // window is a day: waiting for 'gone' would never end, so finishing at all (within the test's
  // timeout, a bound on the wait) shows the run was not held back.
  test('a run is not held back while the device is idle (sessions packed on one thread, the other idle)', { timeout: 120_000 }, async () => {
    const engine = await startEngine({ ...base, packStreams: 16, batchWaitMs: 24 * 3600_000 });
    try {
      await afterGone(engine);
    } finally {
      await engine.close();
    }
  });

  test("sessions answered moments ago are waited for while the other thread has runs to do", async () => {
    // Four sessions on thread 0 (packStreams 4: the first four streams fill it), each sending its next
    // segment 0-9 ms after its reply; thread 1 meanwhile runs chains of 4 sessions (the next four streams), so whenever
    // thread 0 plans, the other thread is ready to use the device and the window waits for its sessions.
    // A window far above the sessions' 0-9 ms delays, so that a busy machine cannot blur them.
    const engine = await startEngine({ ...base, packStreams: 4, batchWaitMs: 5000 });
    const rows: number[] = [];
    const stop = engine.onBatch((s) => s.lane === 0 && rows.push(s.rows));
    try {
      const init = engine.model(SMALL).initState;
      const cohort = [0, 3, 6, 9].map(async (delay, s) => {
        let state = init;
        for (let k = 0; k < 4; k++) {
          state = await engine.advance(SMALL, corpus.slice(128 * k + s, 128 * k + s + 128), state, `cohort-${s}`);
          await new Promise((resolve) => setTimeout(resolve, delay));
        }
      });
      let cohortDone = false;
      const busy = Array.from({ length: 4 }, async (_, s) => {
        let from: Float32Array | ChainRef = init;
        const outstanding: Promise<unknown>[] = [];
        // Chains of 32 segments until the cohort is done, each continuing the one before inside the
        // engine, three sent ahead: thread 1 always has the next run queued. Long chains sent well
        // ahead, so that a main thread slowed by a busy machine never lets thread 1 run dry (with one
        // chain of 8 sent ahead it did under load, and the window then rightly stopped waiting).
        const segs = Array.from({ length: 32 }, (_, k) => {
          const at = (128 * k + s) % (corpus.length - 132);
          return corpus.slice(at, at + 128);
        });
        while (!cohortDone) {
          const chain: ChainRef = {};
          outstanding.push(engine.advanceMany(SMALL, segs, from, { stream: `busy-${s}`, chain }));
          from = chain;
          if (outstanding.length >= 3) await outstanding.shift();
        }
        await Promise.all(outstanding);
      });
      await Promise.all(cohort);
      cohortDone = true;
      await Promise.all(busy);
      assert.deepEqual(rows, [4, 4, 4, 4], `thread 0's runs: ${rows.join(', ')}`);
    } finally {
      stop();
      await engine.close();
    }
  });
});

describe('batch-size buckets (batchBuckets, warmup)', () => {
  test('bucketOf: 1, 2, 4, then multiples of 4 up to 64 and of 8 above, capped at maxBatch', () => {
    assert.deepEqual([1, 2, 3, 5, 8, 9, 17, 25, 31, 33, 64, 65, 73].map((n) => bucketOf(n, 256)), [1, 2, 4, 8, 8, 12, 20, 28, 32, 36, 64, 72, 80]);
    assert.equal(bucketOf(30, 30), 30);
    assert.equal(bucketOf(5, 6), 6);
    assert.deepEqual(bucketSizes(32), [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]);
    assert.deepEqual(bucketSizes(22), [1, 2, 4, 8, 12, 16, 20, 22]);
    assert.equal(bucketSizes(256).length, 3 + 15 + 24);
    assert.throws(() => bucketOf(0, 8), /rows must be a positive integer/);
  });

  test('runs are padded to their bucket; every row\'s result equals an unpadded engine\'s', async () => {
    const base = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatch: 16, maxBatchTokens: 4096 };
    const [plain, bucketed] = await Promise.all([startEngine({ ...base, batchBuckets: false }), startEngine({ ...base, batchBuckets: true, warmup: true })]);
    try {
      const init = plain.model(SMALL).initState;
      for (const n of [3, 5, 9]) {
        const rec = recordStats(bucketed);
        const rows = Array.from({ length: n }, (_, i) => corpus.slice(7 * i, 7 * i + 128));
        const [a, b] = await Promise.all([
          Promise.all(rows.map((ids, i) => plain.advance(SMALL, ids, init, `p${n}-${i}`))),
          Promise.all(rows.map((ids, i) => bucketed.advance(SMALL, ids, init, `b${n}-${i}`))),
        ]);
        const s = await Promise.all(rows.map((ids) => bucketed.segment(SMALL, ids, init)));
        rec.stop();
        for (let i = 0; i < n; i++) {
          assert.ok(maxAbsDiff(b[i]!, a[i]!) === 0, `${n} rows: row ${i} differs with padding`);
          assert.ok(maxAbsDiff(s[i]!.nextState, a[i]!) === 0, `${n} rows: segment() row ${i} differs`);
        }
        const runs = rec.stats.filter((x) => x.rows === n);
        assert.equal(runs.length, 2, `one advance and one segment run of ${n} rows: ${rec.stats.map((x) => `${x.graph}:${x.rows}`).join(' ')}`);
        // A scored segment batch runs in chunks of MAX_LOGITS_ROWS, each padded to its own bucket (logits-rows.ts).
        const segmentRows = chunksOf(rows, MAX_LOGITS_ROWS).reduce((sum, c) => sum + bucketOf(c.rows.length, 16), 0);
        for (const r of runs) assert.equal(r.runRows, r.graph === 'segment' ? segmentRows : bucketOf(n, 16), `${r.graph} run of ${n} rows`);
      }
    } finally {
      await Promise.all([plain.close(), bucketed.close()]);
    }
  });

  test('with two threads the warm-up runs take turns before the threads take requests, and the engine starts', async () => {
    const engine = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 8, maxBatchTokens: 2048, batchBuckets: true, warmup: true, threads: 2 });
    try {
      const init = engine.model(SMALL).initState;
      const out = await Promise.all([0, 1, 2].map((i) => engine.advance(SMALL, corpus.slice(i, i + 128), init, `w${i}`)));
      assert.equal(out.length, 3);
    } finally {
      await engine.close();
    }
  });
});

describe('engine lifecycle', () => {
  test('load errors reject with the loader message', async () => {
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL, 'no-such-model'], executionProvider: 'cpu', maxBatch: 4, maxBatchTokens: 512 }),
      /failed to load model 'no-such-model' from .*no-such-model: model\.json: manifest file not found at /,
    );
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'tpu' as 'cpu', maxBatch: 4, maxBatchTokens: 512 }),
      /executionProvider must be 'cpu' or 'cuda', found "tpu"/,
    );
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [LM], executionProvider: 'cpu', precision: 'fp16', maxBatch: 4, maxBatchTokens: 512 }),
      /'graphs\.fp16' must be an object \(this package ships precisions: fp32\)/,
    );
    await assert.rejects(
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', maxBatch: 0, maxBatchTokens: 512 }),
      /maxBatch must be a positive integer, found 0/,
    );
  });

  test('close() rejects pending calls and later calls', async () => {
    const engine = await startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 2, maxBatchTokens: 256 });
    const state = engine.model(SMALL).initState;
    const { kv } = await engine.prefill(SMALL, [5, 6], state);
    const inFlight = Array.from({ length: 6 }, (_, i) => engine.segment(SMALL, corpus.slice(i, i + 128), state));
    inFlight.push(engine.decode(SMALL, kv, 7) as unknown as ReturnType<Engine['segment']>);
    const settledEarly = new Set<number>();
    const outcomes = inFlight.map((p, i) => p.then(() => 'resolved', (err: Error) => err.message).finally(() => settledEarly.add(i)));
    // Let the first batch reach the thread (queued or running); a call answered before close() is fine.
    await inFlight[0]!.then(() => undefined, () => undefined);
    await new Promise((resolve) => setImmediate(resolve)); // the rest of that reply's settlements
    const answered = new Set(settledEarly);
    await engine.close();
    const results = await Promise.all(outcomes);
    const open = results.filter((_, i) => !answered.has(i));
    assert.ok(open.length >= 4, `only ${open.length} calls were still open at close()`);
    assert.deepEqual(open, new Array(open.length).fill('engine closed'));
    await assert.rejects(engine.segment(SMALL, [1], state), /engine is closed/);
    await engine.close(); // idempotent
  });
});
