// Backpressure, measured on a real server process: a websocket client floods 100 MB of appends;
// the server (API + worker, its own process) stops reading and its memory stays within a bound of
// its baseline. No forced GC: this is the RSS an operator would see. Twice: the worker tokenizing
// (RMT_TOKENIZER_THREADS=0, measured +20..34 MB, bound 64 MB), and the API's tokenizer threads
// tokenizing the appends (the default, measured +57..97 MB on 2 cores, bound 128 MB): each 1 MB
// append then also leaves its ids (8 bytes a token in a JS array) and the threads' results as
// garbage that V8 collects late, and the threads' heaps work beside the main one.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test, type TestContext } from 'node:test';
import WebSocket from 'ws';
import { freePort, startRedis, type RedisServerHandle } from './support/redis-server.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let redis: RedisServerHandle;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}


before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

async function flood(t: TestContext, tokenizerThreads: number, boundMb: number): Promise<void> {
  const port = await freePort();
  const env = { ...process.env, REDIS_URL: redis.url, PORT: String(port), HOST: '127.0.0.1', RMT_PREFIX: `flood${process.pid}t${tokenizerThreads}`,
    RMT_MODELS: 'rmt-brown-small', RMT_INTRA_OP_THREADS: '1', LOG_LEVEL: 'warn', RMT_SHUTDOWN_GRACE_MS: '0', RMT_TOKENIZER_THREADS: String(tokenizerThreads) };
  // The deployed shape: the API process that holds the socket, and a worker process beside it.
  const server = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'api'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const worker = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker'], { env, stdio: 'ignore' });
  let log = '';
  server.stderr.on('data', (d) => (log += String(d)));
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setInterval(() => log.includes('rmt-serve ready') && (clearInterval(t), resolve()), 50);
      server.once('exit', (c) => (clearInterval(t), reject(new Error(`server exited ${c}: ${log}`))));
    });
    const base = `http://127.0.0.1:${port}`;
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
    const baseline = rssBytes(server.pid!);
    const workerBaseline = rssBytes(worker.pid!);
    let workerPeak = workerBaseline;

    const MB = 'The flood of words goes on and on. '.repeat(30_000).slice(0, 1 << 20);
    for (let seq = 2; seq <= 101; seq++) ws.send(JSON.stringify({ type: 'append', seq, text: MB })); // 100 MB queued client-side
    let peak = baseline;
    const until = Date.now() + 8_000;
    let healthy = 0;
    while (Date.now() < until) {
      peak = Math.max(peak, rssBytes(server.pid!));
      workerPeak = Math.max(workerPeak, rssBytes(worker.pid!));
      if ((await fetch(`${base}/healthz`)).ok) healthy++;
      await new Promise((r) => setTimeout(r, 100));
    }
    const growth = (peak - baseline) / 2 ** 20;
    t.diagnostic(`API RSS ${(baseline / 2 ** 20).toFixed(0)} MB -> peak +${growth.toFixed(1)} MB; acks ${acks}; unsent ${(ws.bufferedAmount / 2 ** 20).toFixed(0)} MB; ` +
      `worker RSS ${(workerBaseline / 2 ** 20).toFixed(0)} MB -> peak +${((workerPeak - workerBaseline) / 2 ** 20).toFixed(1)} MB`);
    assert.ok(growth <= boundMb, `server RSS grew by ${growth.toFixed(1)} MB (baseline ${(baseline / 2 ** 20).toFixed(0)} MB; bound ${boundMb} MB)`);
    assert.ok(acks < 60, `${acks} of 101 appends acknowledged: the server did not stop reading`);
    assert.ok(ws.bufferedAmount > 30 * 2 ** 20, `only ${ws.bufferedAmount} bytes left unsent: the flood was not held back`);
    assert.ok(healthy > 40, `the server answered /healthz only ${healthy} times while flooded`);
    ws.terminate();
  } finally {
    server.kill('SIGKILL');
    worker.kill('SIGKILL');
  }
}

test('a client flooding 100 MB raises the API server\'s memory by at most 64 MB; it keeps serving', (t) => flood(t, 0, 64));

test('with the API tokenizing long appends on its threads: at most 128 MB; it keeps serving', (t) => flood(t, 2, 128));
