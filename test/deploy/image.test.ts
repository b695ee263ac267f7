// The CPU image, built and run for real (podman): an api and a worker container, as a Kubernetes
// deployment runs them (read-only root filesystem, /tmp a tmpfs, the image's non-root user), on a
// private redis-server. A completion and a websocket append go through them; SIGTERM stops each with
// exit 0, and a worker stopped mid-ingest leaves its work to the next one (the session is in Redis).
//
//   npm run test:image       (RMT_TEST_IMAGE=<tag> to test an image built already)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, podman, podmanMissing, testImage } from '../support/podman.ts';
import { freePort, startRedis, type RedisServerHandle } from '../support/redis-server.ts';
import { pollUntil } from '../support/poll.ts';
import { connectStream } from '../support/ws-client.ts';
import { heldOutText } from '../support/brown.ts';
import { SHIPPED_PACKAGES } from '../helpers.ts';

const missing = podmanMissing();
const KEY = 'ci-key';
const auth = { authorization: `Bearer ${KEY}` };

describe('container image', { skip: missing ? `skipped: ${missing}` : false }, () => {
  let image: string;
  let redis: RedisServerHandle;
  let apiPort: number;
  let base: string;
  const containers: Container[] = [];
  const prefix = `img${process.pid}`;

  // Host networking: the containers reach the test's redis-server on 127.0.0.1, and we reach them.
  async function start(role: 'api' | 'worker', env: Record<string, string> = {}): Promise<Container> {
    const c = await Container.run(`rmt-test-${role}-${process.pid}-${containers.length}`, image, [role], {
      podmanArgs: ['--network', 'host', '--read-only', '--tmpfs', '/tmp:rw,size=64m'],
      env: { REDIS_URL: redis.url, RMT_PREFIX: prefix, RMT_INTRA_OP_THREADS: '1', RMT_API_KEYS: KEY, ...env },
    });
    containers.push(c);
    return c;
  }

  async function call(method: string, url: string, body?: unknown): Promise<{ status: number; json: any }> {
    const r = await fetch(`${base}${url}`, {
      method, headers: { ...auth, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return { status: r.status, json: await r.json() };
  }

  before(async () => {
    image = await testImage();
    redis = await startRedis();
    apiPort = await freePort();
    base = `http://127.0.0.1:${apiPort}`;
  });
  after(async () => {
    for (const c of containers) await c.remove();
    await redis?.stop();
  });

  test('the image runs as a non-root user, carries onnxruntime for this platform only and every shipped package', async () => {
    assert.equal(await podman(['image', 'inspect', image, '--format', '{{.Config.User}}']), '10001:10001');
    const out = await podman(['run', '--rm', '--read-only', '--entrypoint', 'sh', image, '-c',
      'id -u; ls node_modules/onnxruntime-node/bin/napi-v6; ls node_modules/onnxruntime-node/bin/napi-v6/linux; ls models']);
    // every package in models/ (ls sorts as SHIPPED_PACKAGES does: names of lowercase letters, digits, '-')
    assert.deepEqual(out.split('\n'), ['10001', 'linux', 'x64', ...SHIPPED_PACKAGES.map((p) => p.name)]);
  });

  test('api + worker containers: ready, a completion and a websocket append; SIGTERM exits 0', async () => {
    const metricsPort = await freePort();
    const worker = await start('worker', { RMT_WORKER_METRICS_PORT: String(metricsPort) });
    const api = await start('api', { PORT: String(apiPort) });
    const ready = async (url: string) => (await fetch(url).catch(() => undefined))?.status === 200;
    await pollUntil('worker /readyz', () => ready(`http://127.0.0.1:${metricsPort}/readyz`), 120_000).catch(async (err) => {
      throw new Error(`${(err as Error).message}\n${await worker.logs()}`);
    });
    await pollUntil('api /readyz', () => ready(`${base}/readyz`), 120_000).catch(async (err) => {
      throw new Error(`${(err as Error).message}\n${await api.logs()}`);
    });
    assert.equal((await fetch(`${base}/v1/models`)).status, 401, 'API keys are enforced');

    const done = await call('POST', '/v1/completions', { model: 'rmt-brown-lm', prompt: 'The jury said that', max_tokens: 8, temperature: 0 });
    assert.equal(done.status, 200, JSON.stringify(done.json));
    assert.equal(done.json.usage.completion_tokens, 8);
    assert.ok(done.json.choices[0].text.length > 0);

    const s = await call('POST', '/v1/sessions', { model: 'rmt-brown-lm' });
    assert.equal(s.status, 201, JSON.stringify(s.json));
    const { c } = await connectStream(base.replace('http', 'ws'), s.json.id, auth);
    c.send({ type: 'append', seq: 1, text: heldOutText().slice(0, 4000), flush: true });
    const ack = await c.next((m) => m.type === 'ack' || m.type === 'error');
    assert.equal(ack.type, 'ack', JSON.stringify(ack));
    await pollUntil('append applied', async () => (await call('GET', `/v1/sessions/${s.json.id}`)).json.pending_requests === 0);
    const got = (await call('GET', `/v1/sessions/${s.json.id}`)).json;
    assert.ok(got.tokens_ingested > 500, JSON.stringify(got));
    assert.equal(got.last_seq, 1);
    await c.close();

    assert.equal(await api.stop('TERM'), 0, await api.logs());
    assert.equal(await worker.stop('TERM'), 0, await worker.logs());
    assert.match(await worker.logs(), /worker stopped/);
  });

  test('a worker stopped mid-ingest hands the session to the next worker: nothing lost', async () => {
    // A short grace, so the stop hands the rest of the ingest back rather than finishing it.
    const first = await start('worker', { RMT_SHUTDOWN_GRACE_MS: '200', RMT_COMMIT_SEGMENTS: '1' });
    const api = await start('api', { PORT: String(apiPort) });
    await pollUntil('api /readyz', async () => (await fetch(`${base}/readyz`).catch(() => undefined))?.status === 200, 120_000);
    const s = await call('POST', '/v1/sessions', { model: 'rmt-brown-lm' });
    const { c } = await connectStream(base.replace('http', 'ws'), s.json.id, auth);
    const text = heldOutText().slice(0, 40_000);
    c.send({ type: 'append', seq: 1, text, flush: true });
    assert.equal((await c.next((m) => m.type === 'ack' || m.type === 'error')).type, 'ack');
    await c.next((m) => m.type === 'progress', 120_000); // the first worker has started on it
    assert.equal(await first.stop('TERM'), 0, await first.logs());
    const mid = (await call('GET', `/v1/sessions/${s.json.id}`)).json;
    assert.equal(mid.pending_requests, 1, `the stop handed the append back unfinished: ${JSON.stringify(mid)}`);

    await start('worker');
    await pollUntil('append applied by the second worker', async () => (await call('GET', `/v1/sessions/${s.json.id}`)).json.pending_requests === 0, 300_000);
    const end = (await call('GET', `/v1/sessions/${s.json.id}`)).json;
    assert.equal(end.status, 'ok', JSON.stringify(end));
    assert.ok(end.tokens_ingested > mid.tokens_ingested, JSON.stringify({ mid, end }));
    await c.close();
    assert.equal(await api.stop('TERM'), 0, await api.logs());
  });
});
