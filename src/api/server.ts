// Listens: builds the app from config (app.ts) and serves it until closed.
import type { FastifyInstance } from 'fastify';
import type { Config } from '../config/config.ts';
import { buildApp, type AppOptions } from './app.ts';
import { createApiDeps } from './deps-factory.ts';
import { logDestination } from '../telemetry/log.ts';

/** The app's options from the config (tests build their app from the same mapping). */
export function appOptions(config: Config): AppOptions {
  return {
    logger: {
      level: config.logLevel,
      // Prompts and keys stay out of the logs: only method, url and ids are logged by default.
      redact: ['req.headers.authorization'],
      // A person at a terminal reads pino-pretty's lines; a pipe or a log collector gets pino's JSON as before.
      ...(process.stdout.isTTY ? { stream: logDestination(1, true) } : {}),
    },
    apiKeys: config.apiKeys,
    apiKeyHashes: config.apiKeyHashes,
    bodyLimitBytes: config.bodyLimitBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    headersTimeoutMs: config.headersTimeoutMs,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
  };
}

export async function startApiServer(config: Config): Promise<{ app: FastifyInstance; url: string; close(): Promise<void> }> {
  const deps = await createApiDeps(config);
  const app = await buildApp(deps, appOptions(config));
  const url = await app.listen({ port: config.port, host: config.host });
  return {
    app,
    url,
    async close() {
      await app.close();
      await deps.close();
    },
  };
}
