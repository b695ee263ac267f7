// The OpenAPI document (openapi.yaml, written by scripts/openapi.ts) is built by @fastify/swagger from
// the routes' TypeBox schemas, then finished here by rules that hold for every route. TypeBox stays
// the one source for validation, serialisation and the spec.
//
// The pattern for a new route (or a new schema):
//   1. The route's `schema` names the operation: `operationId` (camelCase, stable: generated clients
//      call it by that name), `tags` (one of TAGS below), `summary`, optionally `description`.
//   2. Its body and response schemas are TypeBox schemas from schemas.ts; give a schema that clients
//      should see by name a `title` (`Type.Object({...}, { title: 'Completion' })`): finishSpec moves
//      every titled schema, however deeply nested, to `#/components/schemas/<title>` and refers to it.
//      Two different schemas under one title are an error.
//   3. Its `response` lists its success statuses and, through `errorResponses(404, 409, ...)` from
//      schemas.ts, the error statuses its own logic can answer. What every route can answer is added
//      here: 400 (validation, for an operation with parameters or a body), 401 (under /v1: API keys),
//      413 and 415 (with a body), 500 and 503 (shutting down), 4XX and 5XX (any other error).
//   4. Security follows auth.ts: every path but OPEN_PATHS takes the optional bearer key.
//   5. `node --import tsx scripts/openapi.ts` rewrites openapi.yaml; test/openapi.test.ts checks it is
//      current, lints it with redocly and drives a generated client through it.
// finishSpec throws when an operation lacks an operationId, tags or a summary, or uses an unknown tag.
import { STATUS_CODES } from 'node:http';
import type { SwaggerOptions } from '@fastify/swagger';
import { OPEN_PATHS } from './auth.ts';
import { RETRY_AFTER_S } from './queue-errors.ts';

export const TAGS = [
  { name: 'completions', description: 'OpenAI-compatible text completions, optionally continuing a session' },
  { name: 'chat', description: "OpenAI-compatible chat completions: messages rendered by the model package's chat template" },
  { name: 'sessions', description: 'Sessions: recurrent memory kept in Redis, fed by appends and websocket streams, exported and imported as snapshots' },
  { name: 'models', description: 'The model packages this server serves' },
  { name: 'health', description: 'Liveness, readiness and Prometheus metrics (never behind an API key)' },
];

export const SECURITY_SCHEME = 'bearer';

/** What each error status means, for every operation that declares it. */
const ERROR_DESCRIPTIONS: Record<string, string> = {
  '400': 'Invalid request: a parameter or the body fails validation, or the JSON or URL is malformed',
  '401': 'Missing or invalid API key (only when the server sets RMT_API_KEYS or RMT_API_KEY_HASHES)',
  '404': 'Not found: no such session or model (a session created with another API key counts as not found)',
  '409': 'Conflict: the session refuses the request in its current state (failed, requests in flight, another model, changed concurrently, request dropped)',
  '413': 'Request body too large',
  '415': 'Unsupported content type',
  '422': 'Unprocessable: the snapshot is invalid or does not fit the session',
  '429': `Overloaded: too many sessions are waiting for a worker (RMT_MAX_QUEUE_DEPTH); retry after Retry-After seconds`,
  '500': 'Internal error',
  '503': 'Unavailable: the server is shutting down, the model is not loaded, or the result did not come in time (the request may still complete)',
  '4XX': 'Any other client error (405, 408, 414, 431, ...), in the same shape',
  '5XX': 'Any other server error, in the same shape',
};

const SWAGGER_DEFAULT_DESCRIPTION = 'Default Response';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

/** The @fastify/swagger options: the document's fixed parts, and finishSpec over the generated rest. */
export function swaggerOptions(): SwaggerOptions {
  return {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'rmt-serve',
        version: '0.1.0',
        description:
          'Recurrent Memory Transformer inference: OpenAI-compatible completions, sessions whose memory lives in Redis, ' +
          'and document streaming over a websocket (protocol: GET /v1/sessions/{id}/stream and README.md).\n\n' +
          'Errors: every 4xx and 5xx carries {"error": {"message", "type", "param", "code"}} (schema Error).\n\n' +
          'Authentication: when the server sets RMT_API_KEYS (or RMT_API_KEY_HASHES), every /v1 operation needs ' +
          '"Authorization: Bearer <key>", and a session is visible only to the key that created it; ' +
          '/healthz, /readyz and /metrics are always open.',
      },
      // Self-hosted: where it runs is the deployment's choice; the defaults are a local `rmt-serve serve`.
      servers: [{
        url: 'http://{host}:{port}',
        description: 'An rmt-serve API process (default: a local `rmt-serve serve` on PORT 8080)',
        variables: {
          host: { default: 'localhost', description: 'Host name or address of the API process (or its Service / load balancer)' },
          port: { default: '8080', description: 'Its PORT' },
        },
      }],
      tags: TAGS,
      components: {
        securitySchemes: {
          [SECURITY_SCHEME]: {
            type: 'http',
            scheme: 'bearer',
            description: 'An API key as a bearer token: "Authorization: Bearer <key>". Required when the server sets ' +
              'RMT_API_KEYS (or RMT_API_KEY_HASHES); without them the API is open and the header is ignored.',
          },
        },
      },
    },
    // @fastify/websocket hides its routes from the spec (schema.hide): a websocket route is documented like any other.
    transform: ({ schema, url, route }) => ({
      schema: (route as { websocket?: boolean }).websocket && schema?.hide ? { ...schema, hide: false } : schema,
      url,
    }),
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    transformObject: (doc): any => finishSpec((doc as { openapiObject: Json }).openapiObject),
  };
}

