// The command line as a new user meets it (bin/rmt-serve.js spawned): --help for every command,
// unknown flags refused with a hint, one-line errors, and `serve` without REDIS_URL on a private
// redis-server of its own, never on whatever answers at localhost:6379.
import assert from 'node:assert/strict';
import { startRedis } from './support/redis-server.ts';
import { runProcess, type ProcessResult } from './support/run-process.ts';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import type { RedisRecord } from '../src/cli/embedded-redis.ts';
import { ProgressBar } from '../src/cli/progress-bar.ts';
import { SETTINGS } from '../src/config/config.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin/rmt-serve.js');
const COMMANDS = ['serve', 'api', 'worker', 'ingest', 'generate', 'config'];
const children: ChildProcess[] = [];
const NOTHING = 'redis://127.0.0.1:1';

/** The environment without REDIS_URL (and RMT_*) from the caller's shell. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'REDIS_URL' && !k.startsWith('RMT_')));
  return { ...env, RMT_INTRA_OP_THREADS: '1', ...extra };
}

function run(args: string[], env: Record<string, string> = {}): Promise<ProcessResult> {
  return runProcess([process.execPath, BIN, ...args], cleanEnv(env));
}

/** Private redis-servers seen (their own process group: a killed serve would leave them running). */
const redisPids: number[] = [];

after(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const pid of redisPids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
});

