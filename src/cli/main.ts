// rmt-serve command line: `serve` (API + worker), `api`, `worker`; `ingest` and `generate` work
// without the HTTP API (an in-process worker on the same Redis, submitting through the same queue).
// Expected failures (a bad flag, an unreachable Redis, a missing file) are one line on stderr, no stack.
import { ConfigError, configTable, loadConfig, type Config } from '../config/config.ts';
import { cliLogger, type Log } from '../telemetry/log.ts';
import { COMMANDS, closest, commandHelp, mainHelp, parseArgs } from './args.ts';
import { findRedis, resolveRedis, safeUrl } from './embedded-redis.ts';
import type { WorkerRuntime } from '../worker/runtime.ts';
// The API, the engine and onnxruntime load only for the command that runs them: --help and a
// mistyped flag answer at once.

function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
}

async function runServe(config: Config, log: Log, withWorker: boolean): Promise<void> {
  const redis = withWorker ? await resolveRedis(config, log) : await findRedis(config, log);
  const [{ startApiServer }, { apiRegistry }, { startWorkerRuntime }] = await Promise.all([
    import('../api/server.ts'), import('../api/metrics.ts'), import('../worker/runtime.ts')]);
  const cfg = { ...config, redisUrl: redis.url };
  let worker: WorkerRuntime | undefined;
  let api: Awaited<ReturnType<typeof startApiServer>>;
  try {
    // One process, one /metrics: the worker's batch sizes and step times join the API's registry.
    worker = withWorker ? await startWorkerRuntime(cfg, log, { registry: apiRegistry }) : undefined;
    api = await startApiServer(cfg);
  } catch (err) {
    // A failed start (CUDA missing, a bad model, the port taken) must not leave the private redis-server running.
    await worker?.close(0).catch(() => undefined);
    await redis.stop();
    throw err;
  }
  log({ url: api.url, redis: safeUrl(redis.url), redisFrom: redis.source, worker: withWorker, models: cfg.models,
    ...(worker ? { device: worker.engine.device() } : {}) }, 'rmt-serve ready');
  const signal = await untilSignal();
  log({ signal }, 'shutting down');
  await api.close();
  await worker?.close();
  await redis.stop();
}

/** The Redis a command that starts none uses, resolved into the config (REDIS_URL, or serve's private one). */
async function withRedis(config: Config, log: Log): Promise<Config> {
  return { ...config, redisUrl: (await findRedis(config, log)).url };
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    const topic = command === 'help' ? rest[0] : undefined;
    if (topic !== undefined && COMMANDS[topic]) {
      process.stdout.write(commandHelp(topic) + '\n');
      return 0;
    }
    // No command at all did nothing: usage on stderr and a failing status, so a script notices.
    (command === undefined ? process.stderr : process.stdout).write(mainHelp() + '\n');
    return command === undefined ? 2 : 0;
  }
  try {
    if (!COMMANDS[command]) {
      const near = closest(command, Object.keys(COMMANDS));
      throw new ConfigError(`unknown command ${JSON.stringify(command)}${near ? ` (did you mean ${near}?)` : ''}; rmt-serve --help lists the commands`);
    }
    const args = parseArgs(command, rest);
    if (args.help) {
      process.stdout.write(commandHelp(command) + '\n');
      return 0;
    }
    const config = loadConfig(process.env, args.settingArgs);
    const log = cliLogger(config.logLevel);
    switch (command) {
      case 'serve':
        await runServe(config, log, true);
        return 0;
      case 'api':
        await runServe(config, log, false);
        return 0;
      case 'worker': {
        const w = await import('./worker-command.ts');
        // --devices all with no GPU is refused before anything connects.
        const ids = config.devices !== '' ? w.deviceIds(config.devices) : undefined;
        return await w.runWorker(await withRedis(config, log), log, ids);
      }
      case 'ingest':
        await (await import('./session-commands.ts')).runIngest(await withRedis(config, log), log, args.values);
        return 0;
      case 'generate':
        await (await import('./session-commands.ts')).runGenerate(await withRedis(config, log), log, args.values);
        return 0;
      default: // config
        process.stdout.write(configTable() + '\n');
        return 0;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`rmt-serve: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

/** A failure the user can act on, without the stack: files, ports, Redis replies. */
function oneLine(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code;
  return code && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`rmt-serve: ${oneLine(err)}\n`);
    // A bug, not a user's mistake, needs its stack: RMT_DEBUG=1 prints it.
    if (process.env.RMT_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  },
);
