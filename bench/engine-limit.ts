// Engine limit: raw onnxruntime segment steps, no engine thread, queue or Redis. For each precision
// and batch size the segment_state graph (next memory only: what ingest runs) is called with full
// segments of fixed token ids, the feeds built once, and only session.run is timed. tok/s from the
// median run; "sustained": all runs' tokens over their summed time (what runs back to back keep up,
// as a level of the service bench is measured).
//
//   node --import tsx bench/engine-limit.ts
//
// Environment: MODEL_DIR (a package folder; default models/rmt-brown-small), PROVIDER (cuda | cpu,
// default cuda), DEVICE_ID (0), PRECISIONS ("fp32,fp16"), BATCHES ("1,2,4,8,16,32,64,128,256"),
// SECONDS per point (2), INTRA_OP_THREADS (0 = onnxruntime's default), PEAK_TFLOPS (798: the dense bf16 matrix rate measured on the H100 used),
// PROFILE_BATCH (a batch size to profile with onnxruntime's profiler, per precision; empty = none),
// PROFILE_ONLY=1 (skip the sweep), OUT_JSON (write the results there too), COMPARE_DIR (another package
// with the same weights, e.g. masked vs fused attention: the largest |difference| of their next
// memory on one batch with padded rows is printed per precision), VARY ("lo,hi": after the sweep, runs
// whose batch size changes every run, uniformly in lo..hi, as a server's batches do; reported as ms per
// row beside the fixed-size runs at (lo+hi)/2), FEEDS (fixed: one set of feeds for every run; chained:
// each run's feeds built as the engine thread builds them, from int32 ids and the previous run's next
// memory, dependent runs as one session's; the build is timed apart), LIMIT_THREAD (main; worker: the
// sweep runs in a worker thread, as the engine's runs do), GRAPHS ("state"; "state,steps" also times the
// package's segment_state_steps graph, K segments per run: lines "<precision> steps<K> batch", tokens and
// FLOPs of all K segments, its two outputs fetched as the engine does; fixed feeds only), RUNNER (ort:
// onnxruntime-node, as the engine; bound: the segment_state graph through the IO-binding addon,
// src/engine/ort-native.ts, `npm run native:build`; with CUDA_GRAPH=1 each batch size's run is captured
// as a CUDA graph and replayed; FREE_DIMS=1 fixes batch and tokens per session, one session per batch
// size; CUDART: the CUDA runtime library, default libcudart.so.13). Profile in a process
// started with CUDA_LAUNCH_BLOCKING=1 so each kernel's time is its GPU time (bench/ort-profile.ts).
//
// FLOPs per row and segment (what the architecture needs; the memory positions included):
//   layers × (24·T·d² + 4·T²·d),  T = segment_length + 2·memory_tokens (read memory, tokens, write memory)
// 24·T·d²: the QKV, output and two MLP projections (d_ff = 4d); 4·T²·d: QK^T and AV over the full T×T
// score matrix (the graph computes it whole and masks). Embedding gathers, norms and softmax are not
// counted. No vocabulary projection: the segment_state graph has none.
// MFU = FLOPs per step / step time / PEAK_TFLOPS.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadModelPackage, type ModelPackage, type Precision } from '../src/model/model-package.ts';
import { float32, int64, type Session, type Tensor } from '../src/engine/onnx-runtime.ts';
import { segmentFeeds, type SegmentRow } from '../src/engine/segment-feeds.ts';
import { startModuleThread } from '../src/engine/thread-entry.ts';
import { createBoundSession } from '../src/engine/ort-native.ts';
import { percentile, tokens } from './bench-support.ts';
import { summariseProfile } from './ort-profile.ts';

