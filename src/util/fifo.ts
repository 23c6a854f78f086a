// A first-in first-out queue that keeps its storage when it empties. The
// protocol's event queues fill and drain once per chunk of input; an array
// emptied with `length = 0` gives its storage back and grows it anew on the
// next push, an allocation per chunk that this avoids. A queue that never
// held anything has no array of its own; a session drops its queue
// altogether when a heartbeat finds it empty (Session.handleTimeout), and a
// client already when it has told its connect (Session.pollEvent).

import { NO_ITEMS } from './empty.js';

export class Fifo<T> {
  private items: (T | undefined)[] = NO_ITEMS;
  private head = 0;
  private tail = 0;

  get size(): number {
    return this.tail - this.head;
  }

  push(item: T): void {
    if (this.items === NO_ITEMS) this.items = [];
    this.items[this.tail++] = item;
  }

  /** The oldest item, or undefined when empty. */
  shift(): T | undefined {
    if (this.head === this.tail) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined; // the queue holds no reference to what it handed out
    if (this.head === this.tail) this.head = this.tail = 0;
    return item;
  }
}
