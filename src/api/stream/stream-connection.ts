// One websocket connection to a session's stream (GET /v1/sessions/:id/stream): its state, and what
// each message does. The messages and their checks are protocol.ts; the pausing is backpressure.ts.
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
// from last_seq + 1. A session deleted while connected is an error message session_not_found, then
// the socket closes.
//
// Messages are handled strictly one after another, in arrival order (acks stay in order and appends
// reach the queue in seq order); only a long append's tokenizing starts on arrival (readFrame).
import type { FastifyBaseLogger } from 'fastify';
import type { ApiDeps } from '../deps.ts';
import type { IngestText } from '../pretokenizer.ts';
import { openAiFinish } from '../generation.ts';
import { RETRY_AFTER_S, saturated } from '../queue-errors.ts';
import type { IngestRequest, ProgressEvent, RequestResult } from '../../queue/request.ts';
import { OrderError } from '../../queue/session-log.ts';
import { NotDurableError } from '../../state/durable-ack.ts';
import { SessionError } from '../../state/session-error.ts';
import type { SessionRecord } from '../../state/session-record.ts';
import { Backpressure, type Pausable } from './backpressure.ts';
import { ProtocolError, frameBytes, parseAppend, parseGenerate, parseMessage, type FrameData } from './protocol.ts';
import { streamStats } from './stream-stats.ts';

/** Hash field on the session (keys.ts session(id)) holding the last accepted client seq (accept.lua). */
export const LAST_SEQ_FIELD = 'clientSeq';
/** How long a new connection waits for the one it supersedes to stop submitting. */
const TAKEOVER_WAIT_MS = 30_000;
const OPEN = 1;

/** The parts of a ws 8 WebSocket used here (ws ships no types in this repo). */
export interface WsLike extends Pausable {
  readyState: number;
  send(data: string, cb?: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  on(ev: 'message', fn: (data: FrameData, isBinary: boolean) => void): void;
  on(ev: 'close', fn: (code: number, reason: Buffer) => void): void;
  on(ev: 'error', fn: (err: Error) => void): void;
}

/** Latest stream connection per session in this process (a new one supersedes the old one). */
const current = new Map<string, StreamConnection>();

/** A message as read on arrival: parsed (or why not), and an append's text as it will be queued. */
interface Frame {
  msg?: Record<string, unknown>;
  err?: unknown;
  /** Started on arrival (the tokenizer threads), so a connection's appends tokenize in parallel. */
  ingestText?: Promise<IngestText>;
}

/** A generation in progress: its queue seq once known; events seen before it is known are held. */
interface Generation {
  q: number | undefined;
  held: ProgressEvent[];
}

export class StreamConnection {
  private closed = false;
  /** The client's last accepted append, as the hello (and a reset) said and acks moved it. */
  private lastSeq = 0;
  private tokens: number;
  private segments: number;
  private pendingTokens: number;
  private readonly bp: Backpressure;
  private gen: Generation | undefined;
  private unsubscribe: (() => Promise<void>) | undefined;
  /** Connecting, then each message's handling in turn: settled once nothing more is submitted. */
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly socket: WsLike,
    private readonly deps: ApiDeps,
    private readonly sessionId: string,
    /** The session as the route's ownership check read it, before the upgrade. */
    private readonly initial: SessionRecord,
    private readonly log: FastifyBaseLogger,
  ) {
    this.tokens = initial.tokensIngested;
    this.segments = initial.segmentsCommitted;
    this.pendingTokens = initial.tail.length;
    const sessionKey = deps.store.keys.session(sessionId);
    this.bp = new Backpressure(socket, initial.appliedSeq, () => deps.redis.hget(sessionKey, 'appliedSeq'));
    streamStats.open++;
    this.chain = this.connect().catch((err) => this.connectFailed(err));
    // Attached synchronously, so no frame that arrives while connecting is lost.
    socket.on('message', (data, isBinary) => this.receive(data, isBinary));
    socket.on('close', () => this.cleanup());
    socket.on('error', (err) => {
      log.warn({ err: String(err) }, 'session stream: socket error');
      this.cleanup();
    });
  }

