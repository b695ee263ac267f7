// `rmt-serve worker`: one worker process, or (RMT_WORKER_PROCESSES > 1, or RMT_DEVICES) a supervisor of several.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { ConfigError, type Config } from '../config/config.ts';
import type { Log } from '../telemetry/log.ts';
import { startWorkerRuntime } from '../worker/runtime.ts';

/**
 * RMT_WORKER_PROCESSES > 1: this process supervises that many worker processes on the same device.
 * A worker's main thread (tokenizing, Redis commits, BullMQ) saturates before a GPU does; several
 * processes split that work, while any one of them can serve any session. Metrics ports count up
 * from RMT_WORKER_METRICS_PORT. One child dying takes the others down, so the pod restarts whole.
 */
async function superviseWorkers(config: Config, log: Log): Promise<number> {
  const n = config.workerProcesses;
  // The same command line, less the process count (a flag would override the children's env).
  const childArgs = withoutFlags(process.argv.slice(2), ['--worker-processes']);
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

/** The command line less these flags (as --flag value or --flag=value): a flag would override the children's env. */
function withoutFlags(argv: string[], flags: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (flags.includes(a)) i++;
    else if (!flags.some((f) => a.startsWith(f + '='))) out.push(a);
  }
  return out;
}

/** GPUs visible to this host, without CUDA libraries: /proc/driver/nvidia/gpus, else `nvidia-smi -L`. */
export function countGpus(): number {
  try {
    const n = readdirSync('/proc/driver/nvidia/gpus').length;
    if (n > 0) return n;
  } catch { /* no NVIDIA driver in this kernel (or not Linux) */ }
  try {
    const out = execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    return out.split('\n').filter((l) => /^GPU \d+/.test(l)).length;
  } catch {
    return 0;
  }
}

/** RMT_DEVICES as ids: `all` counts the GPUs (none: a ConfigError, exit 2). */
export function deviceIds(devices: string): number[] {
  if (devices === 'all') {
    const n = countGpus();
    if (n === 0) throw new ConfigError('--devices all: no GPU found (neither /proc/driver/nvidia/gpus nor nvidia-smi -L lists one); give ids instead, e.g. --devices 0,1');
    return Array.from({ length: n }, (_, i) => i);
  }
  return devices.split(',').map(Number);
}

/**
 * More restarts of one device's process than this, none of its runs lasting RESTART_WINDOW_MS, stop the
 * supervisor (exit 1): a crash loop, counted by runs rather than by the clock, so a slow machine's slow
 * starts do not let it go on.
 */
export const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/** Backoff before a restart: 500 ms, doubled per restart of that process in its crash loop, at most 30 s. */
const restartDelay = (recent: number) => Math.min(30_000, 500 * 2 ** recent);

/**
 * RMT_DEVICES: one worker process per device id (RMT_WORKER_PROCESSES of them per device), each with
 * RMT_DEVICE_ID set; metrics ports count up from RMT_WORKER_METRICS_PORT, one per process. Unlike
 * superviseWorkers, a process that dies unexpectedly is restarted on the same device (backoff; a crash
 * loop stops them all), since one GPU's fault (Xid, OOM) should not take the others' sessions down. SIGTERM /
 * SIGINT reach every process; each finishes its requests within RMT_SHUTDOWN_GRACE_MS; exit 0 then.
 */
async function superviseDevices(config: Config, log: Log, ids: number[]): Promise<number> {
  const childArgs = withoutFlags(process.argv.slice(2), ['--devices', '--device-id', '--worker-processes']);
  const slots = ids.flatMap((deviceId) => Array.from({ length: config.workerProcesses }, () => deviceId))
    .map((deviceId, i) => ({ deviceId, index: i, child: undefined as ChildProcess | undefined, restarts: 0, startedAt: 0, timer: undefined as NodeJS.Timeout | undefined }));
  let stopping = false;
  let failed = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const settle = () => {
    if (stopping && slots.every((s) => s.child === undefined && s.timer === undefined)) resolveDone();
  };
  const stopAll = (sig: NodeJS.Signals) => {
    // A process still running past its grace (plus a margin for its exit) is killed.
    if (!stopping) setTimeout(() => { for (const s of slots) s.child?.kill('SIGKILL'); }, config.shutdownGraceMs + 5_000).unref();
    stopping = true;
    for (const s of slots) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = undefined;
      s.child?.kill(sig);
    }
    settle();
  };
  const start = (slot: (typeof slots)[number]) => {
    slot.timer = undefined;
    const c = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...childArgs], {
      stdio: 'inherit',
      env: {
        ...process.env,
        RMT_DEVICES: '',
        RMT_WORKER_PROCESSES: '1',
        RMT_DEVICE_ID: String(slot.deviceId),
        ...(config.metricsPort > 0 ? { RMT_WORKER_METRICS_PORT: String(config.metricsPort + slot.index) } : {}),
      },
    });
    slot.child = c;
    slot.startedAt = Date.now();
    log({ deviceId: slot.deviceId, pid: c.pid, restarts: slot.restarts }, 'worker process started');
    c.once('exit', (exitCode, signal) => {
      slot.child = undefined;
      if (stopping) {
        if (exitCode !== 0 && signal === null) failed = true;
        settle();
        return;
      }
      // A run that lasted the window ends the crash loop: its restarts are forgiven.
      if (Date.now() - slot.startedAt >= RESTART_WINDOW_MS) slot.restarts = 0;
      if (slot.restarts >= MAX_RESTARTS) {
        log({ deviceId: slot.deviceId, pid: c.pid, exitCode, signal, restarts: slot.restarts }, `a worker process died ${MAX_RESTARTS + 1} times, no run lasting a minute: stopping the others`);
        failed = true;
        stopAll('SIGTERM');
        return;
      }
      const delayMs = restartDelay(slot.restarts);
      slot.restarts++;
      log({ deviceId: slot.deviceId, pid: c.pid, exitCode, signal, delayMs }, 'a worker process died: restarting it');
      slot.timer = setTimeout(() => start(slot), delayMs);
    });
  };
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => stopAll(sig));
  for (const s of slots) start(s);
  log({ devices: ids, processes: slots.length, pids: slots.map((s) => s.child?.pid) }, 'worker processes started');
  await done;
  const code = failed ? 1 : 0;
  log({ code }, 'worker processes stopped');
  return code;
}

/** `ids`: deviceIds(config.devices), when the caller resolved them already (before connecting to Redis). */
export async function runWorker(config: Config, log: Log, ids?: number[]): Promise<number> {
  if (config.devices !== '') return superviseDevices(config, log, ids ?? deviceIds(config.devices));
  if (config.workerProcesses > 1) return superviseWorkers(config, log);
  const rt = await startWorkerRuntime(config, log);
  log({ models: config.models, concurrency: config.workerConcurrency, deviceId: config.deviceId, device: rt.engine.device() }, 'worker ready');
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

