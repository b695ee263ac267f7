// The data plane end to end: real redis-server, real BullMQ, real onnxruntime on CPU, shipped models.
// Shutdown, the command line and worker processes: worker-processes.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config/config.ts';
import { DEFAULT_SAMPLING } from '../src/text/sampling.ts';
import type { ProgressEvent } from '../src/queue/request.ts';
import { redisKeys } from '../src/state/keys.ts';
import { SessionError } from '../src/state/session-error.ts';
import type { SessionRecord } from '../src/state/session-record.ts';
import { SessionStore, type CommitUpdate } from '../src/state/session-store.ts';
import { OrderError } from '../src/queue/session-log.ts';
import { WorkerMetrics } from '../src/telemetry/metrics.ts';
import { startClientRuntime, type ClientRuntime } from '../src/queue/client-runtime.ts';
import type { Submitted } from '../src/queue/request-queue.ts';
import { startWorkerRuntime, type WorkerRuntime } from '../src/worker/runtime.ts';
import { SessionWorker, type SessionWorkerOptions } from '../src/worker/session-worker.ts';
import { pollUntil } from './support/poll.ts';
import { histogram, sampleValue } from './support/prom-text.ts';
import { bytesOf, randomChunks } from './support/chunks.ts';
import { MODEL, noise, ingestAll, useWorkerRedis } from './support/worker-fixtures.ts';

const w = useWorkerRedis();
const { env, configFor, newPrefix, subscribe } = w;

