// The service end to end, as deployed: a private redis-server, an `rmt-serve api` process and an
// `rmt-serve worker` process (its own engine thread, CUDA or CPU), and this process as N websocket
// clients. Each client creates a session, streams a document of DOC_TOKENS (about) as append
// messages of CHUNK characters, then sends a 1-token generate as a barrier (it runs after every
// append of the session is applied). Then GEN levels: N concurrent generations of GEN_TOKENS tokens.
//
//   node --import tsx bench/service-stream.ts
//
// Environment: MODEL (package name), MODELS_DIR, PROVIDER (cuda | cpu), PRECISION (fp16 | fp32),
// SESSIONS ("1,8,64,256"), TOTAL_TOKENS per level (2000000; or a list, one per level: more tokens
// amortise the start and the end of a level, when not every session is streaming yet or any more),
// DOC_TOKENS per session (instead: TOTAL_TOKENS / N, at least 8 segments; see docTokens),
// CHUNK (chars per append, 65536), GEN ("1,8,64"; empty = skip), GEN_TOKENS (64), GEN_MODEL
// (default MODEL), MAX_BATCH (256), WORKER_CONCURRENCY (RMT_WORKER_CONCURRENCY, 2 × MAX_BATCH), WORKER_PROCESSES (RMT_WORKER_PROCESSES, 1; RMT_ENGINE_THREADS and
// RMT_BATCH_WAIT_MS, RMT_ENGINE_TURNS and RMT_ENGINE_PACK_SESSIONS pass through to the worker), SERVICE_NODE_FLAGS (node flags for the
// api and worker processes, e.g. --cpu-prof), TOKENIZER_THREADS (the api's RMT_TOKENIZER_THREADS, 8), LEVEL_TIMEOUT_S (240), ONE_DOC_TOKENS (0 = skip; else one session streams a document of
// that many tokens and its Redis bytes are read after 1k tokens and at the end), OUT_JSON, TEXT_FILE (the
// levels' documents are cut from this text, each session starting at its own offset and wrapping
// around, every session's the same number of tokens (cut between tokenizer pieces), instead of the synthetic text of a 150-word vocabulary: real English repeats words less,
// which the tokenizers' remembered words feel; bench/brown-text.ts writes the Brown corpus as one).
//
// What is measured, per level:
//   tok/s        Σ tokens ingested (read back from GET /v1/sessions/:id) / wall time from the first
//                append sent to the last barrier answered.
//   steady       tok/s while all N sessions stream: from the last session's first progress event to
//                the first session's last (tokens read off each session's progress events).
//   seg latency  per session, the gap between consecutive `progress` events divided by the segments
//                they advanced: how long one segment of that session took, queueing included.
//   rows/run     the worker's rmt_engine_batch_rows histogram (scraped from its /metrics port).
//   step ms      the worker's rmt_engine_step_seconds: mean onnxruntime run time per segment batch,
//                per segment of a row (a run of the segment_state_steps graph counts its K: rmt_engine_batch_steps).
//   seg/run      segments per row in a run (rmt_engine_batch_steps: 1, or K for the steps graph).
//   overhead     seg latency p50 − step ms: time a segment spends outside onnxruntime.
//   gpu %        nvidia-smi utilization.gpu sampled every 100 ms during the level (mean).
//   TTFT / ITL   generate sent → first token message; gaps between token messages.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort, startRedis } from '../test/support/redis-server.ts';
import { percentile } from './bench-support.ts';
import { engineThreads } from '../src/worker/runtime.ts';
import { SETTINGS } from '../src/config/config.ts';
import { chunksOf, documentSource, syntheticText } from './stream-documents.ts';
import { gpuSampler, scrape } from './service-metrics.ts';

