// Worker memory under repeated load, as an operator would see it: a private redis-server, an
// `rmt-serve api` and an `rmt-serve worker` process (CPU), and this process as CLIENTS concurrent
// clients, each doing one of (in turn): a completion (POST /v1/completions), a websocket stream
// (appends, then a short generate), a scored append (POST /v1/sessions/{id}/append with
// "perplexity": true) and a plain append. ROUNDS such rounds; the worker's resident memory
// (/proc/<pid>/status VmRSS) is read before the first, after each round and after an idle pause,
// and sampled during each round for its peak. Only the public HTTP/websocket API is used.
//
//   node --import tsx bench/worker-soak.ts
//
// Environment: CLIENTS (200), ROUNDS (4), IDLE_S (pause after the last round, 15), MODEL
// (rmt-brown-small; the requests' model), MODELS (RMT_MODELS of both processes; default the service's), SCORED_TOKENS (tokens of a scored or plain append, about; 768), PROMPT_TOKENS
// (a completion's prompt, about; 200), GEN_TOKENS (16), STREAM_TOKENS (a stream's document, about;
// 1024), KINDS (the clients' kinds, in turn; default completion,stream,scored,plain), WORKER_ENV (extra worker environment, "A=1 B=2"), SERVICE_NODE_FLAGS (node flags of the
// worker process, e.g. --heap-prof), OUT_JSON (default bench/out/worker-soak-<time>.json).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort, startRedis } from '../test/support/redis-server.ts';
import { WORDS, syntheticText } from './stream-documents.ts';

