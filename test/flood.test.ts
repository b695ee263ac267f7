// Backpressure on a real server process: a websocket client floods 100 MB of appends; the server
// (API + worker, its own process) stops reading from the socket, so the flood stays in the client,
// and it keeps serving meanwhile. Twice: the worker tokenizing (RMT_TOKENIZER_THREADS=0), and the
// API's tokenizer threads tokenizing the appends (the default). What the flood costs in memory (RSS
// growth) depends on the machine and the garbage collector: bench/stream-flood-memory.ts prints it
// (BENCHMARKS.md), this file asserts only behaviour.
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { MAX_UNAPPLIED_BYTES } from '../src/api/stream/backpressure.ts';
import { runFlood } from './support/flood.ts';
import { startRedis, type RedisServerHandle } from './support/redis-server.ts';

let redis: RedisServerHandle;

before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

async function flood(t: TestContext, tokenizerThreads: number): Promise<void> {
  const r = await runFlood(redis.url, tokenizerThreads);
  t.diagnostic(`acks ${r.acks}; unsent ${(r.unsent / 2 ** 20).toFixed(0)} MB; /healthz ${r.healthy} of ${r.checks}`);
  // The server reads no more than it holds unapplied (8 MB) plus what the worker applied meanwhile:
  // far from all of it, however fast the machine (the worker applies well under 1 MB a second on CPU).
  assert.ok(r.acks < 60, `${r.acks} of 101 appends acknowledged: the server did not stop reading`);
  // What it holds (MAX_UNAPPLIED_BYTES), two frames of 4 MB and the kernel's buffers are far below 70 MB.
  assert.ok(r.unsent > 30 * 2 ** 20, `only ${r.unsent} bytes left unsent (the server holds at most ${MAX_UNAPPLIED_BYTES} unapplied): the flood was not held back`);
  assert.equal(r.healthy, r.checks, 'every /healthz asked while flooded was answered 200');
}

test('a client flooding 100 MB is held back by TCP (the server stops reading); it keeps serving', (t) => flood(t, 0));

test('with the API tokenizing long appends on its threads: held back the same way; it keeps serving', (t) => flood(t, 2));
