// Builds the fastify app (server.ts listens): schemas from TypeBox, one error table, optional API
// keys, pino logs with request ids (prompts and keys are not logged).
import Fastify, { type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { SETTINGS } from '../config/config.ts';
import type { ApiDeps } from './deps.ts';
import { registerAuth } from './auth.ts';
import { ApiError } from './errors.ts';
import { clientErrorHandler, endSocketWithError, frameworkErrorHandler, registerErrorHandler } from './error-handler.ts';
import chatCompletionsRoutes from './routes/chat-completions.ts';
import completionsRoutes from './routes/completions.ts';
import healthRoutes from './routes/health.ts';
import modelsRoutes from './routes/models.ts';
import sessionsRoutes from './routes/sessions.ts';
import sessionStreamRoutes from './routes/session-stream.ts';
import { swaggerOptions } from './openapi.ts';

export interface AppOptions {
  logger?: boolean | object;
  /** Plain API keys and sha256 hashes of keys; both empty: no authentication. */
  apiKeys?: readonly string[];
  apiKeyHashes?: readonly string[];
  bodyLimitBytes?: number;
  /** Receiving a whole request may take this long, its headers headersTimeoutMs (0 = no limit); then 408. */
  requestTimeoutMs?: number;
  headersTimeoutMs?: number;
  keepAliveTimeoutMs?: number;
}

/**
 * Node's limits on receiving a request (they stop counting once it is received, so responses of any
 * length, SSE and websockets included, are never cut). Node refuses headersTimeout > requestTimeout:
 * it is lowered to it. Node looks for expired requests every connectionsCheckingInterval (30 s by
 * default, which would let a 1 s timeout fire 30 s late): a quarter of the shortest, at most 1 s.
 */
export function httpTimeouts(opts: AppOptions): { request: number; headers: number; keepAlive: number; checkEvery?: number } {
  const request = opts.requestTimeoutMs ?? SETTINGS.requestTimeoutMs.default;
  let headers = opts.headersTimeoutMs ?? SETTINGS.headersTimeoutMs.default;
  if (request > 0 && headers > request) headers = request;
  const keepAlive = opts.keepAliveTimeoutMs ?? SETTINGS.keepAliveTimeoutMs.default;
  const shortest = Math.min(...[request, headers].filter((t) => t > 0));
  return { request, headers, keepAlive, checkEvery: Number.isFinite(shortest) ? Math.max(10, Math.min(1000, Math.floor(shortest / 4))) : undefined };
}

export async function buildApp(deps: ApiDeps, opts: AppOptions = {}): Promise<FastifyInstance> {
  const t = httpTimeouts(opts);
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimitBytes ?? 8 * 1024 * 1024,
    requestTimeout: t.request,
    keepAliveTimeout: t.keepAlive,
    http: { requestTimeout: t.request, headersTimeout: t.headers, ...(t.checkEvery ? { connectionsCheckingInterval: t.checkEvery } : {}) },
    // The router's and Node's parser's own errors, in the OpenAI shape (error-handler.ts).
    frameworkErrors: frameworkErrorHandler,
    clientErrorHandler,
    return503OnClosing: false, // registerErrorHandler answers 503 itself, in the OpenAI shape
    genReqId: () => crypto.randomUUID(),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  registerErrorHandler(app);
  // The route schemas are the one source of openapi.yaml (scripts/openapi.ts writes it; a test keeps it equal).
  // How a route gets its operationId, tags, named schemas, error statuses and security: openapi.ts.
  await app.register(swagger, swaggerOptions());
  registerAuth(app, opts.apiKeys ?? [], opts.apiKeyHashes ?? []);
  await app.register(websocket, { options: { maxPayload: 4 * 1024 * 1024, skipUTF8Validation: true } });
  // A refused websocket handshake (bad Sec-WebSocket-Key, version...) answers in the OpenAI shape, not ws's text.
  app.websocketServer.on('wsClientError', (err: Error, socket) => {
    endSocketWithError(socket, new ApiError('invalid_request', `websocket handshake refused: ${err.message}`, null, 'invalid_websocket_handshake'));
  });
  await app.register(async (i) => healthRoutes(i, deps));
  await app.register(async (i) => modelsRoutes(i, deps));
  await app.register(async (i) => sessionsRoutes(i, deps));
  await app.register(async (i) => completionsRoutes(i, deps));
  await app.register(async (i) => chatCompletionsRoutes(i, deps));
  await app.register(async (i) => sessionStreamRoutes(i, deps));
  return app;
}
