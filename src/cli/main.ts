// rmt-serve command line: `worker` runs a worker process; `ingest` and `generate` work without the
// HTTP API (they run an in-process worker on the same Redis and submit through the same queue).
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { ConfigError, configTable, loadConfig, type Config } from '../config/config.ts';
import { DEFAULT_SAMPLING, validateSampling } from '../engine/sampling.ts';
import { redisKeys } from '../state/keys.ts';
import type { ProgressEvent, RequestResult, SessionRequest } from '../queue/request.ts';
import { spawn } from 'node:child_process';
import { startClientRuntime, startWorkerRuntime, type WorkerRuntime } from '../worker/runtime.ts';
import { redisUrl } from '../state/redis-connection.ts';
import { ProgressBar } from './progress-bar.ts';
import { resolveRedis } from './embedded-redis.ts';
import { startApiServer } from '../api/server.ts';
import { apiRegistry } from '../api/metrics.ts';

const USAGE = `usage: rmt-serve <command> [options]

commands:
  serve                        API and worker in one process (npm start): Redis at REDIS_URL, else localhost:6379,
                               else a private redis-server child (data under ./var)
  api                          HTTP/WebSocket API only (deploy several, plus workers, sharing one Redis)
  worker                       advance sessions: BullMQ worker + onnxruntime engine thread
  ingest   --file F [--model M] [--session ID] [--chunk-chars N] [--score]
                               stream a text file into a session (created if --session is absent); prints the session
  generate (--file F | --prompt TEXT) [--model M] [--session ID] [--max-tokens N] [--temperature T] [--top-k K]
           [--top-p P] [--seed S] [--stop TEXT]...
                               append the prompt, then generate; the completion streams to stdout
  config                       print the settings table (environment variables and flags)

Every setting (config) is also a flag, e.g. --redis-url redis://host:6379.`;

function log(obj: Record<string, unknown>, msg: string): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), msg, ...obj }) + '\n');
}

async function ensureRedis(config: Config): Promise<void> {
  const r = new Redis(redisUrl(config), { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  try {
    await r.connect();
    await r.ping();
  } catch {
    throw new ConfigError(`cannot reach Redis at ${redisUrl(config)}: start redis-server (apt-get install redis-server) or set REDIS_URL`);
  } finally {
    r.disconnect();
  }
}

function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
}

async function runServe(config: Config, withWorker: boolean): Promise<void> {
  const redis = withWorker ? await resolveRedis(config, log) : { url: redisUrl(config), stop: async () => undefined };
  if (!withWorker) await ensureRedis(config);
  const cfg = { ...config, redisUrl: redis.url };
  let worker: WorkerRuntime | undefined;
  let api: Awaited<ReturnType<typeof startApiServer>>;
  try {
    // One process, one /metrics: the worker's batch sizes and step times join the API's registry.
    worker = withWorker ? await startWorkerRuntime(cfg, log, { registry: apiRegistry }) : undefined;
    api = await startApiServer(cfg);
  } catch (err) {
    // A failed start (CUDA missing, a bad model) must not leave the private redis-server running.
    await worker?.close(0).catch(() => undefined);
    await redis.stop();
    throw err;
  }
  log({ url: api.url, redis: redis.url, worker: withWorker, models: cfg.models, ...(worker ? { device: worker.engine.device() } : {}) }, 'rmt-serve ready');
  const signal = await untilSignal();
  log({ signal }, 'shutting down');
  await api.close();
  await worker?.close();
  await redis.stop();
}

/**
 * RMT_WORKER_PROCESSES > 1: this process supervises that many worker processes on the same device.
 * A worker's main thread (tokenizing, Redis commits, BullMQ) saturates before a GPU does; several
 * processes split that work, while any one of them can serve any session. Metrics ports count up
 * from RMT_WORKER_METRICS_PORT. One child dying takes the others down, so the pod restarts whole.
 */
async function superviseWorkers(config: Config): Promise<number> {
  const n = config.workerProcesses;
  // The same command line, less the process count (a flag would override the children's env).
  const childArgs = process.argv.slice(2).filter((a, i, all) => !a.startsWith('--worker-processes') && all[i - 1] !== '--worker-processes');
  const children = Array.from({ length: n }, (_, i) =>
    spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...childArgs], {
      stdio: 'inherit',
      env: {
        ...process.env,
        RMT_WORKER_PROCESSES: '1',
        ...(config.metricsPort > 0 ? { RMT_WORKER_METRICS_PORT: String(config.metricsPort + i) } : {}),
      },
    }),
  );
  log({ processes: n, pids: children.map((c) => c.pid) }, 'worker processes started');
  let stopping = false;
  const code = await new Promise<number>((resolve) => {
    let left = n;
    let worst = 0;
    for (const c of children) {
      c.once('exit', (exitCode, signal) => {
        const failed = exitCode !== 0 || (signal !== null && !stopping);
        if (failed) worst = exitCode ?? 1;
        if (failed && !stopping) {
          log({ pid: c.pid, exitCode, signal }, 'a worker process died: stopping the others');
          stopping = true;
          for (const o of children) if (o !== c) o.kill('SIGTERM');
        }
        if (--left === 0) resolve(worst);
      });
    }
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        stopping = true;
        for (const c of children) c.kill(sig);
      });
    }
  });
  log({ code }, 'worker processes stopped');
  return code;
}

