// Starting a worker thread that runs a module of this project, from the build or under tsx.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Starts the module at `url` as a worker thread: as it is when built (.js), or under tsx (.ts): on Node
 * 20 a worker does not get the loader hooks of `--import tsx` (execArgv or inherited), so a small
 * bootstrap registers tsx's ESM hooks inside the thread (tsx/esm/api register()) and then imports it.
 */
export function startModuleThread(url: string, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  if (!url.endsWith('.ts')) return new Worker(new URL(url), options);
  const api = import.meta.resolve('tsx/esm/api');
  const code =
    `import(${JSON.stringify(api)})` +
    `.then((tsx) => { tsx.register(); return import(${JSON.stringify(url)}); })` +
    // An import failure must surface as the worker's 'error' event, not a silent exit.
    `.catch((err) => { setImmediate(() => { throw err; }); });`;
  return new Worker(code, { ...options, eval: true });
}

/**
 * Starts `./<name>.js` as a worker thread, or `./<name>.ts` when this file is .ts (under tsx), relative
 * to `from` (the caller's import.meta.url: thread modules live beside their callers, not only here).
 */
export function startThread(name: string, options: Omit<WorkerOptions, 'eval'> = {}, from: string = import.meta.url): Worker {
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  return startModuleThread(new URL(`./${name}.${ext}`, from).href, options);
}

/**
 * Waits for a started thread to say it is ready. `read` looks at each message: `{ ready }` resolves,
 * `{ failed }` (why the thread could not start) rejects with `<what> failed to start: why`,
 * `{ refused }` rejects with that message as it is, undefined keeps waiting. A thread error or exit
 * rejects like `failed`; every rejection terminates the thread.
 */
export function awaitReady<T, M>(
  worker: Worker, what: string, read: (msg: M) => { ready: T } | { failed: string } | { refused: string } | undefined,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const stop = (err: Error) => {
      cleanup();
      void worker.terminate();
      reject(err);
    };
    const fail = (why: string) => stop(new Error(`${what} failed to start: ${why}`));
    const onMessage = (msg: M) => {
      const r = read(msg);
      if (r === undefined) return;
      if ('failed' in r) return fail(r.failed);
      if ('refused' in r) return stop(new Error(r.refused));
      cleanup();
      resolve(r.ready);
    };
    const onError = (err: Error) => fail(err.message);
    const onExit = (code: number) => fail(`it exited (code ${code})`);
    const cleanup = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
}
