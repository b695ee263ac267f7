// Streams a text file into a session over the websocket API, with a progress bar on stderr, and
// resumes after a dropped connection (reconnects with backoff, resends from the server's last_seq + 1).
//
//   node --import tsx examples/stream-file.ts --url ws://127.0.0.1:8080 --session ID --file big.txt \
//     [--chunk 65536] [--api-key KEY] [--first-seq 1] [--flush]
//
// Client seqs are per session: chunk i of this file is sent as seq first_seq + i (default 1), so a
// re-run of the same command against the same session only gets duplicate acks. To append a second
// file to a session, pass --first-seq (last_seq of the session + 1).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

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
  },
});
if (!args.url || !args.session || !args.file) {
  process.stderr.write('usage: stream-file.ts --url ws://host:port --session ID --file big.txt [--chunk CHARS] [--api-key KEY] [--first-seq N] [--flush]\n');
  process.exit(2);
}
const url = `${args.url.replace(/\/+$/, '')}/v1/sessions/${encodeURIComponent(args.session)}/stream`;
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
const started = Date.now();

function bar(note = ''): void {
  const done = acked >= firstSeq ? charsBefore[acked - firstSeq]! + chunks[acked - firstSeq]!.length : 0;
  const frac = totalChars === 0 ? 1 : done / totalChars;
  const width = 30;
  const filled = Math.round(frac * width);
  const mb = (n: number) => (n / 1e6).toFixed(1);
  const rate = done / Math.max(0.001, (Date.now() - started) / 1000);
  process.stderr.write(
    `\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(1)}% ${mb(done)}/${mb(totalChars)} M chars ` +
      `${mb(rate)} M/s  tokens ${tokens}  segments ${segments} ${note}`.padEnd(110),
  );
}

type Outcome = 'finished' | 'dropped' | 'fatal';
/** The server said it was overloaded: how long it asked us to wait (ms). */
let retryAfterMs = 0;

/** One connection: hello, send from last_seq + 1 (window-limited), collect acks. */
function session(): Promise<Outcome> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = args['api-key'] ? { authorization: `Bearer ${args['api-key']}` } : {};
    const ws = new WebSocket(url, { headers });
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
bar('done');
process.stderr.write(`\nall ${chunks.length} chunks acknowledged (seq ${firstSeq}..${lastSeq}); the worker applies them in order\n`);
