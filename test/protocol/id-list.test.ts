// IdList holds a session's links: a loop over it may drop links as it goes,
// as it could over the Map it replaced.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IdList } from '../../src/util/id-list.js';

test('IdList: get, replace, delete, and a loop that deletes as it goes sees every item once', () => {
  const list = new IdList<{ id: number; name: string }>();
  for (const id of [1, 2, 3]) list.add({ id, name: `l${id}` });
  list.add({ id: 2, name: 'again' });
  assert.deepEqual(list.ids(), [1, 3, 2]);
  assert.equal(list.get(2)?.name, 'again');
  assert.equal(list.get(4), undefined);

  const seen: number[] = [];
  for (const item of list.values()) {
    seen.push(item.id);
    list.delete(item.id);
  }
  assert.deepEqual(seen, [1, 3, 2]);
  assert.equal(list.size, 0);
  assert.equal(list.delete(1), false);
});
