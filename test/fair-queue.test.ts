// FairQueue (src/text/fair-queue.ts): keys served in turn, each key's items in order.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FairQueue } from '../src/text/fair-queue.ts';

test('keys take turns; each key keeps its order; a key that comes back joins the end of the turn order', () => {
  const q = new FairQueue<string>();
  for (const x of ['a1', 'a2', 'a3']) q.push('a', x);
  q.push('b', 'b1');
  q.push('c', 'c1');
  q.push('b', 'b2');
  assert.equal(q.size, 6);
  const out: string[] = [];
  out.push(q.shift()!, q.shift()!, q.shift()!);
  q.push('c', 'c2'); // c had its turn: its next item waits behind a and b
  q.push('d', 'd1');
  for (let x = q.shift(); x !== undefined; x = q.shift()) out.push(x);
  assert.deepEqual(out, ['a1', 'b1', 'c1', 'a2', 'b2', 'c2', 'd1', 'a3']);
  assert.equal(q.size, 0);
  assert.equal(q.shift(), undefined);
});

test('drain empties the queue, keys in turn order and each key\'s items in order', () => {
  const q = new FairQueue<number>();
  q.push('x', 1);
  q.push('y', 2);
  q.push('x', 3);
  assert.deepEqual(q.drain(), [1, 3, 2]);
  assert.equal(q.size, 0);
  assert.equal(q.shift(), undefined);
});
