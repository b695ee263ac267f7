// Renders every error in the OpenAI shape through the one table in errors.ts. Fastify's own errors
// (validation, bad JSON, body too large, unsupported media type) are client mistakes: 4xx, no stack.
import type { FastifyError, FastifyInstance } from 'fastify';
import { ApiError } from './errors.ts';

export function toApiError(err: FastifyError | Error): ApiError {
  if (err instanceof ApiError) return err;
  const fe = err as FastifyError & { validation?: { instancePath?: string; params?: { missingProperty?: string } }[]; validationContext?: string };
  if (fe.validation) {
    const v = fe.validation[0];
    const param = v?.params?.missingProperty ?? (v?.instancePath ? v.instancePath.replace(/^\//, '').replaceAll('/', '.') : null);
    return new ApiError('invalid_request', `${fe.validationContext ?? 'body'}${v?.instancePath ?? ''} ${fe.message.replace(/^(body|querystring|params|headers)\S*\s*/, '')}`.trim(), param || null, 'invalid_request');
  }
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('payload_too_large', 'request body too large', null, 'body_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('invalid_request', 'unsupported content type: send application/json', null, 'unsupported_media_type');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ApiError('invalid_request', `malformed JSON body: ${fe.message}`, null, 'invalid_json');
  }
  if (fe instanceof SyntaxError || fe.statusCode === 400) return new ApiError('invalid_request', fe.message, null, 'invalid_request');
  if (fe.statusCode === 413) return new ApiError('payload_too_large', fe.message, null, 'body_too_large');
  if (fe.statusCode === 415) return new ApiError('invalid_request', fe.message, null, 'unsupported_media_type');
  if (fe.statusCode === 404) return new ApiError('not_found', fe.message, null, 'not_found');
  return new ApiError('internal', 'internal error', null, 'internal_error');
}

export function registerErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err, req, reply) => {
    const api = toApiError(err as Error);
    if (api.status >= 500) req.log.error({ err }, 'request failed');
    void reply.status(api.status).send(api.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const api = new ApiError('not_found', `no route ${req.method} ${req.url.split('?')[0]}`, null, 'route_not_found');
    void reply.status(404).send(api.body());
  });
}
