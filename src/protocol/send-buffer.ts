// The in-flight buffer of one direction: every byte the application wrote
// that the peer has not yet acknowledged. A cursor marks the next byte to
// transmit; a resume rewinds it to what the peer says it received.
//
// Writes are copied in, packed into blocks. This is the one copy rocks makes
// of application data, and it is needed: the application may reuse its buffer
// once write() calls back, but we keep the bytes until the peer acknowledges
// them, which can be hours later. Transmission hands out views of the blocks.
//
// Blocks the peer has acknowledged are reused: fresh memory costs page faults
// on first touch, which made the copy cost a quarter of bulk throughput.
// Reuse is safe because bytes the peer acknowledged were handed to the kernel
// long ago; no pending socket write can still point into them.

import { invariant } from './invariant.js';
import { NO_ITEMS } from '../util/empty.js';

/** Block size for bulk data; these blocks are recycled. */
const BLOCK_SIZE = 64 * 1024;
/** Block size while little is buffered (small messages), not recycled. */
const SMALL_BLOCK_SIZE = 8 * 1024;
/** Acknowledged blocks kept for reuse. */
const MAX_SPARE_BLOCKS = 32;

export class SendBuffer {
  /** Filled blocks, oldest first; the block being filled is `tail`. */
  private blocks: Buffer[] = NO_ITEMS;
  /** Index of the first block still holding unacknowledged bytes. */
  private head = 0;
  /** Stream offset of the first byte of blocks[head]. */
  private headStart = 0;
  private tail: Buffer | undefined;
  private tailUsed = 0;
  private spare: Buffer[] = NO_ITEMS;

  /** Stream offset of the first unacknowledged byte. */
  private acked = 0;
  /** Stream offset just past the last byte written. */
  private written = 0;

  private cursor = 0;
  /** Block the cursor is in (blocks.length means the tail) and that block's start offset. */
  private cursorIndex = 0;
  private cursorStart = 0;

  /** `offset`: where the stream stands, everything before it acknowledged (a session makes its buffer again when it writes). */
  constructor(offset = 0) {
    this.headStart = offset;
    this.acked = offset;
    this.written = offset;
    this.cursor = offset;
    this.cursorStart = offset;
  }

  /** Offset of the oldest byte still held (everything before it was acknowledged). */
  get start(): number {
    return this.acked;
  }

  /** Offset just past the newest byte written. */
  get end(): number {
    return this.written;
  }

  /** Offset of the next byte to transmit. */
  get next(): number {
    return this.cursor;
  }

  /** Bytes held: written and not yet acknowledged. */
  get length(): number {
    return this.written - this.acked;
  }

  append(chunk: Buffer): void {
    let from = 0;
    while (from < chunk.length) {
      if (this.tail === undefined || this.tailUsed === this.tail.length) {
        if (this.tail !== undefined) {
          if (this.blocks === NO_ITEMS) this.blocks = [];
          this.blocks.push(this.tail);
        }
        this.tail = this.newBlock(this.length + chunk.length - from);
        this.tailUsed = 0;
      }
      const n = chunk.copy(this.tail, this.tailUsed, from);
      this.tailUsed += n;
      from += n;
    }
    this.written += chunk.length;
  }

  /** Drops everything before `offset`, which must lie within [start, end]. Returns the bytes freed. */
  trimTo(offset: number): number {
    invariant(offset <= this.written, () => `acknowledged up to ${offset}, past the ${this.written} bytes written`);
    if (offset <= this.acked) return 0;
    const freed = offset - this.acked;
    this.acked = offset;
    while (this.head < this.blocks.length && this.headStart + this.blocks[this.head].length <= offset) {
      const block = this.blocks[this.head];
      this.headStart += block.length;
      this.head++;
      if (block.length === BLOCK_SIZE && this.spare.length < MAX_SPARE_BLOCKS) {
        if (this.spare === NO_ITEMS) this.spare = [];
        this.spare.push(block);
      }
    }
    if (this.acked === this.written && this.head === this.blocks.length) {
      // Everything was delivered, so no view of the tail is still waiting to
      // be sent: refill it from its start instead of allocating again.
      this.blocks = NO_ITEMS;
      this.head = 0;
      this.headStart = this.written;
      this.tailUsed = 0;
      this.cursorIndex = 0;
      this.cursorStart = this.written;
      this.cursor = this.written;
      return freed;
    }
    // The cursor may sit at the very end of a block just freed (a block it
    // finished while that block was still the tail): re-anchor it at head.
    if (this.cursor < offset || this.cursorIndex < this.head) this.rewind(Math.max(this.cursor, offset));
    if (this.head > 16 && this.head * 2 > this.blocks.length) this.compact();
    return freed;
  }

  /** Moves the transmit cursor to `offset`, within [start, end]. */
  rewind(offset: number): void {
    invariant(offset >= this.acked && offset <= this.written, () => `rewind to ${offset} outside [${this.acked}, ${this.written}]`);
    this.cursor = offset;
    this.cursorIndex = this.head;
    this.cursorStart = this.headStart;
    while (this.cursorIndex < this.blocks.length && this.cursorStart + this.blocks[this.cursorIndex].length <= offset) {
      this.cursorStart += this.blocks[this.cursorIndex].length;
      this.cursorIndex++;
    }
  }

  /**
   * Takes up to `max` bytes from the cursor as views into the blocks,
   * appending them to `out`, and advances the cursor. Returns the count taken.
   */
  read(max: number, out: Buffer[]): number {
    let taken = 0;
    while (taken < max && this.cursor < this.written) {
      const inTail = this.cursorIndex === this.blocks.length;
      const block = inTail ? this.tail! : this.blocks[this.cursorIndex];
      const filled = inTail ? this.tailUsed : block.length;
      const from = this.cursor - this.cursorStart;
      const n = Math.min(filled - from, max - taken);
      out.push(block.subarray(from, from + n));
      taken += n;
      this.cursor += n;
      if (!inTail && from + n === block.length) {
        this.cursorStart += block.length;
        this.cursorIndex++;
      }
    }
    return taken;
  }

  /** Frees the memory of an empty buffer; called when the connection goes idle. */
  freeIdleMemory(): void {
    this.spare = NO_ITEMS;
    if (this.length === 0) this.tail = undefined;
  }

  /** A block for `pending` bytes to come: a recycled or new bulk block, or a small one. */
  private newBlock(pending: number): Buffer {
    if (pending < SMALL_BLOCK_SIZE) return Buffer.allocUnsafeSlow(SMALL_BLOCK_SIZE);
    return this.spare.length > 0 ? this.spare.pop()! : Buffer.allocUnsafeSlow(BLOCK_SIZE);
  }

  private compact(): void {
    this.blocks = this.blocks.slice(this.head);
    this.cursorIndex -= this.head;
    this.head = 0;
  }
}
