// The HTTP edge against the real stack: every response in the OpenAI error shape with a stable code,
// the router's and Node's parser's errors included (raw sockets where app.inject cannot reach), request
// timeouts that bound receiving a request but never cut SSE streams or websockets, and the snapshot
// counters' range check.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { httpTimeouts } from '../src/api/app.ts';
import { appOptions } from '../src/api/server.ts';
import { MAX_SNAPSHOT_COUNTER, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SnapshotError, decodeSnapshot, encodeSnapshot } from '../src/api/state-snapshot.ts';
import { loadConfig } from '../src/config/config.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';

const MODEL = 'rmt-brown-small';
const TIMEOUT_MS = 600;

type OpenAiError = { message: string; type: string; param: string | null; code: string | null };

function assertShape(status: number, body: string, want: { status: number; code: string }, what: string): OpenAiError {
  assert.equal(status, want.status, `${what}: expected ${want.status}, got ${status} ${body}`);
  assert.doesNotMatch(body, /\n\s+at |"stack"/, `${what}: body leaks a stack trace`);
  const e = (JSON.parse(body) as { error: OpenAiError }).error;
  assert.ok(e, `${what}: no error object in ${body}`);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type'], what);
  assert.equal(typeof e.message, 'string', what);
  assert.ok(e.message.length > 0, what);
  assert.equal(typeof e.type, 'string', what);
  assert.equal(e.code, want.code, `${what}: code`);
  return e;
}

