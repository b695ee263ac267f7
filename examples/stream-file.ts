// Streams a text file into a session over the websocket API, with progress on stderr, and resumes
// after a dropped connection (reconnects with backoff, resends from the server's last_seq + 1).
//
//   node --import tsx examples/stream-file.ts --url ws://127.0.0.1:8080 --session ID --file big.txt \
//     [--chunk 65536] [--api-key KEY] [--first-seq 1] [--flush] [--no-progress]
//
// Progress counts what the worker has *applied* (GET /v1/sessions/{id}: tokens_ingested,
// segments_committed, pending_requests; progress messages in between), not what was sent: an ack
// means accepted, and the worker may still have minutes of ingest ahead. The command returns once
// the session has no pending requests. A redrawn bar on a terminal; plain lines when stderr is not
// one, or with --no-progress.
//
// Client seqs are per session: chunk i of this file is sent as seq first_seq + i (default 1), so a
// re-run of the same command against the same session only gets duplicate acks. To append a second
// file to a session, pass --first-seq (last_seq of the session + 1).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ProgressBar } from '../src/cli/progress-bar.ts';

interface WsClient {
  readyState: number;
  bufferedAmount: number;
  send(data: string): void;
  close(code?: number): void;
  on(ev: string, fn: (...args: any[]) => void): void;
  once(ev: string, fn: (...args: any[]) => void): void;
}
type WsCtor = new (url: string, opts?: { headers?: Record<string, string> }) => WsClient;
const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: WsCtor };

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    session: { type: 'string' },
    file: { type: 'string' },
    chunk: { type: 'string', default: '65536' },
    'api-key': { type: 'string' },
    'first-seq': { type: 'string', default: '1' },
    flush: { type: 'boolean', default: false },
    'no-progress': { type: 'boolean', default: false },
  },
});
if (!args.url || !args.session || !args.file) {
  process.stderr.write('usage: stream-file.ts --url ws://host:port --session ID --file big.txt [--chunk CHARS] [--api-key KEY] [--first-seq N] [--flush] [--no-progress]\n');
  process.exit(2);
}
const sessionPath = `/v1/sessions/${encodeURIComponent(args.session)}`;
const url = `${args.url.replace(/\/+$/, '')}${sessionPath}/stream`;
// The same server over HTTP (ws -> http, wss -> https), for GET /v1/sessions/{id}.
const sessionUrl = `${args.url.replace(/\/+$/, '').replace(/^ws/, 'http')}${sessionPath}`;
const authHeaders: Record<string, string> = args['api-key'] ? { authorization: `Bearer ${args['api-key']}` } : {};
const chunkChars = Math.max(1, Number(args.chunk));
const firstSeq = Math.max(1, Number(args['first-seq']));

// Chunks split on code points (never inside a surrogate pair), so every chunk is valid Unicode.
const text = readFileSync(args.file, 'utf8');
const chunks: string[] = [];
for (let i = 0; i < text.length; ) {
  let end = Math.min(text.length, i + chunkChars);
  const c = text.charCodeAt(end - 1);
  if (end < text.length && c >= 0xd800 && c <= 0xdbff) end++;
  chunks.push(text.slice(i, end));
  i = end;
}
const lastSeq = firstSeq + chunks.length - 1;
const totalChars = text.length;
const charsBefore: number[] = [];
chunks.reduce((acc, c, i) => ((charsBefore[i] = acc), acc + c.length), 0);

let acked = firstSeq - 1; // highest acknowledged seq
let tokens = 0;
let segments = 0;
/** From the last GET of the session: requests accepted and not applied yet, and the last append accepted. */
let pending = -1;
let sessionLastSeq = firstSeq - 1;
const progress = new ProgressBar('stream', { plain: args['no-progress'] });

/** Chars of this file's chunks with seq <= `seq`. */
function charsUpTo(seq: number): number {
  const n = Math.min(chunks.length, seq - firstSeq + 1);
  return n <= 0 ? 0 : charsBefore[n - 1]! + chunks[n - 1]!.length;
}

/**
 * Applied share of the file: each append is one request, so (with this client the session's only
 * writer) appends up to last_seq - pending_requests are applied. Sent (acked) is shown beside it.
 */
function status(note = ''): [number, string] {
  const applied = pending < 0 ? 0 : charsUpTo(sessionLastSeq - pending);
  const frac = totalChars === 0 ? (pending === 0 ? 1 : 0) : applied / totalChars;
  const sent = totalChars === 0 ? 100 : (charsUpTo(acked) / totalChars) * 100;
  return [frac, `applied: tokens ${tokens}, segments ${segments}, pending requests ${pending < 0 ? '?' : pending}; sent ${sent.toFixed(0)}% ${note}`.trimEnd()];
}

function bar(note = ''): void {
  progress.update(...status(note));
}