const MODEL_DIR = path.resolve(process.env.MODEL_DIR ?? 'models/rmt-brown-small');
const PROVIDER = (process.env.PROVIDER ?? 'cuda') as 'cuda' | 'cpu';
const DEVICE_ID = Number(process.env.DEVICE_ID ?? 0);
const PRECISIONS = (process.env.PRECISIONS ?? 'fp32,fp16').split(',') as Precision[];
const BATCHES = (process.env.BATCHES ?? '1,2,4,8,16,32,64,128,256').split(',').map(Number);
const SECONDS = Number(process.env.SECONDS ?? 2);
const PEAK_TFLOPS = Number(process.env.PEAK_TFLOPS ?? 798);
/** onnxruntime intra-op threads for the sweep (0: onnxruntime's default, one per core; the service's workers use 1 on CUDA). */
const INTRA_OP_THREADS = Number(process.env.INTRA_OP_THREADS ?? 0);
const PROFILE_BATCH = process.env.PROFILE_BATCH ? Number(process.env.PROFILE_BATCH) : undefined;
const OUT_JSON = process.env.OUT_JSON;
const FEEDS = (process.env.FEEDS ?? 'fixed') as 'fixed' | 'chained';
const GRAPHS = (process.env.GRAPHS ?? 'state').split(',') as ('state' | 'steps')[];
const RUNNER = process.env.RUNNER ?? 'ort';
if (RUNNER !== 'ort' && RUNNER !== 'bound') throw new Error(`RUNNER must be ort or bound, found ${RUNNER}`);
const boundSessions = new Map<number, Session>();
/** RUNNER=bound: the addon's session for the segment_state graph (per batch size with FREE_DIMS=1). */
function boundFor(file: string, batch: number, S: number): Session {
  const key = process.env.FREE_DIMS === '1' ? batch : 0;
  let s = boundSessions.get(key);
  if (!s) {
    s = createBoundSession(file, {
      executionProvider: PROVIDER, deviceId: DEVICE_ID, ...(INTRA_OP_THREADS ? { intraOpThreads: INTRA_OP_THREADS } : {}),
      cudaGraph: process.env.CUDA_GRAPH === '1', ...(key ? { freeDims: { batch, tokens: S } } : {}),
      ...(process.env.CUDART ? { cudart: process.env.CUDART } : {}),
    });
    boundSessions.set(key, s);
  }
  return s;
}
for (const g of GRAPHS) if (g !== 'state' && g !== 'steps') throw new Error(`GRAPHS: state or steps, found ${g}`);
if (GRAPHS.includes('steps') && FEEDS !== 'fixed') throw new Error('GRAPHS=steps times fixed feeds only');
if (FEEDS !== 'fixed' && FEEDS !== 'chained') throw new Error(`FEEDS must be fixed or chained, found ${FEEDS}`);
/** Feed building per run (FEEDS=chained), ms: not part of the run's time. */
const buildMs: number[] = [];

export interface LimitPoint {
  precision: Precision;
  /** Segments per run: 1 (segment_state graph) or the segment_state_steps graph's K. */
  steps: number;
  batch: number;
  runs: number;
  stepMsP50: number;
  stepMsMin: number;
  stepMsMax: number;
  tokPerS: number;
  /** Tokens of all the point's runs over their summed time: the rate runs back to back sustain (the mean step, slow runs included). */
  sustainedTokPerS: number;
  tflops: number;
  mfu: number;
}

export function flopsPerRow(cfg: { n_layers: number; d_model: number; segment_length: number; memory_tokens: number }): number {
  const T = cfg.segment_length + 2 * cfg.memory_tokens;
  const d = cfg.d_model;
  return cfg.n_layers * (24 * T * d * d + 4 * T * T * d);
}

