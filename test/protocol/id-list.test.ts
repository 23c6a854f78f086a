// An IdList holds a session's links: a loop over it may drop links as it
// goes, as it could over the Map it replaced.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { byId, type IdList, withItem, withoutId } from '../../src/util/id-list.js';
import { NO_ITEMS } from '../../src/util/empty.js';

test('IdList: get, replace, delete, and a loop that deletes as it goes sees every item once', () => {
  let list: IdList<{ id: number; name: string }> = NO_ITEMS;
  for (const id of [1, 2, 3]) list = withItem(list, { id, name: `l${id}` });
  list = withItem(list, { id: 2, name: 'again' });
  assert.deepEqual(
    list.map((x) => x.id),
    [1, 3, 2],
  );
  assert.equal(byId(list, 2)?.name, 'again');
  assert.equal(byId(list, 4), undefined);

  const seen: number[] = [];
  for (const item of list) {
    seen.push(item.id);
    list = withoutId(list, item.id);
  }
  assert.deepEqual(seen, [1, 3, 2]);
  assert.equal(list, NO_ITEMS, 'an emptied list keeps no array of its own');
  assert.equal(withoutId(list, 1), list);
});
