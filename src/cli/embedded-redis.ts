// Which Redis a command uses. Only REDIS_URL names a Redis the service did not start: without it,
// `serve` starts a private redis-server (data in RMT_DATA_DIR, append-only) and never looks at
// localhost:6379, which on a shared host may be someone else's database. The private one listens on
// a free loopback port with a random password; serve records its URL in RMT_DATA_DIR/redis.json
// (mode 0600), so `api`, `worker`, `ingest` and `generate` started with the same data dir find it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import { ConfigError, type Config } from '../config/config.ts';
import type { Log } from '../telemetry/log.ts';

export interface ResolvedRedis {
  url: string;
  /** Where the URL came from, for log lines and error messages. */
  source: 'REDIS_URL' | 'REDIS_CLUSTER_NODES' | 'private';
  child?: ChildProcess;
  stop(): Promise<void>;
}

/** What serve writes to RMT_DATA_DIR/redis.json while its private redis-server runs. */
export interface RedisRecord {
  url: string;
  redis_pid: number;
  serve_pid: number;
  data_dir: string;
}

export function recordPath(dataDir: string): string {
  return path.join(dataDir, 'redis.json');
}

/** The URL with its password masked, for logs and messages. */
export function safeUrl(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, '//***@');
}

/**
 * A connection that reports failure by rejecting only: no ioredis "Unhandled error event" stack on
 * stderr. `why` keeps the socket's error (ECONNREFUSED...), which says more than connect()'s
 * rejection ("Connection is closed.").
 */
function probe(url: string): Redis & { why?: string } {
  const r: Redis & { why?: string } = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000 });
  r.on('error', (err: Error) => (r.why ??= err.message));
  return r;
}

/** Why `url` does not answer PING ('' when it does). */
export async function unreachable(url: string): Promise<string> {
  const r = probe(url);
  try {
    await r.connect();
    const pong = await r.ping();
    return pong === 'PONG' ? '' : `PING answered ${JSON.stringify(pong)}`;
  } catch (err) {
    return r.why ?? (err instanceof Error ? err.message : String(err));
  } finally {
    r.disconnect();
  }
}

/** A Redis Cluster is named by its nodes; the connection (redis-connection.ts) finds the rest. */
function fromCluster(config: Config): ResolvedRedis {
  return { url: config.redisUrl, source: 'REDIS_CLUSTER_NODES', stop: async () => undefined };
}

/** The Redis that REDIS_URL names, if it answers; else one line saying so. */
async function fromEnv(url: string): Promise<ResolvedRedis> {
  const why = await unreachable(url);
  if (why) throw new ConfigError(`cannot reach Redis at ${safeUrl(url)} (from REDIS_URL): ${why}: is that Redis running, and is REDIS_URL right?`);
  return { url, source: 'REDIS_URL', stop: async () => undefined };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readRecord(dataDir: string): RedisRecord | undefined {
  try {
    return JSON.parse(readFileSync(recordPath(dataDir), 'utf8')) as RedisRecord;
  } catch {
    return undefined;
  }
}

/** The record's redis-server still runs, answers and keeps its data in dataDir (not a reused pid or port). */
async function recordedAndServing(rec: RedisRecord, dataDir: string): Promise<boolean> {
  if (!alive(rec.redis_pid)) return false;
  const r = probe(rec.url);
  try {
    await r.connect();
    const dir = (await r.config('GET', 'dir')) as string[];
    return dir[1] === realpathSync(dataDir); // redis reports its working directory, symlinks resolved
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

/**
 * api, worker, ingest, generate: REDIS_URL, else the private Redis of a serve running with the same
 * RMT_DATA_DIR. Never a Redis found by trying ports: that could be anybody's.
 */
export async function findRedis(config: Config, log?: Log): Promise<ResolvedRedis> {
  if (config.redisClusterNodes.length > 0) return fromCluster(config);
  if (config.redisUrl) return fromEnv(config.redisUrl);
  const rec = readRecord(config.dataDir);
  if (rec && alive(rec.serve_pid) && (await recordedAndServing(rec, config.dataDir))) {
    log?.({ redis: safeUrl(rec.url), servePid: rec.serve_pid, dataDir: config.dataDir }, 'REDIS_URL not set: using the private Redis of the serve running with this data dir');
    return { url: rec.url, source: 'private', stop: async () => undefined };
  }
  throw new ConfigError(
    `REDIS_URL is not set and no \`rmt-serve serve\` is running with data dir ${config.dataDir} (RMT_DATA_DIR): ` +
      'set REDIS_URL=redis://HOST:PORT, or start `rmt-serve serve` (it starts a private Redis) and run this with the same RMT_DATA_DIR',
  );
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no free port'))));
    });
  });
}

