// Which Redis a command uses: REDIS_URL, else (serve) a private redis-server with its data under
// RMT_DATA_DIR, append-only, password-protected, recorded in redis.json for the other commands;
// never a Redis that merely answers on localhost. Failures are one line naming the URL and its source.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { findRedis, recordPath, resolveRedis, unreachable, type RedisRecord } from '../src/cli/embedded-redis.ts';
import { ConfigError, loadConfig } from '../src/config/config.ts';

const NOTHING = 'redis://127.0.0.1:1'; // port 1: nothing listens there
const quiet = () => undefined;

async function dataDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), 'rmt-var-'));
}

/** A pid that is certainly not running any more. */
function deadPid(): number {
  return spawnSync('true').pid!;
}

test('REDIS_URL unset: a private redis-server under the data dir, append-only, with a password, recorded for the other commands', async () => {
  const dir = await dataDir();
  const config = loadConfig({ RMT_DATA_DIR: dir });
  const r = await resolveRedis(config, quiet);
  try {
    assert.equal(r.source, 'private');
    assert.ok(r.child?.pid, 'no child process was started');
    assert.match(r.url, /^redis:\/\/:[0-9a-f]{32}@127\.0\.0\.1:\d+$/);
    const rec = JSON.parse(readFileSync(recordPath(dir), 'utf8')) as RedisRecord;
    assert.deepEqual(rec, { url: r.url, redis_pid: r.child!.pid, serve_pid: process.pid, data_dir: dir });
    assert.equal(statSync(recordPath(dir)).mode & 0o777, 0o600, 'the record holds the password: owner only');
    assert.match(await unreachable(r.url.replace(/\/\/:[^@]+@/, '//')), /NOAUTH/, 'answered without the password');
    const c = new Redis(r.url);
    assert.deepEqual(await c.config('GET', 'appendonly'), ['appendonly', 'yes']);
    assert.deepEqual(await c.config('GET', 'dir'), ['dir', dir]);
    await c.set('k', 'v');
    c.disconnect();
    // The other commands (same data dir, no REDIS_URL) find it through the record.
    const found = await findRedis(config);
    assert.deepEqual([found.url, found.source], [r.url, 'private']);
  } finally {
    await r.stop();
  }
  assert.notEqual(r.child!.exitCode ?? r.child!.signalCode, null, 'redis-server still running');
  assert.equal(existsSync(recordPath(dir)), false, 'the record outlived its redis-server');
  assert.ok(existsSync(path.join(dir, 'appendonlydir')) || existsSync(path.join(dir, 'appendonly.aof')), 'no append-only file');
  await rm(dir, { recursive: true, force: true });
});

test('a second serve on the same data dir is refused; a redis-server left by a killed serve is stopped, its data kept', async () => {
  const dir = await dataDir();
  const config = loadConfig({ RMT_DATA_DIR: dir });
  const first = await resolveRedis(config, quiet);
  const other = spawn('sleep', ['60']); // stands for another serve process, alive
  try {
    const c = new Redis(first.url);
    await c.set('kept', 'yes');
    c.disconnect();
    const rec = JSON.parse(readFileSync(recordPath(dir), 'utf8')) as RedisRecord;
    writeFileSync(recordPath(dir), JSON.stringify({ ...rec, serve_pid: other.pid }));
    await assert.rejects(resolveRedis(config, quiet), (e: unknown) =>
      e instanceof ConfigError && e.message === `another \`rmt-serve serve\` (pid ${other.pid}) runs with data dir ${dir}: stop it, or start this one with another RMT_DATA_DIR`);
    // That serve was killed (its redis-server lives on): the next serve shuts the orphan down and starts its own.
    writeFileSync(recordPath(dir), JSON.stringify({ ...rec, serve_pid: deadPid() }));
    const lines: string[] = [];
    const second = await resolveRedis(config, (_o, m) => lines.push(m));
    try {
      if (first.child!.exitCode === null && first.child!.signalCode === null) await once(first.child!, 'exit');
      assert.notEqual(first.child!.exitCode ?? first.child!.signalCode, null, 'the orphan still runs');
      assert.ok(lines.includes('stopped the redis-server a killed serve left running'), lines.join('\n'));
      assert.notEqual(second.url, first.url);
      const c2 = new Redis(second.url);
      assert.equal(await c2.get('kept'), 'yes', 'the append-only file was not carried over');
      c2.disconnect();
      // With no serve alive, the other commands do not use an orphan's record.
      writeFileSync(recordPath(dir), JSON.stringify({ ...JSON.parse(readFileSync(recordPath(dir), 'utf8')), serve_pid: deadPid() }));
      await assert.rejects(findRedis(config), /REDIS_URL is not set and no `rmt-serve serve` is running with data dir/);
    } finally {
      await second.stop();
    }
  } finally {
    other.kill();
    await first.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('REDIS_URL unset and no redis-server binary: one line saying what to do', async () => {
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    await assert.rejects(resolveRedis(loadConfig({ RMT_DATA_DIR: await dataDir() }), quiet), (e: unknown) =>
      e instanceof ConfigError && /^REDIS_URL is not set and there is no redis-server on PATH to start a private one: install it \(apt-get install redis-server\) or set REDIS_URL=redis:\/\/HOST:PORT$/.test(e.message));
  } finally {
    process.env.PATH = saved;
  }
});

test('REDIS_URL set but not answering: refused, naming it, where it came from, and why', async () => {
  for (const run of [resolveRedis, findRedis]) {
    await assert.rejects(run(loadConfig({ REDIS_URL: NOTHING }), quiet), (e: unknown) =>
      e instanceof ConfigError && e.message === 'cannot reach Redis at redis://127.0.0.1:1 (from REDIS_URL): connect ECONNREFUSED 127.0.0.1:1: is that Redis running, and is REDIS_URL right?');
  }
  // A password in the URL is not repeated in the message.
  await assert.rejects(findRedis(loadConfig({ REDIS_URL: 'redis://:secret@127.0.0.1:1' })), (e: unknown) =>
    e instanceof Error && e.message.includes('redis://***@127.0.0.1:1') && !e.message.includes('secret'));
});

test('REDIS_URL unset and no serve running with the data dir: the other commands say what to do', async () => {
  const dir = await dataDir();
  await assert.rejects(findRedis(loadConfig({ RMT_DATA_DIR: dir })), (e: unknown) =>
    e instanceof ConfigError && e.message === `REDIS_URL is not set and no \`rmt-serve serve\` is running with data dir ${dir} (RMT_DATA_DIR): ` +
      'set REDIS_URL=redis://HOST:PORT, or start `rmt-serve serve` (it starts a private Redis) and run this with the same RMT_DATA_DIR');
  await rm(dir, { recursive: true, force: true });
});
