// The engine thread with the real onnxruntime-node on CPU and the shipped packages: golden replay
// through the engine, batched == one at a time, batched decode over caches of different lengths,
// request errors, and the main event loop staying responsive while the engine is saturated.
// Scheduling (batch window, buckets, lifecycle): engine-scheduling.test.ts; several threads, chained
// advances and the steps graph: engine-threads.test.ts.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEngine, type BatchStat, type Engine } from '../src/engine/engine.ts';
import { SHIPPED_PACKAGES, decodeF32, loadGolden, maxAbsDiff } from './helpers.ts';
import { MODELS_DIR, SMALL, LM, ENGINE_MODELS, BATCH_TOL, PAD_TOL, argmax, assertClose, engineGreedy, corpus, recordStats } from './support/engine-fixtures.ts';

describe('engine (worker thread, fp32, cpu)', () => {
  let eng: Engine; // batches up to 8 rows, every shipped package
  let solo: Engine; // one row per run: "the row alone"
  let compact: Engine; // batchInvariant: false — pads to the longest row of each batch only

  before(async () => {
    [eng, solo, compact] = await Promise.all([
      startEngine({
        modelsDir: MODELS_DIR,
        models: ENGINE_MODELS,
        executionProvider: 'cpu',
        intraOpThreads: 1,
        maxBatch: 8,
        maxBatchTokens: 8 * 128,
      }),
      startEngine({ modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu', intraOpThreads: 1, maxBatch: 1, maxBatchTokens: 128 }),
      startEngine({
        modelsDir: MODELS_DIR,
        models: [SMALL],
        executionProvider: 'cpu',
        intraOpThreads: 1,
        maxBatch: 8,
        maxBatchTokens: 8 * 128,
        batchInvariant: false,
      }),
    ]);
  });
  after(async () => {
    await Promise.all([eng?.close(), solo?.close(), compact?.close()]);
  });

  test('models(): package metadata', () => {
    assert.deepEqual(
      eng.models().map((m) => m.name),
      ENGINE_MODELS,
    );
    const m = eng.model(SMALL);
    assert.equal(m.segmentLength, 128);
    assert.equal(m.memoryTokens, 16);
    assert.equal(m.dModel, 256);
    assert.equal(m.vocabSize, 4096);
    assert.deepEqual(m.stateShape, [16, 256]);
    assert.equal(m.stateDtype, 'float32');
    assert.equal(m.stateBytes, 16 * 256 * 4);
    assert.equal(m.initState.length, 16 * 256);
    assert.equal(m.tokenizerFile, path.join(MODELS_DIR, SMALL, 'tokenizer.json'));
    assert.equal(m.dir, path.join(MODELS_DIR, SMALL));
    assert.ok(m.task !== undefined, 'the recall model carries its task');
    assert.equal(eng.model(LM).task, undefined);
  });

  for (const shipped of SHIPPED_PACKAGES) {
    test(`golden ${shipped.name}: 10 carried segments and greedy generation through the engine`, async () => {
      const golden = loadGolden(shipped.dir);
      const tol = golden.tolerance;
      let state = eng.model(shipped.name).initState;
      for (const [i, seg] of golden.sequence.segments.entries()) {
        const r = await eng.segment(shipped.name, seg.input_ids, state);
        assertClose(r.nextState, decodeF32(seg.state_after), tol.state, `segment ${i} state`);
        assertClose(r.tokenLogprobs, seg.token_logprobs, tol.token_logprobs, `segment ${i} token_logprobs`);
        assert.equal(argmax(r.logits), seg.top_logits.ids[0], `segment ${i} top-1`);
        state = r.nextState;
      }
      const g = golden.greedy;
      const out = await engineGreedy(eng, shipped.name, g.prompt_ids, g.max_new_tokens);
      assert.deepEqual(out.ids, g.expected_ids);
      assert.equal(out.segmentsCommitted, g.segments_committed_during_generation);
    });
  }

  test('8 concurrent sessions batched == each session alone (maxBatch 1)', async () => {
    // Each session ingests three segments (some partial), then generates 20 tokens greedily from a
    // tail of its own length; tails of 110+ cross a segment boundary during generation.
    const pieces = [
      [128, 128, 128],
      [128, 77, 128],
      [50, 128, 128],
      [128, 128, 9],
      [1, 128, 128],
      [100, 100, 100],
      [128, 64, 128],
      [128, 128, 128],
    ];
    const tails = [5, 17, 33, 60, 90, 110, 118, 127];
    const NEW = 20;
    const run = async (engine: Engine, s: number) => {
      const ingested: Float32Array[] = [];
      let state = engine.model(SMALL).initState;
      let pos = s * 37;
      for (const n of pieces[s]!) {
        const r = await engine.segment(SMALL, corpus.slice(pos, pos + n), state);
        state = r.nextState;
        ingested.push(state);
        pos += n;
      }
      const prompt = corpus.slice(pos, pos + tails[s]!);
      const gen = await engineGreedy(engine, SMALL, prompt, NEW, state);
      return { ingested, gen };
    };

    const batchedRec = recordStats(eng);
    const batched = await Promise.all(pieces.map((_, s) => run(eng, s)));
    batchedRec.stop();
    const soloRec = recordStats(solo);
    const alone: Awaited<ReturnType<typeof run>>[] = [];
    for (let s = 0; s < pieces.length; s++) alone.push(await run(solo, s));
    soloRec.stop();

    for (let s = 0; s < pieces.length; s++) {
      const b = batched[s]!;
      const a = alone[s]!;
      b.ingested.forEach((st, i) => assertClose(st, a.ingested[i]!, BATCH_TOL, `session ${s} ingest ${i} state`));
      assert.deepEqual(b.gen.ids, a.gen.ids, `session ${s} generated ids`);
      assert.equal(b.gen.segmentsCommitted, a.gen.segmentsCommitted);
      assert.equal(b.gen.states.length, a.gen.states.length);
      b.gen.states.forEach((st, i) => assertClose(st, a.gen.states[i]!, BATCH_TOL, `session ${s} generation state ${i}`));
      assertClose(b.gen.state, a.gen.state, BATCH_TOL, `session ${s} final state`);
    }
    assert.ok(batched.some((b) => b.gen.segmentsCommitted > 0), 'some session commits a segment during generation');

    const maxRows = (graph: BatchStat['graph']) => Math.max(0, ...batchedRec.stats.filter((s) => s.graph === graph).map((s) => s.rows));
    assert.ok(maxRows('segment') > 1, `segment batches had ${maxRows('segment')} rows at most`);
    assert.ok(maxRows('prefill') > 1, `prefill batches had ${maxRows('prefill')} rows at most`);
    assert.ok(maxRows('decode') > 1, `decode batches had ${maxRows('decode')} rows at most`);
    assert.ok(batchedRec.stats.every((s) => s.rows <= 8 && s.model === SMALL));
    assert.ok(soloRec.stats.length > 0 && soloRec.stats.every((s) => s.rows === 1));
    // Fewer runs than rows: the work really was shared.
    const rows = batchedRec.stats.reduce((n, s) => n + s.rows, 0);
    assert.ok(batchedRec.stats.length < rows / 2, `${batchedRec.stats.length} runs for ${rows} rows`);
  });

  test('decode batching across caches of different lengths == per-row decode', async (t) => {
    const tails = [3, 17, 40, 90, 1];
    const state = eng.model(SMALL).initState;
    const prompts = tails.map((n, i) => corpus.slice(200 + i * 11, 200 + i * 11 + n));
    /** Prefill every prompt, then 6 greedy steps; `together` issues each step for all rows at once. */
    const run = async (engine: Engine, together: boolean) => {
      const all = async <T>(fs: (() => Promise<T>)[]): Promise<T[]> => {
        if (together) return Promise.all(fs.map((f) => f()));
        const out: T[] = [];
        for (const f of fs) out.push(await f());
        return out;
      };
      const rec = recordStats(engine);
      const pre = await all(prompts.map((p) => () => engine.prefill(SMALL, p, state)));
      const logits: Float32Array[][] = [pre.map((p) => p.logits)];
      for (let step = 0; step < 6; step++) {
        const last = logits[logits.length - 1]!;
        const out = await all(pre.map((p, i) => () => engine.decode(SMALL, p.kv, argmax(last[i]!))));
        logits.push(out.map((o) => o.logits));
      }
      rec.stop();
      for (const p of pre) engine.releaseKv(p.kv);
      return { logits, stats: rec.stats };
    };
    const compare = (a: Float32Array[][], b: Float32Array[][], limit: number, label: string): number => {
      let worst = 0;
      a.forEach((stepLogits, step) =>
        stepLogits.forEach((l, i) => {
          const d = maxAbsDiff(l, b[step]![i]!);
          worst = Math.max(worst, d);
          assert.ok(d <= limit, `${label}: row ${i} (cache ${16 + tails[i]! + step}) ${step === 0 ? 'prefill' : `step ${step}`}: ${d} > ${limit}`);
        }),
      );
      return worst;
    };

    const batched = await run(eng, true);
    const alone = await run(solo, false);
    const exact = compare(batched.logits, alone.logits, BATCH_TOL, 'batched vs alone');
    const decodeRows = batched.stats.filter((s) => s.graph === 'decode').map((s) => s.rows);
    assert.ok(decodeRows.includes(tails.length), `decode batches of ${decodeRows.join(', ')} rows; expected one of ${tails.length}`);
    const prefillRows = batched.stats.filter((s) => s.graph === 'prefill').map((s) => s.rows);
    assert.ok(Math.max(...prefillRows) > 1, `prefill batches of ${prefillRows.join(', ')} rows`);

    // Padding to the batch's longest cache only (batchInvariant: false) against truly unpadded runs
    // (one call at a time: each run is its own batch of one).
    const compactBatched = await run(compact, true);
    const unpadded = await run(compact, false);
    assert.ok(compactBatched.stats.some((s) => s.graph === 'decode' && s.rows === tails.length));
    assert.ok(unpadded.stats.every((s) => s.rows === 1));
    const padded = compare(compactBatched.logits, unpadded.logits, PAD_TOL, 'padded to the longest cache vs unpadded');
    const full = compare(batched.logits, unpadded.logits, PAD_TOL, 'padded to capacity vs unpadded');
    t.diagnostic(`max |logits diff|: batched vs alone ${exact}; padded to longest vs unpadded ${padded}; padded to capacity vs unpadded ${full}`);
  });

  test('errors: unknown model, ids count, token range, state length, KV handles', async () => {
    const state = eng.model(SMALL).initState;
    assert.throws(() => eng.model('nope'), /unknown model 'nope'; known models: rmt-brown-small, rmt-brown-lm/);
    await assert.rejects(eng.segment('nope', [1, 2], state), /unknown model 'nope'; known models: rmt-brown-small, rmt-brown-lm/);
    await assert.rejects(eng.prefill('nope', [1, 2], state), /unknown model 'nope'/);
    await assert.rejects(eng.segment(SMALL, [], state), /segment\(rmt-brown-small\): 0 ids, expected 1\.\.128/);
    await assert.rejects(eng.segment(SMALL, new Array<number>(129).fill(5), state), /segment\(rmt-brown-small\): 129 ids, expected 1\.\.128/);
    await assert.rejects(eng.prefill(SMALL, [], state), /prefill\(rmt-brown-small\): 0 ids, expected 1\.\.128/);
    await assert.rejects(eng.prefill(SMALL, new Array<number>(129).fill(5), state), /129 ids, expected 1\.\.128/);
    await assert.rejects(eng.segment(SMALL, [5, 4096], state), /ids\[1\] = 4096 is not a token id in 0\.\.4095/);
    await assert.rejects(eng.segment(SMALL, [5, 1.5], state), /ids\[1\] = 1\.5 is not a token id/);
    await assert.rejects(
      eng.segment(SMALL, [5], new Float32Array(100)),
      /segment\(rmt-brown-small\): state has 100 float32 values \(400 bytes\), expected 4096 \(\[16, 256\], 16384 bytes\)/,
    );
    await assert.rejects(eng.prefill(SMALL, [5], new Float32Array(4097)), /state has 4097 float32 values/);
    await assert.rejects(eng.segment(SMALL, [5], Array.from(state) as unknown as Float32Array), /state must be a Float32Array, found Array/);

    const { kv } = await eng.prefill(SMALL, [5, 6, 7], state);
    await assert.rejects(eng.decode(LM, kv, 1), /decode\(rmt-brown-lm\): KV handle \d+ belongs to model 'rmt-brown-small'/);
    await assert.rejects(eng.decode(SMALL, kv, 4096), /token 4096 is not a token id in 0\.\.4095/);
    await eng.decode(SMALL, kv, 8);
    eng.releaseKv(kv);
    eng.releaseKv(kv); // twice: harmless
    await assert.rejects(eng.decode(SMALL, kv, 9), new RegExp(`decode\\(rmt-brown-small\\): KV handle ${kv} is unknown or was released`));
    await assert.rejects(eng.decode(SMALL, 987654, 9), /KV handle 987654 is unknown or was released/);
  });

  test('errors stay with their request: the batch and the thread carry on', async () => {
    const state = eng.model(SMALL).initState;
    // A full cache fails inside the thread, in the same burst as good decodes and segments.
    const full = await eng.prefill(SMALL, corpus.slice(0, 128), state);
    const ok = await eng.prefill(SMALL, corpus.slice(0, 10), state);
    const rec = recordStats(eng);
    const results = await Promise.allSettled([
      eng.decode(SMALL, full.kv, 5),
      eng.decode(SMALL, ok.kv, 5),
      eng.segment(SMALL, corpus.slice(0, 64), state),
      eng.segment(SMALL, [], state),
      eng.segment(SMALL, corpus.slice(64, 128), state),
    ]);
    rec.stop();
    assert.equal(results[0]!.status, 'rejected');
    assert.match(String((results[0] as PromiseRejectedResult).reason), /KV cache \d+ is full \(128 tokens after the memory, segment_length 128\)/);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'fulfilled', 'fulfilled', 'rejected', 'fulfilled'],
    );
    assert.ok(rec.stats.some((s) => s.graph === 'segment' && s.rows === 2), 'the two good segments still ran together');
    // Interleaved steps on one cache run one after the other, in order.
    const [a, b] = await Promise.all([eng.decode(SMALL, ok.kv, 6), eng.decode(SMALL, ok.kv, 7)]);
    const ref = await solo.prefill(SMALL, corpus.slice(0, 10), state);
    await solo.decode(SMALL, ref.kv, 5);
    assertClose(a.logits, (await solo.decode(SMALL, ref.kv, 6)).logits, BATCH_TOL, 'first queued step');
    assertClose(b.logits, (await solo.decode(SMALL, ref.kv, 7)).logits, BATCH_TOL, 'second queued step');
    for (const k of [full.kv, ok.kv]) eng.releaseKv(k);
    solo.releaseKv(ref.kv);
    const r = await eng.segment(SMALL, [5, 6, 7], state);
    assert.equal(r.tokenLogprobs.length, 3);
  });

  test('the main event loop keeps turning while 32 sessions saturate the engine', async () => {
    // The behaviour, not a delay figure: the main thread runs timers while an onnxruntime run is in
    // progress on the engine thread (a run on this thread would block them for its whole length).
    // How long the loop is delayed depends on the machine: bench/engine-event-loop.ts measures it
    // (SESSIONS=32 SECONDS=3 node --import tsx bench/engine-event-loop.ts; BENCHMARKS.md).
    const SESSIONS = 32;
    const SEGMENTS_EACH = 4;
    const rec = recordStats(eng);
    const ticks: number[] = [];
    let running = true;
    const tick = (): void => {
      ticks.push(performance.timeOrigin + performance.now());
      if (running) setTimeout(tick, 1);
    };
    tick();
    try {
      await Promise.all(
        Array.from({ length: SESSIONS }, async (_, s) => {
          let state = eng.model(SMALL).initState;
          let pos = (s * 53) % (corpus.length - 128);
          for (let k = 0; k < SEGMENTS_EACH; k++) {
            state = (await eng.segment(SMALL, corpus.slice(pos, pos + 128), state)).nextState;
            pos = (pos + 128) % (corpus.length - 128);
          }
        }),
      );
    } finally {
      running = false;
      rec.stop();
    }
    assert.equal(rec.stats.reduce((n, s) => n + s.rows, 0), SESSIONS * SEGMENTS_EACH, 'every segment ran');
    assert.ok(rec.stats.some((s) => s.rows === 8), 'the engine ran full batches (it was saturated)');
    // Both clocks are the wall clock (timeOrigin + now) of their thread.
    const inside = ticks.filter((t) => rec.stats.some((s) => t > s.startedAt && t < s.startedAt + s.runMs)).length;
    assert.ok(inside > 0, `no main-thread timer ran during any of ${rec.stats.length} engine runs (${ticks.length} timers ran)`);
  });
});
