// The data plane on a real local Redis Cluster (test/support/redis-cluster.ts: 3 masters, 3
// replicas): sessions spread over every master, queue shards on distinct masters, and appends,
// completions, fork, snapshots and websocket streaming giving the same bits as one ingest.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { keySlot } from '../src/state/key-slot.ts';
import type { SessionRecord } from '../src/state/session-record.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { bytesOf, randomChunks } from './support/chunks.ts';
import { pollUntil } from './support/poll.ts';
import { clusterUnavailable, startRedisCluster, type RedisClusterHandle } from './support/redis-cluster.ts';
import { connectStream } from './support/ws-client.ts';

const MODEL = 'rmt-brown-small';
const DOC = heldOutText().slice(0, 6000);
const skip = clusterUnavailable() ?? false;

let cluster: RedisClusterHandle;
let h: ApiHarness;
let base = '';
let reference: SessionRecord;

/** The master port serving `slot`, from the cluster's own view. */
async function masterOf(slot: number): Promise<number> {
  for (const n of await cluster.topology()) {
    if (n.role !== 'master') continue;
    for (const range of n.slots) {
      const [lo, hi = lo] = range.split('-').map(Number);
      if (slot >= lo! && slot <= hi!) return n.port;
    }
  }
  throw new Error(`no master serves slot ${slot}`);
}

async function createSession(): Promise<string> {
  const r = await h.app.inject({ method: 'POST', url: '/v1/sessions', payload: { model: MODEL } });
  assert.equal(r.statusCode, 201, r.body);
  return r.json().id as string;
}

async function settled(id: string): Promise<SessionRecord> {
  let rec: SessionRecord | null = null;
  await pollUntil(`session ${id} to apply every accepted request`, async () => {
    rec = await h.deps.store.get(id);
    return !!rec && rec.appliedSeq === rec.acceptedSeq;
  });
  return rec!;
}

function assertSameState(rec: SessionRecord, ref: SessionRecord, what: string): void {
  assert.equal(rec.tokensIngested, ref.tokensIngested, `${what}: tokens`);
  assert.deepEqual(rec.tail, ref.tail, `${what}: tail`);
  assert.ok(bytesOf(rec.state).equals(bytesOf(ref.state)), `${what}: state bytes`);
}

describe('on a Redis Cluster (3 masters, 3 replicas)', { skip, timeout: 240_000 }, () => {
  before(async () => {
    cluster = await startRedisCluster();
    h = await startApiHarness({}, { REDIS_CLUSTER_NODES: cluster.nodes.join(','), RMT_MODELS: MODEL });
    base = await h.listen();
    const id = await createSession();
    await h.deps.queue.submit(id, { kind: 'ingest', text: DOC, flush: false });
    reference = await settled(id);
    assert.ok(reference.segmentsCommitted >= 2, 'the document spans several segments');
  });

  after(async () => {
    await h?.close();
    await cluster?.stop();
  });

  test('our key slots are the cluster\'s; queue shards sit on three different masters', async () => {
    const keys = h.deps.store.keys;
    for (const key of [keys.session('abc'), keys.queuePrefix(1), 'plain-key']) {
      const theirs = Number(execFileSync('redis-cli', ['-p', String(cluster.ports[0]), 'CLUSTER', 'KEYSLOT', key]).toString());
      assert.equal(keySlot(key), theirs, key);
    }
    assert.equal(keys.layout.queueShards, 3);
    const shardMasters = await Promise.all([0, 1, 2].map((i) => masterOf(keySlot(keys.queuePrefix(i)))));
    assert.equal(new Set(shardMasters).size, 3, 'one queue shard per master');
    assert.equal(keySlot(keys.active(1)), keySlot(keys.queuePrefix(1)), 'a shard\'s sweeper index is in its queue\'s slot');
  });

  test('sessions spread over every master; a session\'s keys share one slot', async () => {
    const ids = await Promise.all(Array.from({ length: 24 }, () => createSession()));
    const owners = new Set<number>();
    for (const id of ids) {
      const k = h.deps.store.keys.sessionKeys(id);
      assert.equal(keySlot(k.log), keySlot(k.session));
      assert.equal(keySlot(k.results), keySlot(k.session));
      assert.equal(keySlot(h.deps.store.keys.progressChannel(id)), keySlot(k.session), 'progress channel in the session\'s slot');
      owners.add(await masterOf(keySlot(k.session)));
    }
    assert.equal(owners.size, 3, 'sessions on all three masters');
    assert.equal(await h.deps.store.count() >= ids.length, true, 'count() scans every master');
  });

  test('REST appends in chunks equal one ingest; fork and snapshot round trips', async () => {
    const id = await createSession();
    for (const text of randomChunks(DOC, 3, 1500)) {
      const r = await h.app.inject({ method: 'POST', url: `/v1/sessions/${id}/append`, payload: { text, flush: false } });
      assert.equal(r.statusCode, 200, r.body);
    }
    const rec = await settled(id);
    assertSameState(rec, reference, 'chunked appends');
    const f = await h.app.inject({ method: 'POST', url: `/v1/sessions/${id}/fork` });
    assert.equal(f.statusCode, 201, f.body);
    assertSameState((await h.deps.store.get(f.json().id))!, reference, 'fork');
    const snap = await h.app.inject({ method: 'GET', url: `/v1/sessions/${id}/state` });
    assert.equal(snap.statusCode, 200);
    const target = await createSession();
    const put = await h.app.inject({ method: 'PUT', url: `/v1/sessions/${target}/state`, headers: { 'content-type': 'application/octet-stream' }, payload: snap.rawPayload });
    assert.ok(put.statusCode < 300, put.body);
    assertSameState((await h.deps.store.get(target))!, reference, 'snapshot import');
  });

  test('completions: stateless, and on a session (greedy: the same text twice from forks)', async () => {
    const plain = await h.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'The jury said', max_tokens: 5, temperature: 0 } });
    assert.equal(plain.statusCode, 200, plain.body);
    assert.equal(plain.json().usage.completion_tokens, 5);
    const id = await createSession();
    await h.app.inject({ method: 'POST', url: `/v1/sessions/${id}/append`, payload: { text: DOC.slice(0, 1500) } });
    const fork = (await h.app.inject({ method: 'POST', url: `/v1/sessions/${id}/fork` })).json().id as string;
    const texts: string[] = [];
    for (const sid of [id, fork]) {
      const r = await h.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, session_id: sid, prompt: ' The', max_tokens: 6, temperature: 0 } });
      assert.equal(r.statusCode, 200, r.body);
      texts.push(r.json().choices[0].text);
    }
    assert.equal(texts[0], texts[1]);
  });

  test('a websocket stream: ordered acks, progress over sharded pub/sub, the reference bits', async () => {
    const id = await createSession();
    const { c, hello } = await connectStream(base.replace(/^http/, 'ws'), id);
    assert.equal(hello.last_seq, 0);
    const chunks = randomChunks(DOC, 11, 400);
    chunks.forEach((text, i) => c.send({ type: 'append', seq: i + 1, text }));
    for (let i = 0; i < chunks.length; i++) {
      const ack = await c.next((m) => m.type === 'ack' || m.type === 'error');
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      assert.equal(ack.seq, i + 1);
    }
    const progress = await c.next((m) => m.type === 'progress', 60_000);
    assert.ok(progress.segments_committed >= 1);
    assertSameState(await settled(id), reference, 'websocket stream');
    await c.close();
  });
});
