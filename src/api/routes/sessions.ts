// Sessions: create, read, delete, append (ingest through the queue), fork, and portable state
// export/import. A session is visible only to the API key that created it (404 for any other).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { ApiDeps } from '../deps.ts';
import { ApiError, fromCode, modelNotFound, sessionNotFound } from '../errors.ts';
import { apiMetrics, observeRequests, requestModel } from '../metrics.ts';
import {
  AppendBodySchema, AppendResponseSchema, CreateSessionBodySchema, ResetBodySchema, SessionParamsSchema, SessionSchema, errorResponses,
  type AppendResponse, type SessionObject,
} from '../schemas.ts';
import { admit, fromQueueError } from '../queue-errors.ts';
import { ownedSession } from '../session-access.ts';
import { MAX_HEADER_BYTES, SnapshotError, decodeSnapshot, encodeSnapshot } from '../state-snapshot.ts';
import { SessionError } from '../../state/session-error.ts';
import type { SessionRecord } from '../../state/session-record.ts';
import type { IngestRequest } from '../../queue/request.ts';

/** Snapshot bodies are raw bytes (application/octet-stream): Buffers bypass the JSON serializer. */
const SnapshotBytesSchema = Type.Unsafe<Buffer>({ contentMediaType: 'application/octet-stream', description: 'portable session snapshot (application/octet-stream)' });
/** The snapshot as a request or response body of its own media type (validation passes any bytes). */
const SnapshotBody = { content: { 'application/octet-stream': { schema: SnapshotBytesSchema } } };

/** How long an append waits for its result before answering 503 (the request still completes). */
export const APPEND_TIMEOUT_MS = 120_000;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function hasLoneSurrogate(s: string): boolean {
  return LONE_SURROGATE.test(s);
}

export function sessionObject(rec: SessionRecord, failedClientSeq?: number): SessionObject {
  return {
    id: rec.id,
    object: 'session',
    model: rec.model,
    created: Math.floor(rec.createdAt / 1000),
    last_used: Math.floor(rec.lastUsedAt / 1000),
    tokens_ingested: rec.tokensIngested,
    segments_committed: rec.segmentsCommitted,
    tokens_generated: rec.tokensGenerated,
    pending_tokens: rec.tail.length,
    version: rec.version,
    state_bytes: rec.state.byteLength,
    pending_requests: Math.max(0, rec.acceptedSeq - rec.appliedSeq),
    last_seq: rec.clientSeq,
    status: rec.status,
    ...(rec.failure
      ? {
          failure: {
            seq: rec.failure.seq, ...(failedClientSeq !== undefined ? { client_seq: failedClientSeq } : {}),
            code: rec.failure.code, message: rec.failure.message, failed_at: Math.floor(rec.failure.at / 1000),
          },
        }
      : {}),
  };
}

/** The session object as GET shows it (a failed session's failure names its websocket append too). */
async function describeSession(deps: ApiDeps, rec: SessionRecord): Promise<SessionObject> {
  const client = rec.failure ? await deps.queue.log.clientSeqOf(rec.id, rec.failure.seq) : undefined;
  return sessionObject(rec, client);
}

/** Store and queue errors as API errors; anything else is rethrown (a 5xx). */
function mapStoreError(err: unknown): never {
  throw fromQueueError(err);
}

/** The 404 of a session named by the path's {id}. */
function notFound(id: string): ApiError {
  return sessionNotFound(id, 'id');
}

/** The session, if it exists and belongs to the caller; 404 otherwise. */
export async function loadOwned(deps: ApiDeps, req: FastifyRequest, id: string): Promise<SessionRecord> {
  return ownedSession(deps, req.owner, id, 'id');
}

