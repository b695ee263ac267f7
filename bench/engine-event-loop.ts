// Saturates the engine with N concurrent sessions that ingest full segments, and measures what the
// main thread sees: throughput, per-segment latency, batch sizes and event-loop delay.
//
//   node --import tsx bench/engine-event-loop.ts
//
// Environment: SESSIONS (default "1,8,32"), SECONDS per level (10), THREADS (intraOpThreads, 1),
// MAX_BATCH (8), MAX_BATCH_TOKENS (1024), MODEL (rmt-brown-small), MODELS_DIR (models/), PROVIDER
// (cpu | cuda), PRECISION (fp32 | fp16), OP (segment | advance: the state-only graph ingest uses),
// EXTRA_MODELS (also loaded, not run), BATCH_WAIT_MS (the engine's batchWaitMs, 0), ENGINE_THREADS (the
// engine's threads, 1: RMT_ENGINE_THREADS), STAGGER_MS (0; each session waits a random 0..STAGGER_MS
// before its next segment, as sessions fed through a queue arrive out of step), PROFILE_DIR (onnxruntime profiles, RMT_ORT_PROFILE_DIR),
// BASELINE_SECONDS (5; 0 skips the comparison run that calls onnxruntime on the main thread, as a
// server would without the engine).
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { startEngine, type BatchStat, type Engine } from '../src/engine/engine.ts';
import { percentile, tokens } from './bench-support.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MODELS_DIR = path.resolve(process.env.MODELS_DIR ?? path.join(ROOT, 'models'));
const PROVIDER = (process.env.PROVIDER ?? 'cpu') as 'cpu' | 'cuda';
const PRECISION = (process.env.PRECISION ?? 'fp32') as 'fp32' | 'fp16';
const OP = process.env.OP ?? 'segment';
/** The batcher's wait for sessions it just answered (RMT_BATCH_WAIT_MS); each session is a stream. */
const BATCH_WAIT_MS = Number(process.env.BATCH_WAIT_MS ?? 0);
const ENGINE_THREADS = Number(process.env.ENGINE_THREADS ?? 1);
const STAGGER_MS = Number(process.env.STAGGER_MS ?? 0);
/** Models loaded beside MODEL (comma-separated), as a worker serving several models would. */
const EXTRA_MODELS = (process.env.EXTRA_MODELS ?? '').split(',').filter(Boolean);
const MODEL = process.env.MODEL ?? 'rmt-brown-small';
const LEVELS = (process.env.SESSIONS ?? '1,8,32').split(',').map(Number);
const SECONDS = Number(process.env.SECONDS ?? 10);
const THREADS = Number(process.env.THREADS ?? 1);
const MAX_BATCH = Number(process.env.MAX_BATCH ?? 8);
const MAX_BATCH_TOKENS = Number(process.env.MAX_BATCH_TOKENS ?? 1024);
const BASELINE_SECONDS = Number(process.env.BASELINE_SECONDS ?? 5);
/** Event-loop sampling interval; reported delays are what the timer fired late by, beyond it. */
const RESOLUTION_MS = 10;

interface LevelResult {
  label: string;
  sessions: number;
  seconds: number;
  segments: number;
  tokens: number;
  latencies: number[];
  batches: BatchStat[];
  loop: { p50: number; p99: number; max: number };
}

type SegmentFn = (ids: number[], state: Float32Array, session: number) => Promise<Float32Array>;

async function saturate(label: string, sessions: number, seconds: number, segL: number, vocab: number, init: Float32Array, segment: SegmentFn, batches: BatchStat[]): Promise<LevelResult> {
  const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  const latencies: number[] = [];
  let segs = 0;
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  h.enable();
  await Promise.all(
    Array.from({ length: sessions }, async (_, s) => {
      let state = init;
      let k = 0;
      while (performance.now() < deadline) {
        const ids = tokens(s * 100003 + k++, segL, vocab);
        const start = performance.now();
        state = await segment(ids, state, s);
        latencies.push(performance.now() - start);
        segs++;
        if (STAGGER_MS > 0) await new Promise((resolve) => setTimeout(resolve, Math.random() * STAGGER_MS));
      }
    }),
  );
  h.disable();
  const elapsed = (performance.now() - t0) / 1000;
  const beyond = (ns: number) => Math.max(0, ns / 1e6 - RESOLUTION_MS);
  return {
    label,
    sessions,
    seconds: elapsed,
    segments: segs,
    tokens: segs * segL,
    latencies: latencies.sort((a, b) => a - b),
    batches,
    loop: { p50: beyond(h.percentile(50)), p99: beyond(h.percentile(99)), max: beyond(h.max) },
  };
}

