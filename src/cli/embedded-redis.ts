// `serve` with no Redis: REDIS_URL if set; else localhost:6379 if something answers; else a private
// redis-server child (data under RMT_DATA_DIR, append-only file on) if the binary is on PATH.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { Redis } from 'ioredis';
import { ConfigError, type Config } from '../config/config.ts';

async function answers(url: string): Promise<boolean> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1000 });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no free port'))));
    });
  });
}

export interface ResolvedRedis {
  url: string;
  child?: ChildProcess;
  stop(): Promise<void>;
}

export async function resolveRedis(
  config: Config,
  log: (o: Record<string, unknown>, m: string) => void,
  local = 'redis://127.0.0.1:6379',
): Promise<ResolvedRedis> {
  if (config.redisUrl) {
    if (!(await answers(config.redisUrl))) throw new ConfigError(`REDIS_URL=${config.redisUrl} does not answer`);
    return { url: config.redisUrl, stop: async () => undefined };
  }
  if (await answers(local)) return { url: local, stop: async () => undefined };
  if (spawnSync('redis-server', ['--version']).error) {
    throw new ConfigError(`no Redis at ${local.replace('redis://', '')} and no redis-server on PATH: install it (apt-get install redis-server) or set REDIS_URL`);
  }
  mkdirSync(config.dataDir, { recursive: true });
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', config.dataDir, '--appendonly', 'yes', '--save', ''], {
    stdio: 'ignore',
  });
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  while (!(await answers(url))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new ConfigError(`private redis-server did not start (data dir ${config.dataDir})`);
    await new Promise((r) => setTimeout(r, 50));
  }
  log({ url, dataDir: config.dataDir }, 'started a private redis-server');
  return {
    url,
    child,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}
