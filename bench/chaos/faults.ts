// The fault injector of a crash trial. Faults are planned from the seed as points of the document's
// progress (a fraction of its tokens applied, in [0.03, 0.93]; crash loops in [0.03, 0.75], so
// that work is left for the holders to be killed over); each waits for its point and for a
// short seeded gap after the previous fault. So that every fault lands while the session is being
// streamed and applied, however fast this host is, the injector gates the client: it may send only
// up to the next fault's point plus one window; during a crash loop one window past what is applied
// (the session stays busy); and never past the cap (the chunks ending by 95 % of the document, all
// but the last at least) until every fault is done. A point past what the cap lets through counts
// as reached once the cap's chunks are applied (trial.ts: trigger). Kinds:
//   worker  SIGKILL a random worker (restarted at once)
//   loop    a crash loop: n times, find the worker holding the session and SIGKILL it (restarted at
//           once), then wait for the next holder. The holder is the ready worker that used the most
//           CPU over 150 ms while the session has acknowledged work to apply (one session: only its
//           holder runs the model; workers ready for under 1.5 s are left out); if none is busy within
//           8 s, a random worker is killed instead (not counted as a holder kill).
//   api     SIGKILL the API process serving the client's websocket (a random one when none is),
//           restarted on the same port; never both at once
//   redis   SIGKILL redis-server, restart it on the same port and data dir after 0.3-2 s (it reloads
//           the append-only file; with appendfsync everysec up to ~1 s of writes can be lost)
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuTicks, type Cluster, type Proc } from './procs.ts';
import type { Rng } from './rng.ts';

export interface FaultPlanOptions {
  workerKills: number;
  apiKills: number;
  redisKills: number;
  /** Share of the worker kills done in crash loops of the holder (the rest are random kills). */
  loopShare: number;
  /** Kills per crash loop, drawn in [loopMin, loopMax] (the last loop takes what is left). */
  loopMin: number;
  loopMax: number;
}

export interface FaultEvent {
  at: number;
  kind: 'worker' | 'loop' | 'api' | 'redis';
  n: number;
}

export interface FaultLogEntry {
  t: number;
  tokens: number;
  what: string;
}

export interface FaultStats {
  planned: { worker: number; api: number; redis: number };
  workerKills: number;
  /** Worker kills whose target was found busy (the session's holder). */
  holderKills: number;
  loops: number;
  apiKills: number;
  redisKills: number;
  redisDownMs: number;
  log: FaultLogEntry[];
}

export function planFaults(r: Rng, p: FaultPlanOptions): FaultEvent[] {
  const events: FaultEvent[] = [];
  const at = (last = 0.93) => 0.03 + (last - 0.03) * r.next();
  let inLoops = Math.round(p.workerKills * p.loopShare);
  const singles = p.workerKills - inLoops;
  while (inLoops > 0) {
    const n = Math.min(inLoops, r.int(p.loopMin, p.loopMax));
    events.push({ at: at(0.75), kind: 'loop', n });
    inLoops -= n;
  }
  for (let i = 0; i < singles; i++) events.push({ at: at(), kind: 'worker', n: 1 });
  for (let i = 0; i < p.apiKills; i++) events.push({ at: at(), kind: 'api', n: 1 });
  for (let i = 0; i < p.redisKills; i++) events.push({ at: at(), kind: 'redis', n: 1 });
  return events.sort((a, b) => a.at - b.at);
}

const alive = (p: Proc) => p.child.exitCode === null && p.child.signalCode === null && !p.killedByUs;

/**
 * The worker that used the most CPU over sampleMs, if at least 15 % of a core; only workers ready
 * for over 1.5 s (a fresh one is busy starting up).
 */
export async function busiestWorker(c: Cluster, sampleMs = 300): Promise<Proc | undefined> {
  const ws = c.workers.filter((w) => alive(w) && w.readyAt !== undefined && Date.now() - w.readyAt > 1500);
  const before = ws.map((w) => cpuTicks(w.pid));
  await sleep(sampleMs);
  let best: Proc | undefined;
  let bestTicks = Math.ceil((sampleMs / 10) * 0.15); // clock ticks are 10 ms
  ws.forEach((w, i) => {
    const a = before[i];
    const b = cpuTicks(w.pid);
    if (a !== undefined && b !== undefined && b - a >= bestTicks && alive(w)) {
      best = w;
      bestTicks = b - a;
    }
  });
  return best;
}

