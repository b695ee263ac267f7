// The messages of GET /v1/sessions/:id/stream (JSON text frames; binary frames are decoded as strict UTF-8 JSON):
//   server -> {type:'hello', session_id, last_seq, segment_length, tokens_ingested, segments_committed}
//   client -> {type:'append', seq, text, flush?}   seq = last_seq + 1, + 2, ... (client-chosen, per session)
//   server -> {type:'ack', seq, duplicate?, tokens, segments, pending_tokens, unapplied_chars}
//   server -> {type:'progress', segments_committed, tokens_ingested}       (as segments commit)
//   client -> {type:'generate', max_tokens?, text?, temperature?, top_p?, top_k?, stop?, seed?, presence_penalty?, frequency_penalty?, repetition_penalty?}
//   server -> {type:'token', text, index} ... {type:'done', finish_reason, text, usage:{prompt_tokens, completion_tokens, total_tokens}}
//   server -> {type:'error', code, message[, param][, seq]}     recoverable unless the server closes the socket after it
//
// generate takes the limits, defaults and sampling of POST /v1/completions (queue/generate-request.ts, generation.ts
// samplingOf): max_tokens 1..MAX_TOKENS (default 16), at most 4 stop sequences, a random seed unless
// one is sent (0 for greedy), finish_reason 'stop' or 'length'.
//
// Here: reading a frame into a message and checking append and generate messages, where what is
// wrong is a ProtocolError (an error message to the client); and the description for openapi.yaml.
// What the messages do is stream-connection.ts.
import { ApiError } from '../errors.ts';
import { samplingOf, STOP_SHAPE, type SamplingFields } from '../generation.ts';
import { DEFAULT_STREAM_MAX_TOKENS, MAX_STOP_SEQUENCES, MAX_TOKENS, generateRequest } from '../../queue/generate-request.ts';
import type { GenerateRequest } from '../../queue/request.ts';
import type { SamplingParams } from '../../text/sampling.ts';

/** A received frame as ws hands it over. */
export type FrameData = Buffer | ArrayBuffer | Buffer[];

export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** The message field at fault, named as REST's error `param` would name it. */
    readonly param?: string,
  ) {
    super(message);
  }
}

const LONE_SURROGATE = /\p{Cs}/u;

const SAMPLING_KEYS = ['temperature', 'top_p', 'top_k', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'seed'] as const;

/** The generate message's sampling, through the same samplingOf as the REST routes (defaults, ranges, seed). */
function parseSampling(m: Record<string, unknown>): SamplingParams {
  const fields: SamplingFields = {};
  for (const k of SAMPLING_KEYS) {
    const v = m[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ProtocolError('invalid_field', `${k} must be a number`, k);
    fields[k] = v;
  }
  try {
    return samplingOf(fields);
  } catch (err) {
    if (err instanceof ApiError) throw new ProtocolError('invalid_field', err.message, err.param ?? undefined);
    throw err;
  }
}

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > MAX_STOP_SEQUENCES || !list.every((s) => typeof s === 'string' && !LONE_SURROGATE.test(s))) {
    throw new ProtocolError('invalid_field', STOP_SHAPE, 'stop');
  }
  return list as string[];
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeFrame(data: FrameData, isBinary: boolean): string {
  const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
  // Text frames too: app.ts turns off ws's own UTF-8 check (it would close the socket with 1007), so
  // invalid UTF-8 becomes a recoverable error message like any other bad input.
  void isBinary;
  try {
    return utf8.decode(buf);
  } catch {
    throw new ProtocolError('invalid_utf8', 'message is not valid UTF-8');
  }
}

/** A message as a JSON object (ProtocolError when it is not one). */
export function parseMessage(data: FrameData, isBinary: boolean): Record<string, unknown> {
  const text = decodeFrame(data, isBinary);
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    throw new ProtocolError('invalid_json', 'message is not valid JSON');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new ProtocolError('invalid_message', 'message must be a JSON object');
  return m as Record<string, unknown>;
}