interface Ws {
  readyState: number;
  bufferedAmount: number;
  send(data: string): void;
  close(): void;
  on(ev: string, fn: (...args: any[]) => void): void;
}
const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: new (url: string) => Ws };

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const MODEL = process.env.MODEL ?? 'rmt-brown-small';
const MODELS_DIR = path.resolve(process.env.MODELS_DIR ?? path.join(ROOT, 'models'));
const PROVIDER = process.env.PROVIDER ?? 'cuda';
const PRECISION = process.env.PRECISION ?? 'fp16';
const LEVELS = (process.env.SESSIONS ?? '1,8,64,256').split(',').filter(Boolean).map(Number);
const CHUNK = Number(process.env.CHUNK ?? 65536);
const GEN = (process.env.GEN ?? '1,8,64').split(',').filter(Boolean).map(Number);
const GEN_TOKENS = Number(process.env.GEN_TOKENS ?? 64);
const GEN_MODEL = process.env.GEN_MODEL ?? MODEL;
const MAX_BATCH = Number(process.env.MAX_BATCH ?? 256);
const ONE_DOC_TOKENS = Number(process.env.ONE_DOC_TOKENS ?? 0);
const WORKER_PROCESSES = Number(process.env.WORKER_PROCESSES ?? 1);
/** Requests a worker process takes from the queue at once (RMT_WORKER_CONCURRENCY). */
const WORKER_CONCURRENCY = Number(process.env.WORKER_CONCURRENCY ?? Math.max(64, 2 * MAX_BATCH));
/** The worker's engine threads per process, as it resolves RMT_ENGINE_THREADS (0 or unset: 2 on cuda, 1 on cpu). */
const ENGINE_THREADS = engineThreads({ engineThreads: Number(process.env.RMT_ENGINE_THREADS ?? 0), executionProvider: PROVIDER === 'cuda' ? 'cuda' : 'cpu' });
const OUT_JSON = process.env.OUT_JSON;
/** A level that takes longer fails with where each session stands. */
const LEVEL_TIMEOUT_S = Number(process.env.LEVEL_TIMEOUT_S ?? 240);
/** nvidia-smi sampling period for GPU utilisation; 0 = off. */
const GPU_SAMPLE_MS = Number(process.env.GPU_SAMPLE_MS ?? 100);
/** The api's tokenizer threads (RMT_TOKENIZER_THREADS): long appends are tokenized there, before they are queued. */
const TOKENIZER_THREADS = Number(process.env.TOKENIZER_THREADS ?? 8);
/** Node flags for the api and worker processes, e.g. "--cpu-prof --cpu-prof-dir=DIR" (not allowed in NODE_OPTIONS). */
const SERVICE_NODE_FLAGS = (process.env.SERVICE_NODE_FLAGS ?? '').split(' ').filter(Boolean);
/** The levels' documents: TEXT_FILE cut per session, else synthetic (bench/stream-documents.ts). */
const documentText = documentSource(process.env.TEXT_FILE, MODELS_DIR, MODEL);

function docTokens(n: number): number {
  const totals = (process.env.TOTAL_TOKENS ?? '2000000').split(',').map(Number);
  const total = totals[Math.min(LEVELS.indexOf(n), totals.length - 1)] ?? 2_000_000;
  return Number(process.env.DOC_TOKENS ?? Math.max(8 * 512, Math.round(total / n)));
}

function rmtServe(role: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, path.join(ROOT, 'bin/rmt-serve.js'), role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => process.stderr.write(`[${role}] ${d}`));
  child.stdout!.on('data', (d: Buffer) => {
    for (const line of String(d).split('\n')) if (/"level":(40|50|60)/.test(line)) process.stderr.write(`[${role}] ${line}\n`);
  });
  return child;
}