/** Full segments of fixed ids, for the segment_state graph ([batch, S]) or, with k, the steps graph ([batch, k, S]). */
function feeds(pkg: ModelPackage, batch: number, k?: number): Record<string, Tensor> {
  const S = pkg.segmentLength;
  const per = S * (k ?? 1);
  const ids = new BigInt64Array(batch * per);
  for (let b = 0; b < batch; b++) tokens(b + 1, per, Math.min(pkg.vocabSize, 4096)).forEach((t, i) => (ids[b * per + i] = BigInt(t)));
  const dims = k === undefined ? [batch, S] : [batch, k, S];
  const state = new Float32Array(batch * pkg.memoryTokens * pkg.dModel);
  for (let b = 0; b < batch; b++) state.set(pkg.initState.memory!, b * pkg.memoryTokens * pkg.dModel);
  return {
    input_ids: int64(ids, dims),
    attention_mask: int64(new BigInt64Array(batch * per).fill(1n), dims),
    'state.memory': float32(state, [batch, pkg.memoryTokens, pkg.dModel]),
  };
}

/** Batch of 4 rows of lengths S, S/2, 1 and S-1 (left-aligned, padded). */
function paddedFeeds(pkg: ModelPackage): Record<string, Tensor> {
  const f = feeds(pkg, 4);
  const S = pkg.segmentLength;
  const mask = new BigInt64Array(4 * S);
  [S, S >> 1, 1, S - 1].forEach((n, b) => mask.fill(1n, b * S, b * S + n));
  return { ...f, attention_mask: int64(mask, [4, S]) };
}

async function compareWith(pkg: ModelPackage, precision: Precision): Promise<number> {
  const other = await loadModelPackage(path.resolve(process.env.COMPARE_DIR!), { executionProvider: PROVIDER, deviceId: DEVICE_ID, precision });
  try {
    const f = paddedFeeds(pkg);
    const a = (await (pkg.sessions.segmentState ?? pkg.sessions.segment).run(f, ['next_state.memory']))['next_state.memory']!.data as Float32Array;
    const b = (await (other.sessions.segmentState ?? other.sessions.segment).run(f, ['next_state.memory']))['next_state.memory']!.data as Float32Array;
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    return worst;
  } finally {
    await other.release();
  }
}

/**
 * FEEDS=chained: the next run's feeds as the engine thread makes them (segmentFeeds over int32 ids),
 * each row's memory the one the previous run made for it.
 */
function chainedFeeds(pkg: ModelPackage, batch: number): (previous?: Float32Array) => Record<string, Tensor> {
  const S = pkg.segmentLength;
  const size = pkg.memoryTokens * pkg.dModel;
  const rows: SegmentRow[] = Array.from({ length: batch }, (_, b) => ({ ids: Int32Array.from(tokens(b + 1, S, Math.min(pkg.vocabSize, 4096))), state: pkg.initState.memory! }));
  return (previous) => {
    if (previous) rows.forEach((r, b) => (r.state = previous.slice(b * size, (b + 1) * size)));
    return segmentFeeds(pkg, rows, { width: S }).feeds;
  };
}

