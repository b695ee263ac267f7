// The session log (the one owner of a session's order) against a real redis-server: accept, the
// client seq's compare-and-set, the lease and its fencing, the head request's attempts, the failed
// state and its reset, results kept with the final commit, cancellation.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { OrderError, SessionLog } from '../src/queue/session-log.ts';
import type { StateSpec } from '../src/state/session-codec.ts';
import { SessionError } from '../src/state/session-error.ts';
import { RESULTS_KEPT, SessionStore, type CommitUpdate } from '../src/state/session-store.ts';
import type { SessionRequest } from '../src/queue/request.ts';
import { startRedis, type RedisServerHandle } from './support/redis-server.ts';
import { pollUntil } from './support/poll.ts';

const SPEC: StateSpec = { model: 'rmt-brown-small', shape: [16, 256], dtype: 'float32' };
const N = 16 * 256;
const LEASE_MS = 60_000;

let server: RedisServerHandle;
let redis: Redis;

before(async () => {
  server = await startRedis();
  redis = new Redis(server.url);
});

after(async () => {
  redis?.disconnect();
  await server?.stop();
});

function fresh(ttlSeconds = 60): { store: SessionStore; log: SessionLog } {
  const prefix = `log-test-${randomBytes(6).toString('hex')}`;
  return { store: new SessionStore(redis, { prefix, ttlSeconds }), log: new SessionLog(redis, { prefix, ttlSeconds }) };
}

const ingest = (text: string): SessionRequest => ({ kind: 'ingest', text, flush: false });

/** Applies request `seq` as a worker would: a commit with appliedSeq under the lease. */
async function applyAs(store: SessionStore, id: string, owner: string, seq: number, over: Partial<CommitUpdate> = {}): Promise<void> {
  const r = (await store.get(id))!;
  await store.commit(id, r.version, {
    state: new Float32Array(N), tail: [], pendingText: '', addTokensIngested: 0, addSegments: 0, addTokensGenerated: 0,
    curSeq: seq, curOffset: 7, appliedSeq: seq, ...over,
  }, { owner, ms: LEASE_MS });
}

async function rejectsOrder(p: Promise<unknown>, code: OrderError['code']): Promise<OrderError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof OrderError, `expected OrderError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected OrderError(${code}), but it resolved`);
}