/** Applies the rules in the header comment to the document @fastify/swagger generated (a copy of it). */
export function finishSpec(generated: Json): Json {
  // The generated document shares objects with the routes' schemas: never change those.
  const spec = JSON.parse(JSON.stringify(generated));
  const problems: string[] = [];
  const tagNames = new Set(TAGS.map((t) => t.name));
  const components: Record<string, Json> = {};
  const responseComponents: Record<string, Json> = {};
  const hoist = (s: Json): Json => hoistTitled(s, components, problems);

  for (const [path, item] of Object.entries<Json>(spec.paths ?? {})) {
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (!op) continue;
      const where = `${method.toUpperCase()} ${path}`;
      if (!op.operationId) problems.push(`${where} has no operationId`);
      if (!op.summary) problems.push(`${where} has no summary`);
      if (!Array.isArray(op.tags) || op.tags.length === 0) problems.push(`${where} has no tags`);
      for (const t of op.tags ?? []) if (!tagNames.has(t)) problems.push(`${where}: tag "${t}" is not in TAGS (src/api/openapi.ts)`);

      const open = OPEN_PATHS.includes(path);
      op.security = open ? [] : [{ [SECURITY_SCHEME]: [] }, {}];

      for (const p of op.parameters ?? []) if (p.schema) p.schema = hoist(p.schema);
      for (const media of Object.values<Json>(op.requestBody?.content ?? {})) if (media.schema) media.schema = hoist(media.schema);

      const responses: Record<string, Json> = op.responses ?? {};
      const implied = ['500', '503', '4XX', '5XX'];
      if ((op.parameters?.length ?? 0) > 0 || op.requestBody) implied.push('400');
      if (!open) implied.push('401');
      if (op.requestBody) implied.push('413', '415');
      for (const status of implied) responses[status] ??= { content: { 'application/json': { schema: { $ref: ERROR_REF } } } };
      for (const [status, res] of Object.entries<Json>(responses)) {
        const media = Object.values<Json>(res.content ?? {});
        // @fastify/swagger describes a response by its schema's description: describe it by its status instead.
        const generic = res.description === undefined || res.description === SWAGGER_DEFAULT_DESCRIPTION || res.description === media[0]?.schema?.description;
        for (const m of media) if (m.schema) m.schema = hoist(m.schema);
        if (media.length === 1 && media[0].schema?.$ref === ERROR_REF && Object.keys(res.content).length === 1) {
          // Error responses are shared: #/components/responses/<status name>.
          const name = responseName(status);
          responseComponents[name] ??= {
            description: ERROR_DESCRIPTIONS[status] ?? STATUS_CODES[Number(status)] ?? status,
            ...(status === '429' ? { headers: { 'Retry-After': { description: `Seconds to wait before retrying (${RETRY_AFTER_S})`, schema: { type: 'integer' } } } } : {}),
            content: res.content,
          };
          responses[status] = { $ref: `#/components/responses/${name}` };
        } else if (generic) {
          const ref: string | undefined = media[0]?.schema?.$ref;
          const text = STATUS_CODES[Number(status)] ?? status;
          res.description = ref ? `${text}: ${ref.split('/').pop()}` : text;
        }
      }
      op.responses = Object.fromEntries(Object.entries(responses).sort(([a], [b]) => a.localeCompare(b)));
    }
  }
  if (!components.Error) problems.push('no route uses ErrorSchema (titled "Error"), which the error responses refer to');
  if (problems.length > 0) throw new Error(`openapi: ${problems.length} problem(s):\n  ${problems.join('\n  ')}`);

  // Schemas @fastify/swagger put there itself (app.addSchema, TypeBox recursive types) stay.
  for (const name of Object.keys(spec.components.schemas ?? {})) if (components[name]) problems.push(`two different schemas are named "${name}"`);
  if (problems.length > 0) throw new Error(`openapi: ${problems.length} problem(s):\n  ${problems.join('\n  ')}`);
  spec.components.schemas = sortedByKey({ ...spec.components.schemas, ...components });
  spec.components.responses = sortedByKey(responseComponents);
  return spec;
}

const ERROR_REF = '#/components/schemas/Error';

function sortedByKey<T>(o: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}

/** 404 -> NotFound, 4XX -> ClientError: the name of a shared error response. */
function responseName(status: string): string {
  if (status === '4XX') return 'ClientError';
  if (status === '5XX') return 'ServerError';
  return (STATUS_CODES[Number(status)] ?? `Status${status}`).replace(/[^A-Za-z0-9]/g, '');
}

/** Replaces every schema with a `title` (nested ones first) by a reference to components.schemas[title]. */
function hoistTitled(s: Json, components: Record<string, Json>, problems: string[]): Json {
  if (Array.isArray(s)) return s.map((x) => hoistTitled(x, components, problems));
  if (s === null || typeof s !== 'object') return s;
  const out: Json = {};
  for (const [k, v] of Object.entries<Json>(s)) {
    // Inside these, keys are property names or values, not schema keywords.
    if (k === 'properties' || k === 'patternProperties' || k === '$defs') {
      out[k] = Object.fromEntries(Object.entries<Json>(v).map(([name, sub]) => [name, hoistTitled(sub, components, problems)]));
    } else if (k === 'enum' || k === 'const' || k === 'default' || k === 'examples' || k === 'required') {
      out[k] = v;
    } else {
      out[k] = typeof v === 'object' ? hoistTitled(v, components, problems) : v;
    }
  }
  if (typeof out.title !== 'string' || out.type === undefined && !out.anyOf && !out.oneOf && !out.allOf) return out;
  const name: string = out.title;
  delete out.title; // the component's name says it
  const known = components[name];
  if (known && JSON.stringify(known) !== JSON.stringify(out)) problems.push(`two different schemas are titled "${name}"`);
  components[name] ??= out;
  return { $ref: `#/components/schemas/${name}` };
}