  /** Resolves when the connection no longer submits anything (what a newer connection waits for). */
  get settled(): Promise<void> {
    return this.chain;
  }

  /** Closes the socket if it is open and stops: nothing more is sent or submitted. */
  close(code: number, reason: string): void {
    if (this.socket.readyState === OPEN) this.socket.close(code, reason);
    this.cleanup();
  }

  // Connect: supersede an earlier connection to this session (in this process), subscribe to
  // progress before reading counters (so no commit falls between), then say hello.
  private async connect(): Promise<void> {
    const { sessionId } = this;
    const prev = current.get(sessionId);
    current.set(sessionId, this);
    if (prev) {
      prev.close(4001, 'superseded by a newer connection');
      await Promise.race([prev.settled, new Promise((r) => setTimeout(r, TAKEOVER_WAIT_MS).unref())]);
    }
    this.unsubscribe = await this.deps.progress.subscribe(sessionId, (ev) => this.onProgress(ev));
    if (this.closed) {
      void this.unsubscribe().catch(() => undefined);
      return;
    }
    const rec = await this.deps.store.get(sessionId);
    if (!rec) throw new ProtocolError('session_not_found', `session ${sessionId} was deleted`);
    this.lastSeq = rec.clientSeq;
    this.tokens = rec.tokensIngested;
    this.segments = rec.segmentsCommitted;
    this.pendingTokens = rec.tail.length;
    this.bp.applied(rec.appliedSeq); // nothing is in flight yet: this only moves the known applied seq
    this.send({
      type: 'hello', session_id: sessionId, last_seq: this.lastSeq, segment_length: this.deps.catalog.get(rec.model)?.segmentLength ?? null,
      tokens_ingested: rec.tokensIngested, segments_committed: rec.segmentsCommitted, model: rec.model, status: rec.status,
    });
    if (rec.failure) {
      const client = await this.deps.queue.log.clientSeqOf(sessionId, rec.failure.seq);
      this.sendError('session_failed', `session ${sessionId} failed at request ${rec.failure.seq} (${rec.failure.code}): ${rec.failure.message}; reset it (POST /v1/sessions/${sessionId}/reset)`,
        { request_seq: rec.failure.seq, ...(client !== undefined ? { seq: client } : {}) });
    } else if (rec.acceptedSeq > rec.appliedSeq) {
      // Accepted work of an earlier connection: make sure a worker has it (its API may have died before waking it).
      await this.deps.queue.wake(sessionId);
    }
  }

  private connectFailed(err: unknown): void {
    if (err instanceof ProtocolError) this.sendProtocolError(err);
    else {
      this.log.error({ err }, 'session stream: connect failed');
      this.sendError('internal_error', 'could not open the stream');
    }
    this.close(1011, 'init_failed');
  }

  private receive(data: FrameData, isBinary: boolean): void {
    const bytes = frameBytes(data);
    this.bp.hold(bytes);
    if (this.closed) {
      this.chain = this.chain.then(() => this.bp.release(bytes));
      return;
    }
    const frame = this.readFrame(data, isBinary);
    this.chain = this.chain.then(() => (this.closed ? this.bp.release(bytes) : this.handle(frame, bytes)));
  }

  /** Parses a message on arrival and starts tokenizing a long append that is not a known duplicate. */
  private readFrame(data: FrameData, isBinary: boolean): Frame {
    let msg: Record<string, unknown>;
    try {
      msg = parseMessage(data, isBinary);
    } catch (err) {
      return { err };
    }
    const { pretokenizer } = this.deps;
    if (!pretokenizer || msg.type !== 'append' || typeof msg.text !== 'string' || typeof msg.seq !== 'number' || msg.seq <= this.lastSeq) return { msg };
    const ingestText = pretokenizer.ingestText(this.initial.model, msg.text, this.log, this.initial.id);
    ingestText.catch(() => undefined); // awaited by append(), or dropped (a duplicate, a bad message, a closed socket)
    return { msg, ingestText };
  }

