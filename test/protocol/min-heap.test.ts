// MinHeap orders the process's timers and the simulator's events: smallest
// key first, equal keys in the order they were pushed.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MinHeap } from '../../src/util/min-heap.js';
import { SimRandom } from '../sim/random.js';

const byKeyThenOrder = (a: { key: number; order: number }, b: { key: number; order: number }) =>
  a.key < b.key ? -1 : a.key > b.key ? 1 : a.order - b.order;

test('MinHeap: pops by key, ties first-in first-out, through pushes and pops interleaved', () => {
  const random = new SimRandom(7);
  const heap = new MinHeap<number>();
  // The reference: every entry with its key and push order, sorted on each pop.
  const pending: { key: number; order: number }[] = [];
  let order = 0;
  for (let step = 0; step < 5000; step++) {
    if (pending.length === 0 || random.chance(0.6)) {
      // Few distinct keys, so that ties are common; some fractional, some infinite.
      const key = random.chance(0.05) ? Infinity : random.int(0, 19) + (random.chance(0.3) ? 0.5 : 0);
      heap.push(key, order);
      pending.push({ key, order });
      order++;
    } else {
      pending.sort(byKeyThenOrder);
      const want = pending.shift()!;
      assert.equal(heap.peekKey(), want.key);
      assert.equal(heap.pop(), want.order, `step ${step}`);
    }
    assert.equal(heap.size, pending.length);
  }
  while (pending.length > 0) {
    pending.sort(byKeyThenOrder);
    assert.equal(heap.pop(), pending.shift()!.order);
  }
  assert.equal(heap.pop(), undefined);
  assert.equal(heap.peekKey(), Infinity);
});
