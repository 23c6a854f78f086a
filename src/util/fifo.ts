// A first-in first-out queue that keeps its storage when it empties. The
// protocol's event queues fill and drain once per chunk of input; an array
// emptied with `length = 0` gives its storage back and grows it anew on the
// next push, an allocation per chunk that this avoids.

export class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  private tail = 0;

  get size(): number {
    return this.tail - this.head;
  }

  push(item: T): void {
    this.items[this.tail++] = item;
  }

  /** Gives the storage back if the queue is empty (a quiet owner's memory). */
  trim(): void {
    if (this.head === this.tail) this.items.length = 0;
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