export default async function sessionsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(r);

  // JSON bodies in this scope must be valid UTF-8 (the default parser would turn bad bytes into
  // U+FFFD silently); an empty body counts as no body.
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  r.removeContentTypeParser('application/json');
  r.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => {
    const buf = body as Buffer;
    if (buf.byteLength === 0) return done(null, undefined);
    let text: string;
    try {
      text = utf8.decode(buf);
    } catch {
      return done(new ApiError('invalid_request', 'request body is not valid UTF-8', null, 'invalid_utf8'), undefined);
    }
    try {
      done(null, JSON.parse(text));
    } catch (err) {
      done(new ApiError('invalid_request', `malformed JSON body: ${(err as Error).message}`, null, 'invalid_json'), undefined);
    }
  });

  // Snapshots: the largest state, a full tail, a header with the longest pending text, the checksum.
  const models = deps.catalog.list();
  const snapshotLimit = Math.max(0, ...models.map((m) => m.stateBytes + 4 * (m.segmentLength + 1))) +
    12 + 32 + Math.min(MAX_HEADER_BYTES, 65536 + 6 * deps.config.maxPendingTextChars);
  r.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: snapshotLimit }, (_req, body, done) => done(null, body));

  const params = SessionParamsSchema;

  r.post('/v1/sessions', {
    schema: {
      operationId: 'createSession', tags: ['sessions'], summary: 'Create a session',
      description: 'A fresh session of the model (default: the first configured); the body may be empty.',
      body: CreateSessionBodySchema, response: { 201: SessionSchema, ...errorResponses(404) },
    },
    // No body at all means "all defaults".
    preValidation: async (req) => {
      if (req.body === undefined) (req as { body: unknown }).body = {};
    },
  }, async (req, reply) => {
    const name = req.body?.model ?? deps.catalog.defaultModel;
    const m = deps.catalog.get(name);
    // The same answer as every other route that names a model: 404 model_not_found (errors.ts).
    if (!m) throw modelNotFound(name);
    const rec = await deps.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState, { owner: req.owner }).catch(mapStoreError);
    apiMetrics.sessionsCreated.inc({ model: m.name });
    return reply.code(201).send(sessionObject(rec));
  });

  r.get('/v1/sessions/:id', {
    schema: { operationId: 'getSession', tags: ['sessions'], summary: 'Get a session', params, response: { 200: SessionSchema, ...errorResponses(404) } },
  }, async (req) => {
    return describeSession(deps, await loadOwned(deps, req, req.params.id));
  });

  // Only the owner is read, never the state: the owner can delete a session whatever it holds.
  r.delete('/v1/sessions/:id', {
    schema: { operationId: 'deleteSession', tags: ['sessions'], summary: 'Delete a session', params, response: { 204: Type.Null(), ...errorResponses(404) } },
  }, async (req, reply) => {
    const id = req.params.id;
    if ((await deps.store.owner(id)) !== req.owner) throw notFound(id);
    await deps.store.delete(id);
    await deps.redis.zrem(deps.store.keys.active(deps.store.keys.queueShardOf(id)), id);
    apiMetrics.sessionsDeleted.inc();
    return reply.code(204).send(null);
  });

  r.post('/v1/sessions/:id/reset', {
    schema: {
      operationId: 'resetSession', tags: ['sessions'], summary: 'Resume a failed session',
      description: "retry: apply the failed request again; drop: discard it and every later request. 409 when the session has not failed.",
      params, body: ResetBodySchema, response: { 200: SessionSchema, ...errorResponses(404, 409) },
    },
  }, async (req) => {
    const { id } = req.params;
    await loadOwned(deps, req, id);
    const action = req.body.action;
    const dropped = await deps.queue.log.reset(id, action).catch(mapStoreError);
    await deps.store.publishProgress(id, { type: 'reset', seq: 0, action, from: dropped.from, to: dropped.to });
    if (action === 'retry') await deps.queue.wake(id);
    const after = await deps.store.get(id).catch(mapStoreError);
    if (!after) throw notFound(id);
    return describeSession(deps, after);
  });

  r.post('/v1/sessions/:id/append', {
    schema: {
      operationId: 'appendToSession', tags: ['sessions'], summary: 'Append text or token ids to a session',
      description: 'Feeds the session through the queue and answers once a worker has applied it (503 after 120 s; the append still completes).',
      params, body: AppendBodySchema, response: { 200: AppendResponseSchema, ...errorResponses(404, 409, 429) },
    },
  }, async (req, reply): Promise<AppendResponse> => {
    const { id } = req.params;
    const body = req.body;
    if ((body.text === undefined) === (body.ids === undefined)) {
      throw new ApiError('invalid_request', 'send exactly one of "text" and "ids"', body.text === undefined ? 'text' : 'ids', 'invalid_request');
    }
    if (body.text !== undefined && hasLoneSurrogate(body.text)) {
      throw new ApiError('invalid_request', 'text contains a lone UTF-16 surrogate (not valid Unicode)', 'text', 'invalid_text');
    }
    const rec = await loadOwned(deps, req, id);
    const model = deps.catalog.get(rec.model);
    if (!model) throw new ApiError('unavailable', `model ${rec.model} of session ${id} is not loaded by this server`, 'model', 'model_not_loaded');
    requestModel(req, model.name);
    await admit(deps, reply);
    if (body.ids) {
      const bad = body.ids.findIndex((t) => t >= model.vocabSize);
      if (bad >= 0) {
        throw new ApiError('invalid_request', `ids[${bad}] = ${body.ids[bad]} is outside the vocabulary of ${model.name} (0..${model.vocabSize - 1})`, `ids.${bad}`, 'invalid_token_id');
      }
    }
    // Long text: its middle is tokenized here, on the tokenizer threads, not on a worker's main thread.
    const payload = body.text === undefined ? { ids: body.ids! }
      : deps.pretokenizer ? await deps.pretokenizer.ingestText(rec.model, body.text, req.log, rec.id)
      : { text: body.text };
    const request: IngestRequest = {
      kind: 'ingest',
      ...payload,
      flush: body.flush ?? true,
      ...(body.perplexity ? { score: true } : {}),
    };
    const submitted = await deps.queue.submit(id, request, { wantResult: true }).catch(mapStoreError);
    const result = await deps.queue.result(submitted, APPEND_TIMEOUT_MS).catch(mapStoreError);
    if (result.error) throw fromCode(result.error.code, result.error.message);
    const after = await deps.store.get(id).catch(mapStoreError);
    if (!after) throw notFound(id);
    return {
      session: sessionObject(after),
      tokens: result.promptTokens,
      segments_committed: result.segmentsCommitted,
      pending_tokens: result.pendingTokens,
      ...(body.perplexity ? { perplexity: (result.scores ?? []).map((s) => ({ segment: s.segment, tokens: s.tokens, nll: s.nll, perplexity: s.perplexity })) } : {}),
    };
  });

  r.post('/v1/sessions/:id/fork', {
    schema: { operationId: 'forkSession', tags: ['sessions'], summary: 'Fork a session (a copy with its own id)', params, response: { 201: SessionSchema, ...errorResponses(404, 409) } },
  }, async (req, reply) => {
    const src = await loadOwned(deps, req, req.params.id);
    const rec = await deps.store.fork(src.id, { owner: req.owner }).catch(mapStoreError);
    apiMetrics.sessionsCreated.inc({ model: rec.model });
    return reply.code(201).send(sessionObject(rec));
  });

  r.get('/v1/sessions/:id/state', {
    schema: {
      operationId: 'exportSessionState', tags: ['sessions'], summary: "Export a session's state as a portable snapshot",
      params, response: { 200: { description: 'The snapshot', ...SnapshotBody }, ...errorResponses(404) },
    },
  }, async (req, reply) => {
    const rec = await loadOwned(deps, req, req.params.id);
    const bytes = encodeSnapshot(rec);
    return reply
      .type('application/octet-stream')
      .header('content-disposition', `attachment; filename="${rec.id}.rmts"`)
      .send(bytes);
  });

  r.put('/v1/sessions/:id/state', {
    schema: {
      operationId: 'importSessionState', tags: ['sessions'], summary: 'Import a snapshot into a session',
      description: 'The body is a snapshot from exportSessionState (application/octet-stream) of the same model.',
      params, body: SnapshotBody, response: { 200: SessionSchema, ...errorResponses(404, 409, 422) },
    },
  }, async (req) => {
    const { id } = req.params;
    let buf: Buffer;
    if (Buffer.isBuffer(req.body)) buf = req.body;
    else if ((req.headers['content-type'] ?? '').toLowerCase().startsWith('application/octet-stream')) buf = Buffer.alloc(0);
    else throw new ApiError('unsupported_media_type', 'send the snapshot as application/octet-stream', null, 'unsupported_media_type');
    const rec = await loadOwned(deps, req, id);
    let snap;
    try {
      snap = decodeSnapshot(buf);
    } catch (err) {
      if (err instanceof SnapshotError) throw new ApiError('unprocessable', err.message, null, err.code);
      throw err;
    }
    const h = snap.header;
    const unprocessable = (msg: string, code: string) => new ApiError('unprocessable', msg, null, code);
    if (h.model !== rec.model) throw unprocessable(`snapshot is of model ${JSON.stringify(h.model)}, session ${id} is of model ${JSON.stringify(rec.model)}`, 'snapshot_model_mismatch');
    if (h.dtype !== rec.stateDtype) throw unprocessable(`snapshot state dtype ${h.dtype} does not match the session's ${rec.stateDtype}`, 'snapshot_dtype_mismatch');
    if (h.shape.length !== rec.stateShape.length || h.shape.some((d, i) => d !== rec.stateShape[i])) {
      throw unprocessable(`snapshot state shape [${h.shape.join(',')}] does not match the session's [${rec.stateShape.join(',')}]`, 'snapshot_shape_mismatch');
    }
    const model = deps.catalog.get(rec.model);
    if (model) {
      if (snap.tail.length > model.segmentLength) {
        throw unprocessable(`snapshot tail has ${snap.tail.length} tokens, more than a segment of ${model.name} (${model.segmentLength})`, 'invalid_snapshot');
      }
      const bad = snap.tail.findIndex((t) => t >= model.vocabSize);
      if (bad >= 0) throw unprocessable(`snapshot tail token ${bad} = ${snap.tail[bad]} is outside the vocabulary (0..${model.vocabSize - 1})`, 'invalid_snapshot');
    }
    if (!snap.state.every(Number.isFinite)) throw unprocessable('snapshot state holds non-finite values', 'invalid_snapshot');
    if (h.pending_text.length > deps.config.maxPendingTextChars || hasLoneSurrogate(h.pending_text)) {
      throw unprocessable('snapshot pending_text is too long or not valid Unicode', 'invalid_snapshot');
    }
    if (rec.acceptedSeq !== rec.appliedSeq) {
      throw new ApiError('conflict', `session ${id} has requests in flight; import its state when they are done`, null, 'requests_in_flight');
    }
    // Counters only grow (they count work done on the session): importing into a fresh session
    // reproduces the snapshot's counters; importing an older snapshot keeps the larger ones.
    try {
      await deps.store.commit(id, rec.version, {
        state: snap.state,
        tail: snap.tail,
        pendingText: h.pending_text,
        addTokensIngested: Math.max(0, h.tokens_ingested - rec.tokensIngested),
        addSegments: Math.max(0, h.segments_committed - rec.segmentsCommitted),
        addTokensGenerated: Math.max(0, h.tokens_generated - rec.tokensGenerated),
        curSeq: rec.curSeq,
        curOffset: rec.curOffset,
      });
    } catch (err) {
      if (err instanceof SessionError && err.code === 'conflict') {
        throw new ApiError('conflict', `session ${id} changed while its state was being imported; retry`, null, 'conflict');
      }
      mapStoreError(err);
    }
    const after = await deps.store.get(id).catch(mapStoreError);
    if (!after) throw notFound(id);
    return sessionObject(after);
  });
}
