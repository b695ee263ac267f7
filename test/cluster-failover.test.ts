// Acknowledged means durable, on a real Redis Cluster (test/support/redis-cluster.ts): a websocket
// client streams a document; right after some acks the master holding its session is SIGKILLed. Its
// replica takes over; every append acknowledged before the kill is still there (the hello after
// reconnecting says so), the client resends from there as a client does, and the session ends
// bit-identical to a fault-free run of the same document. The killed node comes back as a replica
// (as an orchestrator would restart it): until then WAIT can confirm nothing and appends are refused
// with not_durable rather than acknowledged.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { keySlot } from '../src/state/key-slot.ts';
import type { SessionRecord } from '../src/state/session-record.ts';
import { heldOutText } from './support/brown.ts';
import { startApiHarness, type ApiHarness } from './support/api-harness.ts';
import { bytesOf, randomChunks } from './support/chunks.ts';
import { pollUntil } from './support/poll.ts';
import { clusterUnavailable, startRedisCluster, type RedisClusterHandle } from './support/redis-cluster.ts';
import { connectStream, type Client, type Msg } from './support/ws-client.ts';

const MODEL = 'rmt-brown-small';
const DOC = heldOutText().slice(0, 12000);
const skip = clusterUnavailable() ?? false;

let cluster: RedisClusterHandle;
let h: ApiHarness;
let wsBase = '';

async function masterOf(slot: number): Promise<number> {
  for (const n of await cluster.topology()) {
    if (n.role !== 'master' || n.failed) continue;
    for (const range of n.slots) {
      const [lo, hi = lo] = range.split('-').map(Number);
      if (slot >= lo! && slot <= hi!) return n.port;
    }
  }
  throw new Error(`no master serves slot ${slot}`);
}

async function newSession(): Promise<string> {
  const m = h.deps.catalog.get(MODEL)!;
  return (await h.deps.store.create({ model: MODEL, shape: m.stateShape, dtype: 'float32' }, m.initState)).id;
}

async function settled(id: string): Promise<SessionRecord> {
  let rec: SessionRecord | null = null;
  await pollUntil(`session ${id} to apply every accepted request`, async () => {
    rec = await h.deps.store.get(id);
    return !!rec && rec.appliedSeq === rec.acceptedSeq;
  }, 120_000);
  return rec!;
}

describe('failover on a Redis Cluster', { skip, timeout: 300_000 }, () => {
  before(async () => {
    cluster = await startRedisCluster();
    h = await startApiHarness({}, { REDIS_CLUSTER_NODES: cluster.nodes.join(','), RMT_MODELS: MODEL, RMT_REDIS_WAIT_TIMEOUT_MS: '1000' });
    wsBase = (await h.listen()).replace(/^http/, 'ws');
  });

  after(async () => {
    await h?.close();
    await cluster?.stop();
  });

  test('a master SIGKILLed mid-stream: no acknowledged append lost, the stream ends bit-identical to a fault-free run', async () => {
    // The fault-free run: the same chunks over the websocket, before any fault.
    const chunks = randomChunks(DOC, 5, 250);
    const refId = await newSession();
    const ref = await connectStream(wsBase, refId);
    chunks.forEach((text, i) => ref.c.send({ type: 'append', seq: i + 1, text }));
    await ref.c.next((m) => m.type === 'ack' && m.seq === chunks.length, 60_000);
    await ref.c.close();
    const reference = await settled(refId);

    const id = await newSession();
    const victim = await masterOf(keySlot(h.deps.store.keys.session(id)));
    const killAfter = Math.floor(chunks.length / 3);
    let maxAcked = 0;
    let killed = false;
    let fault: Promise<void> | undefined;
    let reconnects = 0;
    const errors = new Set<string>();
    while (maxAcked < chunks.length) {
      let c: Client;
      let hello: Msg;
      try {
        ({ c, hello } = await connectStream(wsBase, id));
      } catch {
        reconnects++;
        continue; // the API refused the stream while the cluster was down: connect again
      }
      assert.ok(hello.last_seq >= maxAcked, `hello last_seq ${hello.last_seq}: every acknowledged append (up to ${maxAcked}) survived`);
      maxAcked = hello.last_seq;
      for (let seq = hello.last_seq + 1; seq <= chunks.length; seq++) c.send({ type: 'append', seq, text: chunks[seq - 1] });
      try {
        for (;;) {
          if (maxAcked === chunks.length) break;
          const m = await c.next((x) => x.type === 'ack' || x.type === 'error', 60_000);
          if (m.type === 'error') {
            errors.add(m.code);
            break; // not_durable (and the socket closes): reconnect, resume from the hello
          }
          assert.equal(m.seq, maxAcked + 1, 'acks in order');
          maxAcked = m.seq;
          if (!killed && maxAcked >= killAfter) {
            killed = true;
            cluster.kill(victim);
            // Meanwhile: the replica takes over, then the killed node returns as its replica.
            fault = (async () => {
              await cluster.waitHealthy();
              cluster.restart(victim);
              await cluster.waitReplicas(3, 60_000);
            })();
          }
        }
      } catch {
        // the socket closed under us (the API lost Redis mid-message): reconnect
      }
      await c.close().catch(() => undefined);
      reconnects++;
    }
    assert.ok(killed, 'the master was killed mid-stream');
    await fault;
    assert.notEqual(await masterOf(keySlot(h.deps.store.keys.session(id))), victim, 'a replica took over the session\'s slot');
    const rec = await settled(id);
    assert.equal(rec.clientSeq, chunks.length, 'every append accepted once');
    assert.equal(rec.tokensIngested, reference.tokensIngested, 'tokens');
    assert.deepEqual(rec.tail, reference.tail, 'tail');
    assert.ok(bytesOf(rec.state).equals(bytesOf(reference.state)), 'state bytes equal the fault-free run');
    assert.ok(reconnects >= 1, `the client had to reconnect (errors: ${[...errors].join(', ') || 'none'})`);
    assert.ok(errors.has('not_durable'), `appends in flight at the kill were refused as not durable, not acknowledged (errors: ${[...errors].join(', ')})`);
  });
});
