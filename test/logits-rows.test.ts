// Runs with per-position logits (scored segments, prefill) in chunks of maxLogitsRows
// (src/engine/logits-rows.ts), with the real onnxruntime-node on CPU and the shipped small package:
// a batch runs as several onnxruntime runs of at most that many rows, and every row's results are bit
// for bit those of one row at a time (and, padded to the batch's width, those of the batch in one run).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEngine, type BatchStat, type Engine } from '../src/engine/engine.ts';
import { chunksOf, MAX_LOGITS_ROWS } from '../src/engine/logits-rows.ts';
import { loadModelPackage, type ModelPackage } from '../src/model/model-package.ts';
import { prefillBatch } from '../src/engine/batch-decode.ts';
import { PACKAGE_DIR, loadGolden } from './helpers.ts';

const MODELS_DIR = path.dirname(PACKAGE_DIR);
const SMALL = 'rmt-brown-small';
const corpus = loadGolden(PACKAGE_DIR).sequence.segments.flatMap((s) => s.input_ids);
/** Row lengths of the batches: full segments and partial ones (the batch's width is their longest). */
const LENGTHS = [128, 77, 5, 128, 100, 33, 1, 64];

function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function assertSameBits(actual: Float32Array, expected: Float32Array, label: string): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  assert.ok(bytes(actual).equals(bytes(expected)), `${label}: not bit for bit equal`);
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** Row i's ids and a memory of its own (rows that differ everywhere). */
function rowOf(engine: Engine, i: number): { ids: number[]; state: Float32Array } {
  const init = engine.model(SMALL).initState;
  return { ids: corpus.slice(i * 41, i * 41 + LENGTHS[i]!), state: init.map((v, j) => v + (((i * 31 + j) % 7) - 3) * 1e-3) };
}

/** Every row's segment (scored) results and prefill logits plus one decode step's, the rows sent at once. */
async function runAll(engine: Engine): Promise<{ segment: { nextState: Float32Array; logits: Float32Array; tokenLogprobs: Float32Array }[]; prefill: Float32Array[]; decode: Float32Array[]; stats: BatchStat[] }> {
  const stats: BatchStat[] = [];
  const stop = engine.onBatch((s) => stats.push(s));
  const rows = LENGTHS.map((_, i) => rowOf(engine, i));
  const segment = await Promise.all(rows.map((r) => engine.segment(SMALL, r.ids, r.state)));
  const pre = await Promise.all(rows.map((r) => engine.prefill(SMALL, r.ids.slice(0, 127), r.state)));
  const decode = await Promise.all(pre.map((p) => engine.decode(SMALL, p.kv, argmax(p.logits))));
  for (const p of pre) engine.releaseKv(p.kv);
  stop();
  return { segment, prefill: pre.map((p) => p.logits), decode: decode.map((d) => d.logits), stats };
}

function assertSameResults(a: Awaited<ReturnType<typeof runAll>>, b: Awaited<ReturnType<typeof runAll>>): void {
  a.segment.forEach((s, i) => {
    assertSameBits(s.nextState, b.segment[i]!.nextState, `row ${i} next state`);
    assertSameBits(s.logits, b.segment[i]!.logits, `row ${i} logits`);
    assertSameBits(s.tokenLogprobs, b.segment[i]!.tokenLogprobs, `row ${i} token logprobs`);
    assertSameBits(a.prefill[i]!, b.prefill[i]!, `row ${i} prefill logits`);
    assertSameBits(a.decode[i]!, b.decode[i]!, `row ${i} decode logits after the prefill`);
  });
}

const batchesOf = (stats: BatchStat[], graph: BatchStat['graph']) => stats.filter((s) => s.graph === graph);

