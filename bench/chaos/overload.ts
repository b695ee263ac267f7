// Overload run: one API, one worker (own redis-server), C concurrent closed-loop clients, each with
// an equal share of a fixed number of requests, of one kind (drawn from the seed): completions (POST /v1/completions), REST appends (POST
// /v1/sessions/{id}/append, answered once applied) and websocket appends (answered by an ack once
// queued). Reports admitted requests' latency (p50/p99), the share shed (HTTP 429, websocket error
// `overloaded`), other errors by status, and the worker's VmRSS before, at peak, 2 s after the last
// answer and once it is idle again (the websocket appends acknowledged but not yet applied drained).
//
//   node --import tsx bench/chaos/overload.ts [--short] [--clients 200] [--requests 3000] [--seed 1]
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import { percentile } from '../bench-support.ts';
import { Cluster, cpuTicks, installExitHandlers, rssKb } from './procs.ts';
import { log, OUT_DIR, runId, table, writeJson } from './report.ts';
import { rng, subSeed, type Rng } from './rng.ts';
import { createSession } from './session-client.ts';
import { buildDocument } from './text.ts';

const { values: a } = parseArgs({
  options: {
    short: { type: 'boolean', default: false },
    clients: { type: 'string', default: '200' },
    requests: { type: 'string' },
    seed: { type: 'string', default: '1' },
    'completion-share': { type: 'string', default: '0.4' },
    'ws-share': { type: 'string', default: '0.2' },
    'max-tokens': { type: 'string', default: '16' },
    'timeout-s': { type: 'string' },
    'deadline-s': { type: 'string' },
  },
});
const short = a.short!;
const opts = {
  short,
  clients: Number(a.clients),
  requests: Number(a.requests ?? (short ? 600 : 3000)),
  seed: Number(a.seed),
  completionShare: Number(a['completion-share']),
  wsShare: Number(a['ws-share']),
  maxTokens: Number(a['max-tokens']),
  timeoutS: Number(a['timeout-s'] ?? (short ? 90 : 150)),
  deadlineS: Number(a['deadline-s'] ?? (short ? 240 : 900)),
  model: 'rmt-brown-small',
};

type Kind = 'completion' | 'append' | 'ws-append';
interface Sample { kind: Kind; status: string; ms: number }

installExitHandlers();
const id = runId(short ? 'overload-short' : 'overload');
const pool = buildDocument(opts.seed, 60_000).text;
const snippet = (r: Rng, min: number, max: number) => {
  const len = r.int(min, max);
  const at = r.int(0, pool.length - len - 1);
  return pool.slice(at, at + len);
};

const cluster = new Cluster({ dir: path.join(OUT_DIR, 'logs', id), prefix: `overload${process.pid}`, apis: 1, workers: 1 });
const samples: Sample[] = [];
const rss = { before: 0, peak: 0, after: 0, idle: 0, apiBefore: 0, apiAfter: 0 };
let drainS = 0;
let wallS = 0;

