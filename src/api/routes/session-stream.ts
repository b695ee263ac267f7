// WebSocket streaming into a session: GET /v1/sessions/:id/stream.
//
// The messages and their checks: stream/protocol.ts. A session that does not exist or is another
// key's is refused before the upgrade with the same HTTP 404 session_not_found as REST; a session
// deleted while connected is an error message session_not_found, then the socket closes.
//
// Exactly-once appends: the session hash holds `clientSeq`, the client's last accepted append. An
// append with seq <= last_seq is acknowledged as a duplicate and not applied; seq > last_seq + 1 is
// refused (seq_gap). Otherwise it is accepted into the session's log by one Lua script that also
// moves clientSeq from seq - 1 to seq (session-log.ts, accept.lua), and only then acknowledged. So a
// crash at any point neither doubles nor loses an append: before the script the append was never
// accepted (the client, never acked, resends it); after it, the hello's last_seq says it was. A
// concurrent writer on another connection (another API process) is detected by the compare-and-set
// (code 'conflict', socket closed); within one process a new connection first closes the previous one
// and waits for the append it may be submitting before it reads last_seq for its hello.
//
// A failed session (GET /v1/sessions/{id}: status 'failed') refuses appends with 'session_failed'
// and tells every connected client when it fails; after the owner resets it, a 'reset' message gives
// the new last_seq to resend from. Overload (RMT_MAX_QUEUE_DEPTH): an append is refused with
// 'overloaded' (retry_after_ms, last_seq) and the socket is not read for that long; the client resends
// from last_seq + 1.
//
// Backpressure (bytes received and not yet applied pause the socket): stream/backpressure.ts.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ApiDeps } from '../deps.ts';
import type { IngestText } from '../pretokenizer.ts';
import { SessionParamsSchema, errorResponses } from '../schemas.ts';
import { sessionNotFound } from '../errors.ts';
import { openAiFinish } from '../generation.ts';
import { ownedSession } from '../session-access.ts';
import { ProtocolError, STREAM_DOC, frameBytes, parseAppend, parseGenerate, parseMessage, type FrameData } from '../stream/protocol.ts';
import type { IngestRequest, ProgressEvent, RequestResult } from '../../queue/request.ts';
import { isValidSessionId } from '../../state/keys.ts';
import { SessionError, type SessionRecord } from '../../state/session-store.ts';
import { OrderError } from '../../queue/session-log.ts';
import { RETRY_AFTER_S, saturated } from '../queue-errors.ts';
import { Backpressure } from '../stream/backpressure.ts';
import { streamStats } from '../stream/stream-stats.ts';

/** Hash field on the session (keys.ts session(id)) holding the last accepted client seq (accept.lua). */
export const LAST_SEQ_FIELD = 'clientSeq';
const TAKEOVER_WAIT_MS = 30_000;

/** The parts of a ws 8 WebSocket used here (ws ships no types in this repo). */
interface WsLike {
  readyState: number;
  send(data: string, cb?: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  pause(): void;
  resume(): void;
  on(ev: 'message', fn: (data: FrameData, isBinary: boolean) => void): void;
  on(ev: 'close', fn: (code: number, reason: Buffer) => void): void;
  on(ev: 'error', fn: (err: Error) => void): void;
}

const OPEN = 1;

interface Connection {
  close(code: number, reason: string): void;
  /** Resolves when the connection no longer submits anything. */
  settled: Promise<void>;
}

/** Latest stream connection per session in this process (a new one supersedes the old one). */
const current = new Map<string, Connection>();

/** A message as read on arrival: parsed (or why not), and an append's text as it will be queued. */
interface Frame {
  msg?: Record<string, unknown>;
  err?: unknown;
  /** Started on arrival (the tokenizer threads), so a connection's appends tokenize in parallel. */
  ingestText?: Promise<IngestText>;
}

export default async function sessionStreamRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const { store, queue, progress, redis, catalog, pretokenizer } = deps;
  const found = new WeakMap<FastifyRequest, SessionRecord>();

  const readLastSeq = async (id: string): Promise<number> => Number((await redis.hget(store.keys.session(id), LAST_SEQ_FIELD)) ?? 0);

