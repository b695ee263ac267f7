// What the data plane costs a Redis Cluster, measured on a local one (test/support/redis-cluster.ts:
// 3 masters + 3 replicas on this machine), for the capacity note in BENCHMARKS.md:
//
//   node --import tsx bench/cluster-capacity.ts > bench/results/cluster-1/cluster-capacity.txt
//
// A. Per segment: SESSIONS sessions each ingest DOC_CHARS of Brown text in appends of about one
//    segment (websocket-sized), through the client runtime and an in-process worker on the cluster.
//    Server side over every master: commands (INFO stats, Lua-internal calls included via commandstats),
//    network bytes in and out, replication bytes; divided by segments committed and by appends. The
//    idle background (BullMQ's blocking waits and stalled checks, heartbeats, the sweeper) is read
//    first for as long and subtracted.
// B. One master's ceiling: CONCURRENCY loops of accept (with WAIT 1) and of lease-less commits of a
//    STATE_BYTES state against sessions that all live on one master, SECONDS each.
// C. Queue shards: JOBS wakes of distinct sessions through the work queue with 1 and with 3 shards,
//    consumed by no-op BullMQ workers (one per shard); jobs/s and each master's share of the commands.
//
// Environment: SESSIONS (8), DOC_CHARS (20000), SECONDS (5), CONCURRENCY (16), STATE_BYTES (49152, the
// GPT-2-small package's memory), JOBS (3000).
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { loadConfig } from '../src/config/config.ts';
import { keySlot } from '../src/state/key-slot.ts';
import { redisKeys, type KeyLayout } from '../src/state/keys.ts';
import { connectRedis, duplicateClient, masters, type RedisClient } from '../src/state/redis-connection.ts';
import { SessionStore } from '../src/state/session-store.ts';
import { SessionLog } from '../src/queue/session-log.ts';
import { WORK_QUEUE, WorkQueue } from '../src/queue/work-queue.ts';
import { startClientRuntime } from '../src/queue/client-runtime.ts';
import { startWorkerRuntime } from '../src/worker/runtime.ts';
import { heldOutText } from '../test/support/brown.ts';
import { startRedisCluster } from '../test/support/redis-cluster.ts';

const SESSIONS = Number(process.env.SESSIONS ?? 8);
const DOC_CHARS = Number(process.env.DOC_CHARS ?? 20000);
const SECONDS = Number(process.env.SECONDS ?? 5);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 16);
const STATE_BYTES = Number(process.env.STATE_BYTES ?? 49152);
const JOBS = Number(process.env.JOBS ?? 3000);
const MODEL = 'rmt-brown-small';

interface NodeStats { port: number; commands: number; netIn: number; netOut: number; replOut: number; calls: Map<string, number> }