describe('SessionLog', () => {
  test('accept gives each request the next seq, atomically, and stores it; a missing session is not created', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    const conn = new Redis(server.url);
    const other = new SessionLog(conn, { prefix: log.keys.prefix, ttlSeconds: 60 });
    const t0 = Date.now();
    const seqs = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? log : other).accept(s.id, ingest(`t${i}`), { wantResult: i === 3 })));
    const t1 = Date.now();
    assert.deepEqual([...seqs].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
    const entries = await log.read(s.id, 1, 50);
    assert.equal(entries.length, 50);
    assert.deepEqual(entries.map((e) => e.seq), seqs.map((_, i) => i + 1));
    assert.equal(entries.filter((e) => e.wantResult).length, 1);
    // Each entry keeps when it was accepted (Redis's clock, here this host's): queue-time metrics start there.
    for (const e of entries) assert.ok(e.acceptedAt !== undefined && e.acceptedAt >= t0 - 5 && e.acceptedAt <= t1 + 5, `acceptedAt ${e.acceptedAt} not in [${t0}, ${t1}]`);
    assert.equal((await store.get(s.id))!.acceptedSeq, 50);
    await assert.rejects(log.accept('missing', ingest('x')), (e: unknown) => e instanceof SessionError && e.code === 'not_found');
    assert.equal(await redis.exists(log.keys.session('missing'), log.keys.sessionKeys('missing').log), 0);
    conn.disconnect();
  });

  test('a client seq is accepted only as the stored one + 1, in the same step as the request', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    assert.equal(await log.accept(s.id, ingest('a'), { clientSeq: 1 }), 1);
    assert.equal(await log.accept(s.id, ingest('b'), { clientSeq: 2 }), 2);
    const dup = await rejectsOrder(log.accept(s.id, ingest('b again'), { clientSeq: 2 }), 'client_seq');
    assert.equal(dup.at, 2);
    await rejectsOrder(log.accept(s.id, ingest('gap'), { clientSeq: 4 }), 'client_seq');
    const rec = (await store.get(s.id))!;
    assert.deepEqual([rec.acceptedSeq, rec.clientSeq], [2, 2], 'a refused append took a seq');
    assert.deepEqual((await log.read(s.id, 1, 2)).map((e) => e.clientSeq), [1, 2]);
  });

  test('the lease: one holder at a time, taken over once it lapses; only the holder commits', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    assert.deepEqual(await log.acquire(s.id, 'a', LEASE_MS, 5), { kind: 'idle' }, 'nothing to apply: no lease');
    await log.accept(s.id, ingest('one'));
    assert.deepEqual(await log.acquire(s.id, 'a', 300, 5), { kind: 'ok', attempts: 1 });
    const busy = await log.acquire(s.id, 'b', LEASE_MS, 5);
    assert.equal(busy.kind, 'busy');
    assert.equal(await log.renew(s.id, 'b', LEASE_MS), false);
    // A has not renewed: once its lease lapsed, B takes the session and A is fenced off.
    await pollUntil('A\'s lease to lapse', async () => (await log.acquire(s.id, 'b', LEASE_MS, 5)).kind === 'ok', 5000);
    await assert.rejects(applyAs(store, s.id, 'a', 1), (e: unknown) => e instanceof SessionError && e.code === 'lease_lost');
    assert.equal(await log.renew(s.id, 'a', LEASE_MS), false);
    assert.equal(await log.release(s.id, 'a'), 'lost');
    await applyAs(store, s.id, 'b', 1);
    assert.equal((await log.read(s.id, 1, 1)).length, 0, 'the applied request is still in the log');
    assert.equal(await redis.hexists(log.keys.sessionKeys(s.id).log, 'a1'), 0, 'the applied request\'s accept time is still in the log');
    // Accepted while B held the session: B keeps the lease and applies it.
    await log.accept(s.id, ingest('two'));
    assert.equal(await log.release(s.id, 'b'), 'more');
    await applyAs(store, s.id, 'b', 2);
    assert.equal(await log.release(s.id, 'b'), 'released');
    assert.deepEqual(await log.acquire(s.id, 'c', LEASE_MS, 5), { kind: 'idle' });
    assert.deepEqual(await log.acquire('missing', 'c', LEASE_MS, 5), { kind: 'gone' });
  });

  test('starts of the head request without progress are counted; progress resets the count; past the limit the session fails', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    await log.accept(s.id, ingest('one'), { clientSeq: 1 });
    await log.accept(s.id, ingest('two'), { clientSeq: 2 });
    await log.accept(s.id, ingest('three'), { clientSeq: 3 });
    // Each worker dies holding the session (its lease is released here as a crash would let it lapse).
    const start = async (owner: string) => {
      const got = await log.acquire(s.id, owner, LEASE_MS, 3);
      if (got.kind === 'ok') await log.release(s.id, owner, true);
      return got;
    };
    assert.deepEqual(await start('w1'), { kind: 'ok', attempts: 1 });
    assert.deepEqual(await start('w2'), { kind: 'ok', attempts: 2 });
    // w3 commits part of request 1 (progress) before it dies: the count starts again.
    assert.deepEqual(await log.acquire(s.id, 'w3', LEASE_MS, 3), { kind: 'ok', attempts: 3 });
    const r = (await store.get(s.id))!;
    await store.commit(s.id, r.version, {
      state: r.state, tail: [], pendingText: '', addTokensIngested: 0, addSegments: 0, addTokensGenerated: 0, curSeq: 1, curOffset: 50,
    }, { owner: 'w3', ms: LEASE_MS });
    await log.release(s.id, 'w3', true);
    assert.deepEqual(await start('w4'), { kind: 'ok', attempts: 1 });
    // Request 1 applied: request 2 is the head, and was never charged for request 1's crashes.
    await log.acquire(s.id, 'w5', LEASE_MS, 3);
    await applyAs(store, s.id, 'w5', 1);
    await log.release(s.id, 'w5', true);
    assert.deepEqual(await start('w6'), { kind: 'ok', attempts: 1 });
    assert.deepEqual(await start('w7'), { kind: 'ok', attempts: 2 });
    assert.deepEqual(await start('w8'), { kind: 'ok', attempts: 3 });
    // A poison pill: the fourth start without progress fails the session visibly at request 2.
    assert.deepEqual(await start('w9'), { kind: 'failed', seq: 2, now: true });
    const failed = (await store.get(s.id))!;
    assert.equal(failed.status, 'failed');
    assert.equal(failed.failure?.seq, 2);
    assert.equal(failed.failure?.code, 'attempts_exhausted');
    assert.match(failed.failure!.message, /request 2 was started 3 times without progress/);
    assert.equal(await log.clientSeqOf(s.id, 2), 2);
    await rejectsOrder(log.accept(s.id, ingest('four')), 'session_failed');
    assert.deepEqual(await log.acquire(s.id, 'w10', LEASE_MS, 3), { kind: 'failed', seq: 2 });
  });

  test('reset: retry applies the failed request again; drop discards it and every later one, and rewinds the client seq', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    for (let i = 1; i <= 4; i++) await log.accept(s.id, ingest(`r${i}`), { clientSeq: i });
    await rejectsOrder(log.reset(s.id, 'retry'), 'not_failed');
    await log.acquire(s.id, 'w', LEASE_MS, 3);
    await applyAs(store, s.id, 'w', 1);
    assert.equal(await log.fail(s.id, 'w', 2, 'state_mismatch', 'the state is of another shape'), true);
    assert.equal(await log.fail(s.id, 'w', 2, 'again', 'no'), false, 'a failed session failed twice');
    let rec = (await store.get(s.id))!;
    assert.deepEqual([rec.status, rec.failure?.seq, rec.failure?.code], ['failed', 2, 'state_mismatch']);

    assert.deepEqual(await log.reset(s.id, 'retry'), { from: 1, to: 0 });
    rec = (await store.get(s.id))!;
    assert.equal(rec.status, 'ok');
    assert.deepEqual(await log.acquire(s.id, 'w2', LEASE_MS, 3), { kind: 'ok', attempts: 1 }, 'a retried request starts its attempts again');

    await log.fail(s.id, 'w2', 2, 'attempts_exhausted', 'crashed');
    assert.deepEqual(await log.reset(s.id, 'drop'), { from: 2, to: 4 });
    rec = (await store.get(s.id))!;
    assert.deepEqual([rec.status, rec.acceptedSeq, rec.appliedSeq, rec.clientSeq], ['ok', 4, 4, 1]);
    assert.deepEqual(rec.dropped, { from: 2, to: 4 });
    assert.equal((await log.read(s.id, 2, 4)).length, 0);
    assert.deepEqual(await redis.hkeys(log.keys.sessionKeys(s.id).log), [], 'dropped requests left fields in the log');
    // The client resends from last_seq + 1 = 2.
    assert.equal(await log.accept(s.id, ingest('r2 again'), { clientSeq: 2 }), 5);
  });

  test('the final commit keeps the request\'s result; results beyond the last RESULTS_KEPT are dropped', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    const results = log.keys.sessionKeys(s.id).results;
    await log.accept(s.id, ingest('one'), { wantResult: true });
    await log.acquire(s.id, 'w', LEASE_MS, 3);
    await applyAs(store, s.id, 'w', 1, { result: JSON.stringify({ seq: 1, ok: true }) });
    assert.deepEqual(JSON.parse((await redis.hget(results, '1'))!), { seq: 1, ok: true });
    await redis.hset(log.keys.session(s.id), 'acceptedSeq', RESULTS_KEPT + 1);
    await applyAs(store, s.id, 'w', RESULTS_KEPT + 1, { result: '{}' });
    assert.equal(await redis.hexists(results, '1'), 0, 'the oldest result was kept');
    assert.equal(await redis.hexists(results, String(RESULTS_KEPT + 1)), 1);
  });

  test('cancel marks a request in the log; an applied one cannot be cancelled', async () => {
    const { store, log } = fresh();
    const s = await store.create(SPEC, new Float32Array(N));
    await log.accept(s.id, ingest('one'));
    await log.accept(s.id, { kind: 'generate', text: 'x', maxTokens: 5, sampling: { temperature: 0, topK: 0, topP: 1, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, seed: 0 }, stop: [] });
    assert.equal(await log.cancel(s.id, 2), true);
    const [one, two] = await log.read(s.id, 1, 2);
    assert.deepEqual([one!.cancelled, two!.cancelled], [undefined, true]);
    await log.acquire(s.id, 'w', LEASE_MS, 3);
    await applyAs(store, s.id, 'w', 1);
    assert.equal(await log.cancel(s.id, 1), false);
  });
});