function assertInjected(r: LightMyRequestResponse, status: number, code: string, what: string): OpenAiError {
  assert.match(String(r.headers['content-type']), /^application\/json/, what);
  return assertShape(r.statusCode, r.body, { status, code }, what);
}

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Parses one HTTP/1.1 response with a Content-Length body (what the service's errors carry). */
function parseResponse(raw: string): { res: RawResponse; rest: string } | null {
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...lines] = raw.slice(0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
  const len = Number(headers['content-length'] ?? 0);
  const bodyBytes = Buffer.from(raw.slice(end + 4), 'latin1');
  if (bodyBytes.length < len) return null;
  return {
    res: { status: Number(statusLine!.split(' ')[1]), headers, body: bodyBytes.subarray(0, len).toString('utf8') },
    rest: bodyBytes.subarray(len).toString('latin1'),
  };
}

/** A raw connection: write bytes, wait for whole responses (or the close). */
class Raw {
  private buf = '';
  private closed = false;
  private waiters: (() => void)[] = [];
  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      this.wake();
    });
    sock.on('error', () => undefined); // a reset after the response is fine; the response is what we assert
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static async open(port: number): Promise<Raw> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    return new Raw(sock);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  write(s: string | Buffer): void {
    this.sock.write(s);
  }

  /** The next whole response; rejects when the connection closes first. */
  async response(): Promise<RawResponse> {
    for (;;) {
      const p = parseResponse(this.buf);
      if (p) {
        this.buf = p.rest;
        return p.res;
      }
      if (this.closed) throw new Error(`connection closed without a whole response: ${JSON.stringify(this.buf.slice(0, 300))}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** Resolves when the server has closed the connection. */
  async closedByServer(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** A slowloris request (headers and half a body, never finished) and the 408 it gets. */
async function slowloris(port: number): Promise<RawResponse> {
  const c = await Raw.open(port);
  c.write('POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"model": "rmt-b');
  const res = await c.response();
  await c.closedByServer();
  return res;
}

let h: ApiHarness;
let app: FastifyInstance;
let base = '';
let port = 0;

describe('HTTP edge', { timeout: 120_000 }, () => {
  before(async () => {
    // RMT_HEADERS_TIMEOUT_MS stays at its default, above the request timeout: it is lowered to it.
    const env = { RMT_MODELS: MODEL, RMT_REQUEST_TIMEOUT_MS: String(TIMEOUT_MS), RMT_BODY_LIMIT: String(64 * 1024) };
    h = await startApiHarness({ ...appOptions(loadConfig(env)), logger: false }, env);
    app = h.app;
    base = await h.listen();
    port = Number(new URL(base).port);
  });
  after(async () => {
    await h?.close();
  });

  test('the timeout settings reach the Node server; headers timeout is lowered to the request timeout', () => {
    assert.equal(app.server.requestTimeout, TIMEOUT_MS);
    assert.equal(app.server.headersTimeout, TIMEOUT_MS);
    assert.equal(app.server.keepAliveTimeout, loadConfig({}).keepAliveTimeoutMs);
    assert.deepEqual(httpTimeouts({ requestTimeoutMs: 30000, headersTimeoutMs: 10000, keepAliveTimeoutMs: 5000 }), { request: 30000, headers: 10000, keepAlive: 5000, checkEvery: 1000 });
    assert.equal(httpTimeouts({ requestTimeoutMs: 0, headersTimeoutMs: 0 }).checkEvery, undefined, 'both off: Node\'s own checking');
  });

  test('router errors: bad URL 400, unknown route 404, wrong method 405 with Allow, long parameter 414', async () => {
    assertInjected(await app.inject({ method: 'GET', url: '/v1/sessions/%ZZ' }), 400, 'bad_url', 'bad percent-encoding');
    assertInjected(await app.inject({ method: 'GET', url: '/v1/nothing-here' }), 404, 'route_not_found', 'unknown route');
    let r = await app.inject({ method: 'DELETE', url: '/v1/models' });
    assertInjected(r, 405, 'method_not_allowed', 'DELETE /v1/models');
    assert.equal(r.headers.allow, 'GET, HEAD');
    r = await app.inject({ method: 'PATCH', url: '/v1/sessions/abc' });
    assertInjected(r, 405, 'method_not_allowed', 'PATCH /v1/sessions/abc');
    assert.equal(r.headers.allow, 'DELETE, GET, HEAD');
    r = await app.inject({ method: 'GET', url: '/v1/completions' });
    assertInjected(r, 405, 'method_not_allowed', 'GET /v1/completions');
    assert.equal(r.headers.allow, 'POST');
    assertInjected(await app.inject({ method: 'GET', url: `/v1/sessions/${'a'.repeat(101)}` }), 414, 'uri_too_long', 'parameter over 100 characters');
  });

  test('router errors over a real socket: bad URL 400 and long parameter 414, then the connection still serves', async () => {
    const c = await Raw.open(port);
    c.write('GET /v1/sessions/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n');
    let res = await c.response();
    assertShape(res.status, res.body, { status: 400, code: 'bad_url' }, 'raw bad URL');
    assert.match(res.headers['content-type'] ?? '', /^application\/json/);
    c.write(`GET /v1/sessions/${'b'.repeat(300)}/state HTTP/1.1\r\nHost: x\r\n\r\n`);
    res = await c.response();
    assertShape(res.status, res.body, { status: 414, code: 'uri_too_long' }, 'raw long parameter');
    c.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await c.response()).status, 200);
    c.destroy();
  });

  test('body errors: malformed JSON 400, body too large 413, unsupported media type 415', async () => {
    const post = (payload: string, type = 'application/json') => app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': type }, payload });
    assertInjected(await post('{"model": "x", "prompt": '), 400, 'invalid_json', 'malformed JSON');
    assertInjected(await post(JSON.stringify({ model: MODEL, prompt: 'x'.repeat(100 * 1024) })), 413, 'body_too_large', 'body over RMT_BODY_LIMIT');
    assertInjected(await post('<prompt>hello</prompt>', 'application/xml'), 415, 'unsupported_media_type', 'XML body');
    const xml = await app.inject({ method: 'POST', url: '/v1/sessions', headers: { 'content-type': 'application/xml' }, payload: '<model/>' });
    assertInjected(xml, 415, 'unsupported_media_type', 'XML body to /v1/sessions');
  });

  test('request headers over 16 kB: 431 in the OpenAI shape, not Node\'s bare answer', async () => {
    const c = await Raw.open(port);
    c.write(`GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ${'h'.repeat(20 * 1024)}\r\n\r\n`);
    const res = await c.response();
    assertShape(res.status, res.body, { status: 431, code: 'headers_too_large' }, 'oversized headers');
    assert.equal(res.headers.connection, 'close');
    await c.closedByServer();
  });

  test('bytes that are not HTTP: 400 bad_request in the OpenAI shape', async () => {
    const c = await Raw.open(port);
    c.write('HELLO THERE\r\n\r\n');
    const res = await c.response();
    assertShape(res.status, res.body, { status: 400, code: 'bad_request' }, 'garbage request line');
    await c.closedByServer();
  });

  test('a body that never completes (slowloris): 408 in the OpenAI shape, then the connection is closed', async () => {
    const res = await slowloris(port);
    assertShape(res.status, res.body, { status: 408, code: 'request_timeout' }, 'half a body');
  });

  test('headers that never complete: 408 as well', async () => {
    const c = await Raw.open(port);
    c.write('GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    const res = await c.response();
    assertShape(res.status, res.body, { status: 408, code: 'request_timeout' }, 'half the headers');
    await c.closedByServer();
  });

  test('an SSE completion stream read across the request timeout arrives whole', async () => {
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'The jury said', max_tokens: 64, temperature: 0, stream: true }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let text = dec.decode((await reader.read()).value, { stream: true });
    // The request timeout has certainly run out while this stream is open: another connection got its 408.
    assert.equal((await slowloris(port)).status, 408);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
    assert.equal(events.at(-1), '[DONE]');
    assert.ok(events.slice(0, -1).some((e) => JSON.parse(e).choices?.[0]?.finish_reason), 'a finish chunk before [DONE]');
  });

  test('a websocket stays open and answers past the request timeout', async () => {
    const { WebSocket } = createRequire(import.meta.url)('ws') as { WebSocket: new (url: string) => any };
    const s = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { model: MODEL } })).json() as { id: string };
    const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/sessions/${s.id}/stream`);
    const msgs: any[] = [];
    let wake = (): void => undefined;
    ws.on('message', (d: Buffer) => {
      msgs.push(JSON.parse(String(d)));
      wake();
    });
    let closed = false;
    ws.on('close', () => {
      closed = true;
      wake();
    });
    const next = async (type: string): Promise<any> => {
      for (;;) {
        const i = msgs.findIndex((m) => m.type === type);
        if (i >= 0) return msgs.splice(i, 1)[0];
        assert.ok(!closed, `socket closed before a ${type} message`);
        await new Promise<void>((r) => (wake = r));
      }
    };
    await next('hello');
    assert.equal((await slowloris(port)).status, 408, 'the request timeout ran out meanwhile');
    ws.send(JSON.stringify({ type: 'ping' }));
    await next('pong');
    const done = new Promise((r) => ws.once('close', r));
    ws.close();
    await done;
  });

  test('websocket endpoint: a plain GET and a refused handshake answer in the OpenAI shape', async () => {
    const s = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { model: MODEL } })).json() as { id: string };
    assertInjected(await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}/stream` }), 404, 'websocket_upgrade_required', 'GET without upgrade');
    const c = await Raw.open(port);
    c.write(`GET /v1/sessions/${s.id}/stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    const res = await c.response();
    assertShape(res.status, res.body, { status: 400, code: 'invalid_websocket_handshake' }, 'no Sec-WebSocket-Key');
    await c.closedByServer();
  });

  test('snapshot import: a counter past 2^50 (valid checksum) is refused with 422 invalid_snapshot naming it', async () => {
    const s = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { model: MODEL } })).json() as { id: string };
    const exported = await app.inject({ method: 'GET', url: `/v1/sessions/${s.id}/state` });
    assert.equal(exported.statusCode, 200, exported.body);
    const snap = decodeSnapshot(exported.rawPayload);
    const source = {
      model: snap.header.model, stateDtype: snap.header.dtype, stateShape: snap.header.shape, state: snap.state, tail: snap.tail,
      pendingText: snap.header.pending_text, tokensIngested: snap.header.tokens_ingested,
      segmentsCommitted: snap.header.segments_committed, tokensGenerated: snap.header.tokens_generated,
    };
    const put = (bytes: Buffer) => app.inject({ method: 'PUT', url: `/v1/sessions/${s.id}/state`, headers: { 'content-type': 'application/octet-stream' }, payload: bytes });
    for (const [field, key] of [['tokens_ingested', 'tokensIngested'], ['segments_committed', 'segmentsCommitted'], ['tokens_generated', 'tokensGenerated']] as const) {
      const e = assertInjected(await put(encodeSnapshot({ ...source, [key]: 2 ** 53 - 1 })), 422, 'invalid_snapshot', field);
      assert.match(e.message, new RegExp(field));
    }
    const ok = await put(encodeSnapshot({ ...source, tokensIngested: 1000 }));
    assert.equal(ok.statusCode, 200, ok.body);
    assert.equal(ok.json().tokens_ingested, 1000);
  });

  // Last: it closes the app.
  test('a request arriving while the server closes: 503 shutting_down in the OpenAI shape', async () => {
    const c = await Raw.open(port);
    const routed = new Promise((r) => app.server.once('request', r));
    // An unfinished request keeps the connection busy, so closing waits for it instead of dropping it.
    c.write('POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{');
    await routed;
    const closing = app.close();
    while (app.server.listening) await new Promise((r) => setImmediate(r));
    c.write('}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await c.response()).status, 201, 'the request under way when closing began completes');
    const res = await c.response();
    assertShape(res.status, res.body, { status: 503, code: 'shutting_down' }, 'a request after closing began');
    await c.closedByServer();
    await closing;
  });
});

