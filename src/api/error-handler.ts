// Renders every error response in the OpenAI shape through the one table in errors.ts: route errors,
// fastify's own (validation, bad JSON, body too large, unsupported media type), the router's (bad URL,
// path parameter too long, unknown route, wrong method), Node's HTTP parser's (headers too large,
// request timeout), websocket handshakes, and requests arriving while the server shuts down.
// Client mistakes are 4xx, never with a stack.
import { STATUS_CODES, maxHeaderSize } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, kindOfStatus } from './errors.ts';
import { validationError, type AjvError } from './validation-error.ts';
import { NotDurableError } from '../state/durable-ack.ts';

export function toApiError(err: FastifyError | Error): ApiError {
  if (err instanceof ApiError) return err;
  // Wherever a write the client would be told about was not confirmed on the replicas (durable-ack.ts).
  if (err instanceof NotDurableError) return new ApiError('unavailable', err.message, null, 'not_durable');
  const fe = err as FastifyError & { validation?: AjvError[]; validationContext?: string };
  // The same codes and params as the generation routes' own (unknown_parameter, missing_required_parameter, invalid_type).
  if (fe.validation) return validationError(fe);
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('payload_too_large', 'request body too large', null, 'body_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('unsupported_media_type', 'unsupported content type: send application/json', null, 'unsupported_media_type');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ApiError('invalid_request', `malformed JSON body: ${fe.message}`, null, 'invalid_json');
    case 'FST_ERR_BAD_URL':
      return new ApiError('invalid_request', `malformed URL: ${fe.message}`, null, 'bad_url');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new ApiError('uri_too_long', 'a path segment of the URL is too long', null, 'uri_too_long');
  }
  if (fe instanceof SyntaxError || fe.statusCode === 400) return new ApiError('invalid_request', fe.message, null, 'invalid_request');
  if (fe.statusCode === 413) return new ApiError('payload_too_large', fe.message, null, 'body_too_large');
  if (fe.statusCode === 404) return new ApiError('not_found', fe.message, null, 'not_found');
  // Any other client error fastify raises keeps its status where the table has it (415, 408, ...).
  const status = fe.statusCode ?? 500;
  if (status >= 400 && status < 500) {
    const kind = kindOfStatus(status) ?? 'invalid_request';
    return new ApiError(kind, fe.message, null, kind);
  }
  return new ApiError('internal', 'internal error', null, 'internal_error');
}

/** fastify's `frameworkErrors`: the router's bad URL (400) and too-long path parameter (414). */
export function frameworkErrorHandler(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const api = toApiError(err);
  if (api.status >= 500) req.log.error({ err }, 'request failed');
  void reply.status(api.status).send(api.body());
}

/** A whole HTTP/1.1 response, for sockets no ServerResponse answers (parser errors, websocket handshakes). */
export function rawErrorResponse(api: ApiError): string {
  const body = JSON.stringify(api.body());
  return [
    `HTTP/1.1 ${api.status} ${STATUS_CODES[api.status] ?? ''}`,
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    '',
    body,
  ].join('\r\n');
}

/** Writes `api` on a raw socket and closes it; a socket already carrying a response is only closed. */
export function endSocketWithError(socket: Duplex, api: ApiError): void {
  // Node's own rule: no second response once one has started on this socket (it would corrupt it).
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (socket.writable && !inFlight?.headersSent) socket.end(rawErrorResponse(api), () => socket.destroy());
  else socket.destroy();
}

export function clientErrorToApi(err: Error & { code?: string }): ApiError {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new ApiError('headers_too_large', `request line and headers exceed ${maxHeaderSize} bytes`, null, 'headers_too_large');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new ApiError('request_timeout', 'the request was not received in time (RMT_REQUEST_TIMEOUT_MS, RMT_HEADERS_TIMEOUT_MS)', null, 'request_timeout');
    default:
      return new ApiError('invalid_request', `malformed HTTP request${err.code ? ` (${err.code})` : ''}`, null, 'bad_request');
  }
}

/** fastify's `clientErrorHandler` (the Node server's 'clientError' event): errors before any route runs. */
export function clientErrorHandler(this: FastifyInstance, err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  this.log.debug({ code: err.code }, 'client error');
  endSocketWithError(socket, clientErrorToApi(err));
}

/** Path pattern of a route (`/v1/sessions/:id`) as a regex over request paths, for 405 answers. */
function routeRegex(url: string): RegExp {
  const segs = url.split('/').map((s) => (s.startsWith(':') ? '[^/]+' : s === '*' ? '.*' : s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  return new RegExp(`^${segs.join('/')}$`);
}

export function registerErrorHandler(app: FastifyInstance): void {
  // Every route's methods by path, so a known path with another method answers 405 + Allow, not 404.
  const routes = new Map<string, { re: RegExp; methods: Set<string> }>();
  const wsRoutes = new Set<string>();
  app.addHook('onRoute', (r) => {
    let e = routes.get(r.url);
    if (!e) routes.set(r.url, (e = { re: routeRegex(r.url), methods: new Set() }));
    for (const m of [r.method].flat()) e.methods.add(m);
    if (e.methods.has('GET')) e.methods.add('HEAD');
    if (r.websocket) wsRoutes.add(r.url);
  });

  app.setErrorHandler((err, req, reply) => {
    const api = toApiError(err as Error);
    if (api.status >= 500) req.log.error({ err }, 'request failed');
    void reply.status(api.status).send(api.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const allowed = new Set<string>();
    for (const e of routes.values()) if (e.re.test(path)) for (const m of e.methods) allowed.add(m);
    if (allowed.size > 0) {
      const list = [...allowed].sort().join(', ');
      const api = new ApiError('method_not_allowed', `${req.method} is not allowed on ${path} (allowed: ${list})`, null, 'method_not_allowed');
      void reply.status(api.status).header('allow', list).send(api.body());
      return;
    }
    const api = new ApiError('not_found', `no route ${req.method} ${path}`, null, 'route_not_found');
    void reply.status(404).send(api.body());
  });

  // The last net: an error status sent without a body (a plugin's bare reply.code(404).send()) gets one.
  app.addHook('onSend', async (req, reply, payload) => {
    if (reply.statusCode < 400 || (payload !== undefined && payload !== null && payload !== '')) return payload;
    const status = reply.statusCode;
    const api = wsRoutes.has(req.routeOptions.url ?? '') && !req.ws
      ? new ApiError('not_found', `${req.routeOptions.url} is a websocket endpoint: connect with "Upgrade: websocket"`, null, 'websocket_upgrade_required')
      : new ApiError(kindOfStatus(status) ?? (status >= 500 ? 'internal' : 'invalid_request'), STATUS_CODES[status] ?? 'error', null, null);
    void reply.header('content-type', 'application/json; charset=utf-8');
    return JSON.stringify(api.body());
  });

  // While closing, requests still arriving on open connections get 503 in the OpenAI shape
  // (buildApp turns fastify's own plain 503 off with return503OnClosing: false).
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  app.addHook('onRequest', async () => {
    if (closing) throw new ApiError('unavailable', 'the server is shutting down', null, 'shutting_down');
  });
}
