// Worker processes over a real Redis: shutdown (drain, readiness while closing), the rmt-serve command
// line, and the supervisor of worker processes (several devices, restarts).
import { runProcess, type ProcessResult } from './support/run-process.ts';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config/config.ts';
import { startClientRuntime } from '../src/queue/client-runtime.ts';
import { startWorkerRuntime } from '../src/worker/runtime.ts';
import { bytesOf } from './support/chunks.ts';
import { loadTokenizer } from '../src/text/tokenizer.ts';
import { ROOT, MODEL, waitReady, noise, ingestAll, useWorkerRedis } from './support/worker-fixtures.ts';

const w = useWorkerRedis();
const { env, configFor, newPrefix, spawnWorker, subscribe } = w;

describe('shutdown', () => {
  test('close(grace) lets an in-flight request finish; close(0) returns at once, and another worker finishes the request', async () => {
    const p = newPrefix();
    const client = startClientRuntime(configFor(p));
    const a = await startWorkerRuntime(loadConfig({ ...env(p), RMT_WORKER_METRICS_PORT: '0' }));
    const m = a.engine.model(MODEL);
    const started = (sessionId: string) =>
      new Promise<Redis>((resolve) => {
        const sub = subscribe(p, sessionId, (ev) => ev.type === 'segment' && void sub.then(resolve));
      });
    try {
      // Within the grace: the request is applied when close returns.
      const s1 = await client.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
      const sub1 = started(s1.id);
      await client.queue.submit(s1.id, { kind: 'ingest', text: noise(20 * 128 * 5), flush: true });
      (await sub1).disconnect();
      const b = await startWorkerRuntime(loadConfig({ ...env(p), RMT_WORKER_METRICS_PORT: '0' }));
      // The Kubernetes probes on the metrics port: live and ready, then not ready once closing.
      const probe = async (path: string) => {
        const r = await fetch(`http://127.0.0.1:${a.metricsPort}${path}`);
        return { status: r.status, body: (await r.json()) as { status: string; checks?: Record<string, string> } };
      };
      assert.deepEqual(await probe('/healthz'), { status: 200, body: { status: 'ok' } });
      assert.deepEqual(await probe('/readyz'), { status: 200, body: { status: 'ok', checks: { worker: 'ready', redis: 'ready' } } });
      const closing = a.close(60_000);
      assert.deepEqual(await probe('/readyz'), { status: 503, body: { status: 'unavailable', checks: { worker: 'closing', redis: 'ready' } } });
      await closing;
      assert.equal((await client.store.get(s1.id))!.appliedSeq, 1, 'the request finished within the grace');

      // No grace: close returns while the request runs (BullMQ's close(true) after a graceful close()
      // had waited for it, however long); its lock lapses and worker b finishes it.
      const s2 = await client.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
      const c = await startWorkerRuntime(loadConfig({ ...env(p), RMT_WORKER_METRICS_PORT: '0' }));
      await b.close(0); // only c takes s2's request
      const sub2 = started(s2.id);
      const job = await client.queue.submit(s2.id, { kind: 'ingest', text: noise(300 * 128 * 5), flush: true });
      (await sub2).disconnect();
      const d = await startWorkerRuntime(loadConfig({ ...env(p), RMT_WORKER_METRICS_PORT: '0' }));
      try {
        await c.close(0);
        assert.equal((await client.store.get(s2.id))!.appliedSeq, 0, 'close(0) waited for the request');
        const r = await client.queue.result(job, 120_000);
        assert.equal(r.error, undefined, JSON.stringify(r.error));
        assert.equal((await client.store.get(s2.id))!.appliedSeq, 1);
      } finally {
        await d.close(0);
      }
    } finally {
      await client.close();
    }
  });
});

