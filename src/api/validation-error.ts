// Schema (ajv) errors as OpenAI-style 400s that name the offending parameter, the same codes on every
// route whatever part of the request failed: unknown_parameter (a field the schema does not have),
// missing_required_parameter, invalid_type (a value against the schema). error-handler.ts renders
// every route's validation errors through this; the generation routes add their fields' shapes.
import { ApiError } from './errors.ts';

export interface AjvError {
  keyword?: string;
  instancePath?: string;
  message?: string;
  params?: { missingProperty?: string; additionalProperty?: string };
}

/**
 * Validation errors as OpenAI-style 400s that name the offending parameter. `shapes`: what a
 * union-typed top-level field accepts, for its message (ajv's first-branch message would mislead).
 */
export function validationError(err: Error & { validation?: AjvError[]; validationContext?: string }, shapes: Record<string, string> = {}): ApiError {
  // Where the value was: the body, or the URL's path parameters or query string ('params', 'querystring').
  const where = err.validationContext === 'params' ? 'path parameter' : err.validationContext === 'querystring' ? 'query parameter'
    : err.validationContext === 'headers' ? 'header' : 'request body';
  const errors = err.validation ?? [];
  const extra = errors.find((e) => e.keyword === 'additionalProperties' && e.params?.additionalProperty);
  if (extra) {
    const path = (extra.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.');
    const name = path ? `${path}.${extra.params!.additionalProperty}` : extra.params!.additionalProperty!;
    return new ApiError('invalid_request', `Unrecognized request argument supplied: ${name}`, name, 'unknown_parameter');
  }
  const first = errors[0];
  if (!first) return new ApiError('invalid_request', err.message, null, 'invalid_request');
  if (first.keyword === 'required' && first.params?.missingProperty) {
    const p = first.params.missingProperty;
    return new ApiError('invalid_request', `you must provide a ${p} parameter`, p, 'missing_required_parameter');
  }
  const param = (first.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.') || null;
  const top = param?.split('.')[0] ?? '';
  const shape = shapes[top];
  const message = shape ?? `${param ?? 'body'} ${first.message ?? 'is invalid'}`;
  return new ApiError('invalid_request', `invalid ${where}: ${message}`, param ?? null, 'invalid_type');
}