/** GET /v1/sessions/{id}: the applied counters. */
async function poll(): Promise<void> {
  const res = await fetch(sessionUrl, { headers: authHeaders });
  if (!res.ok) throw new Error(`GET ${sessionPath}: HTTP ${res.status} ${await res.text()}`);
  const s = (await res.json()) as { tokens_ingested: number; segments_committed: number; pending_requests: number; last_seq: number; status: string };
  if (s.status === 'failed') throw new Error(`session ${args.session} failed: GET ${sessionPath} says why; its owner resets it (POST ${sessionPath}/reset)`);
  tokens = Math.max(tokens, s.tokens_ingested);
  segments = Math.max(segments, s.segments_committed);
  pending = s.pending_requests;
  sessionLastSeq = s.last_seq;
}

type Outcome = 'finished' | 'dropped' | 'fatal';
/** The server said it was overloaded: how long it asked us to wait (ms). */
let retryAfterMs = 0;

/** One connection: hello, send from last_seq + 1 (window-limited), collect acks. */
function session(): Promise<Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: authHeaders });
    let next = 0; // next seq to send
    let settled = false;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      resolve(o);
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    };
    const pump = async () => {
      // Keep at most ~4 MB unsent in our socket buffer; the server pauses reading when it holds
      // too much unapplied text, and TCP does the rest.
      while (!settled && next <= lastSeq) {
        if (ws.bufferedAmount > 4 << 20) {
          await sleep(10);
          continue;
        }
        const seq = next++;
        const isLast = seq === lastSeq;
        ws.send(JSON.stringify({ type: 'append', seq, text: chunks[seq - firstSeq]!, ...(isLast && args.flush ? { flush: true } : {}) }));
        if (seq % 16 === 0) await new Promise((r) => setImmediate(r));
      }
    };
    ws.on('unexpected-response', (_req: unknown, res: { statusCode: number }) => {
      process.stderr.write(`\nserver refused the stream: HTTP ${res.statusCode}\n`);
      finish(res.statusCode >= 500 ? 'dropped' : 'fatal');
    });
    ws.on('error', () => finish('dropped'));
    ws.on('close', () => finish(acked >= lastSeq ? 'finished' : 'dropped'));
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(String(data)) as Record<string, any>;
      switch (m.type) {
        case 'hello':
          tokens = m.tokens_ingested;
          segments = m.segments_committed;
          if (m.last_seq > lastSeq) {
            process.stderr.write(`\nsession's last_seq ${m.last_seq} is past this file (${lastSeq}): use --first-seq\n`);
            finish('fatal');
            return;
          }
          acked = Math.max(acked, m.last_seq);
          next = acked + 1;
          bar('connected');
          if (acked >= lastSeq) finish('finished');
          else void pump();
          break;
        case 'ack':
          acked = Math.max(acked, m.seq);
          tokens = Math.max(tokens, m.tokens);
          segments = Math.max(segments, m.segments);
          bar();
          if (acked >= lastSeq) finish('finished');
          break;
        case 'progress':
          tokens = m.tokens_ingested;
          segments = m.segments_committed;
          bar();
          break;
        case 'error':
          if (m.code === 'overloaded') {
            // Not accepted: wait as told, then resend from last_seq + 1 (a new connection's hello).
            retryAfterMs = Math.max(retryAfterMs, Number(m.retry_after_ms) || 1000);
            finish('dropped');
            break;
          }
          process.stderr.write(`\nserver error ${m.code}: ${m.message}\n`);
          if (m.code === 'seq_gap' || m.code === 'conflict') finish('dropped'); // resync via hello
          else if (m.code !== 'internal_error') finish('fatal'); // session_failed: its owner resets it first
          break;
      }
    });
  });
}

// While appends go out, the session is read every second; the loop below then waits for the rest.
let polling = true;
const poller = (async () => {
  while (polling) {
    await poll().catch((err: Error) => process.stderr.write(`\n${err.message}\n`));
    bar();
    await sleep(1000);
  }
})();

let backoff = 250;
for (;;) {
  const before = acked;
  retryAfterMs = 0;
  const outcome = await session();
  if (outcome === 'finished') break;
  if (outcome === 'fatal') process.exit(1);
  if (acked > before) backoff = 250; // made progress: reconnect quickly
  const wait = Math.max(backoff, retryAfterMs);
  bar(retryAfterMs > 0 ? `server overloaded, resending in ${(wait / 1000).toFixed(1)} s` : `connection lost, retrying in ${(wait / 1000).toFixed(1)} s`);
  await sleep(wait + Math.random() * wait * 0.2);
  backoff = Math.min(backoff * 2, 15000);
}
polling = false;
await poller;
// Every chunk is accepted; done once the worker has applied them (and anything queued before them).
for (;;) {
  try {
    await poll();
  } catch (err) {
    progress.end(...status());
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }
  if (pending === 0) break;
  bar('waiting for the worker');
  await sleep(500);
}
progress.end(...status('done'));
process.stderr.write(`all ${chunks.length} chunks (seq ${firstSeq}..${lastSeq}) applied: the session holds ${tokens} tokens in ${segments} segments\n`);
