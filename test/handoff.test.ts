// The handoff board (src/worker/handoff.ts): what a session's running request offers its next one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HandoffBoard, type Handoff } from '../src/worker/handoff.ts';
import type { SessionRecord } from '../src/state/session-store.ts';

const offerOf = (seq: number): Handoff => ({
  seq, record: { appliedSeq: seq } as SessionRecord, memory: new Promise(() => {}), applied: new Promise(() => {}),
});

/** Whether `p` has settled (after the microtasks queued so far), and with what. */
async function settled<T>(p: Promise<T>): Promise<{ done: boolean; value?: T }> {
  let out: { done: boolean; value?: T } = { done: false };
  void p.then((value) => (out = { done: true, value }));
  await new Promise((r) => setImmediate(r));
  return out;
}

test('a waiter gets the offer of the request before it, or undefined when that one ends without one', async () => {
  const board = new HandoffBoard();
  board.open('s', 1);
  const waiter = board.take('s', 1)!;
  assert.equal((await settled(waiter)).done, false, 'nothing offered yet');
  const h = offerOf(1);
  board.offer('s', h);
  assert.equal((await settled(waiter)).value, h);
  board.close('s', 1);
  assert.equal(board.take('s', 1), undefined, 'an ended request offers nothing');

  board.open('s', 2);
  const second = board.take('s', 2)!;
  board.close('s', 2);
  assert.deepEqual(await settled(second), { done: true, value: undefined });
  assert.equal(board.take('s', 3), undefined, 'only the running request is taken');
});

test('a request that opens its slot again (starting over after a lost handoff) releases the first slot\'s waiter', async () => {
  const board = new HandoffBoard();
  board.open('s', 2);
  const waiter = board.take('s', 2)!; // request 3, fetched while request 2 runs
  board.open('s', 2); // request 2 lost its own handoff and starts again from Redis
  // The waiter goes the ordinary way (waitForTurn) instead of waiting on a slot nothing settles:
  // a session deleted mid-stream held a concurrency slot, and the worker's shutdown, for ever.
  assert.deepEqual(await settled(waiter), { done: true, value: undefined });
  const again = board.take('s', 2)!;
  const h = offerOf(2);
  board.offer('s', h);
  assert.equal((await settled(again)).value, h, 'the new slot carries the new attempt\'s offer');
});