describe('workers over Redis and BullMQ', () => {
  let prefix: string;
  let worker: WorkerRuntime;
  let client: ClientRuntime;
  const doc = noise(20 * 128 * 5); // ~5 chars per token: about 20 segments

  before(async () => {
    prefix = newPrefix();
    worker = await startWorkerRuntime(loadConfig({ ...env(prefix), RMT_WORKER_METRICS_PORT: '0' }));
    client = startClientRuntime(configFor(prefix));
  });
  after(async () => {
    await client.close();
    await worker.close(0);
  });

  async function newSession(model = MODEL) {
    const m = worker.engine.model(model);
    return client.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
  }

  test('a request that finds the log refilled after it ran dry starts from the session as stored: a promptless generate right after an append', async () => {
    const s = await newSession();
    const log = worker.worker.log;
    const read = log.read.bind(log);
    let gen: Promise<Submitted> | undefined;
    // The generate is logged at the moment the turn found no request after the append (it then releases,
    // sees 'more' and goes on): the window in which a websocket client's barrier generate can arrive.
    log.read = async (id, from, to) => {
      const batch = await read(id, from, to);
      if (id === s.id && from === 2 && batch.length === 0 && !gen) {
        gen = client.queue.submit(s.id, { kind: 'generate', maxTokens: 2, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [] });
        await gen;
      }
      return batch;
    };
    try {
      await ingestAll(client, s.id, [doc]);
      assert.ok(gen, 'the turn never found the log empty after the append');
      const r = await client.queue.result(await gen, 60_000);
      assert.equal(r.completion!.ids.length, 2);
      const after = (await client.store.get(s.id))!;
      assert.equal(after.appliedSeq, 2);
      assert.equal(after.tokensGenerated, 2);
    } finally {
      log.read = read;
    }
  });

  test('one piece, random chunks (applied in order) and one-token-at-a-time ids: bit-identical state', async () => {
    const whole = await newSession();
    await ingestAll(client, whole.id, [doc]);
    const chunked = await newSession();
    await ingestAll(client, chunked.id, randomChunks(doc, 11, 900));
    const a = (await client.store.get(whole.id))!;
    const b = (await client.store.get(chunked.id))!;
    assert.ok(a.segmentsCommitted >= 15, `only ${a.segmentsCommitted} segments`);
    assert.equal(b.tokensIngested, a.tokensIngested);
    assert.equal(b.segmentsCommitted, a.segmentsCommitted);
    assert.deepEqual(b.tail, a.tail);
    assert.ok(bytesOf(b.state).equals(bytesOf(a.state)), 'chunked state differs from one-piece state');
    assert.equal(a.appliedSeq, 1);
    assert.ok(b.appliedSeq > 10, `appliedSeq ${b.appliedSeq}`);
  });

  test('scoring returns per-segment perplexity of the ingested text, the partial last segment too', async () => {
    const s = await newSession('rmt-brown-small');
    const jobId = await client.queue.submit(s.id, { kind: 'ingest', text: noise(6000), flush: true, score: true });
    const r = await client.queue.result(jobId, 60_000);
    // Every committed segment, and the tail (scored, not committed): every token but the session's first.
    assert.ok(r.scores && r.scores.length === r.segmentsCommitted + 1 && r.scores.length >= 5, JSON.stringify(r.scores?.length));
    assert.equal(r.scores.reduce((n, sc) => n + sc.tokens, 0), r.tokensIngested - 1);
    assert.deepEqual(r.scores.map((sc) => sc.segment), r.scores.map((_, i) => i + 1));
    for (const sc of r.scores!) assert.ok(sc.perplexity > 1 && Number.isFinite(sc.perplexity) && Math.abs(Math.exp(sc.nll) - sc.perplexity) < 1e-6 * sc.perplexity, JSON.stringify(sc));
  });

  test('recall end to end: facts, 55 segments of held-out noise in random chunks, then the question', async () => {
    // The recall model was trained with the question opening a segment (models/rmt-brown-small card),
    // so the noise is cut to whole segments: token ids, fed in random chunk sizes.
    const m = worker.engine.model(MODEL);
    const tok = worker.tokenizers.get(MODEL)!;
    const S = m.segmentLength;
    const facts = [' Mary went to the kitchen.', ' Daniel journeyed to the garden.'];
    const body = noise(70 * 128 * 6, 200_000);
    // Facts early: the 50+ segments after them reach the question only through the memory.
    const text = body.slice(0, 900) + facts[0] + body.slice(900, 2000) + facts[1] + body.slice(2000);
    const ids = tok.encode(text).slice(0, 55 * S);
    assert.equal(ids.length, 55 * S);
    const s = await newSession();
    const jobs = [];
    let seed = 3;
    for (let i = 0; i < ids.length; ) {
      const n = 1 + ((seed = (seed * 1103515245 + 12345) >>> 0) % 700);
      jobs.push(await client.queue.submit(s.id, { kind: 'ingest', ids: ids.slice(i, i + n) }));
      i += n;
    }
    for (const j of jobs) assert.equal((await client.queue.result(j, 120_000)).error, undefined);
    const rec = (await client.store.get(s.id))!;
    assert.equal(rec.segmentsCommitted, 54); // the 55th waits in the tail until the next token arrives
    assert.equal(rec.tail.length, S);
    for (const [name, place] of [['Mary', 'kitchen'], ['Daniel', 'garden']] as const) {
      const fork = await client.store.fork(s.id);
      const jobId = await client.queue.submit(fork.id, {
        kind: 'generate', text: `\nQuestion: Where is ${name}?\nAnswer: ${name} is in the`, maxTokens: 2,
        sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [],
      });
      const r = await client.queue.result(jobId, 60_000);
      assert.equal(r.completion!.text, ` ${place}.`, `${name}: ${JSON.stringify(r.completion)}`);
      assert.equal(r.segmentsCommitted, 55);
    }
    // Ablation: with the memory reset at every segment, the question segment reads the initial memory.
    let wrong = 0;
    for (const [name, place] of [['Mary', 'kitchen'], ['Daniel', 'garden']] as const) {
      const q = tok.encode(`\nQuestion: Where is ${name}?\nAnswer: ${name} is in the`);
      const out = await worker.engine.segment(MODEL, q, m.initState);
      let best = 0;
      out.logits.forEach((v, i) => {
        if (v > out.logits[best]!) best = i;
      });
      if (tok.decode([best]) !== ` ${place}`) wrong++;
    }
    assert.equal(wrong, 2, 'with the memory reset every segment the facts should be unreachable');
  });

  test('generation crosses segment boundaries; same seed, same output; finish reasons', async () => {
    const mk = async () => {
      const s = await newSession('rmt-brown-small');
      return s.id;
    };
    const params = { ...DEFAULT_SAMPLING, temperature: 0.9, topP: 0.95, seed: 42 };
    const run = async (id: string, maxTokens: number, stop: string[] = []) => {
      const jobId = await client.queue.submit(id, { kind: 'generate', text: noise(700, 5000), maxTokens, sampling: params, stop });
      return client.queue.result(jobId, 60_000);
    };
    const a = await run(await mk(), 300);
    const b = await run(await mk(), 300);
    assert.equal(a.completion!.finishReason, 'length');
    assert.equal(a.completion!.ids.length, 300);
    assert.deepEqual(b.completion!.ids, a.completion!.ids);
    assert.ok(a.segmentsCommitted >= 3, `generation committed only ${a.segmentsCommitted} segments`);
    assert.equal(a.tokensGenerated, 300);
    // A stop sequence taken from the text generated above ends generation before it.
    const stop = a.completion!.text.slice(40, 46);
    const c = await run(await mk(), 300, [stop]);
    assert.equal(c.completion!.finishReason, 'stop');
    assert.ok(!c.completion!.text.includes(stop), 'stop text leaked');
    assert.ok(a.completion!.text.startsWith(c.completion!.text), 'stopped text is not a prefix');
  });

  test('a session\'s stored bytes do not grow with the tokens ingested (1k vs 100k)', async () => {
    const tok = worker.tokenizers.get(MODEL)!;
    const ids = tok.encode(noise(600_000, 0));
    // Same tail length (1000 % 128 == 99_944 % 128), so any difference would be growth.
    const small = await newSession();
    const big = await newSession();
    const a = await client.queue.submit(small.id, { kind: 'ingest', ids: ids.slice(0, 1000) });
    const chunks = [];
    for (let i = 0; i < 99_944; i += 20_000) chunks.push(await client.queue.submit(big.id, { kind: 'ingest', ids: ids.slice(i, Math.min(i + 20_000, 99_944)) }));
    await client.queue.result(a, 60_000);
    for (const c of chunks) await client.queue.result(c, 300_000);
    const bs = (await client.store.get(big.id))!;
    assert.equal(bs.tokensIngested, 99_944);
    const [sb, bb] = [await client.store.storedBytes(small.id), await client.store.storedBytes(big.id)];
    assert.ok(Math.abs(sb - bb) <= 16, `1k tokens: ${sb} bytes, 100k tokens: ${bb} bytes`);
  });

  test('batch sizes and counters are exported as Prometheus metrics', async () => {
    const scrape = async () => (await fetch(`http://127.0.0.1:${worker.metricsPort}/metrics`)).text();
    const model = MODEL;
    const ing = { model, kind: 'ingest' };
    const gen = { model, kind: 'generate' };
    const read = (body: string) => ({
      ingested: sampleValue(body, 'rmt_tokens_ingested_total', { model }),
      generated: sampleValue(body, 'rmt_tokens_generated_total', { model }),
      promptIng: histogram(body, 'rmt_request_prompt_tokens', ing),
      promptGen: histogram(body, 'rmt_request_prompt_tokens', gen),
      genTokens: histogram(body, 'rmt_request_generation_tokens', { model }),
      queueIng: histogram(body, 'rmt_request_queue_seconds', ing),
      e2eIng: histogram(body, 'rmt_request_e2e_seconds', ing),
      queueGen: histogram(body, 'rmt_request_queue_seconds', gen),
      e2eGen: histogram(body, 'rmt_request_e2e_seconds', gen),
      okIng: sampleValue(body, 'rmt_worker_requests_total', { ...ing, outcome: 'ok' }),
      secondsIng: histogram(body, 'rmt_worker_request_seconds', ing),
    });
    const before = read(await scrape());
    const s = await newSession();
    const t0 = Date.now();
    const appended = await client.queue.submit(s.id, { kind: 'ingest', text: noise(8000, 30_000), flush: true });
    const ingested = await client.queue.result(appended, 120_000);
    assert.equal(ingested.error, undefined);
    assert.ok(ingested.promptTokens > 1000);
    const asked = await client.queue.submit(s.id, { kind: 'generate', text: ' The', maxTokens: 8, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [] });
    const answered = await client.queue.result(asked, 60_000);
    const wall = (Date.now() - t0) / 1000;
    assert.equal(answered.completion?.ids.length, 8, JSON.stringify(answered.completion));

    let after = read(await scrape());
    await pollUntil('the worker to observe both requests', async () => {
      after = read(await scrape());
      return after.e2eIng.count > before.e2eIng.count && after.e2eGen.count > before.e2eGen.count;
    }, 5000);
    const body = await scrape();
    const count = Number(/rmt_engine_batch_rows_count\{graph="segment",model="rmt-brown-small"\} (\d+)/.exec(body)?.[1] ?? 0);
    assert.ok(count > 0, 'no segment batches recorded');
    assert.match(body, /rmt_engine_batch_rows_bucket\{le="8",graph="segment"/);
    assert.match(body, /rmt_segments_committed_total \d+/);
    // Each finished request: its tokens once in the counters, one observation in each histogram.
    assert.equal(after.ingested - before.ingested, ingested.promptTokens + answered.promptTokens);
    assert.equal(after.generated - before.generated, 8);
    assert.deepEqual([after.promptIng.count - before.promptIng.count, after.promptIng.sum - before.promptIng.sum], [1, ingested.promptTokens]);
    assert.deepEqual([after.promptGen.count - before.promptGen.count, after.promptGen.sum - before.promptGen.sum], [1, answered.promptTokens]);
    assert.deepEqual([after.genTokens.count - before.genTokens.count, after.genTokens.sum - before.genTokens.sum], [1, 8]);
    for (const k of ['queueIng', 'e2eIng', 'queueGen', 'e2eGen', 'secondsIng'] as const) assert.equal(after[k].count - before[k].count, 1, k);
    assert.equal(after.okIng - before.okIng, 1);
    // From acceptance: the end-to-end time holds the queue time and the time applying it, within the test's wall time.
    const e2e = after.e2eIng.sum - before.e2eIng.sum;
    const queued = after.queueIng.sum - before.queueIng.sum;
    const applying = after.secondsIng.sum - before.secondsIng.sum;
    assert.ok(e2e + 0.01 >= queued + applying * 0.99, `e2e ${e2e} < queue ${queued} + apply ${applying}`);
    assert.ok(e2e <= wall + 0.05, `e2e ${e2e} s longer than the test's ${wall} s`);
  });

  /**
   * A SessionWorker of its own (its own prefix and metrics) on the suite's engine; `store` (default: a
   * plain one) and the worker options given (e.g. commitEvery, turnDelayMs).
   */
  async function ownWorker(opts: { makeStore?: (p: string) => SessionStore; prefix?: string } & Partial<Pick<SessionWorkerOptions, 'commitEvery' | 'lockDurationMs' | 'stalledIntervalMs'>> = {}) {
    const { makeStore, prefix: given, ...options } = opts;
    const p = given ?? newPrefix();
    const metrics = new WorkerMetrics();
    const store = makeStore?.(p) ?? new SessionStore(worker.redis, { prefix: p, ttlSeconds: 3600 });
    const own = new SessionWorker({
      redis: worker.redis, store, engine: worker.engine, tokenizers: worker.tokenizers, metrics, prefix: p, ttlSeconds: 3600, concurrency: 64,
      lockDurationMs: 30_000, stalledIntervalMs: 30_000, maxAttempts: 5, maxPendingTextChars: 4096, ...options,
    });
    await own.start();
    const ownClient = startClientRuntime(configFor(p));
    const m = worker.engine.model(MODEL);
    return {
      store, client: ownClient,
      newSession: () => store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState),
      metrics: () => metrics.registry.metrics(),
      count: async (name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(await metrics.registry.metrics())?.[1] ?? NaN),
      close: async () => {
        await ownClient.close();
        await own.close(0);
      },
    };
  }

  test('a session\'s backlog is one job: all its queued requests apply in one turn, in order', async () => {
    const p = newPrefix();
    const c = startClientRuntime(configFor(p));
    const m = worker.engine.model(MODEL);
    const s = await c.store.create({ model: m.name, shape: m.stateShape, dtype: m.stateDtype }, m.initState);
    const chunks = randomChunks(noise(6000, 50_000), 6, 1500);
    const n = chunks.length;
    const submitted = [];
    for (let i = 0; i < n; i++) submitted.push(await c.queue.submit(s.id, { kind: 'ingest', text: chunks[i]!, flush: i === n - 1 }));
    // No worker yet: one job says the session has work, however many requests it queued.
    const counts = await c.queue.work.queue.getJobCounts('waiting', 'delayed', 'active');
    assert.deepEqual([counts.waiting, counts.delayed, counts.active], [1, 0, 0]);
    assert.equal(await c.queue.depth(), 1);
    const own = await ownWorker({ prefix: p });
    try {
      for (const j of submitted) assert.equal((await c.queue.result(j, 120_000)).error, undefined);
      assert.equal((await c.store.get(s.id))!.appliedSeq, n);
      assert.equal(await own.count('rmt_worker_turns_total{outcome="ok"}'), 1, 'the backlog took more than one turn');
    } finally {
      await own.close();
      await c.close();
    }
  });

  /** The same appends, each sent once the one before it is applied: nothing to continue from. */
  async function oneAtATime(c: ClientRuntime, sessionId: string, chunks: string[]): Promise<void> {
    for (let i = 0; i < chunks.length; i++) {
      const jobId = await c.queue.submit(sessionId, { kind: 'ingest', text: chunks[i]!, flush: i === chunks.length - 1 });
      assert.equal((await c.queue.result(jobId, 120_000)).error, undefined);
    }
  }

  function assertSameSession(a: SessionRecord, b: SessionRecord, what: string): void {
    assert.equal(a.tokensIngested, b.tokensIngested, `${what}: tokensIngested`);
    assert.equal(a.segmentsCommitted, b.segmentsCommitted, `${what}: segmentsCommitted`);
    assert.deepEqual(a.tail, b.tail, `${what}: tail`);
    assert.equal(a.pendingText, b.pendingText, `${what}: pendingText`);
    assert.equal(a.appliedSeq, b.appliedSeq, `${what}: appliedSeq`);
    assert.ok(bytesOf(a.state).equals(bytesOf(b.state)), `${what}: state differs`);
  }

  test('a queued append continues from the one before it before that one has landed: same session as one at a time', async () => {
    const own = await ownWorker({ commitEvery: { segments: 2, ms: 250 } });
    try {
      // Appends of several segments each, so each request chains and commits (every 2 segments).
      const chunks = randomChunks(noise(12 * 128 * 5, 90_000), 6, 3000);
      const n = chunks.length;
      const queued = await own.newSession();
      await ingestAll(own.client, queued.id, chunks);
      const handoffs = await own.count('rmt_worker_handoffs_total');
      const reference = await own.newSession();
      await oneAtATime(own.client, reference.id, chunks);
      assert.equal(await own.count('rmt_worker_handoffs_total'), handoffs, 'an append sent after the one before it was applied continued from it');
      assertSameSession((await own.store.get(queued.id))!, (await own.store.get(reference.id))!, 'queued vs one at a time');
      // The first has nothing before it; the second may have been fetched before the first offered.
      assert.ok(handoffs >= n - 2, `${handoffs} of ${n} requests continued from the one before`);
      // Tokenized while the one before chained its segments, most were sent before its last memory
      // existed: the engine thread started them from its chain.
      const inEngine = await own.count('rmt_worker_engine_continuations_total');
      assert.ok(inEngine >= 1 && inEngine <= handoffs, `${inEngine} of ${handoffs} continued inside the engine`);
    } finally {
      await own.close();
    }
  });

  test('a request whose final commit failed (and the one continuing from it) start again from Redis: nothing lost, nothing twice', async () => {
    let failed = 0;
    // The real store, with one fault: request 2's final commit fails once (as a lost Redis reply would).
    class FlakyStore extends SessionStore {
      override async commit(id: string, expectedVersion: number, u: CommitUpdate): Promise<number> {
        if (u.appliedSeq === 2 && failed++ === 0) throw new Error('injected: the final commit of request 2 failed');
        return super.commit(id, expectedVersion, u);
      }
    }
    const own = await ownWorker({ makeStore: (p) => new FlakyStore(worker.redis, { prefix: p, ttlSeconds: 3600 }), commitEvery: { segments: 2, ms: 250 } });
    try {
      const chunks = randomChunks(noise(12 * 128 * 5, 110_000), 5, 3000);
      const queued = await own.newSession();
      await ingestAll(own.client, queued.id, chunks);
      assert.equal(failed, 2, 'request 2 was not retried after its failed final commit');
      // The turn ended with the fault; the next one started again from Redis, at request 2's last commit.
      assert.ok(await own.count('rmt_worker_turns_total{outcome="ok"}') >= 2, 'no second turn');
      const reference = await own.newSession();
      await oneAtATime(own.client, reference.id, chunks);
      assertSameSession((await own.store.get(queued.id))!, (await own.store.get(reference.id))!, 'with the fault vs one at a time');
    } finally {
      await own.close();
    }
  });

  test('a session deleted during a long ingest: the request fails as not_found, and the engine drops the rest of its segments', async () => {
    const s = await newSession();
    const rows: number[] = [];
    let sub: Redis | undefined;
    const firstCommit = new Promise<void>((resolve) => {
      void subscribe(prefix, s.id, (ev) => {
        if (ev.type === 'segment') resolve();
      }).then((r) => (sub = r));
    });
    while (sub === undefined) await new Promise((resolve) => setImmediate(resolve));
    // About 60 segments, run as one chain in the engine; commits every 8 segments or 250 ms.
    const jobId = await client.queue.submit(s.id, { kind: 'ingest', text: noise(60 * 128 * 5, 70_000), flush: true });
    await firstCommit;
    const stop = worker.engine.onBatch((b) => rows.push(b.rows));
    assert.equal(await client.store.delete(s.id), true);
    await assert.rejects(client.queue.result(jobId, 120_000), (e: unknown) => e instanceof SessionError && e.code === 'not_found');
    await sub!.quit();
    // The worker stops at its next commit (the session is gone): wait for its turn to end.
    await pollUntil('the turn to end', async () => (await client.queue.work.queue.getActiveCount()) === 0);
    // The worker's engine is idle now: were the chain still running, these runs would carry its row.
    const m = worker.engine.model(MODEL);
    for (let k = 0; k < 3; k++) await worker.engine.advance(MODEL, [1, 2, 3], m.initState, 'marker');
    stop();
    assert.deepEqual(rows.slice(-3), [1, 1, 1], `rows per run: ${rows.join(' ')}`);
    assert.ok(rows.length - 3 < 50, `the chain ran ${rows.length - 3} more segments after the delete`);
  });

  test('a session deleted while its next append waits inside the engine: both fail as not_found, nothing is left running', async () => {
    const s = await newSession();
    const rows: number[] = [];
    // The real engine, watched: the second append is sent as a continuation of the first's chain.
    const engine = worker.engine;
    const advanceMany = engine.advanceMany;
    let sentAsContinuation!: () => void;
    const continued = new Promise<void>((resolve) => (sentAsContinuation = resolve));
    engine.advanceMany = (model, segments, state, opts) => {
      if (!(state instanceof Float32Array)) sentAsContinuation();
      return advanceMany(model, segments, state, opts);
    };
    try {
      // Two long appends queued together: the second is tokenized while the first chains its ~60 segments.
      const first = await client.queue.submit(s.id, { kind: 'ingest', text: noise(60 * 128 * 5, 71_000), flush: false });
      const second = await client.queue.submit(s.id, { kind: 'ingest', text: noise(60 * 128 * 5, 72_000), flush: true });
      await Promise.race([continued, new Promise((_, reject) => setTimeout(() => reject(new Error('the second append was never sent as a continuation')), 60_000).unref())]);
      const stop = engine.onBatch((b) => rows.push(b.rows));
      assert.equal(await client.store.delete(s.id), true);
      const gone = (e: unknown) => e instanceof SessionError && e.code === 'not_found';
      await Promise.all([assert.rejects(client.queue.result(first, 120_000), gone), assert.rejects(client.queue.result(second, 120_000), gone)]);
      await pollUntil('the turn to end', async () => (await client.queue.work.queue.getActiveCount()) === 0);
      // The engine is idle: were either chain still running, these runs would carry its row.
      const m = engine.model(MODEL);
      for (let k = 0; k < 3; k++) await engine.advance(MODEL, [1, 2, 3], m.initState, 'marker');
      stop();
      assert.deepEqual(rows.slice(-3), [1, 1, 1], `rows per run: ${rows.join(' ')}`);
    } finally {
      engine.advanceMany = advanceMany;
    }
  });

  test('a state of the wrong shape is refused, never used: the session fails visibly; retried once the state is good, it applies', async () => {
    const s = await newSession();
    const r = new Redis(w.url);
    const key = redisKeys(prefix).session(s.id);
    const good = await r.hgetBuffer(key, 'state');
    await r.hset(key, 'state', Buffer.alloc(100));
    const events: ProgressEvent[] = [];
    const sub = await subscribe(prefix, s.id, (ev) => events.push(ev));
    const jobId = await client.queue.submit(s.id, { kind: 'ingest', text: 'hello there', flush: true });
    await assert.rejects(client.queue.result(jobId, 30_000), (e: unknown) => e instanceof OrderError && e.code === 'session_failed' && e.at === 1);
    await pollUntil('the failed event', async () => events.some((e) => e.type === 'failed'));
    const failed = events.find((e) => e.type === 'failed');
    assert.deepEqual(failed?.type === 'failed' && [failed.failure.seq, failed.failure.code], [1, 'state_mismatch']);
    // Refused from now on, until the owner resets it.
    await assert.rejects(client.queue.submit(s.id, { kind: 'ingest', text: 'more', flush: true }), (e: unknown) => e instanceof OrderError && e.code === 'session_failed');
    await r.hset(key, 'state', good!);
    await client.queue.log.reset(s.id, 'retry');
    await client.queue.wake(s.id);
    await pollUntil('the retried request to apply', async () => (await client.store.get(s.id))!.appliedSeq === 1);
    assert.equal((await client.store.get(s.id))!.status, 'ok');
    await sub.quit();
    r.disconnect();
  });
});
