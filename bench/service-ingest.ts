// The whole data plane under ingest load, against the engine alone, in one process run: a private
// redis-server, an in-process worker runtime (BullMQ worker + engine thread) and a client runtime.
// For each level N, N sessions ingest full segments of token ids at once for SECONDS:
//   engine alone   N loops calling engine.advance(ids, state) directly (the runtime's own engine; the
//                  state-only graph, which is what the worker runs for ingest without scores)
//   service        N loops of queue.submit(session, {kind:'ingest', ids}) then queue.result(submitted)
//
//   node --import tsx bench/service-ingest.ts
//
// Environment: SESSIONS ("1,8,32"), SECONDS per level and mode (10), MODEL (rmt-brown-small),
// THREADS (RMT_INTRA_OP_THREADS, 1), MAX_BATCH (RMT_MAX_BATCH, 32), REQUEST_IDS (ids per ingest
// request, 128 = one segment; a multiple of the segment length).
//
// What is counted:
//   tok/s       tokens run through the segment_state graph per second (segments × segment_length / elapsed).
//               A session commits a full tail when its next token arrives (request-plan.ts), so each
//               service session is primed with one unmeasured request; every measured request then
//               commits exactly REQUEST_IDS/128 segments (counted from the results).
//   latency     engine: per engine.advance call. service: submit → result of one request (one
//               segment at REQUEST_IDS=128), including submit; "submit" is the submit() part alone.
//   rows        rows per onnxruntime run of that graph (engine.onBatch), mean and max.
//   loop p99    main-thread event-loop delay p99 (perf_hooks, 10 ms resolution, beyond the 10 ms).
//   rt/seg      client round trips per segment: commands written by every ioredis connection in this
//               process (client, worker, BullMQ's connections), a pipeline/multi counted once.
//   cpu         cores busy during the phase: this process (all threads), the redis-server, everything
//               else on the machine (/proc/stat busy time minus those two); "other" is contention.
//   cmd/seg     server side: INFO commandstats delta / segments (includes commands run inside Lua scripts).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config/config.ts';
import type { BatchStat, Engine } from '../src/engine/engine.ts';
import type { RequestResult } from '../src/queue/request.ts';
import { startClientRuntime } from '../src/queue/client-runtime.ts';
import { startWorkerRuntime } from '../src/worker/runtime.ts';
import { startRedis } from '../test/support/redis-server.ts';
import { percentile, tokens } from './bench-support.ts';

const MODEL = process.env.MODEL ?? 'rmt-brown-small';
const LEVELS = (process.env.SESSIONS ?? '1,8,32').split(',').map(Number);
const SECONDS = Number(process.env.SECONDS ?? 10);
const THREADS = Number(process.env.THREADS ?? 1);
const MAX_BATCH = Number(process.env.MAX_BATCH ?? 32);
const REQUEST_IDS = Number(process.env.REQUEST_IDS ?? 128);
const RESOLUTION_MS = 10;

// ---------------------------------------------------------------------------------------------
// Client-side command counting: every ioredis connection in this process goes through
// Redis.prototype.sendCommand; pipeline commands arrive with a per-exec stream object.

const lua = new Map<string, string>(); // sha1 → script name, for the breakdown
for (const f of readdirSync(new URL('../src/state/lua/', import.meta.url))) {
  if (f.endsWith('.lua')) lua.set(createHash('sha1').update(readFileSync(new URL(`../src/state/lua/${f}`, import.meta.url), 'utf8')).digest('hex'), `store:${f.slice(0, -4)}`);
}
const proto = Redis.prototype as unknown as {
  sendCommand(this: Redis, command: { name: string; args: unknown[] }, stream?: object): unknown;
  defineCommand(this: Redis, name: string, def: { lua: string; numberOfKeys?: number }): void;
};
const origDefine = proto.defineCommand;
proto.defineCommand = function (name, def) {
  lua.set(createHash('sha1').update(def.lua).digest('hex'), `bullmq:${name.split(':')[0]}`);
  return origDefine.call(this, name, def);
};
const uncounted = new WeakSet<Redis>();
const seenStreams = new WeakSet<object>();
const counts = { roundTrips: 0, commands: 0, byName: new Map<string, number>() };
const origSend = proto.sendCommand;
proto.sendCommand = function (command, stream) {
  if (!uncounted.has(this)) {
    counts.commands++;
    if (!stream) counts.roundTrips++;
    else if (!seenStreams.has(stream)) {
      seenStreams.add(stream);
      counts.roundTrips++;
    }
    let name = command.name.toLowerCase();
    if (name === 'evalsha' || name === 'eval') {
      const a0 = command.args[0];
      const sha = name === 'eval' ? createHash('sha1').update(String(a0)).digest('hex') : String(a0);
      name = lua.get(sha) ?? `${name}:?`;
    }
    counts.byName.set(name, (counts.byName.get(name) ?? 0) + 1);
  }
  return origSend.call(this, command, stream);
};
function snapCounts() {
  return { roundTrips: counts.roundTrips, commands: counts.commands, byName: new Map(counts.byName) };
}

