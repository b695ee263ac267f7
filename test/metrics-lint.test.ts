// Both /metrics expositions pass `promtool check metrics` (the Prometheus project's linter: naming,
// units, `_total` only on counters, help text) once every kind of sample is in them: the API's (with
// the in-process worker sharing its registry, as `serve` runs) and a separate worker's, each after a
// completion (plain and streamed), an append and a failed request. promtool ships in Debian's
// `prometheus` package; without it this test fails and says so.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../src/config/config.ts';
import { DEFAULT_SAMPLING } from '../src/text/sampling.ts';
import { startClientRuntime, type ClientRuntime } from '../src/queue/client-runtime.ts';
import { startWorkerRuntime, type WorkerRuntime } from '../src/worker/runtime.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { pollUntil } from './support/poll.ts';
import { familyNames, histogram, promtoolCheck } from './support/prom-text.ts';

const TEXT = 'The Fulton County Grand Jury said Friday an investigation of recent primary election produced no evidence that any irregularities took place. ';
const MODEL = 'rmt-brown-small';

async function assertLintClean(what: string, body: string): Promise<void> {
  const { code, problems } = await promtoolCheck(body);
  assert.equal(problems, '', `promtool check metrics on ${what}:\n${problems}`);
  assert.equal(code, 0, `promtool check metrics on ${what} exited ${code}`);
}

describe('promtool check metrics', () => {
  let h: ApiHarness;
  let worker: WorkerRuntime;
  let client: ClientRuntime;

  before(async () => {
    h = await startApiHarness();
    // A separate worker (its own registry and port, as `rmt-serve worker` runs) on the same Redis.
    const config = loadConfig({
      REDIS_URL: h.redis.url, RMT_PREFIX: `lint${process.pid}`, RMT_MODELS: MODEL, RMT_INTRA_OP_THREADS: '1', RMT_WORKER_METRICS_PORT: '0',
    });
    worker = await startWorkerRuntime(config);
    client = startClientRuntime(config);
  });
  after(async () => {
    await client?.close();
    await worker?.close(0);
    await h?.close();
  });

  test('promtool is installed (Debian package: prometheus)', async () => {
    const { code, problems } = await promtoolCheck('# HELP up ok\n# TYPE up gauge\nup 1\n');
    assert.equal(code, 0, problems);
  });

  test('the API\'s /metrics (with the in-process worker\'s) after some requests', async () => {
    const { app } = h;
    const c = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'rmt-brown-lm', prompt: TEXT, max_tokens: 4 } });
    assert.equal(c.statusCode, 200, c.body);
    const base = await h.listen();
    const streamed = await fetch(`${base}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'rmt-brown-lm', prompt: TEXT, max_tokens: 4, stream: true }),
    });
    assert.equal(streamed.status, 200);
    assert.match(await streamed.text(), /\[DONE\]/);
    const s = await app.inject({ method: 'POST', url: '/v1/sessions', payload: {} });
    assert.equal(s.statusCode, 201, s.body);
    const a = await app.inject({ method: 'POST', url: `/v1/sessions/${s.json().id}/append`, payload: { text: TEXT } });
    assert.equal(a.statusCode, 200, a.body);
    assert.equal((await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'nope', prompt: 'x' } })).statusCode, 404);
    assert.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);

    const scrape = async () => (await app.inject({ method: 'GET', url: '/metrics' })).body;
    await pollUntil('the worker to observe the requests', async () =>
      histogram(await scrape(), 'rmt_request_e2e_seconds', { model: 'rmt-brown-lm', kind: 'generate' }).count >= 2, 5000);
    const body = await scrape();
    // Samples of every kind are present: the API's, the worker's, the new histograms.
    for (const name of [
      'rmt_api_requests_total', 'rmt_api_model_requests_total', 'rmt_api_model_request_seconds', 'rmt_api_time_to_first_token_seconds',
      'rmt_engine_batch_rows', 'rmt_worker_requests_total', 'rmt_tokens_generated_total', 'rmt_request_queue_seconds',
      'rmt_request_e2e_seconds', 'rmt_request_prompt_tokens', 'rmt_request_generation_tokens', 'process_cpu_seconds_total',
    ]) assert.ok(familyNames(body).includes(name), `${name} missing`);
    assert.match(body, /^rmt_request_generation_tokens_count\{/m);
    await assertLintClean('the API\'s /metrics', body);
  });

  test('a separate worker\'s /metrics after some requests', async () => {
    const m = worker.engine.model(MODEL);
    const s = await client.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
    const appended = await client.queue.submit(s.id, { kind: 'ingest', text: TEXT.repeat(20), flush: true });
    assert.equal((await client.queue.result(appended, 60_000)).error, undefined);
    const asked = await client.queue.submit(s.id, { kind: 'generate', text: ' The', maxTokens: 4, sampling: DEFAULT_SAMPLING, stop: [] });
    assert.equal((await client.queue.result(asked, 60_000)).error, undefined);
    const scrape = async () => (await fetch(`http://127.0.0.1:${worker.metricsPort}/metrics`)).text();
    await pollUntil('the worker to observe the requests', async () =>
      histogram(await scrape(), 'rmt_request_e2e_seconds', { model: MODEL, kind: 'generate' }).count >= 1, 5000);
    const body = await scrape();
    for (const name of ['rmt_engine_step_seconds', 'rmt_worker_turns_total', 'rmt_request_queue_seconds', 'rmt_request_generation_tokens', 'nodejs_heap_size_used_bytes']) {
      assert.ok(familyNames(body).includes(name), `${name} missing`);
    }
    await assertLintClean('a worker\'s /metrics', body);
  });
});
