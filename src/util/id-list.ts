// A handful of items keyed by their own id, in an array the owner keeps in a
// field of its own. A session holds one link or two: a Map's smallest table
// would cost about 100 bytes more, and a class around the array 32 more,
// for every session. A change makes a new array, so a loop over the old one
// walks the list as it was when the loop began and may delete as it goes.

import { NO_ITEMS } from './empty.js';

export type IdList<T extends { readonly id: number }> = readonly T[];

export function byId<T extends { readonly id: number }>(list: IdList<T>, id: number): T | undefined {
  for (const item of list) if (item.id === id) return item;
  return undefined;
}

/** `list` with `item` added last, in place of the one with its id if there is one. */
export function withItem<T extends { readonly id: number }>(list: IdList<T>, item: T): IdList<T> {
  // concat and slice size the new array exactly; push or filter would
  // give it room for 17 (150 bytes).
  return withoutId(list, item.id).concat(item);
}

/** `list` without the item of `id` (the same array when there is none). */
export function withoutId<T extends { readonly id: number }>(list: IdList<T>, id: number): IdList<T> {
  const at = list.findIndex((x) => x.id === id);
  if (at < 0) return list;
  if (list.length === 1) return NO_ITEMS;
  const kept = list.slice();
  kept.splice(at, 1);
  return kept;
}
