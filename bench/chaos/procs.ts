// Processes of one chaos cluster: a private redis-server (append-only file on, its own port and data
// dir), `rmt-serve api` and `rmt-serve worker` processes started from the CLI. Every PID started is
// tracked; only those are ever signalled, and all are killed when this process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, sendInline as redisInline } from '../../test/support/redis-server.ts';

export { freePort };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/rmt-serve.js');

/** Every child alive, for the exit handler. */
const live = new Set<ChildProcess>();
let handlersInstalled = false;

function killAllNow(): void {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** On exit, Ctrl-C or SIGTERM: SIGKILL every process this module started (by its ChildProcess). */
export function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      killAllNow();
      process.exit(130);
    });
  }
}

export type Role = 'redis' | 'api' | 'worker';

export interface Proc {
  role: Role;
  name: string;
  child: ChildProcess;
  pid: number;
  startedAt: number;
  /** api: its HTTP port; redis: its port. */
  port?: number;
  /** worker: when it logged "worker ready". */
  readyAt?: number;
  /** Set before we SIGKILL it, so its exit is not counted as unexpected. */
  killedByUs: boolean;
}

export interface ClusterOptions {
  /** Folder for this cluster's logs and the Redis data dir. */
  dir: string;
  prefix: string;
  apis: number;
  workers: number;
  /** Extra environment for the api and worker processes. */
  env?: Record<string, string>;
}

export interface ExitRecord {
  name: string;
  pid: number;
  code: number | null;
  signal: string | null;
  at: number;
  expected: boolean;
}

export class Cluster {
  redis?: Proc;
  redisPort = 0;
  apis: Proc[] = [];
  workers: Proc[] = [];
  exits: ExitRecord[] = [];
  private stopping = false;
  private logs = new Map<string, WriteStream>();
  /** This cluster's processes still running. */
  private running = new Set<Proc>();

  constructor(readonly o: ClusterOptions) {
    installExitHandlers();
    mkdirSync(path.join(o.dir, 'redis'), { recursive: true });
  }

  get redisUrl(): string {
    return `redis://127.0.0.1:${this.redisPort}`;
  }

  apiUrls(): string[] {
    return this.apis.map((a) => `http://127.0.0.1:${a.port}`);
  }

  logFile(name: string): string {
    return path.join(this.o.dir, `${name}.log`);
  }

  private log(name: string): WriteStream {
    let s = this.logs.get(name);
    if (!s) this.logs.set(name, (s = createWriteStream(this.logFile(name), { flags: 'a' })));
    return s;
  }

