// Key layout for one Redis and for a cluster (src/state/keys.ts), and the shard watchdog's decision
// (src/worker/shard-watchdog.ts), without a Redis.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLUSTER_SLOTS, keySlot } from '../src/state/key-slot.ts';
import { queueShardTag, redisKeys } from '../src/state/keys.ts';
import { durability, keyLayout } from '../src/state/redis-connection.ts';
import { ShardWatchdog, type ShardHead } from '../src/worker/shard-watchdog.ts';

test('one Redis: the layout is the one it always was', () => {
  const k = redisKeys('rmt');
  assert.equal(k.queuePrefix(), 'rmt:q');
  assert.equal(k.active(), 'rmt:active');
  assert.equal(k.progressChannel('abc'), 'rmt:progress:abc');
  assert.equal(k.queueShardOf('abc'), 0);
  assert.deepEqual(keyLayout({ redisClusterNodes: [], queueShards: 0 }), { cluster: false, queueShards: 1 });
  assert.deepEqual(durability({ redisClusterNodes: [], redisWaitReplicas: -1, redisWaitTimeoutMs: 100 }), { replicas: 0, timeoutMs: 100 });
});

test('a cluster: hash-tagged queue shards over the slot space, sessions mapped by slot, tagged progress channels', () => {
  const layout = keyLayout({ redisClusterNodes: ['127.0.0.1:7000'], queueShards: 0 });
  assert.deepEqual(layout, { cluster: true, queueShards: 3 });
  assert.equal(durability({ redisClusterNodes: ['127.0.0.1:7000'], redisWaitReplicas: -1, redisWaitTimeoutMs: 100 }).replicas, 1);
  const k = redisKeys('rmt', layout);
  for (let i = 0; i < 3; i++) {
    const slot = keySlot(k.queuePrefix(i));
    assert.ok(slot >= (i * CLUSTER_SLOTS) / 3 && slot < ((i + 1) * CLUSTER_SLOTS) / 3, `shard ${i} in its third of the slots`);
    assert.equal(keySlot(`${k.queuePrefix(i)}:sessions:wait`), slot, 'BullMQ keys of a shard share its slot');
    assert.equal(keySlot(k.active(i)), slot);
  }
  for (const id of ['a', 'b', 'session-1', 'x_Y-9']) {
    assert.equal(k.queueShardOf(id), Math.floor((keySlot(id) * 3) / CLUSTER_SLOTS));
    assert.equal(keySlot(k.progressChannel(id)), keySlot(k.session(id)));
  }
  assert.equal(queueShardTag(0, 1), 'q0');
  assert.throws(() => k.queuePrefix(3), RangeError);
});

test('the shard watchdog replaces an idle shard\'s consumer only when its work is overdue', async () => {
  const now = 1_000_000;
  const heads: ShardHead[] = [{ delayedDueAt: now - 5000 }, { delayedDueAt: now - 20_000 }, { delayedDueAt: now - 60_000 }, { waitingHead: '7' }];
  const restarted: number[] = [];
  const busy = new Set([2]);
  const w = new ShardWatchdog({
    shards: 4, head: async (s) => heads[s]!, idle: (s) => !busy.has(s), restart: async (s) => void restarted.push(s), overdueMs: 12_000,
  });
  assert.deepEqual(await w.check(now), [1], 'shard 0 not due long enough; shard 2 is running a job; shard 3 just seen');
  heads[1] = {};
  assert.deepEqual(await w.check(now + 6000), [], 'the same waiting head for 6 s');
  heads[3] = { waitingHead: '8' };
  assert.deepEqual(await w.check(now + 13_000), [0], 'a new head starts over; shard 0 now overdue');
  assert.deepEqual(await w.check(now + 26_000), [0, 3], 'the same head past the bound');
  assert.deepEqual(restarted, [1, 0, 0, 3]);
});
