// Shared TypeBox schemas: the single source for request validation and response serialisation.
// Request bodies are closed (additionalProperties: false) so a misspelt field is a 400, not ignored.
import { Type, type Static } from 'typebox';

/** The OpenAI error shape every 4xx/5xx carries (see errors.ts). */
export const ErrorSchema = Type.Object({
  error: Type.Object({
    message: Type.String(),
    type: Type.String(),
    param: Type.Union([Type.String(), Type.Null()]),
    code: Type.Union([Type.String(), Type.Null()]),
  }),
});
export type ErrorBody = Static<typeof ErrorSchema>;

/** Error responses for a route's `response` map. */
export const ErrorResponses = { '4xx': ErrorSchema, '5xx': ErrorSchema } as const;

// ---- models -------------------------------------------------------------------------------------

export const ModelSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer(),
  owned_by: Type.String(),
  segment_length: Type.Integer(),
  memory_tokens: Type.Integer(),
  state_bytes: Type.Integer(),
  description: Type.String(),
});
export type ModelObject = Static<typeof ModelSchema>;

export const ModelListSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(ModelSchema),
});

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
  })),
});
export type SessionObject = Static<typeof SessionSchema>;

export const ResetBodySchema = Type.Object(
  {
    /** 'retry': apply the failed request again; 'drop': discard it and every later request. */
    action: Type.Union([Type.Literal('retry'), Type.Literal('drop')]),
  },
  { additionalProperties: false },
);
export type ResetBody = Static<typeof ResetBodySchema>;

export const CreateSessionBodySchema = Type.Object(
  { model: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })) },
  { additionalProperties: false },
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
  { additionalProperties: false },
);
export type AppendBody = Static<typeof AppendBodySchema>;

export const SegmentScoreSchema = Type.Object({
  segment: Type.Integer(),
  tokens: Type.Integer(),
  nll: Type.Number(),
  perplexity: Type.Number(),
});

export const AppendResponseSchema = Type.Object({
  session: SessionSchema,
  /** Tokens this append fed to the model (after tokenization, including released held-back text). */
  tokens: Type.Integer(),
  segments_committed: Type.Integer(),
  pending_tokens: Type.Integer(),
  perplexity: Type.Optional(Type.Array(SegmentScoreSchema)),
});
export type AppendResponse = Static<typeof AppendResponseSchema>;

// ---- health -------------------------------------------------------------------------------------

export const HealthSchema = Type.Object({ status: Type.String() });

export const ReadySchema = Type.Object({
  status: Type.String(),
  checks: Type.Object({
    redis: Type.String(),
    models: Type.String(),
    workers: Type.String(),
    /** Sessions waiting for a worker against RMT_MAX_QUEUE_DEPTH: 'saturated' turns readiness off. */
    queue: Type.String(),
  }),
});
export type ReadyBody = Static<typeof ReadySchema>;

export const ReadyQuerySchema = Type.Object({
  scope: Type.Optional(Type.Union([Type.Literal('cluster'), Type.Literal('pod')], {
    default: 'cluster',
    description: "cluster: every check (Redis, models, a live worker, queue below RMT_MAX_QUEUE_DEPTH); pod: only this process's (Redis, models), for a Kubernetes readiness probe",
  })),
});