  private spawnProc(role: Role, name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, port?: number): Proc {
    if (this.stopping) throw new Error(`cluster stopping: not starting ${name}`);
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid === undefined) throw new Error(`could not start ${name} (${cmd})`);
    live.add(child);
    const p: Proc = { role, name, child, pid: child.pid, startedAt: Date.now(), port, killedByUs: false };
    this.running.add(p);
    const out = this.log(name);
    out.write(`--- ${new Date().toISOString()} start pid ${p.pid}\n`);
    const onData = (d: Buffer) => {
      out.write(d);
      if (role === 'worker' && p.readyAt === undefined && d.includes('worker ready')) p.readyAt = Date.now();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => {
      live.delete(child);
      this.running.delete(p);
      out.write(`--- ${new Date().toISOString()} exit pid ${p.pid} code ${code} signal ${signal}\n`);
      const expected = p.killedByUs || this.stopping;
      this.exits.push({ name, pid: p.pid, code, signal, at: Date.now(), expected });
      // Anything that dies on its own (e.g. on losing Redis) is restarted like a killed one.
      if (!expected) void this.restart(p).catch(() => {});
    });
    return p;
  }

  private serviceEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
    return {
      ...process.env,
      REDIS_URL: this.redisUrl,
      RMT_PREFIX: this.o.prefix,
      RMT_MODELS: 'rmt-brown-small',
      RMT_INTRA_OP_THREADS: '1',
      RMT_TOKENIZER_THREADS: '1',
      ...this.o.env,
      ...extra,
    };
  }

  async startRedis(): Promise<void> {
    if (!this.redisPort) this.redisPort = await freePort();
    const args = ['--port', String(this.redisPort), '--bind', '127.0.0.1', '--dir', path.join(this.o.dir, 'redis'),
      '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', ''];
    this.redis = this.spawnProc('redis', 'redis', 'redis-server', args, process.env, this.redisPort);
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        if ((await redisInline(this.redisPort, 'PING', 500)) === '+PONG') return;
      } catch {
        /* not up yet, or loading the AOF */
      }
      if (this.redis.child.exitCode !== null) throw new Error(`redis-server exited on start (see ${this.logFile('redis')})`);
      if (Date.now() > deadline) throw new Error('redis-server did not answer PING in 20 s');
      await sleep(50);
    }
  }

  async startApi(i: number, port?: number): Promise<Proc> {
    port ??= await freePort();
    const env = this.serviceEnv({ PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn' });
    const p = this.spawnProc('api', `api${i}`, process.execPath, [BIN, 'api'], env, port);
    this.apis[i] = p;
    return p;
  }

  startWorker(i: number): Proc {
    const env = this.serviceEnv({ RMT_LOCK_MS: '2000', RMT_STALLED_CHECK_MS: '1000', RMT_SHUTDOWN_GRACE_MS: '0' });
    const p = this.spawnProc('worker', `worker${i}`, process.execPath, [BIN, 'worker'], env);
    this.workers[i] = p;
    return p;
  }

  /** Redis, the APIs (healthy) and the workers (ready). */
  async start(): Promise<void> {
    await this.startRedis();
    for (let i = 0; i < this.o.apis; i++) await this.startApi(i);
    for (let i = 0; i < this.o.workers; i++) this.startWorker(i);
    await this.waitReady(60_000);
  }

  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const a of this.apis) {
      for (;;) {
        const ok = await fetch(`http://127.0.0.1:${a.port}/healthz`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
        if (ok) break;
        if (Date.now() > deadline) throw new Error(`${a.name} not healthy in ${timeoutMs} ms (see ${this.logFile(a.name)})`);
        await sleep(100);
      }
    }
    while (this.workers.some((w) => w.readyAt === undefined)) {
      if (Date.now() > deadline) throw new Error(`workers not ready in ${timeoutMs} ms`);
      await sleep(100);
    }
  }

  /** SIGKILL one of our processes (a crash); does not wait. */
  kill(p: Proc): void {
    p.killedByUs = true;
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  }

  async waitExit(p: Proc): Promise<void> {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    await new Promise((r) => p.child.once('exit', r));
  }

  /** A new process in the same slot (an api on the same port, redis on the same port and data dir). */
  async restart(p: Proc): Promise<Proc | undefined> {
    if (this.stopping) return undefined;
    await this.waitExit(p);
    if (p.role === 'redis') {
      await this.startRedis();
      return this.redis;
    }
    if (p.role === 'api') {
      const i = this.apis.indexOf(p);
      return i >= 0 ? this.startApi(i, p.port) : undefined;
    }
    const i = this.workers.indexOf(p);
    return i >= 0 ? this.startWorker(i) : undefined;
  }

  unexpectedExits(): ExitRecord[] {
    return this.exits.filter((e) => !e.expected);
  }

  /** SIGTERM everything we started, SIGKILL after graceMs; waits for every exit. */
  async stop(graceMs = 3000): Promise<void> {
    this.stopping = true;
    const procs = [...this.running];
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
    const timer = setTimeout(() => procs.forEach((p) => this.kill(p)), graceMs);
    await Promise.all(procs.map((p) => this.waitExit(p)));
    clearTimeout(timer);
    await Promise.all([...this.logs.values()].map((s) => new Promise((r) => s.end(r))));
  }
}

/** CPU time (user + system, clock ticks) of a process, from /proc/<pid>/stat; undefined if gone. */
export function cpuTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // fields 14 and 15 (utime, stime), counted after the comm
  } catch {
    return undefined;
  }
}

/** Resident set size in kB (VmRSS from /proc/<pid>/status); undefined if gone. */
export function rssKb(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}