async function stats(node: Redis): Promise<NodeStats> {
  const [info, cmd] = await Promise.all([node.info('stats'), node.info('commandstats')]);
  const num = (k: string) => Number(new RegExp(`^${k}:(\\d+)`, 'm').exec(info)?.[1] ?? 0);
  const calls = new Map<string, number>();
  for (const m of cmd.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(m[1]!, Number(m[2]));
  return { port: node.options.port!, commands: num('total_commands_processed'), netIn: num('total_net_input_bytes'),
    netOut: num('total_net_output_bytes'), replOut: num('total_net_repl_output_bytes'), calls };
}

/** Server-side counters over every master, summed, between two readings. */
function delta(a: NodeStats[], b: NodeStats[]) {
  const d = { commands: 0, netIn: 0, netOut: 0, replOut: 0, calls: new Map<string, number>(), perMaster: [] as number[] };
  for (const x of b) {
    const y = a.find((s) => s.port === x.port)!;
    d.commands += x.commands - y.commands;
    d.netIn += x.netIn - y.netIn;
    d.netOut += x.netOut - y.netOut;
    d.replOut += x.replOut - y.replOut;
    d.perMaster.push(x.commands - y.commands);
    for (const [k, v] of x.calls) d.calls.set(k, (d.calls.get(k) ?? 0) + v - (y.calls.get(k) ?? 0));
  }
  return d;
}

const readAll = (r: RedisClient) => Promise.all(masters(r).map(stats));
const fmt = (n: number, digits = 1) => n.toFixed(digits);
const until = async (what: string, check: () => Promise<boolean>) => {
  const deadline = Date.now() + 600_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const cluster = await startRedisCluster();
const env = { REDIS_CLUSTER_NODES: cluster.nodes.join(','), RMT_MODELS: MODEL, RMT_INTRA_OP_THREADS: '1', RMT_PREFIX: 'capa' };
const config = loadConfig(env);
const version = execFileSync('redis-server', ['--version']).toString().match(/v=(\S+)/)?.[1] ?? '?';
console.log(`# cluster-capacity: local Redis Cluster, 3 masters + 3 replicas (redis-server ${version}), one machine (${os.cpus().length} cores); ${new Date().toISOString()}`);

// ---- A. per segment --------------------------------------------------------------------------
{
  const worker = await startWorkerRuntime(config);
  const client = startClientRuntime(config);
  const m = worker.engine.model(MODEL);
  const spec = { model: MODEL, shape: m.stateShape, dtype: m.stateDtype };
  const ids = await Promise.all(Array.from({ length: SESSIONS }, async () => (await client.store.create(spec, m.initState)).id));
  const idle0 = await readAll(client.redis);
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, 3000));
  const idle = delta(idle0, await readAll(client.redis));
  const idleMs = Date.now() - t0;
  const text = heldOutText();
  const chunk = 600; // about one 128-token segment of Brown text
  const before = await readAll(client.redis);
  const start = Date.now();
  let appends = 0;
  await Promise.all(ids.map(async (id, i) => {
    const doc = text.slice(i * 997, i * 997 + DOC_CHARS);
    for (let at = 0; at < doc.length; at += chunk) {
      await client.queue.submit(id, { kind: 'ingest', text: doc.slice(at, at + chunk), flush: false }, { wantResult: false });
      appends++;
    }
  }));
  await until('every append applied', async () => (await Promise.all(ids.map((id) => client.store.get(id)))).every((r) => r && r.appliedSeq === r.acceptedSeq));
  const ms = Date.now() - start;
  const d = delta(before, await readAll(client.redis));
  const recs = await Promise.all(ids.map((id) => client.store.get(id)));
  const segments = recs.reduce((n, r) => n + r!.segmentsCommitted, 0);
  const tokens = recs.reduce((n, r) => n + r!.tokensIngested, 0);
  const commits = recs.reduce((n, r) => n + r!.version, 0);
  const scale = ms / idleMs; // the idle background over as long as the load ran
  const net = (x: number, idleX: number) => x - idleX * scale;
  const stored = await Promise.all(ids.map((id) => client.store.storedBytes(id)));
  console.log(`\n## A. per segment (${MODEL}: ${m.segmentLength}-token segments, state ${m.initState.byteLength} B), ${SESSIONS} sessions × ${DOC_CHARS} chars in ${chunk}-char appends`);
  console.log(`appends ${appends}, segments committed ${segments}, commits ${commits}, tokens ${tokens}, ${fmt(ms / 1000)} s (this machine's CPU engine bounds the rate; the Redis figures are per unit of work)`);
  console.log(`idle background: ${fmt((idle.commands / idleMs) * 1000, 0)} commands/s over every master (BullMQ blocking waits and stalled checks, heartbeats, sweeper), subtracted below`);
  console.log('| per | commands | net in B | net out B | replication out B |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [what, n] of [['segment', segments], ['append', appends]] as const) {
    console.log(`| ${what} | ${fmt(net(d.commands, idle.commands) / n)} | ${fmt(net(d.netIn, idle.netIn) / n, 0)} | ${fmt(net(d.netOut, idle.netOut) / n, 0)} | ${fmt(net(d.replOut, idle.replOut) / n, 0)} |`);
  }
  const top = [...d.calls].map(([k, v]) => [k, v - (idle.calls.get(k) ?? 0) * scale] as const).filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]).slice(0, 12);
  console.log(`commands per segment by name (Lua-internal calls included): ${top.map(([k, v]) => `${k} ${fmt(v / segments, 2)}`).join(', ')}`);
  console.log(`a session's hash in Redis: ${Math.min(...stored)}–${Math.max(...stored)} B (MEMORY USAGE)`);
  await client.close();
  await worker.close(0);
}

