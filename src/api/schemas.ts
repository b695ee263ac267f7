// Shared TypeBox schemas: the single source for request validation and response serialisation.
// Request bodies are closed (additionalProperties: false) so a misspelt field is a 400, not ignored.
// A schema with a `title` is a named schema of openapi.yaml (#/components/schemas/<title>): openapi.ts.
import { Type, type Static } from 'typebox';

/** The OpenAI error shape every 4xx/5xx carries (see errors.ts). */
export const ErrorSchema = Type.Object({
  error: Type.Object({
    message: Type.String({ description: 'What went wrong, for a person' }),
    type: Type.String({ description: 'The OpenAI error type: invalid_request_error, authentication_error, not_found_error, conflict_error, rate_limit_error, service_unavailable_error, server_error' }),
    param: Type.Union([Type.String(), Type.Null()], { description: 'The request parameter at fault, if any' }),
    code: Type.Union([Type.String(), Type.Null()], { description: 'A stable machine-readable code (session_not_found, invalid_api_key, overloaded, ...)' }),
  }),
}, { title: 'Error', description: 'The error every 4xx and 5xx response carries (OpenAI shape)' });
export type ErrorBody = Static<typeof ErrorSchema>;

/** Error responses for a route's `response` map (what every route can answer is added by openapi.ts). */
export const ErrorResponses = { '4xx': ErrorSchema, '5xx': ErrorSchema } as const;

/** ErrorResponses plus the error statuses a route's own logic answers (404, 409, 422, 429...), for openapi.yaml. */
export function errorResponses<S extends number>(...statuses: S[]): typeof ErrorResponses & Record<S, typeof ErrorSchema> {
  return { ...Object.fromEntries(statuses.map((s) => [s, ErrorSchema])), ...ErrorResponses } as typeof ErrorResponses & Record<S, typeof ErrorSchema>;
}

// ---- models -------------------------------------------------------------------------------------

export const StateEntrySchema = Type.Object({
  name: Type.String(),
  shape: Type.Array(Type.Integer()),
  dtype: Type.Literal('float32'),
  offset: Type.Integer({ description: 'Where the entry starts in the flat state, in float32 elements' }),
  size: Type.Integer({ description: 'float32 elements of the entry' }),
}, { title: 'StateEntry', description: "One tensor of a session's state" });

export const ModelSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer(),
  owned_by: Type.String(),
  architecture: Type.String({ description: 'rmt, armt, transformer-xl, lamemo, memtransformer, memctrl, membottleneck, ...' }),
  segment_length: Type.Integer(),
  memory_tokens: Type.Integer({ description: 'Memory tokens of the architecture (0: none)' }),
  state_bytes: Type.Integer({ description: "A session's state: every entry's float32 values, entries back to back (constant per model)" }),
  state_shape: Type.Array(Type.Integer(), { description: "The state's shape as sessions and snapshots carry it: the one entry's shape, or [total float32 values] for several entries" }),
  state_entries: Type.Array(StateEntrySchema),
  description: Type.String(),
}, { title: 'Model', description: 'A model package (OpenAI model object plus its segment and state shape)' });
export type ModelObject = Static<typeof ModelSchema>;

export const ModelListSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(ModelSchema),
}, { title: 'ModelList' });

// ---- sessions -----------------------------------------------------------------------------------

/** Session ids as keys.ts accepts them. */
export const SessionIdSchema = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', minLength: 1, maxLength: 64 });

export const SessionParamsSchema = Type.Object({ id: SessionIdSchema });
export type SessionParams = Static<typeof SessionParamsSchema>;

export const SessionSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('session'),
  model: Type.String(),
  /** unix seconds */
  created: Type.Integer(),
  last_used: Type.Integer(),
  tokens_ingested: Type.Integer(),
  segments_committed: Type.Integer(),
  tokens_generated: Type.Integer(),
  /** Tokens in the uncommitted tail (fewer than or equal to one segment). */
  pending_tokens: Type.Integer(),
  version: Type.Integer(),
  state_bytes: Type.Integer(),
  /** Requests accepted and not applied yet (appends, completions). */
  pending_requests: Type.Integer(),
  /** The last websocket append accepted (the client's numbering; 0: none). */
  last_seq: Type.Integer(),
  /** 'failed': a request could not be applied; nothing more is until POST /v1/sessions/{id}/reset. */
  status: Type.Union([Type.Literal('ok'), Type.Literal('failed')]),
  failure: Type.Optional(Type.Object({
    /** The request that failed: the first one not applied (later ones wait behind it). */
    seq: Type.Integer(),
    /** Its websocket append number, when it came over the websocket. */
    client_seq: Type.Optional(Type.Integer()),
    code: Type.String(),
    message: Type.String(),
    /** unix seconds */
    failed_at: Type.Integer(),
  }, { title: 'SessionFailure' })),
}, { title: 'Session', description: 'A session: recurrent memory and an uncommitted tail, kept in Redis' });
export type SessionObject = Static<typeof SessionSchema>;

export const ResetBodySchema = Type.Object(
  {
    /** 'retry': apply the failed request again; 'drop': discard it and every later request. */
    action: Type.Union([Type.Literal('retry'), Type.Literal('drop')]),
  },
  { additionalProperties: false, title: 'ResetSessionRequest' },
);
export type ResetBody = Static<typeof ResetBodySchema>;

export const CreateSessionBodySchema = Type.Object(
  { model: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'A model id from GET /v1/models; default: the first configured' })) },
  { additionalProperties: false, title: 'CreateSessionRequest' },
);
export type CreateSessionBody = Static<typeof CreateSessionBodySchema>;

/** Most token ids one append may carry (the body limit applies as well). */
export const MAX_APPEND_IDS = 1_000_000;

