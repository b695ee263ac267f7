// The engine thread with the real onnxruntime-node on CPU and the shipped packages: golden replay
// through the engine, batched == one at a time, batched decode over caches of different lengths,
// request errors, and the main event loop staying responsive while the engine is saturated.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { bucketOf, bucketSizes } from '../src/engine/batch-buckets.ts';
import { chunksOf, MAX_LOGITS_ROWS } from '../src/engine/logits-rows.ts';
import { startEngine, type BatchStat, type ChainRef, type Engine, type KvHandle } from '../src/engine/engine.ts';
import { createStateRing } from '../src/engine/state-ring.ts';
import { PACKAGE_DIR, SHIPPED_PACKAGES, decodeF32, loadGolden, maxAbsDiff } from './helpers.ts';

const MODELS_DIR = path.dirname(PACKAGE_DIR);
const SMALL = 'rmt-brown-small';
const LM = 'rmt-brown-lm';
/** The engine `eng` loads every shipped package, the recall model first (LM among them). */
const ENGINE_MODELS = [SMALL, ...SHIPPED_PACKAGES.map((p) => p.name).filter((n) => n !== SMALL)];
/** Batched rows vs the same row alone. */
const BATCH_TOL = 1e-5;
/**
 * Padded vs unpadded shapes (batchInvariant: false, or any engine vs an unpadded run): onnxruntime's
 * vectorised softmax sums depend on where keys sit, which moves logits by float rounding (~2e-5 here).
 */
const PAD_TOL = 1e-4;

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, limit: number, label: string): void {
  const d = maxAbsDiff(actual, expected);
  assert.ok(d <= limit, `${label}: max abs diff ${d} > ${limit}`);
}

interface GreedyTrace {
  ids: number[];
  segmentsCommitted: number;
  /** State after every segment call, in order. */
  states: Float32Array[];
  state: Float32Array;
}

/** greedyGenerate (src/engine/greedy-generate.ts) built from engine.segment / prefill / decode. */
async function engineGreedy(
  engine: Engine,
  model: string,
  prompt: readonly number[],
  maxNew: number,
  initial?: Float32Array,
): Promise<GreedyTrace> {
  const L = engine.model(model).segmentLength;
  let state = initial ?? engine.model(model).initState;
  const states: Float32Array[] = [];
  let logits: Float32Array | undefined;
  const fullEnd = Math.floor(prompt.length / L) * L;
  for (let start = 0; start < fullEnd; start += L) {
    const r = await engine.segment(model, prompt.slice(start, start + L), state);
    state = r.nextState;
    states.push(state);
    logits = r.logits;
  }
  let tail = prompt.slice(fullEnd);
  let kv: KvHandle | undefined;
  if (tail.length > 0) ({ logits, kv } = await engine.prefill(model, tail, state));
  const ids: number[] = [];
  let segmentsCommitted = 0;
  while (ids.length < maxNew) {
    const tok = argmax(logits!);
    ids.push(tok);
    tail = [...tail, tok];
    if (tail.length === L) {
      if (kv !== undefined) engine.releaseKv(kv);
      const r = await engine.segment(model, tail, state);
      state = r.nextState;
      states.push(state);
      logits = r.logits;
      tail = [];
      kv = undefined;
      segmentsCommitted++;
    } else if (kv === undefined) {
      ({ logits, kv } = await engine.prefill(model, tail, state));
    } else {
      ({ logits } = await engine.decode(model, kv, tok));
    }
  }
  if (kv !== undefined) engine.releaseKv(kv);
  return { ids, segmentsCommitted, states, state };
}

/** All golden segment tokens of the small package, end to end (1280 tokens). */
const corpus = loadGolden(PACKAGE_DIR).sequence.segments.flatMap((s) => s.input_ids);

function recordStats(engine: Engine): { stats: BatchStat[]; stop: () => void } {
  const stats: BatchStat[] = [];
  const stop = engine.onBatch((s) => stats.push(s));
  return { stats, stop };
}

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