describe('help and flags', () => {
  test('rmt-serve --help lists the commands; no command is an error (exit 2)', async () => {
    for (const args of [['--help'], ['-h'], ['help']]) {
      const r = await run(args);
      assert.equal(r.code, 0, r.stderr);
      for (const c of COMMANDS) assert.match(r.stdout, new RegExp(`^  ${c} `, 'm'), `${c} missing from ${args[0]}`);
    }
    const none = await run([]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /^usage: rmt-serve <command>/);
  });

  test('<command> --help prints its flags and settings (env names, defaults) and starts nothing', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-help-'));
    for (const c of COMMANDS) {
      // An unreachable REDIS_URL and an empty data dir: help must not touch either.
      const r = await run([c, '--help'], { REDIS_URL: NOTHING, RMT_DATA_DIR: dir });
      assert.equal(r.code, 0, `${c}: ${r.stderr}`);
      assert.equal(r.stderr, '', `${c} wrote to stderr`);
      assert.match(r.stdout, new RegExp(`^usage: rmt-serve ${c}`), c);
      if (c !== 'config') {
        assert.match(r.stdout, /--redis-url VALUE +REDIS_URL, default none: /, c);
        assert.match(r.stdout, /--log-level fatal\|error\|warn\|info\|debug\|trace\|silent\s+LOG_LEVEL, default "info"/, c);
      }
    }
    assert.equal(existsSync(path.join(dir, 'redis.json')), false, 'serve --help started a redis-server');
    const ingest = (await run(['ingest', '--help'])).stdout;
    assert.match(ingest, /--file PATH +the text file \(required\)/);
    assert.match(ingest, /--chunk-chars N .*\(default: 65536\)/);
    assert.match(ingest, /--no-progress /);
    assert.match(ingest, /--max-batch N +RMT_MAX_BATCH, default 32: /);
    const generate = (await run(['generate', '--help'])).stdout;
    assert.match(generate, /--temperature T +0 = greedy \(default: 1\)/);
    assert.match(generate, /--max-tokens N .*\(default: 16\)/);
    // Every setting is listed for serve, each with its environment variable.
    const serve = (await run(['serve', '--help'])).stdout;
    for (const [k, s] of Object.entries(SETTINGS)) if (k !== 'workerProcesses' && k !== 'devices') assert.ok(serve.includes(s.env), `${s.env} missing from serve --help`);
    await rm(dir, { recursive: true, force: true });
  });

  test('unknown flags and commands: one line with the closest name and --help, exit 2', async () => {
    const cases: [string[], RegExp][] = [
      [['ingest', '--fiel', 'x.txt'], /^rmt-serve: ingest: unknown flag --fiel \(did you mean --file\?\); rmt-serve ingest --help lists them\n$/],
      [['serve', '--nope'], /^rmt-serve: serve: unknown flag --nope; rmt-serve serve --help lists them\n$/],
      [['serve', '--redis-ulr', 'redis://x'], /did you mean --redis-url\?/],
      [['generate', '--temprature', '0'], /did you mean --temperature\?/],
      [['worker', '--port', '9'], /^rmt-serve: worker: --port does not apply to this command \(rmt-serve worker --help lists them\)\n$/],
      [['ingest', 'x.txt'], /^rmt-serve: ingest: unexpected argument "x.txt"/],
      [['ingest', '--file'], /^rmt-serve: ingest: --file needs a value\n$/],
      [['servee'], /^rmt-serve: unknown command "servee" \(did you mean serve\?\); rmt-serve --help lists the commands\n$/],
    ];
    for (const [args, want] of cases) {
      const r = await run(args, { REDIS_URL: NOTHING });
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, want, args.join(' '));
    }
  });

  test('worker --devices: bad lists refused, all without a GPU refused (exit 2, one line), serve does not take it', async () => {
    const cases: [string[], RegExp][] = [
      [['worker', '--devices', '0,x'], /^rmt-serve: --devices: expected all or device ids such as 0,1 \(integers in \[0, 64\]\), got "0,x"\n$/],
      [['worker', '--devices', '-1'], /expected all or device ids/],
      [['worker', '--devices', '1.5'], /expected all or device ids/],
      [['worker', '--devices', '0,1,0'], /^rmt-serve: --devices: device 0 is listed twice in "0,1,0"\n$/],
      [['worker', '--devices=1,01'], /device 01 is listed twice/],
      [['serve', '--devices', '0'], /^rmt-serve: serve: --devices does not apply to this command/],
    ];
    for (const [args, want] of cases) {
      const r = await run(args, { REDIS_URL: NOTHING });
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, want, args.join(' '));
    }
    const env = await run(['worker'], { REDIS_URL: NOTHING, RMT_DEVICES: '2,2' });
    assert.equal(env.code, 2);
    assert.match(env.stderr, /^rmt-serve: RMT_DEVICES: device 2 is listed twice/);
    // `all` counts GPUs from /proc/driver/nvidia/gpus or nvidia-smi -L; with neither (PATH without
    // nvidia-smi), it is refused before Redis is reached (NOTHING would fail otherwise).
    if (existsSync('/proc/driver/nvidia/gpus')) return;
    const all = await run(['worker', '--devices', 'all'], { REDIS_URL: NOTHING, PATH: path.dirname(process.execPath) });
    assert.equal(all.code, 2, all.stderr);
    assert.equal(all.stderr, 'rmt-serve: --devices all: no GPU found (neither /proc/driver/nvidia/gpus nor nvidia-smi -L lists one); give ids instead, e.g. --devices 0,1\n');
  });

  test('generate: the API\'s limits (queue/generate-request.ts), refused before a session is opened, exit 2', async () => {
    const redis = await startRedis();
    try {
      const cases: [string[], RegExp][] = [
        [['--max-tokens', '5000'], /^rmt-serve: generate: max_tokens must be an integer in \[0, 4096\], got 5000\n$/],
        [['a', 'b', 'c', 'd', 'e'].flatMap((t) => ['--stop', t]), /^rmt-serve: generate: at most 4 stop sequences, got 5\n$/],
        [['--top-p', '2'], /^rmt-serve: generate: .*top_?[pP]/],
      ];
      for (const [extra, want] of cases) {
        const r = await run(['generate', '--prompt', 'x', ...extra], { REDIS_URL: redis.url, RMT_PREFIX: `cli${process.pid}` });
        assert.equal(r.code, 2, `${extra.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, want, extra.join(' '));
      }
    } finally {
      await redis.stop();
    }
  });
});

describe('Redis errors', () => {
  test('an unreachable REDIS_URL: one line naming it and its source, no ioredis stack', async () => {
    for (const c of ['worker', 'api', 'serve', 'ingest', 'generate']) {
      const args = c === 'ingest' ? [c, '--file', 'x'] : c === 'generate' ? [c, '--prompt', 'x'] : [c];
      const r = await run(args, { REDIS_URL: NOTHING });
      assert.equal(r.code, 2, `${c}: ${r.stderr}`);
      assert.equal(r.stderr, 'rmt-serve: cannot reach Redis at redis://127.0.0.1:1 (from REDIS_URL): connect ECONNREFUSED 127.0.0.1:1: is that Redis running, and is REDIS_URL right?\n', c);
    }
  });

  test('no REDIS_URL and no serve running: the other commands say exactly what to do', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-none-'));
    const r = await run(['worker'], { RMT_DATA_DIR: dir });
    assert.equal(r.code, 2);
    assert.equal(r.stderr, `rmt-serve: REDIS_URL is not set and no \`rmt-serve serve\` is running with data dir ${dir} (RMT_DATA_DIR): ` +
      'set REDIS_URL=redis://HOST:PORT, or start `rmt-serve serve` (it starts a private Redis) and run this with the same RMT_DATA_DIR\n');
    await rm(dir, { recursive: true, force: true });
  });
});

/**
 * Whether `pid` or one of its children (other than `except`) has a TCP connection to `port`, read from
 * /proc (its socket inodes against /proc/net/tcp{,6}): the machine's Redis on 6379 is not ours even to read.
 */