async function waitExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/**
 * serve: REDIS_URL if set, else a private redis-server child. A second serve on the same data dir is
 * refused (two redis-servers appending to one file would corrupt it); a redis-server left behind by
 * a serve that was killed is shut down (SHUTDOWN writes its append-only file) before a new one starts.
 */
export async function resolveRedis(config: Config, log: Log): Promise<ResolvedRedis> {
  if (config.redisClusterNodes.length > 0) return fromCluster(config);
  if (config.redisUrl) return fromEnv(config.redisUrl);
  const dataDir = path.resolve(config.dataDir);
  const rec = readRecord(dataDir);
  if (rec && (await recordedAndServing(rec, dataDir))) {
    if (alive(rec.serve_pid) && rec.serve_pid !== process.pid) {
      throw new ConfigError(`another \`rmt-serve serve\` (pid ${rec.serve_pid}) runs with data dir ${dataDir}: stop it, or start this one with another RMT_DATA_DIR`);
    }
    const r = probe(rec.url);
    await r.connect().then(() => r.call('SHUTDOWN'), () => undefined).catch(() => undefined); // the reply is the connection closing
    r.disconnect();
    if (!(await waitExit(rec.redis_pid, 10_000))) throw new ConfigError(`the redis-server left by a stopped serve (pid ${rec.redis_pid}, data dir ${dataDir}) does not stop: end it, then start serve again`);
    log({ pid: rec.redis_pid, dataDir }, 'stopped the redis-server a killed serve left running');
  }
  if (spawnSync('redis-server', ['--version']).error) {
    throw new ConfigError('REDIS_URL is not set and there is no redis-server on PATH to start a private one: install it (apt-get install redis-server) or set REDIS_URL=redis://HOST:PORT');
  }
  mkdirSync(dataDir, { recursive: true });
  const port = await freePort();
  const password = randomBytes(16).toString('hex');
  // The password travels in the config file on stdin, not on the command line that `ps` shows.
  // Its own process group: Ctrl-C in a terminal reaches serve only, which stops Redis after the worker
  // has handed back its requests (a Redis gone first would fail that shutdown).
  const child = spawn('redis-server', ['-'], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
  child.on('error', () => undefined);
  // Its log goes nowhere, but its last line is kept: it says why a start failed (port taken, bad dir).
  let lastLine = '';
  child.stdout!.on('data', (d: Buffer) => (lastLine = String(d).trim().split('\n').at(-1) ?? lastLine));
  child.stdin!.end([`port ${port}`, 'bind 127.0.0.1', `dir ${dataDir}`, 'appendonly yes', 'save ""', `requirepass ${password}`].join('\n') + '\n');
  const url = `redis://:${password}@127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  while (await unreachable(url)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new ConfigError(`the private redis-server did not start (port ${port}, data dir ${dataDir}): ${lastLine || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const record: RedisRecord = { url, redis_pid: child.pid!, serve_pid: process.pid, data_dir: dataDir };
  writeFileSync(recordPath(dataDir), JSON.stringify(record) + '\n', { mode: 0o600 });
  log({ redis: safeUrl(url), pid: child.pid, dataDir }, 'started a private redis-server (REDIS_URL not set)');
  return {
    url,
    source: 'private',
    child,
    async stop() {
      if (readRecord(dataDir)?.redis_pid === child.pid) rmSync(recordPath(dataDir), { force: true });
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM'); // redis-server flushes the append-only file on SIGTERM
      await gone;
    },
  };
}
