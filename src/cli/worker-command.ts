// `rmt-serve worker`: one worker process, or (RMT_WORKER_PROCESSES > 1) a supervisor of several.
import { spawn } from 'node:child_process';
import type { Config } from '../config/config.ts';
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

export async function runWorker(config: Config, log: Log): Promise<number> {
  if (config.workerProcesses > 1) return superviseWorkers(config, log);
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