/** A snapshot with a hand-written header (tail_tokens cannot be set through encodeSnapshot). */
function withHeader(header: object): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(12);
  SNAPSHOT_MAGIC.copy(prefix);
  prefix.writeUInt32LE(SNAPSHOT_VERSION, 4);
  prefix.writeUInt32LE(json.length, 8);
  const body = Buffer.concat([prefix, json, Buffer.alloc(4)]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

test('snapshot counters: at most MAX_SNAPSHOT_COUNTER, each field checked and named', () => {
  const header = { model: 'm', dtype: 'float32', shape: [1], tail_tokens: 0, tokens_ingested: MAX_SNAPSHOT_COUNTER, segments_committed: 0, tokens_generated: 0, pending_text: '' };
  assert.equal(decodeSnapshot(withHeader(header)).header.tokens_ingested, MAX_SNAPSHOT_COUNTER, 'the bound itself is accepted');
  for (const f of ['tail_tokens', 'tokens_ingested', 'segments_committed', 'tokens_generated']) {
    assert.throws(() => decodeSnapshot(withHeader({ ...header, [f]: MAX_SNAPSHOT_COUNTER + 1 })), (e: unknown) => e instanceof SnapshotError && e.code === 'invalid_snapshot' && e.message.includes(f), f);
  }
});