interface Ws {
  send(data: string): void;
  close(): void;
  on(ev: string, fn: (...args: any[]) => void): void;
}
const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: new (url: string) => Ws };

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const num = (name: string, def: number) => Number(process.env[name] ?? def);
const CLIENTS = num('CLIENTS', 200);
const ROUNDS = num('ROUNDS', 4);
const IDLE_S = num('IDLE_S', 15);
const MODEL = process.env.MODEL ?? 'rmt-brown-small';
const SCORED_TOKENS = num('SCORED_TOKENS', 768);
const PROMPT_TOKENS = num('PROMPT_TOKENS', 200);
const GEN_TOKENS = num('GEN_TOKENS', 16);
const STREAM_TOKENS = num('STREAM_TOKENS', 1024);
const WORKER_ENV = Object.fromEntries((process.env.WORKER_ENV ?? '').split(' ').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
const SERVICE_NODE_FLAGS = (process.env.SERVICE_NODE_FLAGS ?? '').split(' ').filter(Boolean);
const OUT_JSON = process.env.OUT_JSON ?? path.join(ROOT, 'bench/out', `worker-soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
/** The soak's text: the service benches' synthetic English from the first 93 words of their list (bench/stream-documents.ts). */
const text = (seed: number, tokens: number) => syntheticText(seed, tokens, WORDS.slice(0, 93));

/** Resident memory of a process, MB, from /proc (VmRSS; RssAnon: its heap, not mapped files; VmHWM: peak). */
function memOf(pid: number): { rss: number; anon: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, anon: kb('RssAnon') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** The worker's own view (its /metrics: the main thread's V8 heap and external memory), MB. */
async function workerHeap(metricsPort: number): Promise<{ heapUsed: number; external: number }> {
  const t = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const v = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(t)?.[1] ?? NaN) / 2 ** 20;
  return { heapUsed: v('nodejs_heap_size_used_bytes'), external: v('nodejs_external_memory_bytes') };
}

function rmtServe(role: string, env: Record<string, string>, flags: string[] = []): ChildProcess {
  const child = spawn(process.execPath, [...flags, path.join(ROOT, 'bin/rmt-serve.js'), role], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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
      if ((await fetch(`${base}/readyz`)).status === 200) return;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > end) throw new Error(`service not ready after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function post<T>(url: string, body: unknown): Promise<T> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/** Appends a document over the session's websocket, then generates a few tokens; resolves at 'done'. */
function stream(wsBase: string, id: string, doc: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wsBase}/v1/sessions/${id}/stream`);
    ws.on('error', reject);
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(String(data)) as Record<string, any>;
      if (m.type === 'hello') {
        const chunk = 2048;
        let seq = m.last_seq as number;
        for (let i = 0; i < doc.length; i += chunk) ws.send(JSON.stringify({ type: 'append', seq: ++seq, text: doc.slice(i, i + chunk) }));
        ws.send(JSON.stringify({ type: 'generate', max_tokens: GEN_TOKENS, temperature: 0 }));
      } else if (m.type === 'done') {
        ws.close();
        resolve();
      } else if (m.type === 'error') reject(new Error(`session ${id}: ${m.code}: ${m.message}`));
    });
  });
}

type Kind = 'completion' | 'stream' | 'scored' | 'plain';
const KINDS = (process.env.KINDS ?? 'completion,stream,scored,plain').split(',').filter(Boolean) as Kind[];
for (const k of KINDS) if (!['completion', 'stream', 'scored', 'plain'].includes(k)) throw new Error(`KINDS: unknown kind '${k}'`);

async function client(base: string, wsBase: string, kind: Kind, seed: number): Promise<void> {
  if (kind === 'completion') {
    await post(`${base}/v1/completions`, { model: MODEL, prompt: text(seed, PROMPT_TOKENS), max_tokens: GEN_TOKENS, temperature: 0 });
    return;
  }
  const { id } = await post<{ id: string }>(`${base}/v1/sessions`, { model: MODEL });
  try {
    if (kind === 'stream') await stream(wsBase, id, text(seed, STREAM_TOKENS));
    else {
      const r = await post<{ perplexity?: unknown[] }>(`${base}/v1/sessions/${id}/append`, { text: text(seed, SCORED_TOKENS), ...(kind === 'scored' ? { perplexity: true } : {}) });
      if (kind === 'scored' && !r.perplexity?.length) throw new Error('scored append: no perplexity in the reply');
    }
  } finally {
    await fetch(`${base}/v1/sessions/${id}`, { method: 'DELETE' });
  }
}

async function main(): Promise<void> {
  const redis = await startRedis();
  const port = await freePort();
  const metricsPort = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // The service's own model list (both shipped packages) unless MODELS says otherwise.
  const common = { REDIS_URL: redis.url, LOG_LEVEL: 'warn', RMT_PREFIX: `soak${Date.now()}`, ...(process.env.MODELS ? { RMT_MODELS: process.env.MODELS } : {}) };
  const worker = rmtServe('worker', { ...common, RMT_EXECUTION_PROVIDER: 'cpu', RMT_WORKER_METRICS_PORT: String(metricsPort), ...WORKER_ENV }, SERVICE_NODE_FLAGS);
  const api = rmtServe('api', { ...common, PORT: String(port) });
  const points: Record<string, unknown>[] = [];
  const out: Record<string, unknown> = {
    bench: 'worker-soak', model: MODEL, clients: CLIENTS, kinds: KINDS, rounds: ROUNDS, idleS: IDLE_S, scoredTokens: SCORED_TOKENS, promptTokens: PROMPT_TOKENS,
    genTokens: GEN_TOKENS, streamTokens: STREAM_TOKENS, workerEnv: WORKER_ENV, nodeFlags: SERVICE_NODE_FLAGS,
    cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memGiB: +(os.totalmem() / 2 ** 30).toFixed(1), node: process.version, points,
  };
  try {
    await waitReady(base, 300_000);
    const pid = worker.pid!;
    const mark = async (label: string, extra: Record<string, unknown> = {}) => {
      const p = { label, ...memOf(pid), ...(await workerHeap(metricsPort)), ...extra };
      points.push(p);
      const f = (x: unknown) => (typeof x === 'number' ? x.toFixed(0).padStart(6) : String(x ?? '').padStart(6));
      console.log(`${label.padEnd(14)} | ${f(p.rss)} | ${f(p.anon)} | ${f(p.heapUsed)} | ${f(p.external)} | ${f(extra.peakRss)} | ${f(extra.seconds === undefined ? '' : (extra.seconds as number).toFixed(1))}`);
    };
    console.log(`worker soak: ${MODEL} on cpu, ${CLIENTS} clients x ${ROUNDS} rounds (${KINDS.join(', ')} in turn); ${os.cpus().length} CPUs (${os.cpus()[0]?.model}); node ${process.version}; worker env ${JSON.stringify(WORKER_ENV)}`);
    console.log('point          | rss MB | anon   | heap   | extern | peak   | s');
    console.log(`worker pid ${pid}`);
    await mark('before');
    for (let round = 1; round <= ROUNDS; round++) {
      let peak = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, memOf(pid).rss)), 100);
      const t0 = performance.now();
      const results = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, i) => client(base, `ws://127.0.0.1:${port}`, KINDS[i % KINDS.length]!, round * 100_000 + i)));
      const seconds = (performance.now() - t0) / 1000;
      clearInterval(sampler);
      const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
      if (failed.length) console.error(`round ${round}: ${failed.length} clients failed, first: ${(failed[0]!.reason as Error).message}`);
      await mark(`round ${round}`, { peakRss: Math.max(peak, memOf(pid).rss), seconds, failed: failed.length });
    }
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    await mark(`idle ${IDLE_S} s`);
  } finally {
    worker.kill('SIGTERM');
    api.kill('SIGTERM');
    await Promise.all([worker, api].map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))));
    await redis.stop();
  }
  mkdirSync(path.dirname(OUT_JSON), { recursive: true });
  writeFileSync(OUT_JSON, JSON.stringify(out, null, 1));
  console.log(`-> ${path.relative(ROOT, OUT_JSON)}`);
}

await main();