export const AppendBodySchema = Type.Object(
  {
    text: Type.Optional(Type.String()),
    ids: Type.Optional(Type.Array(Type.Integer({ minimum: 0 }), { maxItems: MAX_APPEND_IDS })),
    flush: Type.Optional(Type.Boolean()),
    perplexity: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false, title: 'AppendRequest', description: 'Exactly one of text and ids. flush (default true): commit a full tail segment; perplexity: score each committed segment' },
);
export type AppendBody = Static<typeof AppendBodySchema>;

export const SegmentScoreSchema = Type.Object({
  segment: Type.Integer(),
  tokens: Type.Integer(),
  nll: Type.Number(),
  perplexity: Type.Number(),
}, { title: 'SegmentScore' });

export const AppendResponseSchema = Type.Object({
  session: SessionSchema,
  /** Tokens this append fed to the model (after tokenization, including released held-back text). */
  tokens: Type.Integer(),
  segments_committed: Type.Integer(),
  pending_tokens: Type.Integer(),
  perplexity: Type.Optional(Type.Array(SegmentScoreSchema)),
}, { title: 'AppendResponse' });
export type AppendResponse = Static<typeof AppendResponseSchema>;

// ---- completions --------------------------------------------------------------------------------
// The request body (CompletionRequest) lives beside its validation messages in routes/completions.ts.

export const CompletionLogprobsSchema = Type.Object({
  tokens: Type.Array(Type.String()),
  token_logprobs: Type.Array(Type.Union([Type.Number(), Type.Null()])),
  top_logprobs: Type.Array(Type.Union([Type.Record(Type.String(), Type.Number()), Type.Null()])),
  text_offset: Type.Array(Type.Integer()),
}, { title: 'CompletionLogprobs', description: "OpenAI's legacy logprobs: with echo the prompt's tokens first (null where nothing precedes a token: the first of a fresh session), then the generated ones" });

export const CompletionUsageSchema = Type.Object({
  prompt_tokens: Type.Integer(),
  completion_tokens: Type.Integer(),
  total_tokens: Type.Integer(),
}, { title: 'CompletionUsage' });

export const CompletionChoiceSchema = Type.Object({
  text: Type.String(),
  index: Type.Integer(),
  logprobs: Type.Union([CompletionLogprobsSchema, Type.Null()]),
  finish_reason: Type.Union([Type.Literal('stop'), Type.Literal('length')]),
}, { title: 'CompletionChoice' });

export const CompletionSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('text_completion'),
  created: Type.Integer({ description: 'unix seconds' }),
  model: Type.String(),
  choices: Type.Array(CompletionChoiceSchema),
  usage: CompletionUsageSchema,
  session_id: Type.Optional(Type.String({ description: 'The session continued (when the request named one)' })),
}, { title: 'Completion', description: 'A text completion (OpenAI shape)' });

// ---- chat completions ---------------------------------------------------------------------------

const ChatTokenLogprob = {
  token: Type.String(),
  logprob: Type.Number(),
  bytes: Type.Union([Type.Array(Type.Integer()), Type.Null()]),
};

export const ChatLogprobsSchema = Type.Object({
  content: Type.Array(Type.Object({ ...ChatTokenLogprob, top_logprobs: Type.Array(Type.Object(ChatTokenLogprob)) })),
}, { title: 'ChatLogprobs' });

export const ChatCompletionSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('chat.completion'),
  created: Type.Integer({ description: 'unix seconds' }),
  model: Type.String(),
  choices: Type.Array(Type.Object({
    index: Type.Integer(),
    message: Type.Object({ role: Type.Literal('assistant'), content: Type.String(), refusal: Type.Null() }),
    logprobs: Type.Union([ChatLogprobsSchema, Type.Null()]),
    finish_reason: Type.Union([Type.Literal('stop'), Type.Literal('length')]),
  }, { title: 'ChatCompletionChoice' })),
  usage: CompletionUsageSchema,
  session_id: Type.Optional(Type.String({ description: 'The session continued (when the request named one)' })),
}, { title: 'ChatCompletion', description: 'A chat completion (OpenAI shape)' });

/** stream: true answers with server-sent events; documented, never serialised (the body is a stream). */
export const CompletionEventStreamSchema = Type.String({
  description: 'Server-sent events, each "data: <JSON>" and a blank line: Completion objects whose one choice carries the next ' +
    'text and finish_reason null, then one with the finish_reason; with stream_options.include_usage a last one with ' +
    'choices [] and usage; an error mid-stream is sent as an Error object; the stream ends with "data: [DONE]".',
});

// ---- health -------------------------------------------------------------------------------------

export const HealthSchema = Type.Object({ status: Type.String() }, { title: 'Health' });

export const ReadySchema = Type.Object({
  status: Type.String(),
  checks: Type.Object({
    redis: Type.String(),
    models: Type.String(),
    workers: Type.String(),
    /** Sessions waiting for a worker against RMT_MAX_QUEUE_DEPTH: 'saturated' turns readiness off. */
    queue: Type.String(),
  }),
}, { title: 'Readiness', description: "status 'ok' (200) or 'unavailable' (503); each check says 'ok...', 'skipped...', 'failed...' or 'unknown...'" });
export type ReadyBody = Static<typeof ReadySchema>;

export const ReadyQuerySchema = Type.Object({
  scope: Type.Optional(Type.Union([Type.Literal('cluster'), Type.Literal('pod')], {
    default: 'cluster',
    description: "cluster: every check (Redis, models, a live worker, queue below RMT_MAX_QUEUE_DEPTH); pod: only this process's (Redis, models), for a Kubernetes readiness probe",
  })),
});
