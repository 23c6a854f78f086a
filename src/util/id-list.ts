// A handful of items keyed by their own id, in an array. A session holds one
// link or two; a Map's smallest table costs about 100 bytes more than this,
// for every session. A change replaces the array, so a loop over values()
// walks the list as it was when the loop began and may delete as it goes.

import { NO_ITEMS } from './empty.js';

export class IdList<T extends { readonly id: number }> {
  private items: readonly T[] = NO_ITEMS;

  get size(): number {
    return this.items.length;
  }

  get(id: number): T | undefined {
    for (const item of this.items) if (item.id === id) return item;
    return undefined;
  }

  /** Adds `item`, in place of the one with its id if there is one. */
  add(item: T): void {
    this.delete(item.id);
    // concat and slice size the new array exactly; push or filter would
    // give it room for 17 (150 bytes).
    this.items = this.items.concat(item);
  }

  delete(id: number): boolean {
    const at = this.items.findIndex((x) => x.id === id);
    if (at < 0) return false;
    const kept = this.items.slice();
    kept.splice(at, 1);
    this.items = kept;
    return true;
  }

  clear(): void {
    this.items = NO_ITEMS;
  }

  /** The items, oldest first: a snapshot that later changes leave alone. */
  values(): readonly T[] {
    return this.items;
  }

  ids(): number[] {
    return this.items.map((x) => x.id);
  }
}
