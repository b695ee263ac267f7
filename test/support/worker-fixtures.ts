// Shared by the worker test files (worker*.test.ts): a redis-server per file, worker processes on it
// (killed at the end), the settings they run with, and held-out text to feed them.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { Redis } from 'ioredis';
import { loadConfig, type Config } from '../../src/config/config.ts';
import type { ClientRuntime } from '../../src/queue/client-runtime.ts';
import type { ProgressEvent, SessionRequest } from '../../src/queue/request.ts';
import { redisKeys } from '../../src/state/keys.ts';
import { heldOutText } from './brown.ts';
import { startRedis, type RedisServerHandle } from './redis-server.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MODEL = 'rmt-brown-small';

/** A redis-server for this test file (started in before, stopped in after) and the worker processes spawned on it. */
export function useWorkerRedis() {
  let redis: RedisServerHandle;
  let prefixCount = 0;
  const children: ChildProcess[] = [];
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await redis.stop();
  });
  const env = (prefix: string): NodeJS.ProcessEnv => ({
    REDIS_URL: redis.url, RMT_PREFIX: prefix, RMT_MODELS: MODEL, RMT_INTRA_OP_THREADS: '1',
    RMT_LOCK_MS: '2000', RMT_STALLED_CHECK_MS: '1000', RMT_SHUTDOWN_GRACE_MS: '10000',
  });
  return {
    get url(): string {
      return redis.url;
    },
    env,
    configFor: (prefix: string): Config => loadConfig(env(prefix)),
    newPrefix: (): string => `t${process.pid}x${++prefixCount}`,
    /** Killed (SIGKILL) at the end of the file if still running. */
    track(child: ChildProcess): ChildProcess {
      children.push(child);
      return child;
    },
    spawnWorker(prefix: string, extra: Record<string, string> = {}): ChildProcess {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker'], {
        env: { ...process.env, ...env(prefix), ...extra },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      children.push(child);
      return child;
    },
    async subscribe(prefix: string, sessionId: string, fn: (ev: ProgressEvent) => void): Promise<Redis> {
      const sub = new Redis(redis.url);
      sub.on('message', (_c, m) => fn(JSON.parse(m) as ProgressEvent));
      await sub.subscribe(redisKeys(prefix).progressChannel(sessionId));
      return sub;
    },
  };
}

export async function waitReady(child: ChildProcess): Promise<void> {
  // Keep reading stderr after 'ready' (an async iterator would destroy the pipe, and the worker's
  // later log lines would then kill it with EPIPE).
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      buf += String(chunk);
      if (buf.includes('worker ready')) resolve();
    };
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`worker exited (${code}) before ready: ${buf}`)));
  });
}


/** Held-out Brown prose. */
export const NOISE = heldOutText();
export function noise(chars: number, from = 0): string {
  return NOISE.slice(from, from + chars);
}

export async function ingestAll(client: ClientRuntime, sessionId: string, chunks: string[]): Promise<void> {
  const reqs: SessionRequest[] = chunks.map((text, i) => ({ kind: 'ingest', text, flush: i === chunks.length - 1 }));
  const jobs = [];
  for (const r of reqs) jobs.push(await client.queue.submit(sessionId, r));
  for (const j of jobs) {
    const r = await client.queue.result(j, 120_000);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
  }
}
