// Builds the fastify app (server.ts listens): schemas from TypeBox, one error table, optional API
// keys, pino logs with request ids (prompts and keys are not logged).
import Fastify, { type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ApiDeps } from './deps.ts';
import { registerAuth } from './auth.ts';
import { registerErrorHandler } from './error-handler.ts';
import completionsRoutes from './routes/completions.ts';
import healthRoutes from './routes/health.ts';
import modelsRoutes from './routes/models.ts';
import sessionsRoutes from './routes/sessions.ts';
import sessionStreamRoutes, { STREAM_DOC } from './routes/session-stream.ts';

export interface AppOptions {
  logger?: boolean | object;
  /** Plain API keys and sha256 hashes of keys; both empty: no authentication. */
  apiKeys?: readonly string[];
  apiKeyHashes?: readonly string[];
  bodyLimitBytes?: number;
}

export async function buildApp(deps: ApiDeps, opts: AppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimitBytes ?? 8 * 1024 * 1024,
    genReqId: () => crypto.randomUUID(),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  registerErrorHandler(app);
  // The route schemas are the one source of openapi.yaml (scripts/openapi.ts writes it; a test keeps it equal).
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'rmt-serve',
        version: '0.1.0',
        description:
          'Recurrent Memory Transformer inference: OpenAI-compatible completions, sessions whose memory lives in Redis, ' +
          'and document streaming over a websocket (protocol: GET /v1/sessions/{id}/stream and README.md). ' +
          'Errors: {"error": {"message", "type", "param", "code"}}.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    transformObject: (doc): any => {
      const spec = (doc as { openapiObject: { paths?: Record<string, unknown> } }).openapiObject;
      spec.paths = {
        ...spec.paths,
        '/v1/sessions/{id}/stream': {
          get: {
            ...STREAM_DOC,
            parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' } }],
            responses: {
              '101': { description: 'Switching Protocols: the websocket is open; messages as described above' },
              '404': { description: 'session not found (or another key\'s)', content: { 'application/json': { schema: { type: 'object', required: ['error'], properties: { error: { type: 'object' } } } } } },
            },
          },
        },
      };
      return spec;
    },
  });
  registerAuth(app, opts.apiKeys ?? [], opts.apiKeyHashes ?? []);
  await app.register(websocket, { options: { maxPayload: 4 * 1024 * 1024, skipUTF8Validation: true } });
  await app.register(async (i) => healthRoutes(i, deps));
  await app.register(async (i) => modelsRoutes(i, deps));
  await app.register(async (i) => sessionsRoutes(i, deps));
  await app.register(async (i) => completionsRoutes(i, deps));
  await app.register(async (i) => sessionStreamRoutes(i, deps));
  return app;
}