async function runWorker(config: Config): Promise<number> {
  if (config.workerProcesses > 1) return superviseWorkers(config);
  const rt = await startWorkerRuntime(config, log);
  log({ models: config.models, concurrency: config.workerConcurrency, device: rt.engine.device() }, 'worker ready');
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log({ signal, graceMs: config.shutdownGraceMs }, 'shutting down: finishing in-flight requests');
      rt.close().then(resolve, (err) => {
        log({ err: String(err) }, 'shutdown error');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  log({}, 'worker stopped');
  return 0;
}

interface Streamed {
  rt: WorkerRuntime;
  sessionId: string;
  events: Redis;
  onEvent(fn: (ev: ProgressEvent) => void): void;
}

async function openSession(config: Config, modelArg: string | undefined, sessionArg: string | undefined): Promise<Streamed> {
  const rt = await startWorkerRuntime(config, log);
  const model = rt.engine.model(modelArg ?? config.models[0]!);
  let sessionId = sessionArg;
  if (!sessionId) {
    const rec = await rt.store.create({ model: model.name, shape: model.stateShape, dtype: model.stateDtype }, model.initState);
    sessionId = rec.id;
  }
  const events = rt.redis.duplicate();
  const listeners: ((ev: ProgressEvent) => void)[] = [];
  events.on('message', (_ch, msg) => listeners.forEach((l) => l(JSON.parse(msg) as ProgressEvent)));
  await events.subscribe(redisKeys(config.keyPrefix).progressChannel(sessionId));
  return { rt, sessionId, events, onEvent: (fn) => listeners.push(fn) };
}

/** The CLI waits for each request as long as it takes (an hour bounds a wait that never ends). */
const RESULT_WAIT_MS = 3_600_000;

async function submitAndWait(config: Config, s: Streamed, requests: SessionRequest[], onDone?: (r: RequestResult) => void): Promise<RequestResult> {
  const client = startClientRuntime(config);
  try {
    const submitted = [];
    for (const r of requests) submitted.push(await client.queue.submit(s.sessionId, r, { wantResult: true }));
    let last: RequestResult | undefined;
    for (const j of submitted) {
      last = await client.queue.result(j, RESULT_WAIT_MS);
      if (last.error) throw new Error(`${last.error.code}: ${last.error.message}`);
      onDone?.(last);
    }
    return last!;
  } finally {
    await client.close();
  }
}

async function runIngest(config: Config, args: Record<string, string | boolean | string[] | undefined>): Promise<void> {
  if (typeof args.file !== 'string') throw new ConfigError('ingest needs --file');
  const text = await readFile(args.file, 'utf8');
  const chunk = Number(args['chunk-chars'] ?? 65536);
  const s = await openSession(config, args.model as string | undefined, args.session as string | undefined);
  try {
    const chunks: SessionRequest[] = [];
    for (let i = 0; i < text.length; i += chunk) {
      chunks.push({ kind: 'ingest', text: text.slice(i, i + chunk), flush: i + chunk >= text.length, score: args.score === true });
    }
    if (chunks.length === 0) chunks.push({ kind: 'ingest', text: '', flush: true });
    const bar = new ProgressBar('ingest');
    let done = 0;
    let segs = 0;
    s.onEvent((ev) => {
      if (ev.type === 'segment') segs = ev.segmentsCommitted;
      bar.update(done, chunks.length, `${done}/${chunks.length} chunks, ${segs} segments`);
    });
    const scores: unknown[] = [];
    const last = await submitAndWait(config, s, chunks, (r) => {
      done++;
      if (r.scores) scores.push(...r.scores);
      bar.update(done, chunks.length, `${done}/${chunks.length} chunks, ${r.segmentsCommitted} segments`);
    });
    bar.end();
    const rec = await s.rt.store.get(s.sessionId);
    process.stdout.write(JSON.stringify({
      session: s.sessionId, model: rec?.model, tokensIngested: last.tokensIngested, segmentsCommitted: last.segmentsCommitted,
      pendingTokens: last.pendingTokens, stateBytes: await s.rt.store.storedBytes(s.sessionId), ...(args.score ? { scores } : {}),
    }) + '\n');
  } finally {
    await s.events.quit();
    await s.rt.close(0);
  }
}

async function runGenerate(config: Config, args: Record<string, string | boolean | string[] | undefined>): Promise<void> {
  const prompt = typeof args.file === 'string' ? await readFile(args.file, 'utf8') : typeof args.prompt === 'string' ? args.prompt : undefined;
  if (prompt === undefined && typeof args.session !== 'string') throw new ConfigError('generate needs --file, --prompt or --session');
  const num = (k: string, d: number) => (args[k] === undefined ? d : Number(args[k]));
  const sampling = validateSampling({
    ...DEFAULT_SAMPLING,
    temperature: num('temperature', 0),
    topK: num('top-k', 0),
    topP: num('top-p', 1),
    seed: num('seed', 0),
  });
  const maxTokens = num('max-tokens', 50);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new ConfigError('--max-tokens must be a positive integer');
  const s = await openSession(config, args.model as string | undefined, args.session as string | undefined);
  try {
    // A long prompt goes in as chunks (progress bar); the last chunk carries the generation.
    const chunk = 65536;
    const text = prompt ?? '';
    const requests: SessionRequest[] = [];
    for (let i = 0; i + chunk < text.length; i += chunk) requests.push({ kind: 'ingest', text: text.slice(i, i + chunk) });
    const stop = ([] as string[]).concat((args.stop as string[] | undefined) ?? []);
    requests.push({ kind: 'generate', text: text.slice(requests.length * chunk), maxTokens, sampling, stop });
    const bar = new ProgressBar('prompt');
    let generating = false;
    s.onEvent((ev) => {
      if (ev.type === 'segment' && !generating) bar.update(ev.requestConsumed, ev.requestTokens, `${ev.segmentsCommitted} segments`);
      if (ev.type === 'token') {
        if (!generating) bar.end();
        generating = true;
        process.stdout.write(ev.text);
      }
    });
    const r = await submitAndWait(config, s, requests);
    process.stdout.write('\n');
    process.stderr.write(JSON.stringify({ session: s.sessionId, finishReason: r.completion?.finishReason, promptTokens: r.promptTokens,
      completionTokens: r.completion?.ids.length, segmentsCommitted: r.segmentsCommitted }) + '\n');
  } finally {
    await s.events.quit();
    await s.rt.close(0);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    strict: false,
    options: {
      ...Object.fromEntries(['file', 'model', 'session', 'chunk-chars', 'prompt', 'max-tokens', 'temperature', 'top-k', 'top-p', 'seed']
        .map((k) => [k, { type: 'string' as const }])),
      stop: { type: 'string', multiple: true },
      score: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  try {
    const config = loadConfig(process.env, rest);
    switch (command) {
      case 'serve':
        await runServe(config, true);
        return 0;
      case 'api':
        await runServe(config, false);
        return 0;
      case 'worker':
        await ensureRedis(config);
        return await runWorker(config);
      case 'ingest':
        await ensureRedis(config);
        await runIngest(config, values);
        return 0;
      case 'generate':
        await ensureRedis(config);
        await runGenerate(config, values);
        return 0;
      case 'config':
        process.stdout.write(configTable() + '\n');
        return 0;
      default:
        process.stderr.write(USAGE + '\n');
        return command === undefined || values.help ? 0 : 2;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`rmt-serve: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`rmt-serve: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