async function serverCommands(mon: Redis): Promise<Map<string, number>> {
  const info = await mon.info('commandstats');
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}
function sumDelta(a: Map<string, number>, b: Map<string, number>): number {
  let s = 0;
  for (const [k, v] of b) s += v - (a.get(k) ?? 0);
  return s;
}

// ---------------------------------------------------------------------------------------------
// CPU accounting, to tell this run's numbers from other load on the machine: CPU seconds per wall
// second (cores) used by this process (all threads), by the private redis-server, and by everything
// else (machine busy time from /proc/stat minus those two).

const TICK_S = 0.01; // USER_HZ 100 on Linux
function machineBusyS(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number); // user..steal (guest is inside user)
  const total = f.reduce((a, b) => a + b, 0);
  return (total - f[3]! - f[4]!) * TICK_S; // minus idle, iowait
}
function pidCpuS(pid: number): number {
  if (!pid) return 0;
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * TICK_S; // utime, stime
  } catch {
    return 0;
  }
}
interface Cpu { own: number; redis: number; other: number }
function cpuMeter(redisPid: number): () => Cpu {
  const t0 = performance.now();
  const own0 = process.cpuUsage();
  const r0 = pidCpuS(redisPid);
  const m0 = machineBusyS();
  return () => {
    const wall = (performance.now() - t0) / 1000;
    const ownU = process.cpuUsage(own0);
    const own = (ownU.user + ownU.system) / 1e6;
    const redis = pidCpuS(redisPid) - r0;
    const busy = machineBusyS() - m0;
    return { own: own / wall, redis: redis / wall, other: Math.max(0, busy - own - redis) / wall };
  };
}

// ---------------------------------------------------------------------------------------------

interface Row {
  mode: 'engine' | 'service';
  sessions: number;
  seconds: number;
  segments: number;
  latencies: number[];
  submitMs: number[];
  batches: BatchStat[];
  loopP99: number;
  loadavg: number;
  cpu: Cpu;
  roundTrips?: number;
  clientCommands?: number;
  serverCommands?: number;
  byName?: [string, number][];
}

let redisPid = 0;

async function measure(engine: Engine, body: (deadline: number) => Promise<void>): Promise<{ seconds: number; batches: BatchStat[]; loopP99: number; cpu: Cpu }> {
  const batches: BatchStat[] = [];
  const stop = engine.onBatch((s) => {
    if (s.graph === 'advance') batches.push(s);
  });
  const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  const cpu = cpuMeter(redisPid);
  const t0 = performance.now();
  h.enable();
  await body(t0 + SECONDS * 1000);
  h.disable();
  const seconds = (performance.now() - t0) / 1000;
  stop();
  return { seconds, batches, loopP99: Math.max(0, h.percentile(99) / 1e6 - RESOLUTION_MS), cpu: cpu() };
}

function fmtRows(b: BatchStat[]): string {
  if (b.length === 0) return '-';
  const mean = b.reduce((s, x) => s + x.rows, 0) / b.length;
  return `${mean.toFixed(1)} (max ${Math.max(...b.map((x) => x.rows))})`;
}

function histogram(b: BatchStat[]): string {
  const rows = new Map<number, number>();
  for (const x of b) rows.set(x.rows, (rows.get(x.rows) ?? 0) + 1);
  return [...rows.entries()].sort((a, c) => a[0] - c[0]).map(([n, c]) => `${n}×${c}`).join(' ');
}