describe('runs with per-position logits in chunks of maxLogitsRows', () => {
  const common = { modelsDir: MODELS_DIR, models: [SMALL], executionProvider: 'cpu' as const, intraOpThreads: 1, maxBatchTokens: 8 * 128 };
  let chunked: Engine; // batches of up to 8 rows, run 3 rows at a time
  let alone: Engine; // one row per run
  let chunkedCompact: Engine; // batchInvariant false: rows padded to the batch's longest
  let wholeCompact: Engine; // the same, one run per batch

  before(async () => {
    [chunked, alone, chunkedCompact, wholeCompact] = await Promise.all([
      startEngine({ ...common, maxBatch: 8, maxLogitsRows: 3 }),
      startEngine({ ...common, maxBatch: 1 }),
      startEngine({ ...common, maxBatch: 8, maxLogitsRows: 3, batchInvariant: false }),
      startEngine({ ...common, maxBatch: 8, maxLogitsRows: 8, batchInvariant: false }),
    ]);
  });
  after(async () => {
    await Promise.all([chunked?.close(), alone?.close(), chunkedCompact?.close(), wholeCompact?.close()]);
  });

  test('chunksOf: consecutive chunks of at most the size, with their first index; the default bound', () => {
    assert.deepEqual(chunksOf([1, 2, 3, 4, 5, 6, 7], 3), [{ start: 0, rows: [1, 2, 3] }, { start: 3, rows: [4, 5, 6] }, { start: 6, rows: [7] }]);
    assert.deepEqual(chunksOf([], 3), []);
    assert.throws(() => chunksOf([1], 0), /positive integer/);
    assert.equal(MAX_LOGITS_ROWS, 8);
  });

  test('a scored batch of 8 rows runs as runs of at most 3 rows; each row equals the row alone, bit for bit', async () => {
    const c = await runAll(chunked);
    const a = await runAll(alone);
    assertSameResults(c, a);
    for (const graph of ['segment', 'prefill'] as const) {
      const batches = batchesOf(c.stats, graph);
      assert.ok(batches.some((s) => s.rows > 3), `${graph}: batches of ${batches.map((s) => s.rows).join(', ')} rows; expected one of more than 3`);
      for (const s of batches) {
        assert.equal(s.runs, Math.ceil(s.rows / 3), `${graph}: a batch of ${s.rows} rows took ${s.runs} runs`);
        assert.equal(s.runRows, s.rows, `${graph}: rows run`);
        assert.ok(s.runMs > 0 && s.runMs <= s.ms, `${graph}: run time ${s.runMs} of ${s.ms} ms`);
      }
    }
    // Decode steps (one token per row) are not chunked.
    assert.ok(batchesOf(c.stats, 'decode').some((s) => s.rows > 3 && s.runs === 1));
  });

  test('without batchInvariant each chunk is padded to the batch\'s width: results equal the batch in one run, bit for bit', async () => {
    const c = await runAll(chunkedCompact);
    const w = await runAll(wholeCompact);
    // The same batches on both (all rows sent at once), so the same widths.
    for (const graph of ['segment', 'prefill'] as const) {
      assert.deepEqual(batchesOf(c.stats, graph).map((s) => s.rows), batchesOf(w.stats, graph).map((s) => s.rows), `${graph} batches`);
      assert.ok(batchesOf(c.stats, graph).some((s) => (s.runs ?? 1) > 1), `${graph}: some batch ran in chunks`);
      assert.ok(batchesOf(w.stats, graph).every((s) => s.runs === 1));
    }
    assertSameResults(c, w);
  });
});

describe('prefillBatch width', () => {
  let pkg: ModelPackage;
  before(async () => {
    pkg = await loadModelPackage(PACKAGE_DIR, { executionProvider: 'cpu', intraOpThreads: 1 });
  });
  after(async () => {
    await pkg?.release();
  });

  test('rows padded to a given width: each row as in a run of the whole batch; a width below the longest row is refused', async () => {
    const rows = [5, 60, 17].map((n, i) => ({ ids: corpus.slice(i * 50, i * 50 + n), state: pkg.initState.memory! }));
    const whole = await prefillBatch(pkg, rows);
    const parts = [...(await prefillBatch(pkg, rows.slice(0, 1), undefined, { width: 60 })), ...(await prefillBatch(pkg, rows.slice(1), undefined, { width: 60 }))];
    parts.forEach((p, i) => {
      assertSameBits(p.logits, whole[i]!.logits, `row ${i} logits`);
      assert.equal(p.kv.length, whole[i]!.kv.length);
      assertSameBits(p.kv.data as Float32Array, whole[i]!.kv.data as Float32Array, `row ${i} cache`);
    });
    await assert.rejects(prefillBatch(pkg, rows, undefined, { width: 59 }), /prefill width 59 must be an integer in 60\.\.128/);
  });
});