async function waitReady(base: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      const r = await fetch(`${base}/readyz`);
      if (r.status === 200) return;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > end) throw new Error(`service not ready after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function json<T>(res: Response): Promise<T> {
  if (!res.ok) throw new Error(`${res.url}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

async function createSession(base: string, model: string): Promise<string> {
  const s = await json<{ id: string }>(await fetch(`${base}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model }) }));
  return s.id;
}


/**
 * A level that does not finish in LEVEL_TIMEOUT_S fails, saying where each unfinished session stands
 * (a hung level otherwise shows nothing but the call's own time limit).
 */
async function withinLevelTimeout<T>(p: Promise<T>, base: string, ids: string[], n: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Each read has its own limit, so a hung API still lets the level fail and say so.
      void Promise.all(ids.map(async (id) => (await fetch(`${base}/v1/sessions/${id}`, { signal: AbortSignal.timeout(10_000) })).json().catch(() => null)))
        .then((recs) => reject(new Error(`level N=${n} did not finish in ${LEVEL_TIMEOUT_S} s; sessions: ${JSON.stringify(recs)}`)))
        .catch((err: Error) => reject(new Error(`level N=${n} did not finish in ${LEVEL_TIMEOUT_S} s (${err.message})`)));
    }, LEVEL_TIMEOUT_S * 1000);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface StreamResult {
  segGaps: number[];
  sendStart: number;
  end: number;
  /** [time, tokens ingested] at each progress event. */
  timeline: [number, number][];
  /** When each append was acknowledged (durably queued by the API). */
  acks: number[];
}

/** Tokens ingested at time t, read off a timeline by linear interpolation (flat outside it). */
function tokensAt(timeline: [number, number][], t: number): number {
  if (timeline.length === 0 || t <= timeline[0]![0]) return timeline[0]?.[1] ?? 0;
  for (let i = 1; i < timeline.length; i++) {
    const [t1, k1] = timeline[i]!;
    if (t <= t1) {
      const [t0, k0] = timeline[i - 1]!;
      return t1 === t0 ? k1 : k0 + ((k1 - k0) * (t - t0)) / (t1 - t0);
    }
  }
  return timeline[timeline.length - 1]![1];
}

/**
 * The level while every session streams: from the last session's first progress to the first
 * session's last, and the tokens/s of all sessions within it (the level's start, while appends are
 * still being tokenized and sessions join, and its end, while fewer sessions are left, excluded).
 */
function steadyState(runs: StreamResult[]): { seconds: number; tokPerS: number } | undefined {
  const from = Math.max(...runs.map((r) => r.timeline[0]?.[0] ?? Infinity));
  const to = Math.min(...runs.map((r) => r.timeline[r.timeline.length - 1]?.[0] ?? -Infinity));
  if (!(to > from)) return undefined;
  const tokens = runs.reduce((sum, r) => sum + tokensAt(r.timeline, to) - tokensAt(r.timeline, from), 0);
  return { seconds: (to - from) / 1000, tokPerS: tokens / ((to - from) / 1000) };
}

/** Min, median and max over sessions of `at(run)`, in seconds after `start` (ms). */
function spread(runs: StreamResult[], start: number, at: (r: StreamResult) => number | undefined): [number, number, number] {
  const xs = runs.map(at).filter((x): x is number => x !== undefined).map((x) => (x - start) / 1000).sort((a, b) => a - b);
  return [xs[0] ?? NaN, percentile(xs, 50), xs[xs.length - 1] ?? NaN];
}

/** Streams `text` into one session and waits for the barrier generation. */
function stream(wsBase: string, id: string, text: string, onProgress?: (tokens: number) => void): Promise<StreamResult> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wsBase}/v1/sessions/${id}/stream`);
    const chunks = chunksOf(text, CHUNK);
    const segGaps: number[] = [];
    const timeline: [number, number][] = [];
    const acks: number[] = [];
    let lastT = 0;
    let lastSeg = 0;
    let sendStart = 0;
    ws.on('error', reject);
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(String(data)) as Record<string, any>;
      if (m.type === 'hello') {
        sendStart = performance.now();
        lastT = sendStart;
        void (async () => {
          for (let i = 0; i < chunks.length; i++) {
            while (ws.bufferedAmount > 4 << 20) await new Promise((r) => setTimeout(r, 2));
            ws.send(JSON.stringify({ type: 'append', seq: m.last_seq + 1 + i, text: chunks[i], ...(i === chunks.length - 1 ? { flush: true } : {}) }));
            // Let the other clients send too, as independent clients would: sending one session's whole
            // document before the next session's first append kept this process from reading for
            // 2 s and let the first sessions' documents reach the API long before the last ones'.
            await new Promise((r) => setImmediate(r));
          }
          ws.send(JSON.stringify({ type: 'generate', max_tokens: 1, temperature: 0 }));
        })();
      } else if (m.type === 'ack') {
        acks.push(performance.now());
      } else if (m.type === 'progress') {
        const t = performance.now();
        const n = m.segments_committed - lastSeg;
        if (n > 0) {
          if (lastSeg > 0) for (let k = 0; k < n; k++) segGaps.push((t - lastT) / n);
          lastSeg = m.segments_committed;
          lastT = t;
        }
        timeline.push([t, m.tokens_ingested]);
        onProgress?.(m.tokens_ingested);
      } else if (m.type === 'done') {
        ws.close();
        resolve({ segGaps, sendStart, end: performance.now(), timeline, acks });
      } else if (m.type === 'error') {
        reject(new Error(`session ${id}: ${m.code}: ${m.message}`));
      }
    });
  });
}