async function main(): Promise<void> {
  const cpu = os.cpus()[0]?.model ?? '?';
  console.log(
    `service ingest bench: model ${MODEL}, ${os.cpus().length} CPUs (${cpu}), node ${process.version}, ` +
      `RMT_INTRA_OP_THREADS ${THREADS}, RMT_MAX_BATCH ${MAX_BATCH}, ${SECONDS} s per level and mode, ` +
      `${REQUEST_IDS} token ids per ingest request, one request in flight per session; loadavg at start ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`,
  );
  const redisServer = await startRedis();
  const mon = new Redis(redisServer.url); // INFO only; not counted
  uncounted.add(mon);
  const serverInfo = await mon.info('server');
  const version = /redis_version:(\S+)/.exec(serverInfo)?.[1] ?? '?';
  redisPid = Number(/process_id:(\d+)/.exec(serverInfo)?.[1] ?? 0);
  const config = loadConfig({
    REDIS_URL: redisServer.url,
    RMT_PREFIX: 'bench',
    RMT_MODELS: MODEL,
    RMT_INTRA_OP_THREADS: String(THREADS),
    RMT_MAX_BATCH: String(MAX_BATCH),
  });
  const t0 = performance.now();
  const worker = await startWorkerRuntime(config);
  const client = startClientRuntime(config);
  const engine = worker.engine;
  const info = engine.model(MODEL);
  const S = info.segmentLength;
  if (REQUEST_IDS % S !== 0) throw new Error(`REQUEST_IDS must be a multiple of ${S}`);
  console.log(
    `redis-server ${version} on ${redisServer.url} (private, no persistence); worker concurrency ${config.workerConcurrency}, ` +
      `maxBatchTokens ${config.maxBatchTokens}; runtimes ready in ${(performance.now() - t0).toFixed(0)} ms`,
  );

  const newSession = () => client.store.create({ model: info.name, shape: info.stateShape, dtype: info.stateDtype }, info.initState);

  // Warm-up: batch shapes in the engine, script cache and QueueEvents connection on the service side.
  for (const n of [1, 8, MAX_BATCH]) {
    await Promise.all(Array.from({ length: n }, (_, s) => engine.advance(MODEL, tokens(s, S, info.vocabSize), info.initState)));
  }
  await Promise.all(
    Array.from({ length: 8 }, async (_, s) => {
      const sess = await newSession();
      for (let k = 0; k < 3; k++) {
        const submitted = await client.queue.submit(sess.id, { kind: 'ingest', ids: tokens(s * 7 + k, REQUEST_IDS, info.vocabSize) });
        await client.queue.result(submitted, 60_000);
      }
    }),
  );

  const rows: Row[] = [];
  try {
    for (const n of LEVELS) {
      // Engine alone.
      {
        const latencies: number[] = [];
        let segments = 0;
        const m = await measure(engine, async (deadline) => {
          await Promise.all(
            Array.from({ length: n }, async (_, s) => {
              let state = info.initState;
              let k = 0;
              while (performance.now() < deadline) {
                const ids = tokens(s * 100003 + k++, S, info.vocabSize);
                const start = performance.now();
                state = await engine.advance(MODEL, ids, state);
                latencies.push(performance.now() - start);
                segments++;
              }
            }),
          );
        });
        rows.push({ mode: 'engine', sessions: n, segments, latencies: latencies.sort((a, b) => a - b), submitMs: [], ...m, loadavg: os.loadavg()[0]! });
      }
      // Through the queue and Redis.
      {
        // Each session is primed with one request first (its tail is then full), so every measured
        // request commits exactly REQUEST_IDS / segment_length segments.
        const sessions = await Promise.all(
          Array.from({ length: n }, async (_, s) => {
            const sess = await newSession();
            const submitted = await client.queue.submit(sess.id, { kind: 'ingest', ids: tokens(s * 100003 + 999_999, REQUEST_IDS, info.vocabSize) });
            const r = await client.queue.result(submitted, 120_000);
            return { id: sess.id, committed: r.segmentsCommitted };
          }),
        );
        const latencies: number[] = [];
        const submitMs: number[] = [];
        let segments = 0;
        const c0 = snapCounts();
        const s0 = await serverCommands(mon);
        const m = await measure(engine, async (deadline) => {
          await Promise.all(
            sessions.map(async (sess, s) => {
              let k = 0;
              let committed = sess.committed;
              while (performance.now() < deadline) {
                const ids = tokens(s * 100003 + k++, REQUEST_IDS, info.vocabSize);
                const start = performance.now();
                const submitted = await client.queue.submit(sess.id, { kind: 'ingest', ids });
                submitMs.push(performance.now() - start);
                const r: RequestResult = await client.queue.result(submitted, 120_000);
                latencies.push(performance.now() - start);
                if (r.error) throw new Error(`request ${submitted.sessionId}#${submitted.seq}: ${r.error.code} ${r.error.message}`);
                segments += r.segmentsCommitted - committed;
                committed = r.segmentsCommitted;
              }
            }),
          );
        });
        const s1 = await serverCommands(mon);
        const c1 = snapCounts();
        const byName = [...c1.byName.entries()]
          .map(([k, v]) => [k, v - (c0.byName.get(k) ?? 0)] as [string, number])
          .filter(([, v]) => v > 0)
          .sort((a, b) => b[1] - a[1]);
        rows.push({
          mode: 'service', sessions: n, segments, latencies: latencies.sort((a, b) => a - b), submitMs: submitMs.sort((a, b) => a - b), ...m,
          loadavg: os.loadavg()[0]!,
          roundTrips: c1.roundTrips - c0.roundTrips, clientCommands: c1.commands - c0.commands,
          serverCommands: sumDelta(s0, s1) - 1, // minus the INFO that took s1
          byName,
        });
        await Promise.all(sessions.map((x) => client.store.delete(x.id)));
      }
      const [e, sv] = rows.slice(-2) as [Row, Row];
      console.log(
        `N=${n}: engine ${((e.segments * S) / e.seconds).toFixed(0)} tok/s, service ${((sv.segments * S) / sv.seconds).toFixed(0)} tok/s ` +
          `(loadavg 1m ${sv.loadavg.toFixed(2)})`,
      );
    }
  } finally {
    mon.disconnect();
    await client.close();
    await worker.close(0);
    await redisServer.stop();
  }

  // ------------------------------------------------------------------------------------------
  console.log('');
  const header = ['mode', 'N', 'tok/s', 'segments', 'lat p50 ms', 'lat p99 ms', 'submit p50 ms', 'rows/run', 'run p50 ms', 'loop p99 ms', 'rt/seg', 'cmd/seg', 'vs engine', 'cpu own', 'cpu redis', 'cpu other', 'load 1m'];
  const table: string[][] = [];
  for (const r of rows) {
    const tps = (r.segments * S) / r.seconds;
    const eng = rows.find((x) => x.mode === 'engine' && x.sessions === r.sessions)!;
    const engTps = (eng.segments * S) / eng.seconds;
    const runMs = r.batches.map((b) => b.ms).sort((a, b) => a - b);
    table.push([
      r.mode,
      String(r.sessions),
      tps.toFixed(0),
      String(r.segments),
      percentile(r.latencies, 50).toFixed(0),
      percentile(r.latencies, 99).toFixed(0),
      r.submitMs.length ? percentile(r.submitMs, 50).toFixed(1) : '-',
      fmtRows(r.batches),
      runMs.length ? percentile(runMs, 50).toFixed(0) : '-',
      r.loopP99.toFixed(1),
      r.roundTrips !== undefined ? (r.roundTrips / r.segments).toFixed(1) : '-',
      r.serverCommands !== undefined ? (r.serverCommands / r.segments).toFixed(1) : '-',
      r.mode === 'service' ? (tps / engTps).toFixed(2) : '1',
      r.cpu.own.toFixed(2),
      r.cpu.redis.toFixed(2),
      r.cpu.other.toFixed(2),
      r.loadavg.toFixed(2),
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(widths[i]!)).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 1) + ':').join('|')}|`);
  for (const t of table) console.log(line(t));
  console.log('');
  for (const r of rows) {
    console.log(`${r.mode.padEnd(7)} N=${String(r.sessions).padEnd(2)} rows per run: ${histogram(r.batches)}`);
  }
  for (const r of rows.filter((x) => x.mode === 'service')) {
    const per = (r.byName ?? []).slice(0, 10).map(([k, v]) => `${k} ${(v / r.segments).toFixed(2)}`).join(', ');
    console.log(`service N=${String(r.sessions).padEnd(2)} client commands per segment (${(r.clientCommands! / r.segments).toFixed(1)} in all): ${per}`);
  }
  console.log(`loadavg at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
}

await main();