export function frameBytes(data: FrameData): number {
  return Array.isArray(data) ? data.reduce((a, b) => a + b.length, 0) : data.byteLength;
}

export interface AppendMessage {
  seq: number;
  text: string;
  flush: boolean;
}

/** An append message's fields, checked in this order (the first fault is the one reported). */
export function parseAppend(m: Record<string, unknown>): AppendMessage {
  const seq = m.seq;
  const text = m.text;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    throw new ProtocolError('invalid_field', 'append.seq must be an integer >= 1');
  }
  if (typeof text !== 'string') throw new ProtocolError('invalid_field', 'append.text must be a string');
  if (m.flush !== undefined && typeof m.flush !== 'boolean') throw new ProtocolError('invalid_field', 'append.flush must be a boolean');
  if (LONE_SURROGATE.test(text)) throw new ProtocolError('invalid_text', 'append.text contains a lone UTF-16 surrogate (not valid Unicode)');
  return { seq, text, flush: m.flush === true };
}

/** A generate message as the request to queue, with the limits and defaults of POST /v1/completions. */
export function parseGenerate(m: Record<string, unknown>): GenerateRequest {
  const maxTokens = m.max_tokens ?? DEFAULT_STREAM_MAX_TOKENS;
  if (typeof maxTokens !== 'number' || !Number.isSafeInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS) {
    throw new ProtocolError('invalid_field', `max_tokens must be an integer in [1, ${MAX_TOKENS}] (default ${DEFAULT_STREAM_MAX_TOKENS})`, 'max_tokens');
  }
  if (m.text !== undefined && (typeof m.text !== 'string' || LONE_SURROGATE.test(m.text))) {
    throw new ProtocolError('invalid_field', 'generate.text must be a valid Unicode string', 'text');
  }
  return generateRequest({
    maxTokens, sampling: parseSampling(m), stop: parseStop(m.stop),
    ...(typeof m.text === 'string' ? { text: m.text } : {}),
  });
}

/** The websocket protocol, for openapi.yaml (@fastify/websocket hides websocket routes from the generated spec). */
export const STREAM_DOC = {
  operationId: 'streamSession',
  tags: ['sessions'],
  summary: 'Stream a document into a session and generate over a websocket',
  description: [
    'WebSocket upgrade; JSON text messages.',
    'Server on connect: {"type":"hello","session_id","model","last_seq","segment_length","tokens_ingested","segments_committed"} (last_seq: the last append durably accepted, to resume after a dropped connection).',
    'Client {"type":"append","seq":n,"text":"..."} (seq = last_seq + 1, chunks of any size) -> server {"type":"ack","seq","tokens","segments","pending_tokens","unapplied_chars"}; a repeated seq -> ack with "duplicate": true, not applied again; a gap -> error seq_gap.',
    'Server {"type":"progress","segments_committed","tokens_ingested"} as segments commit.',
    `Client {"type":"generate","max_tokens","temperature","top_p","top_k","stop","seed","presence_penalty","frequency_penalty","repetition_penalty"} (the limits and defaults of createCompletion: max_tokens 1..${MAX_TOKENS}, default ${DEFAULT_STREAM_MAX_TOKENS}; at most ${MAX_STOP_SEQUENCES} stop sequences) -> server {"type":"token","text","index"}..., then {"type":"done","finish_reason" (stop or length),"text","usage"}.`,
    'Errors: {"type":"error","code","message","param"?} (invalid_json, invalid_message, unknown_type, invalid_field, seq_gap, invalid_text, invalid_utf8, generation_in_progress; conflict and session_not_found close the socket).',
    'A session that does not exist or belongs to another API key: HTTP 404 session_not_found before the upgrade (no websocket is opened).',
    'Backpressure: over 8 MB of accepted-but-unapplied text per connection the server stops reading until workers catch up.',
  ].join('\n\n'),
};
