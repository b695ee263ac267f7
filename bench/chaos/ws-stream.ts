// Streams chunks into a session over GET /v1/sessions/{id}/stream (README "Streaming a document over
// the websocket"), as examples/stream-file.ts does: chunk i is seq i + 1, the last with flush: true;
// after any disconnect or error it reconnects to a replica drawn at random and resends from the
// hello's last_seq + 1. A window bounds how far sends run ahead of the applied tokens, so the stream
// lasts the whole trial and faults land while it is being sent.
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import type { Rng } from './rng.ts';
import type { Urls } from './session-client.ts';

export interface StreamOptions {
  urls: Urls;
  sessionId: string;
  chunks: string[];
  /** Tokens of the document up to and including chunk i (text.ts tokensThroughChunks). */
  tokensThrough: number[];
  /** Most tokens sent beyond applied() (Infinity: no window). */
  windowTokens: number;
  applied: () => number;
  /** Most tokens that may be sent at all for now (the fault injector holds the stream back with it). */
  gate?: () => number;
  onProgress?: (tokens: number) => void;
  /** The replica (http base URL) this stream is connected to now; undefined while not connected. */
  onConnected?: (base: string | undefined) => void;
  /** The highest seq acknowledged (or, after a hello, the server's last_seq). */
  onAcked?: (seq: number) => void;
  rng: Rng;
  signal: AbortSignal;
  /** Reconnect when sends are unacknowledged and nothing arrived for this long. */
  ackTimeoutMs?: number;
  /** Filled as the stream goes (so a caller has them even when the stream is aborted). */
  stats?: StreamStats;
}

export interface StreamStats {
  connects: number;
  /** Connections that ended before every chunk was acknowledged. */
  drops: number;
  duplicateAcks: number;
  /** Hellos whose last_seq was below a seq already acknowledged to us (an acknowledged append forgotten). */
  rollbacks: number;
  rolledBackSeqs: number;
  errors: Record<string, number>;
  /** Websocket upgrades refused, by HTTP status. */
  refused: Record<string, number>;
}

export class FatalStreamError extends Error {}

export function newStreamStats(): StreamStats {
  return { connects: 0, drops: 0, duplicateAcks: 0, rollbacks: 0, rolledBackSeqs: 0, errors: {}, refused: {} };
}

type End = 'finished' | 'dropped';

export async function streamChunks(o: StreamOptions): Promise<StreamStats> {
  const lastSeq = o.chunks.length;
  const stats: StreamStats = o.stats ?? newStreamStats();
  let acked = 0;
  let fatal: Error | undefined;
  const count = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);

  const connect = (): Promise<End> =>
    new Promise((resolve) => {
      const list = o.urls();
      const base = o.rng.pick(list).replace(/^http/, 'ws');
      const ws = new WebSocket(`${base}/v1/sessions/${o.sessionId}/stream`);
      let next = 0; // 0 until hello
      let settled = false;
      let lastMessage = Date.now();
      const finish = (e: End) => {
        if (settled) return;
        settled = true;
        clearInterval(watchdog);
        o.onConnected?.(undefined);
        o.signal.removeEventListener('abort', onAbort);
        try {
          ws.terminate();
        } catch {
          /* already closed */
        }
        resolve(e);
      };
      const onAbort = () => finish('dropped');
      o.signal.addEventListener('abort', onAbort);
      const watchdog = setInterval(() => {
        if (next > acked + 1 && Date.now() - lastMessage > (o.ackTimeoutMs ?? 20_000)) finish('dropped');
      }, 1000);
      const pump = async () => {
        while (!settled && next > 0 && next <= lastSeq) {
          const ahead = o.tokensThrough[next - 1]! - o.applied();
          if (ws.bufferedAmount > 1 << 20 || ahead > o.windowTokens || o.tokensThrough[next - 1]! > (o.gate?.() ?? Infinity)) {
            await sleep(20);
            continue;
          }
          const seq = next++;
          ws.send(JSON.stringify({ type: 'append', seq, text: o.chunks[seq - 1]!, ...(seq === lastSeq ? { flush: true } : {}) }));
          await new Promise((r) => setImmediate(r));
        }
      };
      ws.on('unexpected-response', (_req, res) => {
        count(stats.refused, String(res.statusCode));
        if (res.statusCode === 404) fatal = new FatalStreamError(`stream refused: HTTP 404 (session gone)`);
        finish('dropped');
      });
      ws.on('error', () => finish('dropped'));
      ws.on('close', () => finish(acked >= lastSeq ? 'finished' : 'dropped'));
      ws.on('open', () => {
        stats.connects++;
        o.onConnected?.(base.replace(/^ws/, 'http'));
      });
      ws.on('message', (data) => {
        lastMessage = Date.now();
        let m: Record<string, any>;
        try {
          m = JSON.parse(String(data));
        } catch {
          return;
        }
        switch (m.type) {
          case 'hello': {
            const last = Number(m.last_seq);
            if (last < acked) {
              stats.rollbacks++;
              stats.rolledBackSeqs += acked - last;
            }
            if (last > lastSeq) {
              fatal = new FatalStreamError(`hello last_seq ${last} is past the document's ${lastSeq} chunks`);
              finish('dropped');
              return;
            }
            acked = last;
            o.onAcked?.(acked);
            next = last + 1;
            if (typeof m.tokens_ingested === 'number') o.onProgress?.(m.tokens_ingested);
            if (acked >= lastSeq) finish('finished');
            else void pump();
            break;
          }
          case 'ack':
            if (m.duplicate) stats.duplicateAcks++;
            acked = Math.max(acked, Number(m.seq));
            o.onAcked?.(acked);
            if (acked >= lastSeq) finish('finished');
            break;
          case 'progress':
            o.onProgress?.(Number(m.tokens_ingested));
            break;
          case 'error':
            count(stats.errors, String(m.code));
            if (m.code === 'session_not_found') fatal = new FatalStreamError(`server: session_not_found: ${m.message}`);
            else if (/^invalid_|unknown_type/.test(String(m.code))) fatal = new FatalStreamError(`server refused our message: ${m.code}: ${m.message}`);
            // Anything else (seq_gap, conflict, internal_error, overloaded, ...): resync from a new hello.
            finish('dropped');
            break;
        }
      });
    });

  let backoff = 100;
  while (!o.signal.aborted) {
    const before = acked;
    const end = await connect();
    if (fatal) throw fatal;
    if (end === 'finished') return stats;
    stats.drops++;
    if (acked > before) backoff = 100;
    await sleep(backoff + o.rng.next() * backoff);
    backoff = Math.min(backoff * 2, 2000);
  }
  throw new Error(`stream aborted at seq ${acked}/${lastSeq}: ${String(o.signal.reason ?? '')}`);
}
