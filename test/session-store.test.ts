// SessionStore against a real redis-server (test/support/redis-server.ts).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { redisKeys } from '../src/state/keys.ts';
import type { StateSpec } from '../src/state/session-codec.ts';
import { SessionError } from '../src/state/session-error.ts';
import { SessionStore, type CommitUpdate } from '../src/state/session-store.ts';
import { startRedis, type RedisServerHandle } from './support/redis-server.ts';
import { pollUntil } from './support/poll.ts';

const SPEC: StateSpec = { model: 'rmt-brown-small', shape: [16, 256], dtype: 'float32' };
const N = 16 * 256;

let server: RedisServerHandle;
let redis: Redis;
const extraClients: Redis[] = [];

before(async () => {
  server = await startRedis();
  redis = new Redis(server.url);
});

after(async () => {
  for (const c of extraClients) c.disconnect();
  redis?.disconnect();
  await server?.stop();
});

/** A store under a prefix no other test uses. */
function newStore(ttlSeconds = 60, client: Redis = redis): SessionStore {
  return new SessionStore(client, { prefix: `rmt-test-${randomBytes(6).toString('hex')}`, ttlSeconds });
}

function client(): Redis {
  const c = new Redis(server.url);
  extraClients.push(c);
  return c;
}

/** Random float32 bit patterns plus the awkward ones: ±0, subnormals, ±Inf, NaN payloads. */
function randomState(): Float32Array {
  const bits = new Uint32Array(N);
  const rnd = randomBytes(N * 4);
  for (let i = 0; i < N; i++) bits[i] = rnd.readUInt32LE(i * 4);
  const special = [0x80000000, 0x00000000, 0x00000001, 0x807fffff, 0x00400000, 0x7f800000, 0xff800000, 0x7fc00001, 0xffa5a5a5];
  special.forEach((b, i) => (bits[i] = b));
  return new Float32Array(bits.buffer);
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

function update(over: Partial<CommitUpdate> = {}): CommitUpdate {
  return {
    state: randomState(),
    tail: [1, 2, 3],
    pendingText: '',
    addTokensIngested: 128,
    addSegments: 1,
    addTokensGenerated: 0,
    curSeq: 1,
    curOffset: 128,
    ...over,
  };
}

async function rejectsWith(p: Promise<unknown>, code: SessionError['code'], message?: RegExp): Promise<SessionError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof SessionError, `expected SessionError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected SessionError(${code}), but it resolved`);
}