  app.get<{ Params: { id: string } }>(
    '/v1/sessions/:id/stream',
    {
      websocket: true,
      schema: {
        ...STREAM_DOC,
        params: SessionParamsSchema,
        response: {
          101: { type: 'null', description: 'Switching Protocols: the websocket is open; messages as described above' },
          ...errorResponses(404, 409),
        },
      },
      // Runs before the upgrade: a thrown ApiError becomes a plain HTTP JSON error response.
      // The same lookup, and so the same 404 session_not_found (param id), as GET /v1/sessions/{id}.
      preHandler: async (req) => {
        const id = req.params.id;
        if (!isValidSessionId(id)) throw sessionNotFound(id, 'id'); // the params schema refuses these first; kept as a guard
        found.set(req, await ownedSession(deps, req.owner, id, 'id'));
      },
    },
    (rawSocket: unknown, req: FastifyRequest<{ Params: { id: string } }>) => {
      const socket = rawSocket as WsLike;
      const sessionId = req.params.id;
      const sessionKey = store.keys.session(sessionId);
      const initial = found.get(req)!;
      const log = req.log;

      let closed = false;
      let lastSeq = 0;
      let tokens = initial.tokensIngested;
      let segments = initial.segmentsCommitted;
      let pendingTokens = initial.tail.length;
      const bp = new Backpressure(socket, initial.appliedSeq, () => redis.hget(sessionKey, 'appliedSeq'));
      // Generation in progress: its queue seq once known; events seen before it is known are held.
      let gen: { q: number | undefined; held: ProgressEvent[] } | undefined;
      let unsubscribe: (() => Promise<void>) | undefined;

      streamStats.open++;

      const send = (msg: object): void => {
        if (!closed && socket.readyState === OPEN) socket.send(JSON.stringify(msg));
      };
      const sendError = (code: string, message: string, extra: object = {}): void => send({ type: 'error', code, message, ...extra });
      const sendProtocolError = (err: ProtocolError): void => sendError(err.code, err.message, err.param !== undefined ? { param: err.param } : {});

      const sendGenerationEvent = (ev: ProgressEvent): void => {
        if (ev.type === 'token') {
          send({ type: 'token', text: ev.text, index: ev.index });
        } else if (ev.type === 'done') {
          gen = undefined;
          const r = ev.result;
          if (r.error) sendError(r.error.code, r.error.message);
          else {
            // finish_reason and usage as /v1/completions reports them (an end-of-text token is 'stop').
            const completionTokens = r.completion?.ids.length ?? 0;
            send({
              type: 'done', finish_reason: openAiFinish(r.completion?.finishReason ?? 'length'), text: r.completion?.text ?? '',
              usage: { prompt_tokens: r.promptTokens, completion_tokens: completionTokens, total_tokens: r.promptTokens + completionTokens },
            });
          }
        }
      };

      const onProgress = (ev: ProgressEvent): void => {
        if (closed) return;
        if (ev.type === 'segment') {
          tokens = Math.max(tokens, ev.tokensIngested);
          segments = Math.max(segments, ev.segmentsCommitted);
          send({ type: 'progress', segments_committed: ev.segmentsCommitted, tokens_ingested: ev.tokensIngested });
        } else if (ev.type === 'done') {
          const r: RequestResult = ev.result;
          if (!r.error) {
            tokens = Math.max(tokens, r.tokensIngested);
            segments = Math.max(segments, r.segmentsCommitted);
            pendingTokens = r.pendingTokens;
          }
          bp.applied(ev.seq);
        }
        if (ev.type === 'failed') {
          const f = ev.failure;
          sendError('session_failed', `session ${sessionId} failed at request ${f.seq} (${f.code}): ${f.message}; nothing more is applied until its owner resets it (POST /v1/sessions/${sessionId}/reset)`,
            { request_seq: f.seq, ...(f.clientSeq !== undefined ? { seq: f.clientSeq } : {}) });
          if (gen) {
            gen = undefined;
          }
          return;
        }
        if (ev.type === 'reset') {
          void readLastSeq(sessionId).then((v) => {
            lastSeq = v;
            send({ type: 'reset', action: ev.action, last_seq: v });
          }, () => undefined);
          return;
        }
        if (gen && ev.type !== 'segment') {
          if (gen.q === undefined) gen.held.push(ev);
          else if (ev.seq === gen.q) sendGenerationEvent(ev);
        }
      };

      const handleAppend = async (m: Record<string, unknown>, bytes: number, tracked: { yes: boolean }, ingestText?: Promise<IngestText>): Promise<void> => {
        const { seq, text, flush } = parseAppend(m);
        const counters = () => ({ tokens, segments, pending_tokens: pendingTokens, unapplied_chars: bp.unappliedChars });
        if (seq <= lastSeq) {
          send({ type: 'ack', seq, duplicate: true, ...counters() });
          return;
        }
        if (seq !== lastSeq + 1) {
          throw new ProtocolError('seq_gap', `append.seq ${seq} skips ahead: the next expected seq is ${lastSeq + 1}`);
        }
        if (bp.overloaded || (await saturated(deps).catch(() => ({ saturated: false }))).saturated) {
          // Not accepted: the client resends from last_seq + 1 once retry_after_ms passed.
          overloaded(seq);
          return;
        }
        const req: IngestRequest = { kind: 'ingest', ...(ingestText ? await ingestText : { text }), flush };
        let q: number;
        try {
          ({ seq: q } = await queue.submit(sessionId, req, { clientSeq: seq, wantResult: false }));
        } catch (err) {
          if (err instanceof OrderError && err.code === 'client_seq') {
            throw new ProtocolError('conflict', `another connection is appending to session ${sessionId} (stored last_seq ${err.at})`);
          }
          if (err instanceof OrderError && err.code === 'session_failed') {
            throw new ProtocolError('session_failed', `${err.message}; append ${seq} was not accepted`);
          }
          throw err;
        }
        // Durable from here on; hand the bytes over to the applied-tracking.
        bp.track(q, bytes, text.length);
        tracked.yes = true;
        lastSeq = seq;
        bp.catchUp();
        send({ type: 'ack', seq, ...counters() });
      };

      /** Refuses append `seq` (overload) and stops reading for the retry time: TCP holds the client back. */
      const overloaded = (seq: number): void => {
        const ms = RETRY_AFTER_S * 1000;
        const fresh = !bp.overloaded;
        sendError('overloaded', `the service is overloaded; resend from last_seq + 1 after retry_after_ms`, { seq, last_seq: lastSeq, retry_after_ms: ms });
        if (fresh) bp.pauseForOverload(ms);
      };

      const handleGenerate = async (m: Record<string, unknown>): Promise<void> => {
        if (gen) throw new ProtocolError('generation_in_progress', 'one generation at a time per connection');
        const req = parseGenerate(m);
        const g: { q: number | undefined; held: ProgressEvent[] } = { q: undefined, held: [] };
        gen = g;
        try {
          const { seq: q } = await queue.submit(sessionId, req, { wantResult: false });
          g.q = q;
        } catch (err) {
          gen = undefined;
          if (err instanceof OrderError && err.code === 'session_failed') throw new ProtocolError('session_failed', err.message);
          throw err;
        }
        for (const ev of g.held.splice(0)) if (ev.seq === g.q && gen === g) sendGenerationEvent(ev);
      };

      /** Parses a message on arrival and starts tokenizing a long append that is not a known duplicate. */
      const readFrame = (data: FrameData, isBinary: boolean): Frame => {
        let msg: Record<string, unknown>;
        try {
          msg = parseMessage(data, isBinary);
        } catch (err) {
          return { err };
        }
        if (!pretokenizer || msg.type !== 'append' || typeof msg.text !== 'string' || typeof msg.seq !== 'number' || msg.seq <= lastSeq) return { msg };
        const ingestText = pretokenizer.ingestText(initial.model, msg.text, log, initial.id);
        ingestText.catch(() => undefined); // awaited by handleAppend, or dropped (a duplicate, a bad message, a closed socket)
        return { msg, ingestText };
      };

      const handle = async (frame: Frame, bytes: number): Promise<void> => {
        const tracked = { yes: false }; // an append's bytes are released when a worker applied it
        try {
          if (!frame.msg) throw frame.err;
          const msg = frame.msg;
          switch (msg.type) {
            case 'append':
              await handleAppend(msg, bytes, tracked, frame.ingestText);
              break;
            case 'generate':
              await handleGenerate(msg);
              break;
            case 'ping':
              send({ type: 'pong' });
              break;
            default:
              throw new ProtocolError('unknown_type', `unknown message type ${JSON.stringify(msg.type)}`);
          }
        } catch (err) {
          if (err instanceof ProtocolError) {
            sendProtocolError(err);
            if (err.code === 'conflict' || err.code === 'session_not_found') shut(1008, err.code);
          } else if (err instanceof SessionError && err.code === 'not_found') {
            sendError('session_not_found', err.message);
            shut(1008, 'session_not_found');
          } else {
            log.error({ err }, 'session stream: request failed');
            sendError('internal_error', 'internal error; resend from last_seq + 1 after reconnecting');
            shut(1011, 'internal_error');
          }
        } finally {
          if (!tracked.yes) bp.release(bytes);
        }
      };

      const shut = (code: number, reason: string): void => {
        if (socket.readyState === OPEN) socket.close(code, reason);
        cleanup();
      };

      const cleanup = (): void => {
        if (closed) return;
        closed = true;
        streamStats.open--;
        bp.stop();
        void unsubscribe?.().catch(() => undefined);
        void chain.finally(() => {
          if (current.get(sessionId) === self) current.delete(sessionId);
        });
      };

      // Connect: supersede an earlier connection to this session (in this process), subscribe to
      // progress before reading counters (so no commit falls between), then say hello.
      const init = async (): Promise<void> => {
        const prev = current.get(sessionId);
        current.set(sessionId, self);
        if (prev) {
          prev.close(4001, 'superseded by a newer connection');
          await Promise.race([prev.settled, new Promise((r) => setTimeout(r, TAKEOVER_WAIT_MS).unref())]);
        }
        unsubscribe = await progress.subscribe(sessionId, onProgress);
        if (closed) {
          void unsubscribe().catch(() => undefined);
          return;
        }
        const rec = await store.get(sessionId);
        if (!rec) throw new ProtocolError('session_not_found', `session ${sessionId} was deleted`);
        lastSeq = rec.clientSeq;
        tokens = rec.tokensIngested;
        segments = rec.segmentsCommitted;
        pendingTokens = rec.tail.length;
        bp.applied(rec.appliedSeq); // nothing is in flight yet: this only moves the known applied seq
        send({
          type: 'hello', session_id: sessionId, last_seq: lastSeq, segment_length: catalog.get(rec.model)?.segmentLength ?? null,
          tokens_ingested: rec.tokensIngested, segments_committed: rec.segmentsCommitted, model: rec.model, status: rec.status,
        });
        if (rec.failure) {
          const client = await queue.log.clientSeqOf(sessionId, rec.failure.seq);
          sendError('session_failed', `session ${sessionId} failed at request ${rec.failure.seq} (${rec.failure.code}): ${rec.failure.message}; reset it (POST /v1/sessions/${sessionId}/reset)`,
            { request_seq: rec.failure.seq, ...(client !== undefined ? { seq: client } : {}) });
        } else if (rec.acceptedSeq > rec.appliedSeq) {
          // Accepted work of an earlier connection: make sure a worker has it (its API may have died before waking it).
          await queue.wake(sessionId);
        }
      };

      // Messages are handled strictly one after another, in arrival order (acks stay in order and
      // appends reach the queue in seq order); only a long append's tokenizing starts on arrival
      // (readFrame). The listener is attached synchronously so no frame that arrives during init is lost.
      let chain: Promise<void> = Promise.resolve();
      const self: Connection = {
        close: (code, reason) => shut(code, reason),
        get settled() {
          return chain;
        },
      };
      chain = init().catch((err) => {
        if (err instanceof ProtocolError) sendProtocolError(err);
        else {
          log.error({ err }, 'session stream: connect failed');
          sendError('internal_error', 'could not open the stream');
        }
        shut(1011, 'init_failed');
      });

      socket.on('message', (data, isBinary) => {
        const bytes = frameBytes(data);
        bp.hold(bytes);
        if (closed) {
          chain = chain.then(() => bp.release(bytes));
          return;
        }
        const frame = readFrame(data, isBinary);
        chain = chain.then(() => (closed ? bp.release(bytes) : handle(frame, bytes)));
      });
      socket.on('close', () => cleanup());
      socket.on('error', (err) => {
        log.warn({ err: String(err) }, 'session stream: socket error');
        cleanup();
      });
    },
  );
}