function connectsToPort(pid: number, port: number, except: number): boolean {
  const pids = [pid, ...readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((p) => {
    if (p === except) return false;
    try {
      return Number(readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]) === pid;
    } catch {
      return false;
    }
  })];
  const inodes = new Set<string>();
  for (const p of pids) {
    for (const fd of readdirSync(`/proc/${p}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${p}/fd/${fd}`));
        if (m) inodes.add(m[1]!);
      } catch {
        // closed meanwhile
      }
    }
  }
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return ['/proc/net/tcp', '/proc/net/tcp6'].some((f) => existsSync(f) && readFileSync(f, 'utf8').split('\n').slice(1).some((line) => {
    const cols = line.trim().split(/\s+/);
    return cols.length > 9 && cols[2]!.endsWith(`:${hexPort}`) && inodes.has(cols[9]!);
  }));
}

describe('serve without REDIS_URL', () => {
  test('starts its own redis-server (data dir, append-only), keeps every key there, stops it on SIGTERM', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-serve-'));
    const prefix = `clitest${process.pid}x${Date.now()}`;
    const serve = spawn(process.execPath, [BIN, 'serve'], {
      env: cleanEnv({ RMT_DATA_DIR: dir, RMT_PREFIX: prefix, PORT: '0', HOST: '127.0.0.1', RMT_MODELS: 'rmt-brown-small' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(serve);
    let err = '';
    serve.stdout!.resume();
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      serve.stderr!.on('data', (d) => {
        err += String(d);
        // Not a terminal: every log line is JSON (log collectors and these tests parse it).
        const lines = err.split('\n').filter(Boolean);
        const r = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((o) => o.msg === 'rmt-serve ready');
        if (r) resolve(r);
      });
      serve.once('exit', (code) => reject(new Error(`serve exited (${code}): ${err}`)));
    });
    const rec = JSON.parse(readFileSync(path.join(dir, 'redis.json'), 'utf8')) as RedisRecord;
    redisPids.push(rec.redis_pid);
    assert.equal(rec.serve_pid, serve.pid);
    // The redis-server is serve's own child, on the port the record names, with its data in the data dir.
    const ppid = Number(readFileSync(`/proc/${rec.redis_pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
    assert.equal(ppid, serve.pid, 'the redis-server is not a child of serve');
    assert.equal(ready.redisFrom, 'private');
    assert.equal(ready.redis, rec.url.replace(/\/\/[^@]*@/, '//***@'), 'the log line shows the password');
    const own = new Redis(rec.url);
    try {
      assert.deepEqual(await own.config('GET', 'dir'), ['dir', dir]);
      assert.deepEqual(await own.config('GET', 'appendonly'), ['appendonly', 'yes']);
      const res = await fetch(`${ready.url as string}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'rmt-brown-small' }) });
      assert.equal(res.status, 201, await res.clone().text());
      const { id } = (await res.json()) as { id: string };
      const keys = await own.keys(`${prefix}*`);
      assert.ok(keys.some((k) => k.includes(id)), `session ${id} not in serve's redis: ${keys.join(' ')}`);
    } finally {
      own.disconnect();
    }
    // Nothing of serve's talks to whatever listens on 6379 (its own Redis is on another port).
    assert.notEqual(new URL(rec.url).port, '6379');
    assert.equal(connectsToPort(serve.pid!, 6379, rec.redis_pid), false, 'serve holds a connection to port 6379');
    serve.kill('SIGTERM');
    const [code] = await once(serve, 'exit');
    assert.equal(code, 0, err);
    assert.equal(existsSync(`/proc/${rec.redis_pid}`), false, 'its redis-server outlived serve');
    assert.equal(existsSync(path.join(dir, 'redis.json')), false, 'the record outlived serve');
    await rm(dir, { recursive: true, force: true });
  });
});

describe('progress output', () => {
  test('plain lines with --no-progress even on a terminal; a redrawn bar only on a terminal', () => {
    const write = (isTTY: boolean, plain: boolean) => {
      let out = '';
      const bar = new ProgressBar('ingest', { out: Object.assign({ write: (s: string) => ((out += s), true) }, { isTTY }) as never, plain, lineEveryMs: 0 });
      bar.update(0.5, 'tokens 10');
      bar.end(1, 'tokens 20: applied');
      return out;
    };
    assert.match(write(true, true), /^ingest  50% tokens 10 \d+\.\ds\ningest 100% tokens 20: applied \d+\.\ds\n$/);
    assert.match(write(false, false), /^ingest  50% tokens 10 \d+\.\ds\ningest 100% tokens 20: applied \d+\.\ds\n$/);
    assert.match(write(true, false), /^\ringest \[#{15}-{15}\]  50% tokens 10 .*\x1b\[K\ringest \[#{30}\] 100% tokens 20: applied .*\x1b\[K\n$/);
  });
});
