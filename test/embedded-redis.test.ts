// `serve` with nothing listening: a private redis-server child with its data under RMT_DATA_DIR and
// the append-only file on; without the binary, one line saying what to do.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { resolveRedis } from '../src/cli/embedded-redis.ts';
import { ConfigError, loadConfig } from '../src/config/config.ts';

const NOTHING = 'redis://127.0.0.1:1'; // port 1: nothing listens there

test('no Redis reachable: a private redis-server under the data dir, append-only', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'rmt-var-'));
  const config = loadConfig({ RMT_DATA_DIR: dir });
  const r = await resolveRedis(config, () => undefined, NOTHING);
  try {
    assert.ok(r.child, 'no child process was started');
    const c = new Redis(r.url);
    assert.deepEqual(await c.config('GET', 'appendonly'), ['appendonly', 'yes']);
    assert.deepEqual(await c.config('GET', 'dir'), ['dir', dir]);
    await c.set('k', 'v');
    c.disconnect();
  } finally {
    await r.stop();
  }
  assert.notEqual(r.child!.exitCode ?? r.child!.signalCode, null, 'redis-server still running');
  assert.ok(existsSync(path.join(dir, 'appendonlydir')) || existsSync(path.join(dir, 'appendonly.aof')), 'no append-only file');
  await rm(dir, { recursive: true, force: true });
});

test('no Redis and no redis-server binary: one clear line', async () => {
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    await assert.rejects(resolveRedis(loadConfig({}), () => undefined, NOTHING), (e: unknown) =>
      e instanceof ConfigError && /no Redis at 127\.0\.0\.1:1 and no redis-server on PATH: install it \(apt-get install redis-server\) or set REDIS_URL/.test(e.message));
  } finally {
    process.env.PATH = saved;
  }
});

test('REDIS_URL set but not answering: refused, naming it', async () => {
  await assert.rejects(resolveRedis(loadConfig({ REDIS_URL: NOTHING }), () => undefined), /REDIS_URL=redis:\/\/127\.0\.0\.1:1 does not answer/);
});