function generate(wsBase: string, id: string, prompt: string): Promise<{ ttft: number; itl: number[]; tokens: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wsBase}/v1/sessions/${id}/stream`);
    let t0 = 0;
    let last = 0;
    let ttft = NaN;
    const itl: number[] = [];
    let n = 0;
    ws.on('error', reject);
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(String(data)) as Record<string, any>;
      if (m.type === 'hello') {
        t0 = performance.now();
        ws.send(JSON.stringify({ type: 'generate', max_tokens: GEN_TOKENS, text: prompt, temperature: 0 }));
      } else if (m.type === 'token') {
        const t = performance.now();
        if (n === 0) ttft = t - t0;
        else itl.push(t - last);
        last = t;
        n++;
      } else if (m.type === 'done') {
        ws.close();
        resolve({ ttft, itl, tokens: n });
      } else if (m.type === 'error') reject(new Error(`${m.code}: ${m.message}`));
    });
  });
}

async function main(): Promise<void> {
  const redis = await startRedis();
  const port = await freePort();
  // Worker processes serve metrics on consecutive ports from here.
  const metricsPort = 20000 + Math.floor(Math.random() * 20000);
  const base = `http://127.0.0.1:${port}`;
  const wsBase = `ws://127.0.0.1:${port}`;
  const models = [...new Set([MODEL, GEN_MODEL])].join(',');
  const prefix = `bench${Date.now()}`;
  const common = { REDIS_URL: redis.url, RMT_MODELS: models, RMT_MODELS_DIR: MODELS_DIR, LOG_LEVEL: 'warn', RMT_PREFIX: prefix };
  const worker = rmtServe('worker', {
    ...common, RMT_EXECUTION_PROVIDER: PROVIDER, RMT_PRECISION: PRECISION, RMT_MAX_BATCH: String(MAX_BATCH),
    RMT_MAX_BATCH_TOKENS: String(MAX_BATCH * 1024), RMT_WORKER_CONCURRENCY: String(WORKER_CONCURRENCY),
    RMT_WORKER_METRICS_PORT: String(metricsPort), RMT_WORKER_PROCESSES: String(WORKER_PROCESSES),
  });
  const api = rmtServe('api', { ...common, PORT: String(port), RMT_TOKENIZER_THREADS: String(TOKENIZER_THREADS) });
  const results: Record<string, unknown>[] = [];
  const out: Record<string, unknown> = { model: MODEL, provider: PROVIDER, precision: PRECISION, workerProcesses: WORKER_PROCESSES, tokenizerThreads: TOKENIZER_THREADS, batchWaitMs: Number(process.env.RMT_BATCH_WAIT_MS ?? 0), engineThreads: ENGINE_THREADS, engineTurns: /^(1|true)$/.test(process.env.RMT_ENGINE_TURNS ?? '0'), cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, levels: results };
  try {
    const t0 = performance.now();
    await waitReady(base, 300_000);
    console.log(
      `service stream bench: model ${MODEL} (${PROVIDER}, ${PRECISION}), api process + ${WORKER_PROCESSES} worker process(es), redis ${redis.url}; ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); node ${process.version}; ` +
        `RMT_MAX_BATCH ${MAX_BATCH}; RMT_BATCH_WAIT_MS ${process.env.RMT_BATCH_WAIT_MS ?? 0}; engine threads ${ENGINE_THREADS}; RMT_ENGINE_TURNS ${process.env.RMT_ENGINE_TURNS ?? SETTINGS.engineTurns.default}; RMT_ENGINE_PACK_SESSIONS ${process.env.RMT_ENGINE_PACK_SESSIONS ?? SETTINGS.enginePackSessions.default}; api tokenizer threads ${TOKENIZER_THREADS}; worker concurrency ${WORKER_CONCURRENCY}; appends of ${CHUNK} chars; ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    // Warm-up: every batch shape the levels will use allocates on first use.
    await Promise.all(Array.from({ length: Math.min(MAX_BATCH, Math.max(...LEVELS)) }, async (_, i) => stream(wsBase, await createSession(base, MODEL), syntheticText(10_000 + i, 2048))));
    for (const n of LEVELS) {
      const tokensEach = docTokens(n);
      const ids = await Promise.all(Array.from({ length: n }, () => createSession(base, MODEL)));
      const texts = await Promise.all(ids.map((_, i) => documentText(i, n, tokensEach)));
      const before = await scrape(metricsPort, WORKER_PROCESSES);
      const gpu = gpuSampler(GPU_SAMPLE_MS);
      const runs = await withinLevelTimeout(Promise.all(ids.map((id, i) => stream(wsBase, id, texts[i]!))), base, ids, n);
      const gpuPct = gpu.stop();
      const after = await scrape(metricsPort, WORKER_PROCESSES);
      const start = Math.min(...runs.map((r) => r.sendStart));
      const end = Math.max(...runs.map((r) => r.end));
      const perSession: number[] = [];
      for (const id of ids) perSession.push((await json<{ tokens_ingested: number }>(await fetch(`${base}/v1/sessions/${id}`))).tokens_ingested);
      const tokens = perSession.reduce((a, b) => a + b, 0);
      const gaps = runs.flatMap((r) => r.segGaps).sort((a, b) => a - b);
      const batches = after.rows.count - before.rows.count;
      const rowsMean = batches ? (after.rows.sum - before.rows.sum) / batches : NaN;
      // Per segment step: a run of K segments per row counts K.
      const runSteps = after.steps.sum - before.steps.sum;
      const stepsPerRun = batches ? runSteps / batches : NaN;
      const stepMs = runSteps ? ((after.step.sum - before.step.sum) / runSteps) * 1000 : NaN;
      const p50 = percentile(gaps, 50);
      const mean = (k: 'run' | 'request' | 'turnGap') => {
        const c = after[k].count - before[k].count;
        return c ? ((after[k].sum - before[k].sum) / c) * 1000 : NaN;
      };
      const seconds = (end - start) / 1000;
      const requests = after.request.count - before.request.count;
      const steady = steadyState(runs);
      const r = {
        steadySeconds: steady?.seconds ?? NaN, steadyTokPerS: steady?.tokPerS ?? NaN,
        sessions: n, tokens, sessionTokens: [Math.min(...perSession), Math.max(...perSession)], seconds, tokPerS: tokens / seconds, segLatencyP50: p50, segLatencyP99: percentile(gaps, 99),
        rowsPerRun: rowsMean, stepsPerRun, stepMs, overheadMs: p50 - stepMs, gpuUtil: gpuPct,
        // Device held: onnxruntime runs' own time over the level (above 100 % when the engine threads' runs overlap: RMT_ENGINE_TURNS=0).
        runMs: mean('run'), deviceHeldPct: (100 * (after.run.sum - before.run.sum)) / seconds / WORKER_PROCESSES,
        requests, requestMs: mean('request'), turnGapMs: mean('turnGap'), turnGaps: after.turnGap.count - before.turnGap.count,
        turnDelaysPerRequest: requests ? (after.turnDelays - before.turnDelays) / requests : NaN,
        handoffs: after.handoffs - before.handoffs, handoffsLost: after.handoffsLost - before.handoffsLost, inEngine: after.inEngine - before.inEngine,
        // When sessions joined and left: their first and last progress events, after the level's first append.
        firstProgressS: spread(runs, start, (x) => x.timeline[0]?.[0]), lastProgressS: spread(runs, start, (x) => x.timeline[x.timeline.length - 1]?.[0]),
        // Per session, in the order they were created and started: first and last progress (s after the level's first append).
        sessionSpans: runs.map((x) => [x.timeline[0]?.[0], x.timeline[x.timeline.length - 1]?.[0]].map((t) => (t === undefined ? null : +((t - start) / 1000).toFixed(3)))),
        // Per session, likewise: when its first and its last append were acknowledged (tokenized and queued by the API).
        ackSpans: runs.map((x) => [x.acks[0], x.acks[x.acks.length - 1]].map((t) => (t === undefined ? null : +((t - start) / 1000).toFixed(3)))),
        // Per session: every append's ack and every progress event [s, tokens ingested], to set what the API had
        // queued for a session against what the workers had applied of it.
        timelines: runs.map((x) => ({
          acks: x.acks.map((t) => +((t - start) / 1000).toFixed(3)),
          progress: x.timeline.map(([t, k]) => [+((t - start) / 1000).toFixed(3), k]),
        })),
      };
      results.push(r);
      console.log(
        `N=${String(n).padStart(3)} | ${Math.round(r.tokPerS)} tok/s (${tokens} tokens in ${r.seconds.toFixed(2)} s) | seg latency p50 ${p50.toFixed(1)} ms p99 ${r.segLatencyP99.toFixed(1)} ms | ` +
          `rows/run ${rowsMean.toFixed(1)} | seg/run ${stepsPerRun.toFixed(2)} | step ${stepMs.toFixed(2)} ms | overhead ${r.overheadMs.toFixed(1)} ms | gpu ${gpuPct?.toFixed(0) ?? '-'} %`,
      );
      console.log(
        `       | run ${r.runMs.toFixed(2)} ms, device held ${r.deviceHeldPct.toFixed(0)} % per process | ${requests} requests, ${r.requestMs.toFixed(0)} ms each | ` +
          `turn gap mean ${r.turnGapMs.toFixed(1)} ms (${r.turnGaps}) | parked ${r.turnDelaysPerRequest.toFixed(2)} times per request | ` +
          `${r.handoffs} continued from the previous request (${r.inEngine} inside the engine, ${r.handoffsLost} started again)`,
      );
      console.log(`       | all ${n} sessions streaming for ${r.steadySeconds.toFixed(2)} of ${r.seconds.toFixed(2)} s: ${Math.round(r.steadyTokPerS)} tok/s`);
      const s3 = (x: number[]) => x.map((v) => v.toFixed(2)).join(' / ');
      console.log(`       | sessions' first progress at ${s3(r.firstProgressS)} s (min / p50 / max), last at ${s3(r.lastProgressS)} s; tokens per session ${r.sessionTokens.join(' - ')}`);
      await Promise.all(ids.map((id) => fetch(`${base}/v1/sessions/${id}`, { method: 'DELETE' })));
    }
    const gen: Record<string, unknown>[] = [];
    out.generation = gen;
    for (const n of GEN) {
      const ids = await Promise.all(Array.from({ length: n }, () => createSession(base, GEN_MODEL)));
      const rs = await Promise.all(ids.map((id, i) => generate(wsBase, id, syntheticText(500 + i, 200))));
      const ttft = rs.map((r) => r.ttft).sort((a, b) => a - b);
      const itl = rs.flatMap((r) => r.itl).sort((a, b) => a - b);
      const g = { concurrent: n, tokens: rs.reduce((s, r) => s + r.tokens, 0), ttftP50: percentile(ttft, 50), ttftP99: percentile(ttft, 99), itlP50: percentile(itl, 50), itlP99: percentile(itl, 99) };
      gen.push(g);
      console.log(`generate ${GEN_MODEL} N=${String(n).padStart(2)} × ${GEN_TOKENS} tokens | TTFT p50 ${g.ttftP50.toFixed(1)} ms p99 ${g.ttftP99.toFixed(1)} ms | ITL p50 ${g.itlP50.toFixed(1)} ms p99 ${g.itlP99.toFixed(1)} ms`);
      await Promise.all(ids.map((id) => fetch(`${base}/v1/sessions/${id}`, { method: 'DELETE' })));
    }
    if (ONE_DOC_TOKENS > 0) out.oneDocument = await oneDocument(base, wsBase, redis.url, prefix);
  } finally {
    worker.kill('SIGTERM');
    api.kill('SIGTERM');
    await Promise.all([worker, api].map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))));
    await redis.stop();
  }
  if (OUT_JSON) mkdirSync(path.dirname(path.resolve(OUT_JSON)), { recursive: true });
  if (OUT_JSON) writeFileSync(OUT_JSON, JSON.stringify(out, null, 1));
}

