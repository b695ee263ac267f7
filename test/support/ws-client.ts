// A websocket client for the session stream (GET /v1/sessions/{id}/stream) in tests: messages
// queued as they arrive, next(pred) to wait for one.
import { createRequire } from 'node:module';

// `ws` (a dependency of @fastify/websocket) has no type declarations here: describe what we use.
interface WsClient {
  readyState: number;
  bufferedAmount: number;
  send(data: string | Buffer, opts?: { binary?: boolean } | ((err?: Error) => void), cb?: (err?: Error) => void): void;
  close(code?: number): void;
  terminate(): void;
  on(ev: string, fn: (...args: any[]) => void): void;
  once(ev: string, fn: (...args: any[]) => void): void;
}
type WsCtor = new (url: string, opts?: object) => WsClient;
export const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: WsCtor };


export type Msg = Record<string, any>;

export class Client {
  readonly msgs: Msg[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly ws: WsClient) {
    ws.on('message', (data: Buffer) => {
      this.msgs.push(JSON.parse(String(data)) as Msg);
      for (const w of this.waiters.splice(0)) w();
    });
    ws.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Removes and returns the first message matching `pred` (waits for it). */
  async next(pred: (m: Msg) => boolean = () => true, timeoutMs = 15000): Promise<Msg> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.msgs.findIndex(pred);
      if (i >= 0) return this.msgs.splice(i, 1)[0]!;
      if (this.closed) throw new Error(`socket closed; unmatched messages: ${JSON.stringify(this.msgs).slice(0, 500)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; messages: ${JSON.stringify(this.msgs).slice(0, 500)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  send(m: object): void {
    this.ws.send(JSON.stringify(m));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const done = new Promise<void>((r) => this.ws.once('close', () => r()));
    this.ws.close();
    await done;
  }
}

/** Opens the session's stream and waits for its hello. */
export async function connectStream(wsBase: string, id: string, headers: Record<string, string> = {}): Promise<{ c: Client; hello: Msg }> {
  const ws = new WebSocket(`${wsBase}/v1/sessions/${id}/stream`, { headers });
  // Listening before 'open': the 101 response and the hello can arrive in one read, and ws emits
  // the hello before a listener attached after `await open` would exist.
  const c = new Client(ws);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
    ws.once('unexpected-response', (_req: unknown, res: { statusCode: number }) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
  // A bound, not a speed check: a new connection waits for the session's previous one to settle
  // (stream/stream-connection.ts, up to TAKEOVER_WAIT_MS = 30 s), which on a loaded machine can pass 15 s.
  const hello = await c.next((m) => m.type === 'hello', 45_000);
  return { c, hello };
}
