// What one graph's runs leave resident, without the service: a fresh process per (graph, chunk) loads
// the package on the CPU, runs every batch size 1..MAX_ROWS twice (a CPU worker, without batch
// buckets, sees every size), each batch as runs of at most CHUNK rows (as the engine runs scored
// segments and prefills: src/engine/logits-rows.ts), and prints the process's resident memory
// (/proc/self/status VmRSS) after loading and after the runs (and a full GC), and the wall time per row of
// the second pass.
// onnxruntime keeps one CPU arena per session, grown to what that session's runs needed.
//
//   node --import tsx bench/engine-memory.ts
//
// decode: a batch's prefills (in chunks) and then DECODE_STEPS (16) steps of all its rows at once.
//
// Environment: MODEL (rmt-brown-small), GRAPHS (segment,prefill,segment_state,segment_state_steps; also decode),
// CHUNKS (32,8,4), MAX_ROWS (32), OUT_JSON (default bench/out/engine-memory-<time>.json).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadModelPackage } from '../src/model/model-package.ts';
import { decodeBatch, prefillBatch } from '../src/engine/batch-decode.ts';
import { kvCapacity } from '../src/engine/kv-cache.ts';
import { runSegment, runSegmentState, runSegmentSteps } from '../src/engine/rmt-runner.ts';
import { tokens } from './bench-support.ts';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const MODEL = process.env.MODEL ?? 'rmt-brown-small';
const GRAPHS = (process.env.GRAPHS ?? 'segment,prefill,segment_state,segment_state_steps').split(',').filter(Boolean);
const CHUNKS = (process.env.CHUNKS ?? '32,8,4').split(',').filter(Boolean).map(Number);
const MAX_ROWS = Number(process.env.MAX_ROWS ?? 32);
/** decode: steps after each prefill (the steps run all of a batch's rows; only the prefill is chunked). */
const DECODE_STEPS = Number(process.env.DECODE_STEPS ?? 16);

const rssMb = () => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;

interface Result { graph: string; chunk: number; loadedMb: number; afterMb: number; keptMb: number; msPerRow: number }

/** One (graph, chunk) in this process. */
async function measure(graph: string, chunk: number): Promise<Result> {
  const pkg = await loadModelPackage(path.join(ROOT, 'models', MODEL), { executionProvider: 'cpu', precision: 'fp32' });
  const L = pkg.segmentLength;
  const state = pkg.initState.memory!;
  // Full segments (every position scored); prefills of varied prompt lengths, as generation sees them.
  const rowsOf = (n: number, seed: number) => Array.from({ length: n }, (_, i) => ({ ids: tokens(seed + i, graph === 'prefill' || graph === 'decode' ? 1 + ((seed + i) * 37) % L : L, pkg.vocabSize), state }));
  const run = async (rows: ReturnType<typeof rowsOf>) => {
    if (graph === 'segment') await runSegment(pkg, rows, { width: L });
    else if (graph === 'segment_state') await runSegmentState(pkg, rows, { width: L });
    else if (graph === 'segment_state_steps') await runSegmentSteps(pkg, rows.map((r) => ({ segments: new Array(pkg.steps!).fill(r.ids), state })), { width: L });
    else if (graph === 'prefill') await prefillBatch(pkg, rows, undefined, { width: Math.max(...rows.map((r) => r.ids.length)) });
    else throw new Error(`unknown graph ${graph}`);
  };
  /** decode: the batch's prefills in chunks, then DECODE_STEPS steps of every row at once (as the engine runs them). */
  const decodeRows = async (rows: ReturnType<typeof rowsOf>, size: number) => {
    const pre = [];
    for (let i = 0; i < rows.length; i += size) pre.push(...(await prefillBatch(pkg, rows.slice(i, i + size).map((r) => ({ ids: r.ids.slice(0, L - 1 - DECODE_STEPS), state })))));
    for (let k = 0; k < DECODE_STEPS; k++) await decodeBatch(pkg, pre.map((p) => ({ token: 2 + k, kv: p.kv })), { pastLength: kvCapacity(pkg) - 1 });
  };
  const loadedMb = rssMb();
  let ms = 0;
  let rowsRun = 0;
  for (let pass = 0; pass < 2; pass++) {
    for (let n = 1; n <= MAX_ROWS; n++) {
      const rows = rowsOf(n, pass * 1000 + n);
      const t0 = performance.now();
      if (graph === 'decode') await decodeRows(rows, chunk);
      else for (let i = 0; i < n; i += chunk) await run(rows.slice(i, i + chunk));
      if (pass === 1) {
        ms += performance.now() - t0;
        rowsRun += n;
      }
    }
  }
  // What the allocators keep, not garbage not collected yet (the children run with --expose-gc).
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((r) => setTimeout(r, 200));
  const afterMb = rssMb();
  await pkg.release();
  return { graph, chunk, loadedMb, afterMb, keptMb: afterMb - loadedMb, msPerRow: ms / rowsRun };
}

async function main(): Promise<void> {
  if (process.argv[2] === '--one') {
    console.log(JSON.stringify(await measure(process.argv[3]!, Number(process.argv[4]))));
    return;
  }
  console.log(`engine memory: ${MODEL} on cpu, batch sizes 1..${MAX_ROWS} twice per graph, one process each; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); node ${process.version}`);
  console.log('graph               | chunk | loaded MB | after MB | kept MB | ms/row (2nd pass)');
  const results: Result[] = [];
  for (const graph of GRAPHS) {
    for (const chunk of graph.startsWith('segment_state') ? [MAX_ROWS] : CHUNKS) {
      const p = spawnSync(process.execPath, [...process.execArgv, '--expose-gc', new URL(import.meta.url).pathname, '--one', graph, String(chunk)], { encoding: 'utf8', env: process.env });
      if (p.status !== 0) throw new Error(`${graph} chunk ${chunk}: ${p.stderr}`);
      const r = JSON.parse(p.stdout.trim().split('\n').pop()!) as Result;
      results.push(r);
      console.log(`${graph.padEnd(19)} | ${String(chunk).padStart(5)} | ${r.loadedMb.toFixed(0).padStart(9)} | ${r.afterMb.toFixed(0).padStart(8)} | ${r.keptMb.toFixed(0).padStart(7)} | ${r.msPerRow.toFixed(2)}`);
    }
  }
  const out = process.env.OUT_JSON ?? path.join(ROOT, 'bench/out', `engine-memory-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify({ bench: 'engine-memory', model: MODEL, maxRows: MAX_ROWS, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, results }, null, 1));
  console.log(`-> ${path.relative(ROOT, out)}`);
}

await main();
