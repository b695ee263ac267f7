// Starting a worker thread that runs a module of this folder, from the build or under tsx.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Starts `./<name>.js` of this folder as a worker thread (the built .js), or `./<name>.ts` when this
 * file is .ts (under tsx): on Node 20 a worker does not get the loader hooks of `--import tsx`
 * (execArgv or inherited), so a small bootstrap registers tsx's ESM hooks inside the thread
 * (tsx/esm/api register()) and then imports the module.
 */
export function startThread(name: string, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL(`./${name}.js`, import.meta.url), options);
  const thread = new URL(`./${name}.ts`, import.meta.url).href;
  const api = import.meta.resolve('tsx/esm/api');
  const code =
    `import(${JSON.stringify(api)})` +
    `.then((tsx) => { tsx.register(); return import(${JSON.stringify(thread)}); })` +
    // An import failure must surface as the worker's 'error' event, not a silent exit.
    `.catch((err) => { setImmediate(() => { throw err; }); });`;
  return new Worker(code, { ...options, eval: true });
}