/** One document of ONE_DOC_TOKENS through one session; the session's Redis bytes at 1k tokens and at the end. */
async function oneDocument(base: string, wsBase: string, redisUrl: string, prefix: string): Promise<Record<string, unknown>> {
  const { Redis } = await import('ioredis');
  const { redisKeys } = await import('../src/state/keys.ts');
  const r = new Redis(redisUrl);
  const id = await createSession(base, MODEL);
  const key = redisKeys(prefix).session(id);
  const bytes = async () => Number(await r.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'));
  // The first 1k tokens alone, to read the session's size there.
  await stream(wsBase, id, syntheticText(7, 1000));
  const at1k = { tokens: (await json<{ tokens_ingested: number }>(await fetch(`${base}/v1/sessions/${id}`))).tokens_ingested, bytes: await bytes() };
  const text = syntheticText(8, ONE_DOC_TOKENS - at1k.tokens);
  const t0 = performance.now();
  const run = await stream(wsBase, id, text);
  const wall = (run.end - t0) / 1000;
  const end = { tokens: (await json<{ tokens_ingested: number }>(await fetch(`${base}/v1/sessions/${id}`))).tokens_ingested, bytes: await bytes() };
  r.disconnect();
  const res = { at1k, end, streamedTokens: end.tokens - at1k.tokens, wallSeconds: wall, tokPerS: (end.tokens - at1k.tokens) / wall, chars: text.length };
  console.log(`one document: ${end.tokens - at1k.tokens} tokens (${text.length} chars) in ${wall.toFixed(2)} s = ${Math.round(res.tokPerS)} tok/s; session bytes ${at1k.bytes} after ${at1k.tokens} tokens, ${end.bytes} after ${end.tokens}`);
  return res;
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