/** Waits (at most maxMs) until pid used under 10 % of a core over 2 s; the seconds it took. */
async function waitIdle(pid: number, maxMs: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < maxMs) {
    const before = cpuTicks(pid);
    await sleep(2000);
    const after = cpuTicks(pid);
    if (before === undefined || after === undefined || after - before < 20) break;
  }
  return (Date.now() - t0) / 1000;
}
try {
  await cluster.start();
  const base = cluster.apiUrls()[0]!;
  const urls = () => cluster.apiUrls();
  const worker = cluster.workers[0]!;
  const r0 = rng(subSeed(opts.seed, 'kinds'));
  const kinds: Kind[] = Array.from({ length: opts.clients }, () => {
    const x = r0.next();
    return x < opts.completionShare ? 'completion' : x < opts.completionShare + opts.wsShare ? 'ws-append' : 'append';
  });
  // Sessions first (20 at a time), so creating them is not part of the measured traffic.
  const sessions: (string | undefined)[] = new Array(opts.clients);
  for (let i = 0; i < opts.clients; i += 20) {
    await Promise.all(kinds.slice(i, i + 20).map(async (k, j) => {
      if (k !== 'completion') sessions[i + j] = await createSession(urls, opts.model);
    }));
  }
  await sleep(1000);
  rss.before = rssKb(worker.pid) ?? 0;
  rss.apiBefore = rssKb(cluster.apis[0]!.pid) ?? 0;
  const sampler = setInterval(() => (rss.peak = Math.max(rss.peak, rssKb(worker.pid) ?? 0)), 500);
  const deadline = Date.now() + opts.deadlineS * 1000;
  const quota = kinds.map((_, i) => Math.floor(opts.requests / opts.clients) + (i < opts.requests % opts.clients ? 1 : 0));
  const taker = (i: number) => () => Date.now() < deadline && quota[i]!-- > 0;
  const t0 = Date.now();

  const rest = async (kind: Kind, url: string, body: object): Promise<void> => {
    const start = Date.now();
    let status: string;
    try {
      const res = await fetch(url, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(opts.timeoutS * 1000),
      });
      await res.arrayBuffer();
      status = String(res.status);
    } catch (err) {
      const e = err as { name?: string; cause?: { code?: string } };
      status = e.name === 'TimeoutError' ? 'timeout' : (e.cause?.code ?? e.name ?? 'error');
    }
    samples.push({ kind, status, ms: Date.now() - start });
  };

  const wsClient = async (sid: string, r: Rng, take: () => boolean): Promise<void> => {
    let ws: WebSocket | undefined;
    let seq = 0;
    const waiters: ((m: Record<string, any> | undefined) => void)[] = [];
    const next = (ms: number) => new Promise<Record<string, any> | undefined>((resolve) => {
      const t = setTimeout(() => resolve(undefined), ms);
      waiters.push((m) => (clearTimeout(t), resolve(m)));
    });
    const open = async (): Promise<boolean> => {
      ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/sessions/${sid}/stream`);
      ws.on('message', (d) => {
        const m = JSON.parse(String(d)) as Record<string, any>;
        if (m.type === 'progress') return;
        waiters.shift()?.(m);
      });
      ws.on('close', () => waiters.splice(0).forEach((w) => w(undefined)));
      ws.on('error', () => {});
      const hello = await next(opts.timeoutS * 1000);
      if (hello?.type !== 'hello') {
        ws.terminate();
        return false;
      }
      seq = Number(hello.last_seq);
      return true;
    };
    try {
      while (take()) {
        const start = Date.now();
        if ((!ws || ws.readyState !== WebSocket.OPEN) && !(await open())) {
          samples.push({ kind: 'ws-append', status: 'ws-connect-failed', ms: Date.now() - start });
          continue;
        }
        ws!.send(JSON.stringify({ type: 'append', seq: seq + 1, text: snippet(r, 200, 4000) }));
        const m = await next(opts.timeoutS * 1000);
        const status = !m ? 'timeout' : m.type === 'ack' ? 'ack' : m.type === 'error' ? `ws:${m.code}` : `ws:${m.type}`;
        if (m?.type === 'ack') seq = Number(m.seq);
        else ws!.terminate(); // resync from a new hello
        samples.push({ kind: 'ws-append', status, ms: Date.now() - start });
      }
    } finally {
      ws?.terminate();
    }
  };

  await Promise.all(kinds.map(async (kind, i) => {
    const r = rng(subSeed(opts.seed, 'client', i));
    const take = taker(i);
    if (kind === 'ws-append') return wsClient(sessions[i]!, r, take);
    while (take()) {
      if (kind === 'completion') {
        await rest(kind, `${base}/v1/completions`, { model: opts.model, prompt: snippet(r, 100, 1000), max_tokens: opts.maxTokens, temperature: 0 });
      } else {
        await rest(kind, `${base}/v1/sessions/${sessions[i]}/append`, { text: snippet(r, 200, 4000) });
      }
    }
  }));
  wallS = (Date.now() - t0) / 1000;
  await sleep(2000);
  clearInterval(sampler);
  rss.after = rssKb(worker.pid) ?? 0;
  rss.apiAfter = rssKb(cluster.apis[0]!.pid) ?? 0;
  drainS = await waitIdle(worker.pid, opts.deadlineS * 1000);
  rss.idle = rssKb(worker.pid) ?? 0;
} finally {
  await cluster.stop();
  rmSync(path.join(OUT_DIR, 'logs', id, 'redis'), { recursive: true, force: true }); // its AOF: no evidence needed here
}

const ok = (s: Sample) => s.status === '200' || s.status === 'ack';
const shed = (s: Sample) => s.status === '429' || s.status === 'ws:overloaded';
const summarize = (ss: Sample[]) => {
  const lat = ss.filter(ok).map((s) => s.ms).sort((x, y) => x - y);
  const errors: Record<string, number> = {};
  for (const s of ss) if (!ok(s) && !shed(s)) errors[s.status] = (errors[s.status] ?? 0) + 1;
  return {
    requests: ss.length, admitted: lat.length, shed: ss.filter(shed).length,
    shedShare: ss.length ? ss.filter(shed).length / ss.length : 0,
    p50ms: percentile(lat, 50), p99ms: percentile(lat, 99), errors,
  };
};
const byKind = Object.fromEntries((['completion', 'append', 'ws-append'] as Kind[]).map((k) => [k, summarize(samples.filter((s) => s.kind === k))]));
const all = summarize(samples);
const file = writeJson(id, {
  id, options: opts, wallS, requestsPerS: samples.length / Math.max(wallS, 1e-9), all, byKind,
  workerRssKb: { before: rss.before, peak: rss.peak, after: rss.after, idle: rss.idle }, workerDrainS: drainS,
  apiRssKb: { before: rss.apiBefore, after: rss.apiAfter }, unexpectedExits: cluster.unexpectedExits(), notDone: opts.requests - samples.length,
});
const row = (name: string, s: ReturnType<typeof summarize>) => [
  name, s.requests, s.admitted, `${(s.shedShare * 100).toFixed(1)} %`, Number.isNaN(s.p50ms) ? '-' : s.p50ms, Number.isNaN(s.p99ms) ? '-' : s.p99ms,
  Object.entries(s.errors).map(([k, v]) => `${k}: ${v}`).join(', ') || '-',
];
console.log(table(['kind', 'requests', 'admitted', 'shed', 'p50 ms', 'p99 ms', 'errors by status'],
  [...Object.entries(byKind).map(([k, s]) => row(k, s)), row('all', all)]));
const mb = (kb: number) => `${(kb / 1024).toFixed(0)} MB`;
console.log(`${opts.clients} clients, ${samples.length} requests in ${wallS.toFixed(1)} s (${(samples.length / Math.max(wallS, 1e-9)).toFixed(1)}/s); ` +
  `worker VmRSS before ${mb(rss.before)}, peak ${mb(rss.peak)}, after ${mb(rss.after)}, idle ${mb(rss.idle)} (${drainS.toFixed(0)} s later); api VmRSS ${mb(rss.apiBefore)} -> ${mb(rss.apiAfter)}; ` +
  `unexpected exits ${cluster.unexpectedExits().length}`);
console.log(`results: ${file}`);
log('done');