export interface InjectorContext {
  cluster: Cluster;
  r: Rng;
  /** Tokens applied so far. */
  tokens: () => number;
  /** Tokens applied at which a fault planned at `at` (a share of the document) is due. */
  trigger: (at: number) => number;
  signal: AbortSignal;
  started: number;
  /** Tokens of the document. */
  total: number;
  /** Tokens the client may send beyond a gate point. */
  window: number;
  /** Sets how many tokens the client may send: a number, 'loop' or 'open'. */
  setGate: (g: number | 'loop' | 'open') => void;
  /** Whether the session has acknowledged work not yet applied. */
  hasWork: () => boolean;
  /** Port of the API serving the stream now, if any. */
  streamPort: () => number | undefined;
}

export async function injectFaults(events: FaultEvent[], ctx: InjectorContext): Promise<FaultStats> {
  const { cluster: c, r, signal } = ctx;
  const stats: FaultStats = {
    planned: {
      worker: events.filter((e) => e.kind !== 'api' && e.kind !== 'redis').reduce((s, e) => s + e.n, 0),
      api: events.filter((e) => e.kind === 'api').length,
      redis: events.filter((e) => e.kind === 'redis').length,
    },
    workerKills: 0, holderKills: 0, loops: 0, apiKills: 0, redisKills: 0, redisDownMs: 0, log: [],
  };
  const note = (what: string) => stats.log.push({ t: Math.round((Date.now() - ctx.started) / 100) / 10, tokens: ctx.tokens(), what });

  const killWorker = (w: Proc, why: string) => {
    c.kill(w);
    stats.workerKills++;
    note(`SIGKILL ${w.name} pid ${w.pid} (${why})`);
    void c.restart(w).catch((e) => note(`restart ${w.name} failed: ${e.message}`));
  };

  for (const ev of events) {
    ctx.setGate(ev.at * ctx.total + ctx.window);
    while (!signal.aborted && ctx.tokens() < ctx.trigger(ev.at)) await sleep(100);
    if (signal.aborted) break;
    if (ev.kind === 'loop') ctx.setGate('loop');
    await sleep(r.int(200, 1500));
    if (ev.kind === 'worker') {
      const ws = c.workers.filter(alive);
      if (ws.length) killWorker(r.pick(ws), 'random');
    } else if (ev.kind === 'loop') {
      stats.loops++;
      for (let k = 0; k < ev.n && !signal.aborted; k++) {
        let holder: Proc | undefined;
        const until = Date.now() + 8_000;
        while (!holder && !signal.aborted && Date.now() < until) holder = ctx.hasWork() ? await busiestWorker(c, 150) : await sleep(100);
        if (signal.aborted) break;
        if (holder) {
          stats.holderKills++;
          killWorker(holder, `holder, crash loop ${stats.loops} kill ${k + 1}/${ev.n}`);
        } else {
          const ws = c.workers.filter(alive);
          if (ws.length) killWorker(r.pick(ws), `crash loop ${stats.loops}: no busy worker in 8 s, random`);
        }
        await sleep(r.int(0, 200));
      }
    } else if (ev.kind === 'api') {
      // Only when every API is up, so one is always serving.
      while (!signal.aborted && !c.apis.every(alive)) await sleep(200);
      const serving = c.apis.find((x) => x.port === ctx.streamPort());
      const a = serving ?? r.pick(c.apis);
      c.kill(a);
      stats.apiKills++;
      note(`SIGKILL ${a.name} pid ${a.pid} (port ${a.port}, ${serving ? 'serving the stream' : 'random: no stream open'})`);
      void c.restart(a).catch((e) => note(`restart ${a.name} failed: ${e.message}`));
    } else {
      const red = c.redis!;
      const t0 = Date.now();
      c.kill(red);
      stats.redisKills++;
      note(`SIGKILL redis-server pid ${red.pid}`);
      await c.waitExit(red);
      await sleep(r.int(300, 2000));
      try {
        await c.restart(red);
        stats.redisDownMs = Date.now() - t0;
        note(`redis-server restarted (pid ${c.redis!.pid}, same port and AOF) after ${stats.redisDownMs} ms`);
      } catch (e) {
        note(`redis restart failed: ${(e as Error).message}`);
      }
    }
  }
  ctx.setGate('open');
  return stats;
}