function report(r: LevelResult): void {
  const rows = new Map<number, number>();
  for (const b of r.batches) rows.set(b.rows, (rows.get(b.rows) ?? 0) + 1);
  const dist = [...rows.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([n, c]) => `${n}×${c}`)
    .join(' ');
  const meanRows = r.batches.length ? r.batches.reduce((s, b) => s + b.rows, 0) / r.batches.length : NaN;
  const batchMs = r.batches.map((b) => b.ms).sort((a, b) => a - b);
  const heldMs = r.batches.reduce((a, b) => a + b.runMs, 0);
  console.log(
    `${r.label.padEnd(22)} sessions ${String(r.sessions).padStart(2)} | ` +
      `${(r.tokens / r.seconds).toFixed(0).padStart(5)} tok/s (${r.segments} segments in ${r.seconds.toFixed(1)} s) | ` +
      `segment latency p50 ${percentile(r.latencies, 50).toFixed(0)} ms p99 ${percentile(r.latencies, 99).toFixed(0)} ms | ` +
      `event loop delay p50 ${r.loop.p50.toFixed(2)} ms p99 ${r.loop.p99.toFixed(2)} ms max ${r.loop.max.toFixed(2)} ms`,
  );
  if (r.batches.length) {
    console.log(
      `${''.padEnd(22)} batches: ${r.batches.length} runs, rows per run ${dist} (mean ${meanRows.toFixed(2)}), ` +
        `batch time p50 ${percentile(batchMs, 50).toFixed(1)} ms p99 ${percentile(batchMs, 99).toFixed(1)} ms; ` +
        // onnxruntime runs never overlap (one thread, or threads taking turns): the share of time the device was held.
        `device held ${((100 * heldMs) / 1000 / r.seconds).toFixed(0)} % of the time, ` +
        `${(heldMs / r.batches.reduce((a, b) => a + b.rows, 0)).toFixed(3)} ms per row`,
    );
  }
}

async function main(): Promise<void> {
  console.log(
    `engine event-loop bench: model ${MODEL} (${PROVIDER}, ${PRECISION}, ${OP}), ${os.cpus().length} CPUs, intraOpThreads ${THREADS}, batchWaitMs ${BATCH_WAIT_MS}, engine threads ${ENGINE_THREADS}, stagger ${STAGGER_MS} ms, ` +
      `maxBatch ${MAX_BATCH}, maxBatchTokens ${MAX_BATCH_TOKENS}, ${SECONDS} s per level, full ${'segments'}; ` +
      `node ${process.version}`,
  );
  console.log(`(event-loop delay: how late a ${RESOLUTION_MS} ms timer fired on the main thread, perf_hooks.monitorEventLoopDelay)`);
  const t0 = performance.now();
  const engine: Engine = await startEngine({
    modelsDir: MODELS_DIR,
    models: [MODEL, ...EXTRA_MODELS],
    executionProvider: PROVIDER,
    precision: PRECISION,
    intraOpThreads: THREADS,
    maxBatch: MAX_BATCH,
    maxBatchTokens: MAX_BATCH_TOKENS,
    batchWaitMs: BATCH_WAIT_MS,
    threads: ENGINE_THREADS,
    ...(process.env.PROFILE_DIR ? { profileDir: process.env.PROFILE_DIR } : {}),
  });
  const info = engine.model(MODEL);
  console.log(`engine ready in ${(performance.now() - t0).toFixed(0)} ms`);
  // Warm-up: first runs of each batch shape allocate.
  await Promise.all(Array.from({ length: Math.min(MAX_BATCH, Math.max(...LEVELS)) }, (_, s) => {
    const ids = tokens(s, info.segmentLength, info.vocabSize);
    return OP === 'advance' ? engine.advance(MODEL, ids, info.initState) : engine.segment(MODEL, ids, info.initState);
  }));

  try {
    for (const n of LEVELS) {
      const batches: BatchStat[] = [];
      const stop = engine.onBatch((s) => batches.push(s));
      const r = await saturate('engine thread', n, SECONDS, info.segmentLength, info.vocabSize, info.initState, OP === 'advance' ? (ids, state, s) => engine.advance(MODEL, ids, state, `s${s}`) : async (ids, state, s) => (await engine.segment(MODEL, ids, state, `s${s}`)).nextState, batches);
      stop();
      report(r);
    }
  } finally {
    await engine.close();
  }

  if (BASELINE_SECONDS > 0) {
    // For contrast: the same work with onnxruntime called on the main thread (no engine thread).
    const { loadModelPackage } = await import('../src/model/model-package.ts');
    const { runSegment } = await import('../src/engine/rmt-runner.ts');
    const pkg = await loadModelPackage(path.join(MODELS_DIR, MODEL), { intraOpThreads: THREADS });
    try {
      const n = Math.min(8, Math.max(...LEVELS));
      const r = await saturate('main thread (no engine)', n, BASELINE_SECONDS, info.segmentLength, info.vocabSize, info.initState, async (ids, state) => (await runSegment(pkg, [{ ids, state }]))[0]!.nextState, []);
      report(r);
    } finally {
      await pkg.release();
    }
  }
}

await main();