describe('command line', () => {
  function run(args: string[], prefix: string): Promise<ProcessResult> {
    return runProcess([process.execPath, path.join(ROOT, 'bin/rmt-serve.js'), ...args], { ...process.env, ...env(prefix), RMT_MODELS: 'rmt-brown-lm,rmt-brown-small' });
  }

  test('ingest a file: returns once every token of it is applied, plain progress lines off a terminal, the session as the API shows it; then generate from it', async () => {
    const prefix = newPrefix();
    const dir = await mkdtemp(path.join(tmpdir(), 'rmt-cli-'));
    const file = path.join(dir, 'long.txt');
    const text = noise(30_000, 600_000);
    await writeFile(file, text);
    const ing = await run(['ingest', '--model', 'rmt-brown-lm', '--file', file, '--chunk-chars', '4000'], prefix);
    assert.equal(ing.code, 0, ing.stderr);
    // stderr is a pipe: plain lines, no carriage returns or escape codes; the last says all is applied.
    assert.doesNotMatch(ing.stderr, /[\r\x1b]/);
    const progress = ing.stderr.split('\n').filter((l) => l.startsWith('ingest '));
    assert.ok(progress.length >= 1, ing.stderr);
    for (const l of progress) assert.match(l, /^ingest +\d+% tokens \d+, segments \d+, pending requests \d+/);
    const out = JSON.parse(ing.stdout) as Record<string, unknown> & { id: string; tokens_ingested: number; segments_committed: number; pending_requests: number };
    assert.deepEqual(Object.keys(out).filter((k) => /[A-Z]/.test(k)), [], 'camelCase in the output');
    assert.equal(out.object, 'session');
    assert.equal(out.model, 'rmt-brown-lm');
    assert.equal(typeof out.state_bytes, 'number');
    // Returned only when the worker had applied every token of the file (not when the chunks were sent).
    const tokens = (await loadTokenizer(path.join(ROOT, 'models/rmt-brown-lm/tokenizer.json'))).encode(text).length;
    assert.equal(out.tokens_ingested, tokens);
    assert.equal(out.pending_requests, 0);
    assert.match(progress.at(-1)!, new RegExp(`^ingest 100% tokens ${tokens}, segments ${out.segments_committed}, pending requests 0: applied`));
    const client = startClientRuntime(configFor(prefix));
    const rec = await client.store.get(out.id);
    await client.close();
    assert.equal(rec!.tokensIngested, tokens);
    assert.ok(out.segments_committed >= 40, `${out.segments_committed} segments`);
    const gen = await run(['generate', '--session', out.id, '--prompt', ' The', '--max-tokens', '30', '--temperature', '0', '--model', 'rmt-brown-lm'], prefix);
    assert.equal(gen.code, 0, gen.stderr);
    const summary = JSON.parse(gen.stderr.trim().split('\n').at(-1)!) as { finish_reason: string; usage: { completion_tokens: number }; session: { id: string } };
    assert.deepEqual([summary.finish_reason, summary.usage.completion_tokens, summary.session.id], ['length', 30, out.id]);
    assert.ok(gen.stdout.trim().length > 20, `little text: ${JSON.stringify(gen.stdout)}`);
    const bad = await run(['generate', '--file', path.join(dir, 'missing.txt')], prefix);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^rmt-serve: ENOENT: no such file or directory, open '.*missing\.txt'\n$/);
  });
});

