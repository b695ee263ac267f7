// One table maps every error kind to its HTTP status and OpenAI error type; routes throw ApiError,
// the app's error handler renders {"error": {message, type, param, code}}. A client mistake is never a 5xx.
export const ERROR_KINDS = {
  invalid_request: { status: 400, type: 'invalid_request_error' },
  unauthorized: { status: 401, type: 'authentication_error' },
  not_found: { status: 404, type: 'not_found_error' },
  method_not_allowed: { status: 405, type: 'invalid_request_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  conflict: { status: 409, type: 'conflict_error' },
  payload_too_large: { status: 413, type: 'invalid_request_error' },
  uri_too_long: { status: 414, type: 'invalid_request_error' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  unprocessable: { status: 422, type: 'invalid_request_error' },
  rate_limited: { status: 429, type: 'rate_limit_error' },
  headers_too_large: { status: 431, type: 'invalid_request_error' },
  unavailable: { status: 503, type: 'service_unavailable_error' },
  internal: { status: 500, type: 'server_error' },
} as const;

export type ErrorKind = keyof typeof ERROR_KINDS;

/** The kind answering with `status` (the first in the table), if any. */
export function kindOfStatus(status: number): ErrorKind | undefined {
  return (Object.keys(ERROR_KINDS) as ErrorKind[]).find((k) => ERROR_KINDS[k].status === status);
}

export class ApiError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  get status(): number {
    return ERROR_KINDS[this.kind].status;
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: ERROR_KINDS[this.kind].type, param: this.param, code: this.code ?? this.kind } };
  }
}

/**
 * The one answer to a model name no configured package has, whichever route or transport named it
 * (a body's `model`, GET /v1/models/{model}): 404 model_not_found, param `model`.
 */
export function modelNotFound(name: string): ApiError {
  return new ApiError('not_found', `The model '${name}' does not exist; GET /v1/models lists the models`, 'model', 'model_not_found');
}

/**
 * The one answer to a session that is not the caller's to use: never created, deleted, expired, or
 * owned by another API key (which must not learn that it exists). 404 session_not_found; `param`: where
 * the request named it (`session_id` in a body, `id` in a path), null when no request parameter did.
 */
export function sessionNotFound(id: string, param: string | null): ApiError {
  return new ApiError('not_found', `session ${id} not found (never created, deleted, expired, or owned by another key)`, param, 'session_not_found');
}

/** Worker / store error codes (RequestResult.error.code, SessionError.code) as API errors. */
export function fromCode(code: string, message: string): ApiError {
  switch (code) {
    case 'session_not_found':
    case 'not_found':
      return new ApiError('not_found', message, null, 'session_not_found');
    case 'model_mismatch':
    case 'state_mismatch':
      return new ApiError('conflict', message, null, code);
    case 'conflict':
      return new ApiError('conflict', message, null, code);
    case 'empty_prompt':
      return new ApiError('invalid_request', message, 'prompt', code);
    case 'model_not_loaded':
      return new ApiError('unavailable', message, 'model', code);
    default:
      return new ApiError('internal', message, null, code);
  }
}
