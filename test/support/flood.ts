// A websocket client flooding a real server process (API + worker, each its own process) with 100 MB
// of appends, shared by test/flood.test.ts (what the server does: stops reading, keeps serving) and
// bench/stream-flood-memory.ts (what it costs: the API process' RSS growth, machine-dependent).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { freePort } from './redis-server.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

export interface FloodResult {
  /** Appends acknowledged of the 101 sent (the first is the warm-up). */
  acks: number;
  /** Bytes the client could not send: the server stopped reading. */
  unsent: number;
  /** /healthz answers with 200, of `checks` asked one after another while flooded. */
  healthy: number;
  checks: number;
  /** RSS (bytes) of the API and worker processes after the warm-up, and their peaks while flooded. */
  rss: { api: number; apiPeak: number; worker: number; workerPeak: number };
}

/**
 * Floods a fresh server: a warm-up append, then 100 appends of 1 MB queued at once; meanwhile asks
 * /healthz `checks` times, 100 ms apart (a count, not a duration: a slow machine just takes longer),
 * sampling both processes' RSS before each.
 */
export async function runFlood(redisUrl: string, tokenizerThreads: number, checks = 60): Promise<FloodResult> {
  const port = await freePort();
  const env = { ...process.env, REDIS_URL: redisUrl, PORT: String(port), HOST: '127.0.0.1', RMT_PREFIX: `flood${process.pid}t${tokenizerThreads}x${Date.now()}`,
    RMT_MODELS: 'rmt-brown-small', RMT_INTRA_OP_THREADS: '1', LOG_LEVEL: 'warn', RMT_SHUTDOWN_GRACE_MS: '0', RMT_TOKENIZER_THREADS: String(tokenizerThreads) };
  // The deployed shape: the API process that holds the socket, and a worker process beside it.
  const server = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'api'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const worker = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker'], { env, stdio: 'ignore' });
  let log = '';
  server.stderr.on('data', (d) => (log += String(d)));
  try {
    const base = `http://127.0.0.1:${port}`;
    // Ready when it answers its readiness probe (log lines depend on LOG_LEVEL).
    let exited: string | undefined;
    server.once('exit', (c) => (exited = `server exited ${c}: ${log}`));
    for (;;) {
      if (exited) throw new Error(exited);
      if ((await fetch(`${base}/readyz?scope=pod`).catch(() => undefined))?.ok) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const session = (await (await fetch(`${base}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).json()) as { id: string };
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/sessions/${session.id}/stream`);
    let acks = 0;
    ws.on('message', (m) => {
      if ((JSON.parse(String(m)) as { type: string }).type === 'ack') acks++;
    });
    await new Promise((r) => ws.once('open', r));
    // Warm up (code paths, heap), then take the baseline.
    ws.send(JSON.stringify({ type: 'append', seq: 1, text: 'warm up the server. '.repeat(1000) }));
    while (acks < 1) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 500));
    const rss = { api: rssBytes(server.pid!), apiPeak: 0, worker: rssBytes(worker.pid!), workerPeak: 0 };
    rss.apiPeak = rss.api;
    rss.workerPeak = rss.worker;

    const MB = 'The flood of words goes on and on. '.repeat(30_000).slice(0, 1 << 20);
    for (let seq = 2; seq <= 101; seq++) ws.send(JSON.stringify({ type: 'append', seq, text: MB })); // 100 MB queued client-side
    let healthy = 0;
    for (let i = 0; i < checks; i++) {
      rss.apiPeak = Math.max(rss.apiPeak, rssBytes(server.pid!));
      rss.workerPeak = Math.max(rss.workerPeak, rssBytes(worker.pid!));
      if ((await fetch(`${base}/healthz`)).ok) healthy++;
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = { acks, unsent: ws.bufferedAmount, healthy, checks, rss };
    ws.terminate();
    return result;
  } finally {
    server.kill('SIGKILL');
    worker.kill('SIGKILL');
  }
}