async function timeRuns(session: Session, pkg: ModelPackage, batch: number, k?: number): Promise<number[]> {
  const fixed = FEEDS === 'fixed' ? feeds(pkg, batch, k) : undefined;
  const fetch = k === undefined ? ['next_state.memory'] : ['next_state.memory', 'step_states.memory'];
  const chain = FEEDS === 'chained' ? chainedFeeds(pkg, batch) : undefined;
  let previous: Float32Array | undefined;
  const next = (): Record<string, Tensor> => {
    if (fixed) return fixed;
    const t0 = performance.now();
    const f = chain!(previous);
    buildMs.push(performance.now() - t0);
    return f;
  };
  const run = async (f: Record<string, Tensor>) => {
    const out = await session.run(f, fetch);
    previous = out['next_state.memory']!.data as Float32Array;
  };
  for (let i = 0; i < 3; i++) await run(next()); // first runs allocate and tune
  buildMs.length = 0;
  const times: number[] = [];
  const end = performance.now() + SECONDS * 1000;
  while (performance.now() < end || times.length < 5) {
    const f = next();
    const t0 = performance.now();
    await run(f);
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  const manifest = JSON.parse(readFileSync(path.join(MODEL_DIR, 'model.json'), 'utf8')) as { name: string; config: Parameters<typeof flopsPerRow>[0] };
  const perRow = flopsPerRow(manifest.config);
  console.log(
    `engine limit bench: ${manifest.name} (${manifest.config.n_layers} layers, d=${manifest.config.d_model}, S=${manifest.config.segment_length}, M=${manifest.config.memory_tokens}), ` +
      `${PROVIDER}${PROVIDER === 'cuda' ? `:${DEVICE_ID}` : ''}, ${os.cpus().length} CPUs, node ${process.version}; ${(perRow / 1e9).toFixed(2)} GFLOP per row-segment; ` +
      `MFU against ${PEAK_TFLOPS} TFLOP/s; ${SECONDS} s per point; intra-op threads ${INTRA_OP_THREADS || 'default'}; feeds ${FEEDS}; ${isMainThread ? 'main thread' : 'worker thread'}`,
  );
  const points: LimitPoint[] = [];
  const profiles: Record<string, unknown> = {};
  const compare: Record<string, number> = {};
  for (const precision of PRECISIONS) {
    const t0 = performance.now();
    const pkg = await loadModelPackage(MODEL_DIR, { executionProvider: PROVIDER, deviceId: DEVICE_ID, precision, ...(INTRA_OP_THREADS ? { intraOpThreads: INTRA_OP_THREADS } : {}) });
    const session = pkg.sessions.segmentState ?? pkg.sessions.segment;
    console.log(`${precision}: loaded in ${(performance.now() - t0).toFixed(0)} ms, graph ${path.basename(session.file)}`);
    if (GRAPHS.includes('steps') && !pkg.sessions.segmentSteps) throw new Error(`${MODEL_DIR} (${precision}) has no segment_state_steps graph (rmt_toolkit steps-graph)`);
    try {
      if (process.env.COMPARE_DIR) {
        compare[precision] = await compareWith(pkg, precision);
        console.log(`${precision}: next memory vs ${path.basename(process.env.COMPARE_DIR)}, 4 rows of lengths S, S/2, 1, S-1: max |diff| ${compare[precision]!.toExponential(2)}`);
      }
      for (const graph of GRAPHS) for (const batch of process.env.PROFILE_ONLY ? [] : BATCHES) {
        const k = graph === 'steps' ? pkg.steps! : undefined;
        const label = k === undefined ? `${precision} batch` : `${precision} steps${k} batch`;
        let times: number[];
        try {
          const run = k !== undefined ? pkg.sessions.segmentSteps! : RUNNER === 'bound' ? boundFor(session.file, batch, pkg.segmentLength) : session;
          times = await timeRuns(run, pkg, batch, k);
        } catch (err) {
          console.log(`${label} ${batch}: failed: ${(err as Error).message.slice(0, 300)}`);
          break;
        }
        const p50 = percentile(times, 50);
        const segs = batch * (k ?? 1);
        const flops = perRow * segs;
        const p: LimitPoint = {
          precision, steps: k ?? 1, batch, runs: times.length, stepMsP50: p50, stepMsMin: times[0]!, stepMsMax: times[times.length - 1]!,
          tokPerS: (segs * pkg.segmentLength) / (p50 / 1000),
          sustainedTokPerS: (segs * pkg.segmentLength * times.length) / (times.reduce((a, b) => a + b, 0) / 1000),
          tflops: flops / (p50 / 1000) / 1e12, mfu: flops / (p50 / 1000) / (PEAK_TFLOPS * 1e12),
        };
        points.push(p);
        console.log(
          `${label} ${String(batch).padStart(3)} | ${k === undefined ? 'step' : 'run'} p50 ${p50.toFixed(2)} ms (min ${p.stepMsMin.toFixed(2)}, max ${p.stepMsMax.toFixed(2)}, ${p.runs} runs) | ` +
            `${Math.round(p.tokPerS)} tok/s (sustained ${Math.round(p.sustainedTokPerS)}) | ${p.tflops.toFixed(1)} TFLOP/s | MFU ${(p.mfu * 100).toFixed(1)} %` +
            (buildMs.length ? ` | feeds built in ${percentile(buildMs.sort((a, b) => a - b), 50).toFixed(3)} ms (p50, not in the run)` : ''),
        );
      }
      if (process.env.VARY) {
        const [lo, hi] = process.env.VARY.split(',').map(Number) as [number, number];
        const all = Array.from({ length: hi - lo + 1 }, (_, i) => feeds(pkg, lo + i));
        for (const f of all) await session.run(f, ['next_state.memory']); // every size once
        let rows = 0;
        let x = 12345;
        const t1 = performance.now();
        for (let i = 0; i < 200; i++) {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          const k = (x >>> 8) % all.length;
          rows += lo + k;
          await session.run(all[k]!, ['next_state.memory']);
        }
        const varied = (performance.now() - t1) / rows;
        const mid = Math.round((lo + hi) / 2);
        const fixed = percentile(await timeRuns(session, pkg, mid), 50) / mid;
        console.log(`${precision}: batch size varying in ${lo}..${hi}: ${varied.toFixed(3)} ms per row; fixed at ${mid}: ${fixed.toFixed(3)} ms per row`);
      }
    } finally {
      await pkg.release();
    }
    if (PROFILE_BATCH !== undefined) {
      const dir = path.resolve(process.env.PROFILE_DIR ?? 'bench/out/profiles');
      mkdirSync(dir, { recursive: true });
      const prof = await loadModelPackage(MODEL_DIR, { executionProvider: PROVIDER, deviceId: DEVICE_ID, precision, profileDir: dir });
      const s = prof.sessions.segmentState ?? prof.sessions.segment;
      const f = feeds(prof, PROFILE_BATCH);
      for (let i = 0; i < 5; i++) await s.run(f, ['next_state.memory']);
      const file = s.endProfiling();
      await prof.release();
      if (file) {
        const summary = summariseProfile(file);
        profiles[precision] = { batch: PROFILE_BATCH, file: path.basename(file), ...summary };
        console.log(`${precision} profile at batch ${PROFILE_BATCH} (${path.basename(file)}; runs 2-5): per run ${summary.runMs.toFixed(2)} ms, kernels ${summary.kernelMs.toFixed(2)} ms`);
        for (const o of summary.byOpType.slice(0, 12)) {
          console.log(`  ${o.opType.padEnd(28)} ${o.provider.padEnd(22)} ${String(o.nodes).padStart(4)} nodes ${o.ms.toFixed(2).padStart(8)} ms ${(o.share * 100).toFixed(1).padStart(5)} %`);
        }
      }
    }
  }
  if (OUT_JSON) mkdirSync(path.dirname(path.resolve(OUT_JSON)), { recursive: true });
  if (OUT_JSON) writeFileSync(OUT_JSON, JSON.stringify({ model: manifest.name, config: manifest.config, provider: PROVIDER, peakTflops: PEAK_TFLOPS, flopsPerRow: perRow, points, profiles, compare }, null, 1));
}

/** LIMIT_THREAD=worker: the same sweep inside a worker thread (it imports this file, whose main() then runs there). */
async function mainInWorker(): Promise<void> {
  const worker = startModuleThread(import.meta.url, { workerData: { engineLimitSweep: true } });
  await new Promise<void>((resolve, reject) => {
    worker.on('error', reject);
    worker.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`limit worker exited with code ${code}`))));
  });
}

if (isMainThread && import.meta.url === `file://${process.argv[1]}`) {
  if (process.env.LIMIT_THREAD === 'worker') await mainInWorker();
  else await main();
} else if (!isMainThread && (workerData as { engineLimitSweep?: boolean } | undefined)?.engineLimitSweep) {
  await main();
}