describe('worker processes', () => {
  test('SIGKILL mid-ingest, a new worker resumes: bit-identical to an uninterrupted run; two workers in turn too', async () => {
    const prefix = newPrefix();
    const client = startClientRuntime(configFor(prefix));
    // The reference commits every segment; the killed worker commits every 3 (batched commits).
    const ref = await startWorkerRuntime(loadConfig({ ...env(prefix + 'ref'), RMT_COMMIT_SEGMENTS: '1' }));
    const batched = { RMT_COMMIT_SEGMENTS: '3', RMT_COMMIT_MS: '600000' };
    const refClient = startClientRuntime(configFor(prefix + 'ref'));
    try {
      const m = ref.engine.model(MODEL);
      const spec = { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
      const text = noise(90 * 128 * 5, 400_000);
      // Uninterrupted reference.
      const refS = await refClient.store.create(spec, m.initState);
      await ingestAll(refClient, refS.id, [text]);
      const want = (await refClient.store.get(refS.id))!;

      // Worker A is killed after a few segments; worker B picks the job up when its lock lapses.
      const s = await client.store.create(spec, m.initState);
      const a = spawnWorker(prefix, batched);
      await waitReady(a);
      let killedAt = -1;
      const seen: number[] = [];
      const sub = await subscribe(prefix, s.id, (ev) => {
        if (ev.type === 'segment' && killedAt < 0) seen.push(ev.segmentsCommitted);
        if (ev.type === 'segment' && ev.segmentsCommitted >= 8 && killedAt < 0) {
          killedAt = ev.segmentsCommitted;
          a.kill('SIGKILL');
        }
      });
      const jobId = await client.queue.submit(s.id, { kind: 'ingest', text, flush: true });
      await once(a, 'exit');
      assert.ok(killedAt > 0, 'never killed');
      const mid = (await client.store.get(s.id))!;
      assert.ok(mid.segmentsCommitted < want.segmentsCommitted, 'worker A finished before it was killed');
      // The turn's first request commits after its first segment, then every 3.
      assert.deepEqual(seen, [1, 4, 7, 10], 'worker A should commit (and report) its first segment, then every 3 segments');
      assert.equal(mid.segmentsCommitted % 3, 1, `killed mid-batch, yet ${mid.segmentsCommitted} segments are committed`);
      const b = spawnWorker(prefix, batched);
      await waitReady(b);
      const r = await client.queue.result(jobId, 120_000);
      assert.equal(r.error, undefined);
      const got = (await client.store.get(s.id))!;
      assert.equal(got.tokensIngested, want.tokensIngested);
      assert.equal(got.segmentsCommitted, want.segmentsCommitted);
      assert.ok(bytesOf(got.state).equals(bytesOf(want.state)), 'resumed state differs');

      // Two processes in turn: B takes the first half; SIGTERM lets it finish; C takes the rest.
      const s2 = await client.store.create(spec, m.initState);
      const half = Math.floor(text.length / 2);
      const j1 = await client.queue.submit(s2.id, { kind: 'ingest', text: text.slice(0, half) });
      await client.queue.result(j1, 60_000);
      b.kill('SIGTERM');
      const [code] = await once(b, 'exit');
      assert.equal(code, 0, 'worker did not exit cleanly on SIGTERM');
      const c = spawnWorker(prefix);
      await waitReady(c);
      const j2 = await client.queue.submit(s2.id, { kind: 'ingest', text: text.slice(half), flush: true });
      await client.queue.result(j2, 60_000);
      const got2 = (await client.store.get(s2.id))!;
      assert.ok(bytesOf(got2.state).equals(bytesOf(want.state)), 'two-worker state differs');
      c.kill('SIGTERM');
      await once(c, 'exit');
      await sub.quit();
    } finally {
      await client.close();
      await refClient.close();
      await ref.close(0);
    }
  });

  test('RMT_WORKER_PROCESSES=2: two processes share the queue; SIGTERM stops both; one dying stops the other', async () => {
    const prefix = newPrefix();
    const client = startClientRuntime(configFor(prefix));
    const started = (sup: ChildProcess): Promise<number[]> =>
      new Promise((resolve, reject) => {
        let buf = '';
        sup.stderr!.on('data', (d: Buffer) => {
          buf += String(d);
          const ready = buf.match(/worker ready/g)?.length ?? 0;
          const pids = buf.match(/"pids":\[(\d+),(\d+)\]/);
          if (ready === 2 && pids) resolve([Number(pids[1]), Number(pids[2])]);
        });
        sup.once('exit', (code) => reject(new Error(`supervisor exited (${code}): ${buf}`)));
      });
    const spawnPair = () => {
      const sup = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker'], {
        env: { ...process.env, ...env(prefix), RMT_WORKER_PROCESSES: '2', LOG_LEVEL: 'info' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      w.track(sup);
      return sup;
    };
    try {
      const sup = spawnPair();
      const pids = await started(sup);
      assert.equal(new Set(pids).size, 2);
      // Work from several sessions lands on the shared queue and completes.
      const probe = await startWorkerRuntime({ ...configFor(prefix + 'probe') });
      const m = probe.engine.model(MODEL);
      await probe.close(0);
      const spec = { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
      const sessions = await Promise.all(Array.from({ length: 6 }, () => client.store.create(spec, m.initState)));
      const jobs = await Promise.all(sessions.map((s, i) => client.queue.submit(s.id, { kind: 'ingest', text: noise(3 * 128 * 5, i * 5000), flush: true })));
      const results = await Promise.all(jobs.map((j) => client.queue.result(j, 60_000)));
      for (const r of results) assert.equal(r.error, undefined);
      sup.kill('SIGTERM');
      const [code] = await once(sup, 'exit');
      assert.equal(code, 0, 'supervisor did not exit cleanly on SIGTERM');
      for (const pid of pids) assert.throws(() => process.kill(pid, 0), 'a worker process outlived SIGTERM');

      // A worker process that dies takes its sibling and the supervisor down (non-zero exit).
      const sup2 = spawnPair();
      const [p1, p2] = await started(sup2);
      process.kill(p1!, 'SIGKILL');
      const [code2] = await once(sup2, 'exit');
      assert.notEqual(code2, 0);
      assert.throws(() => process.kill(p2!, 0), 'the sibling outlived the supervisor');
    } finally {
      await client.close();
    }
  });

  test('--devices 0,1: one process per device id (RMT_DEVICE_ID); a killed one is restarted on its device; SIGTERM stops all, exit 0', async () => {
    const prefix = newPrefix();
    const client = startClientRuntime(configFor(prefix));
    // The supervisor's and its children's log lines (one stderr): who started on which device, who is ready.
    type Line = { msg: string; deviceId?: number; pid?: number; signal?: string | null };
    const lines: Line[] = [];
    const waiters: { pred: () => boolean; resolve: () => void }[] = [];
    const sup = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker', '--devices', '0,1'], {
      env: { ...process.env, ...env(prefix), LOG_LEVEL: 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    w.track(sup);
    let buf = '';
    let exited = false;
    sup.stderr!.on('data', (d: Buffer) => {
      buf += String(d);
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          lines.push(JSON.parse(text) as Line);
        } catch {
          // not a log line
        }
      }
      for (const w of waiters.splice(0)) if (w.pred()) w.resolve(); else waiters.push(w);
    });
    sup.once('exit', () => (exited = true));
    const until = (pred: () => boolean, what: string) =>
      new Promise<void>((resolve, reject) => {
        if (pred()) return resolve();
        waiters.push({ pred, resolve });
        sup.once('exit', (code) => { if (!pred()) reject(new Error(`supervisor exited (${code}) waiting for ${what}: ${JSON.stringify(lines)}`)); });
      });
    const started = (dev: number) => lines.filter((l) => l.msg === 'worker process started' && l.deviceId === dev).map((l) => l.pid!);
    const ready = (dev: number) => lines.filter((l) => l.msg === 'worker ready' && l.deviceId === dev).length;
    const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
    try {
      await until(() => ready(0) === 1 && ready(1) === 1, 'both devices ready');
      assert.equal(started(0).length, 1);
      assert.equal(started(1).length, 1);
      const [a0] = started(0);
      const [a1] = started(1);
      assert.notEqual(a0, a1);
      assert.ok(lines.every((l) => l.msg !== 'worker ready' || l.deviceId === 0 || l.deviceId === 1), 'a child on another device');

      // SIGKILL device 0's process: the supervisor logs it and starts another on device 0; device 1's lives on.
      process.kill(a0!, 'SIGKILL');
      await until(() => ready(0) === 2, 'device 0 restarted and ready');
      const died = lines.find((l) => l.msg === 'a worker process died: restarting it');
      assert.equal(died?.deviceId, 0);
      assert.equal(died?.pid, a0);
      assert.equal(died?.signal, 'SIGKILL');
      const [, b0] = started(0);
      assert.ok(b0 !== undefined && b0 !== a0 && alive(b0));
      assert.deepEqual(started(1), [a1], 'device 1 was restarted too');
      assert.ok(alive(a1!));

      // The restarted process consumes the queue: with device 1's paused, every request still completes.
      process.kill(a1!, 'SIGSTOP');
      try {
        const probe = await startWorkerRuntime({ ...configFor(prefix + 'probe') });
        const m = probe.engine.model(MODEL);
        await probe.close(0);
        const spec = { model: m.name, shape: m.stateShape, dtype: m.stateDtype };
        const sessions = await Promise.all(Array.from({ length: 3 }, () => client.store.create(spec, m.initState)));
        const jobs = await Promise.all(sessions.map((s, i) => client.queue.submit(s.id, { kind: 'ingest', text: noise(2 * 128 * 5, i * 7000), flush: true })));
        for (const r of await Promise.all(jobs.map((j) => client.queue.result(j, 60_000)))) assert.equal(r.error, undefined);
      } finally {
        process.kill(a1!, 'SIGCONT');
      }

      // SIGTERM: every process exits, the supervisor exits 0 and restarts nothing.
      sup.kill('SIGTERM');
      const [code] = exited ? [sup.exitCode] : await once(sup, 'exit');
      assert.equal(code, 0, JSON.stringify(lines));
      for (const pid of [b0!, a1!]) assert.ok(!alive(pid), `worker process ${pid} outlived SIGTERM`);
      assert.equal(started(0).length + started(1).length, 3, 'a process was restarted during shutdown');
      assert.ok(lines.some((l) => l.msg === 'worker processes stopped'));
    } finally {
      await client.close();
    }
  });

  test('--devices: a process that keeps dying is restarted a bounded number of times, then the supervisor exits 1', async () => {
    // No such model: every process on device 3 exits at start.
    const sup = spawn(process.execPath, [path.join(ROOT, 'bin/rmt-serve.js'), 'worker', '--devices', '3'], {
      env: { ...process.env, ...env(newPrefix()), RMT_MODELS: 'no-such-model', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    w.track(sup);
    let err = '';
    sup.stderr!.on('data', (d: Buffer) => (err += String(d)));
    const [code] = await once(sup, 'exit');
    assert.equal(code, 1, err);
    const lines = err.split('\n').flatMap((l) => { try { return [JSON.parse(l) as { msg: string; deviceId?: number; exitCode?: number }]; } catch { return []; } });
    const restarts = lines.filter((l) => l.msg === 'a worker process died: restarting it');
    assert.equal(restarts.length, 5, err);
    assert.ok(restarts.every((l) => l.deviceId === 3 && l.exitCode !== 0));
    assert.equal(lines.filter((l) => l.msg === 'worker process started' && l.deviceId === 3).length, 6);
    assert.ok(lines.some((l) => l.msg === 'a worker process died 6 times, no run lasting a minute: stopping the others' && l.deviceId === 3), err);
  });

  test('SIGTERM during a long request: the worker finishes it, then exits', async () => {
    const prefix = newPrefix();
    const client = startClientRuntime(configFor(prefix));
    try {
      const w = spawnWorker(prefix);
      await waitReady(w);
      const probe = await startWorkerRuntime({ ...configFor(prefix + 'probe') });
      const m = probe.engine.model(MODEL);
      await probe.close(0);
      const s = await client.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
      let sent = false;
      const sub = await subscribe(prefix, s.id, (ev) => {
        if (ev.type === 'segment' && !sent) {
          sent = true;
          w.kill('SIGTERM');
        }
      });
      const jobId = await client.queue.submit(s.id, { kind: 'ingest', text: noise(40 * 128 * 5), flush: true });
      const [code] = await once(w, 'exit');
      assert.equal(code, 0);
      const r = await client.queue.result(jobId, 5_000);
      assert.equal(r.error, undefined);
      assert.ok(r.segmentsCommitted >= 35, `${r.segmentsCommitted} segments`);
      await sub.quit();
    } finally {
      await client.close();
    }
  });
});