  private async handle(frame: Frame, bytes: number): Promise<void> {
    const tracked = { yes: false }; // an append's bytes are released when a worker applied it
    try {
      if (!frame.msg) throw frame.err;
      const msg = frame.msg;
      switch (msg.type) {
        case 'append':
          await this.append(msg, bytes, tracked, frame.ingestText);
          break;
        case 'generate':
          await this.generate(msg);
          break;
        case 'ping':
          this.send({ type: 'pong' });
          break;
        default:
          throw new ProtocolError('unknown_type', `unknown message type ${JSON.stringify(msg.type)}`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        this.sendProtocolError(err);
        if (err.code === 'conflict' || err.code === 'session_not_found') this.close(1008, err.code);
      } else if (err instanceof NotDurableError) {
        // The append may or may not survive a failover: the client reconnects and resends from the
        // last_seq its hello reads from Redis (a resend of one that survived is acked as a duplicate).
        this.sendError('not_durable', `${err.message}; reconnect and resend from last_seq + 1`, { last_seq: this.lastSeq });
        this.close(1011, 'not_durable');
      } else if (err instanceof SessionError && err.code === 'not_found') {
        this.sendError('session_not_found', err.message);
        this.close(1008, 'session_not_found');
      } else {
        this.log.error({ err }, 'session stream: request failed');
        this.sendError('internal_error', 'internal error; resend from last_seq + 1 after reconnecting');
        this.close(1011, 'internal_error');
      }
    } finally {
      if (!tracked.yes) this.bp.release(bytes);
    }
  }

  private async append(m: Record<string, unknown>, bytes: number, tracked: { yes: boolean }, ingestText?: Promise<IngestText>): Promise<void> {
    const { seq, text, flush } = parseAppend(m);
    if (seq <= this.lastSeq) {
      this.send({ type: 'ack', seq, duplicate: true, ...this.counters() });
      return;
    }
    if (seq !== this.lastSeq + 1) {
      throw new ProtocolError('seq_gap', `append.seq ${seq} skips ahead: the next expected seq is ${this.lastSeq + 1}`);
    }
    if (this.bp.overloaded || (await saturated(this.deps).catch(() => ({ saturated: false }))).saturated) {
      // Not accepted: the client resends from last_seq + 1 once retry_after_ms passed.
      this.refuseOverloaded(seq);
      return;
    }
    const req: IngestRequest = { kind: 'ingest', ...(ingestText ? await ingestText : { text }), flush };
    let q: number;
    try {
      ({ seq: q } = await this.deps.queue.submit(this.sessionId, req, { clientSeq: seq, wantResult: false }));
    } catch (err) {
      if (err instanceof OrderError && err.code === 'client_seq' && err.at >= seq) {
        // This very append is stored: a command retried across a failover (ioredis resends one whose
        // reply was lost). Whether it is durable is unknown, so the client resumes from its hello.
        throw new NotDurableError(0, 0, `append ${seq} was stored by a command retried after a connection loss`);
      }
      if (err instanceof OrderError && err.code === 'client_seq') {
        throw new ProtocolError('conflict', `another connection is appending to session ${this.sessionId} (stored last_seq ${err.at})`);
      }
      if (err instanceof OrderError && err.code === 'session_failed') {
        throw new ProtocolError('session_failed', `${err.message}; append ${seq} was not accepted`);
      }
      throw err;
    }
    // Durable from here on; hand the bytes over to the applied-tracking.
    this.bp.track(q, bytes, text.length);
    tracked.yes = true;
    this.lastSeq = seq;
    this.bp.catchUp();
    this.send({ type: 'ack', seq, ...this.counters() });
  }

  private counters(): object {
    return { tokens: this.tokens, segments: this.segments, pending_tokens: this.pendingTokens, unapplied_chars: this.bp.unappliedChars };
  }

  /** Refuses append `seq` (overload) and stops reading for the retry time: TCP holds the client back. */
  private refuseOverloaded(seq: number): void {
    const ms = RETRY_AFTER_S * 1000;
    const fresh = !this.bp.overloaded;
    this.sendError('overloaded', `the service is overloaded; resend from last_seq + 1 after retry_after_ms`, { seq, last_seq: this.lastSeq, retry_after_ms: ms });
    if (fresh) this.bp.pauseForOverload(ms);
  }

  private async generate(m: Record<string, unknown>): Promise<void> {
    if (this.gen) throw new ProtocolError('generation_in_progress', 'one generation at a time per connection');
    const req = parseGenerate(m);
    const g: Generation = { q: undefined, held: [] };
    this.gen = g;
    try {
      const { seq: q } = await this.deps.queue.submit(this.sessionId, req, { wantResult: false });
      g.q = q;
    } catch (err) {
      this.gen = undefined;
      if (err instanceof OrderError && err.code === 'session_failed') throw new ProtocolError('session_failed', err.message);
      throw err;
    }
    for (const ev of g.held.splice(0)) if (ev.seq === g.q && this.gen === g) this.sendGenerationEvent(ev);
  }

  private onProgress(ev: ProgressEvent): void {
    if (this.closed) return;
    const { sessionId } = this;
    if (ev.type === 'segment') {
      this.tokens = Math.max(this.tokens, ev.tokensIngested);
      this.segments = Math.max(this.segments, ev.segmentsCommitted);
      this.send({ type: 'progress', segments_committed: ev.segmentsCommitted, tokens_ingested: ev.tokensIngested });
    } else if (ev.type === 'done') {
      const r: RequestResult = ev.result;
      if (!r.error) {
        this.tokens = Math.max(this.tokens, r.tokensIngested);
        this.segments = Math.max(this.segments, r.segmentsCommitted);
        this.pendingTokens = r.pendingTokens;
      }
      this.bp.applied(ev.seq);
    }
    if (ev.type === 'failed') {
      const f = ev.failure;
      this.sendError('session_failed', `session ${sessionId} failed at request ${f.seq} (${f.code}): ${f.message}; nothing more is applied until its owner resets it (POST /v1/sessions/${sessionId}/reset)`,
        { request_seq: f.seq, ...(f.clientSeq !== undefined ? { seq: f.clientSeq } : {}) });
      this.gen = undefined; // its done never comes
      return;
    }
    if (ev.type === 'reset') {
      void this.readLastSeq().then((v) => {
        this.lastSeq = v;
        this.send({ type: 'reset', action: ev.action, last_seq: v });
      }, () => undefined);
      return;
    }
    const gen = this.gen;
    if (gen && ev.type !== 'segment') {
      if (gen.q === undefined) gen.held.push(ev);
      else if (ev.seq === gen.q) this.sendGenerationEvent(ev);
    }
  }

  private sendGenerationEvent(ev: ProgressEvent): void {
    if (ev.type === 'token') {
      this.send({ type: 'token', text: ev.text, index: ev.index });
    } else if (ev.type === 'done') {
      this.gen = undefined;
      const r = ev.result;
      if (r.error) this.sendError(r.error.code, r.error.message);
      else {
        // finish_reason and usage as /v1/completions reports them (an end-of-text token is 'stop').
        const completionTokens = r.completion?.ids.length ?? 0;
        this.send({
          type: 'done', finish_reason: openAiFinish(r.completion?.finishReason ?? 'length'), text: r.completion?.text ?? '',
          usage: { prompt_tokens: r.promptTokens, completion_tokens: completionTokens, total_tokens: r.promptTokens + completionTokens },
        });
      }
    }
  }

  private async readLastSeq(): Promise<number> {
    return Number((await this.deps.redis.hget(this.deps.store.keys.session(this.sessionId), LAST_SEQ_FIELD)) ?? 0);
  }

  private send(msg: object): void {
    if (!this.closed && this.socket.readyState === OPEN) this.socket.send(JSON.stringify(msg));
  }

  private sendError(code: string, message: string, extra: object = {}): void {
    this.send({ type: 'error', code, message, ...extra });
  }

  private sendProtocolError(err: ProtocolError): void {
    this.sendError(err.code, err.message, err.param !== undefined ? { param: err.param } : {});
  }

  private cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    streamStats.open--;
    this.bp.stop();
    void this.unsubscribe?.().catch(() => undefined);
    void this.chain.finally(() => {
      if (current.get(this.sessionId) === this) current.delete(this.sessionId);
    });
  }
}