describe('startRedis', () => {
  test('kill() takes the server away at once; stop() afterwards still resolves', async () => {
    const srv = await startRedis();
    const c = new Redis(srv.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    await c.connect();
    assert.equal(await c.ping(), 'PONG');
    const closed = new Promise((resolve) => c.once('end', resolve));
    srv.kill();
    await closed;
    await assert.rejects(c.ping());
    await srv.stop();
    c.disconnect();
  });
});

describe('redisKeys', () => {
  test('builds every key under the prefix', () => {
    const k = redisKeys('rmt');
    assert.equal(k.session('abc_-1'), 'rmt:session:{abc_-1}');
    // One hash tag: on a Redis Cluster a session's keys share a slot, so one script can touch them all.
    assert.deepEqual(k.sessionKeys('abc'), { session: 'rmt:session:{abc}', log: 'rmt:log:{abc}', results: 'rmt:results:{abc}' });
    assert.equal(k.queuePrefix(), 'rmt:q');
    assert.equal(k.progressChannel('abc'), 'rmt:progress:abc');
    assert.equal(k.workers(), 'rmt:workers');
  });

  test('rejects bad prefixes and ids with clear errors', () => {
    assert.throws(() => redisKeys(''), /prefix must be a non-empty string/);
    assert.throws(() => redisKeys('a b'), /prefix must not contain whitespace/);
    assert.throws(() => redisKeys('a{b}'), /or braces/);
    const k = redisKeys('rmt');
    assert.throws(() => k.session(''), /invalid session id/);
    assert.throws(() => k.session('a:b'), /invalid session id "a:b"/);
    assert.throws(() => k.session('x'.repeat(65)), /1-64 characters/);
    assert.throws(() => k.progressChannel('a b'), /invalid session id/);
  });
});

describe('SessionStore', () => {
  test('create/get round-trips the state bits exactly and sets the defaults', async () => {
    const store = newStore();
    const init = randomState();
    const created = await store.create(SPEC, init, { owner: 'key-hash' });
    assert.match(created.id, /^[A-Za-z0-9_-]{22}$/);
    assert.ok(bitsEqual(created.state, init));
    assert.notEqual(created.state.buffer, init.buffer, 'the record must not alias the caller buffer');

    const got = await store.get(created.id);
    assert.ok(got);
    assert.ok(bitsEqual(got.state, init), 'state bits differ after the round trip');
    // its own buffer, exactly the state's size: safe to transfer to a worker thread
    assert.equal(got.state.byteOffset, 0);
    assert.equal(got.state.buffer.byteLength, N * 4);
    assert.equal(Object.is(got.state[0], -0), true);
    assert.equal(got.state[2], 1.401298464324817e-45); // smallest subnormal
    assert.deepEqual({ ...got, state: null, lastUsedAt: 0 }, { ...created, state: null, lastUsedAt: 0 });
    assert.equal(got.version, 0);
    assert.deepEqual(got.stateShape, [16, 256]);
    assert.equal(got.owner, 'key-hash');
    assert.deepEqual(got.tail, []);
    assert.ok(got.lastUsedAt >= created.lastUsedAt);

    assert.equal(await store.get('no-such-session'), null);
    const pttl = await redis.pttl(store.keys.session(created.id));
    assert.ok(pttl > 0 && pttl <= 60_000, `pttl ${pttl}`);
  });

  test('create with an explicit id refuses an existing one, and checks the init size', async () => {
    const store = newStore();
    const first = await store.create(SPEC, randomState(), { id: 'chosen-id' });
    assert.equal(first.id, 'chosen-id');
    await rejectsWith(store.create(SPEC, randomState(), { id: 'chosen-id' }), 'conflict', /already exists/);
    const still = await store.get('chosen-id');
    assert.ok(still && bitsEqual(still.state, first.state), 'a refused create must not touch the existing session');
    await rejectsWith(store.create(SPEC, new Float32Array(N - 1)), 'state_mismatch', /expected float32\[16,256\] \(16384 bytes\), got 4095/);
    await assert.rejects(store.create(SPEC, randomState(), { id: 'bad id' }), /invalid session id/);
  });

  test('commit increments the version and writes every field', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState());
    const u1 = update({ tail: [0, 7, 0xffffffff], pendingText: 'half a wörd 🙂', addTokensIngested: 131, addTokensGenerated: 2 });
    assert.equal(await store.commit(s.id, 0, u1), 1);
    let r = await store.get(s.id);
    assert.ok(r);
    assert.equal(r.version, 1);
    assert.ok(bitsEqual(r.state, u1.state));
    assert.deepEqual(r.tail, [0, 7, 0xffffffff]);
    assert.equal(r.pendingText, 'half a wörd 🙂');
    assert.equal(r.tokensIngested, 131);
    assert.equal(r.segmentsCommitted, 1);
    assert.equal(r.tokensGenerated, 2);
    assert.equal(r.curSeq, 1);
    assert.equal(r.curOffset, 128);
    assert.equal(r.appliedSeq, 0, 'appliedSeq only moves when given');

    const u2 = update({ tail: [], addTokensIngested: 10, addSegments: 0, curOffset: 138, appliedSeq: 1 });
    assert.equal(await store.commit(s.id, 1, u2), 2);
    r = await store.get(s.id);
    assert.ok(r);
    assert.equal(r.version, 2);
    assert.ok(bitsEqual(r.state, u2.state));
    assert.deepEqual(r.tail, []);
    assert.equal(r.pendingText, '');
    assert.equal(r.tokensIngested, 141);
    assert.equal(r.segmentsCommitted, 1);
    assert.equal(r.appliedSeq, 1);
    assert.equal(r.curOffset, 138);
  });

  test('a stale commit is rejected with conflict and leaves the stored state unchanged', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState());
    const winner = update();
    await store.commit(s.id, 0, winner);
    const err = await rejectsWith(store.commit(s.id, 0, update({ tail: [9] })), 'conflict');
    assert.match(err.message, /expected version 0, stored version is 1/);
    const r = await store.get(s.id);
    assert.ok(r);
    assert.equal(r.version, 1);
    assert.ok(bitsEqual(r.state, winner.state));
    assert.deepEqual(r.tail, [1, 2, 3]);
    assert.equal(r.tokensIngested, 128);
  });

  test('two concurrent commits with the same expectedVersion: exactly one wins', async () => {
    const a = newStore(60, client());
    const b = new SessionStore(client(), { prefix: a.keys.prefix, ttlSeconds: 60 });
    const s = await a.create(SPEC, randomState());
    for (let round = 0; round < 20; round++) {
      const ua = update({ tail: [1] });
      const ub = update({ tail: [2] });
      const results = await Promise.allSettled([a.commit(s.id, round, ua), b.commit(s.id, round, ub)]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.equal(won.length, 1, `round ${round}: ${won.length} winners`);
      assert.equal((won[0] as PromiseFulfilledResult<number>).value, round + 1);
      assert.ok(lost[0]!.reason instanceof SessionError && lost[0]!.reason.code === 'conflict');
      const r = await a.get(s.id);
      assert.ok(r);
      const winner = results[0]!.status === 'fulfilled' ? ua : ub;
      assert.ok(bitsEqual(r.state, winner.state), 'stored state is not the winner state');
      assert.deepEqual(r.tail, winner.tail);
      assert.equal(r.tokensIngested, 128 * (round + 1));
    }
  });

  test('idle TTL: get() refreshes it, and an idle session disappears', async () => {
    const store = newStore(1);
    const s = await store.create(SPEC, randomState());
    const key = store.keys.session(s.id);
    await pollUntil('PTTL to run below 600 ms', async () => (await redis.pttl(key)) < 600, 2000);
    const got = await store.get(s.id);
    assert.ok(got, 'session expired before get()');
    const pttl = await redis.pttl(key);
    assert.ok(pttl > 800, `get() did not refresh the TTL (pttl ${pttl})`);
    assert.ok(got.lastUsedAt > s.lastUsedAt, 'get() did not bump lastUsedAt');

    // commit refreshes it too
    await pollUntil('PTTL to run below 600 ms', async () => (await redis.pttl(key)) < 600, 2000);
    await store.commit(s.id, 0, update());
    assert.ok((await redis.pttl(key)) > 800, 'commit() did not refresh the TTL');

    await pollUntil('the idle session to expire', async () => (await redis.exists(key)) === 0, 5000);
    assert.equal(await store.get(s.id), null);
    await rejectsWith(store.commit(s.id, 1, update()), 'not_found');
  });

  test('load() refuses a wrong model, shape or dtype and corrupted bytes, naming expected vs found', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState());
    const ok = await store.load(s.id, SPEC);
    assert.ok(bitsEqual(ok.state, s.state));

    await rejectsWith(store.load('missing', SPEC), 'not_found', /missing/);
    await rejectsWith(store.load(s.id, { ...SPEC, model: 'rmt-brown-lm' }), 'model_mismatch', /rmt-brown-small.*rmt-brown-lm/);
    await rejectsWith(
      store.load(s.id, { ...SPEC, shape: [8, 256] }),
      'state_mismatch',
      /expected float32\[8,256\], found float32\[16,256\]/,
    );

    const key = store.keys.session(s.id);
    await redis.hset(key, 'stateDtype', 'float16');
    await rejectsWith(store.load(s.id, SPEC), 'state_mismatch', /unknown dtype "float16"/);
    await redis.hset(key, 'stateDtype', 'float32');

    await redis.hset(key, 'state', Buffer.alloc(1000));
    await rejectsWith(store.load(s.id, SPEC), 'state_mismatch', /expected float32\[16,256\] = 16384 bytes, found 1000 bytes/);
    // get() never hands out a state of the wrong size either
    await rejectsWith(store.get(s.id), 'state_mismatch', /found 1000 bytes/);

    await redis.hset(key, 'layout', '99');
    await rejectsWith(store.get(s.id), 'state_mismatch', /layout 99, this build reads layout 2/);
    await rejectsWith(store.commit(s.id, 0, update()), 'state_mismatch', /layout 99/);
  });

  test('commit refuses a state of the wrong size without writing anything', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState());
    await rejectsWith(store.commit(s.id, 0, update({ state: new Float32Array(N / 2) })), 'state_mismatch', /8192 bytes.*need 16384/);
    const r = await store.get(s.id);
    assert.equal(r?.version, 0);
    assert.ok(r && bitsEqual(r.state, s.state));
    await assert.rejects(store.commit(s.id, 0, update({ tail: [-1] })), /tail\[0\] = -1/);
  });

  test('stored bytes do not grow with the tokens ingested', async () => {
    const store = newStore();
    const segment = 128;
    // Feed `total` tokens one segment per commit, ending with the same tail length.
    async function feed(total: number): Promise<number> {
      const s = await store.create(SPEC, randomState());
      let version = 0;
      for (let done = 0; done < total; ) {
        const n = Math.min(segment, total - done);
        done += n;
        const tail = Array.from({ length: done % segment }, (_, i) => 1000 + i);
        version = await store.commit(s.id, version, update({ tail, addTokensIngested: n, addSegments: n === segment ? 1 : 0, curOffset: done }));
      }
      const r = await store.get(s.id);
      assert.equal(r?.tokensIngested, total);
      assert.ok(r && r.tail.length < segment);
      return store.storedBytes(s.id);
    }
    // ~1k and ~100k tokens, with the same final tail length (40) so only the counters differ.
    const small = await feed(8 * segment + 40);
    const large = await feed(781 * segment + 40);
    // 16 KiB of state lands in jemalloc's 20 KiB size class; the rest is a few hundred bytes of meta.
    assert.ok(small > N * 4 && small < N * 4 + 8192, `small session uses ${small} bytes`);
    assert.ok(Math.abs(large - small) <= 64, `1k tokens: ${small} bytes, 100k tokens: ${large} bytes`);
    assert.equal(await store.storedBytes('missing'), 0);
    if (process.env.RMT_TEST_VERBOSE) console.log(`storedBytes: ~1k tokens ${small}, ~100k tokens ${large}`);
  });

  test('fork copies state, tail, text and counters into an independent session', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState(), { owner: 'alice' });
    await redis.hset(store.keys.session(s.id), 'acceptedSeq', 1);
    const u = update({ tail: [5, 6], pendingText: 'par', appliedSeq: 1, addTokensGenerated: 3 });
    await store.commit(s.id, 0, u);

    const f = await store.fork(s.id, { id: 'the-fork' });
    assert.equal(f.id, 'the-fork');
    const got = await store.get('the-fork');
    assert.ok(got);
    assert.ok(bitsEqual(got.state, u.state));
    assert.deepEqual(got.tail, [5, 6]);
    assert.equal(got.pendingText, 'par');
    assert.equal(got.model, SPEC.model);
    assert.equal(got.owner, 'alice');
    assert.deepEqual(
      [got.version, got.tokensIngested, got.segmentsCommitted, got.tokensGenerated, got.acceptedSeq, got.appliedSeq, got.curSeq, got.curOffset],
      [0, 128, 1, 3, 0, 0, 0, 0],
    );
    assert.ok((await redis.pttl(store.keys.session('the-fork'))) > 0, 'the fork has no TTL');

    // independent: committing to either leaves the other alone
    const uf = update({ tail: [42] });
    await store.commit('the-fork', 0, uf);
    const src = await store.get(s.id);
    assert.ok(src && bitsEqual(src.state, u.state) && src.version === 1);
    assert.deepEqual(src.tail, [5, 6]);
    await store.commit(s.id, 1, update());
    const fork = await store.get('the-fork');
    assert.ok(fork && bitsEqual(fork.state, uf.state) && fork.version === 1);

    const other = await store.fork(s.id, { owner: 'bob' });
    assert.match(other.id, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(other.owner, 'bob');
    await rejectsWith(store.fork(s.id, { id: 'the-fork' }), 'conflict');
    await rejectsWith(store.fork('missing'), 'not_found');
  });

  test('delete removes the session, its log and its results; owner() reads nothing else', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState(), { owner: 'carol' });
    const k = store.keys.sessionKeys(s.id);
    await redis.hset(k.log, '1', '{}');
    await redis.hset(k.results, '1', '{}');
    // A session this build refuses to read still has an owner to check before deleting it.
    await redis.hset(k.session, 'state', Buffer.alloc(3));
    await rejectsWith(store.get(s.id), 'state_mismatch');
    assert.equal(await store.owner(s.id), 'carol');
    assert.equal(await store.delete(s.id), true);
    assert.equal(await redis.exists(k.session, k.log, k.results), 0);
    assert.equal(await store.owner(s.id), undefined);
    assert.equal(await store.get(s.id), null);
    assert.equal(await store.delete(s.id), false);
    await rejectsWith(store.commit(s.id, 0, update()), 'not_found');
    await rejectsWith(store.load(s.id, SPEC), 'not_found');
  });

  test('publishProgress publishes JSON on the session channel', async () => {
    const store = newStore();
    const sub = client();
    const channel = store.keys.progressChannel('sess-1');
    await sub.subscribe(channel);
    const received = new Promise<[string, string]>((resolve) => sub.once('message', (ch: string, msg: string) => resolve([ch, msg])));
    await store.publishProgress('sess-1', { seq: 3, offset: 256 });
    const [ch, msg] = await received;
    assert.equal(ch, channel);
    assert.deepEqual(JSON.parse(msg), { seq: 3, offset: 256 });
  });

  test('scripts are reloaded after the server script cache is flushed', async () => {
    const store = newStore();
    const s = await store.create(SPEC, randomState());
    await redis.script('FLUSH');
    assert.equal(await store.commit(s.id, 0, update()), 1);
    assert.ok(await store.get(s.id));
  });
});