// ---- B. one master's ceiling -----------------------------------------------------------------
{
  const redis = connectRedis(config);
  const layout: KeyLayout = { cluster: true, queueShards: 3 };
  const store = new SessionStore(redis, { prefix: 'capb', ttlSeconds: 3600, layout, durability: { replicas: 1, timeoutMs: 2000 } });
  const log = new SessionLog(redis, { prefix: 'capb', ttlSeconds: 3600, layout, durability: { replicas: 1, timeoutMs: 2000 } });
  const floats = STATE_BYTES / 4;
  const spec = { model: 'bench', shape: [floats], dtype: 'float32' as const };
  // Sessions whose slot is in the first master's range (slots 0..5460 with the even split).
  const ids: string[] = [];
  for (let i = 0; ids.length < CONCURRENCY; i++) if (keySlot(`b${i}`) < 5461) ids.push(`b${i}`);
  for (const id of ids) await store.create(spec, new Float32Array(floats), { id });
  const state = new Float32Array(floats).fill(0.5);
  const run = async (op: (id: string, v: number) => Promise<unknown>) => {
    let n = 0;
    const end = Date.now() + SECONDS * 1000;
    await Promise.all(ids.map(async (id) => {
      for (let v = 0; Date.now() < end; v++, n++) await op(id, v);
    }));
    return n / SECONDS;
  };
  const versions = new Map(ids.map((id) => [id, 0]));
  const commits = await run(async (id) => {
    const v = versions.get(id)!;
    versions.set(id, await store.commit(id, v, { state, tail: [], pendingText: '', addTokensIngested: 128, addSegments: 1, addTokensGenerated: 0, curSeq: 0, curOffset: 0 }));
  });
  const plain = new SessionStore(redis, { prefix: 'capb', ttlSeconds: 3600, layout });
  const commitsNoWait = await run(async (id) => {
    const v = versions.get(id)!;
    versions.set(id, await plain.commit(id, v, { state, tail: [], pendingText: '', addTokensIngested: 128, addSegments: 1, addTokensGenerated: 0, curSeq: 0, curOffset: 0 }));
  });
  const accepts = await run((id) => log.accept(id, { kind: 'ingest', text: 'x'.repeat(600), flush: false }, { wantResult: false }));
  const noWait = new SessionLog(redis, { prefix: 'capb', ttlSeconds: 3600, layout });
  const acceptsNoWait = await run((id) => noWait.accept(id, { kind: 'ingest', text: 'x'.repeat(600), flush: false }, { wantResult: false }));
  console.log(`\n## B. one master's ceiling (${CONCURRENCY} concurrent loops, ${SECONDS} s each, sessions all on one master; client and 6 redis-servers share this machine's cores)`);
  console.log('| operation | per second |');
  console.log('|---|---:|');
  console.log(`| commit of a ${STATE_BYTES} B state (commit.lua, WAIT 1 as a snapshot import does) | ${fmt(commits, 0)} |`);
  console.log(`| commit of a ${STATE_BYTES} B state, no WAIT (as a worker's commits) | ${fmt(commitsNoWait, 0)} |`);
  console.log(`| accept of a 600-char append (accept.lua + WAIT 1) | ${fmt(accepts, 0)} |`);
  console.log(`| accept of a 600-char append, no WAIT | ${fmt(acceptsNoWait, 0)} |`);
  redis.disconnect();
}

// ---- C. queue shards -------------------------------------------------------------------------
console.log(`\n## C. queue shards: ${JOBS} wakes of distinct sessions, consumed by no-op workers (one per shard, concurrency 16 each)`);
console.log('| shards | jobs/s (add + consume) | commands per job | share of the commands on each master |');
console.log('|---:|---:|---:|---|');
for (const shards of [1, 3]) {
  const redis = connectRedis(config);
  const keys = redisKeys(`capc${shards}`, { cluster: true, queueShards: shards });
  const work = new WorkQueue(redis, keys);
  let done = 0;
  const conns = Array.from({ length: shards }, () => duplicateClient(redis));
  const workers = conns.map((connection, shard) => new Worker(WORK_QUEUE, async () => void done++, { connection, prefix: keys.queuePrefix(shard), concurrency: 16 }));
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const before = await readAll(redis);
  const start = Date.now();
  for (let i = 0; i < JOBS; i += 50) await Promise.all(Array.from({ length: Math.min(50, JOBS - i) }, (_, k) => work.wake(`s${shards}x${i + k}`)));
  await until('every job consumed', async () => done >= JOBS);
  const ms = Date.now() - start;
  const d = delta(before, await readAll(redis));
  const total = d.perMaster.reduce((a, b) => a + b, 0);
  console.log(`| ${shards} | ${fmt((JOBS / ms) * 1000, 0)} | ${fmt(d.commands / JOBS)} | ${d.perMaster.map((n) => `${fmt((100 * n) / total, 0)} %`).join(' · ')} |`);
  await Promise.all(workers.map((w) => w.close()));
  await work.close();
  for (const c of conns) c.disconnect();
  redis.disconnect();
}

await cluster.stop();
process.exit(0);
