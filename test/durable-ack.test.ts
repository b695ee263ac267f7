// Acknowledged means durable on one Redis with a replica (src/state/durable-ack.ts): an accept or a
// created session is acknowledged only once WAIT confirms it on RMT_REDIS_WAIT_REPLICAS replicas;
// without a replica it fails with NotDurableError (503 not_durable) instead.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Redis } from 'ioredis';
import { NotDurableError } from '../src/state/durable-ack.ts';
import { SessionStore } from '../src/state/session-store.ts';
import { SessionLog } from '../src/queue/session-log.ts';
import { pollUntil } from './support/poll.ts';
import { startRedis, type RedisServerHandle } from './support/redis-server.ts';

let master: RedisServerHandle;
let replica: RedisServerHandle;
let redis: Redis;
const spec = { model: 'm', shape: [4], dtype: 'float32' as const };
const durability = { replicas: 1, timeoutMs: 200 };

before(async () => {
  [master, replica] = await Promise.all([startRedis(), startRedis()]);
  redis = new Redis(master.url, { maxRetriesPerRequest: null });
});

after(async () => {
  redis?.disconnect();
  await Promise.all([master?.stop(), replica?.stop()]);
});

test('no replica: the write is refused as not durable; with one attached: acknowledged', async () => {
  const store = new SessionStore(redis, { prefix: 'dur', ttlSeconds: 60, durability });
  const log = new SessionLog(redis, { prefix: 'dur', ttlSeconds: 60, durability });
  const plain = new SessionStore(redis, { prefix: 'dur', ttlSeconds: 60 });
  await assert.rejects(store.create(spec, new Float32Array(4)), NotDurableError);
  const s = await plain.create(spec, new Float32Array(4));
  await assert.rejects(log.accept(s.id, { kind: 'ingest', text: 'a', flush: false }), (err: unknown) => err instanceof NotDurableError && err.confirmed === 0);
  // A script's own error is the caller's answer, not a durability failure.
  await assert.rejects(log.accept('nope', { kind: 'ingest', text: 'a', flush: false }), (err: unknown) => !(err instanceof NotDurableError));

  const r = new Redis(replica.url);
  await r.replicaof('127.0.0.1', master.port);
  await pollUntil('the replica to sync', async () => /master_link_status:up/.test(await r.info('replication')));
  r.disconnect();
  const t = await store.create(spec, new Float32Array(4));
  assert.equal(await log.accept(t.id, { kind: 'ingest', text: 'a', flush: false }), 1);
  await pollUntil('the write on the replica', async () => {
    const rr = new Redis(replica.url);
    try {
      return (await rr.hget(store.keys.session(t.id), 'acceptedSeq')) === '1';
    } finally {
      rr.disconnect();
    }
  });
});
