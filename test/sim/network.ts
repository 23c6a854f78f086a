// A simulated network of TCP-like links on simulated time. A link delivers
// bytes in order, split at random points, after a latency and at a bandwidth;
// faults reset it (each end may or may not hear of it) or black-hole it
// (everything dropped, nobody told). Nothing here knows the rocks protocol.

import type { ChannelKeys } from '../../src/protocol/session.js';
import { MinHeap } from '../../src/util/min-heap.js';
import { SIM_OPTIONS } from './options.js';
import type { SimRandom } from './random.js';

export class Clock {
  now = 0;
  private readonly queue = new MinHeap<() => void>();

  at(time: number, run: () => void): void {
    this.queue.push(Math.max(time, this.now), run);
  }

  after(delay: number, run: () => void): void {
    this.at(this.now + delay, run);
  }

  get nextAt(): number {
    return this.queue.peekKey();
  }

  /** Runs the earliest scheduled action, advancing the clock to it. */
  runNext(): void {
    const key = this.queue.peekKey();
    const run = this.queue.pop();
    if (run === undefined) return;
    if (key > this.now) this.now = key;
    run();
  }
}

/** What a link tells the endpoint at one of its ends. */
export interface LinkEnd {
  onData(chunk: Buffer): void;
  /** The link is gone; `reason` is what a socket error or close would say. */
  onClosed(reason: string): void;
  /** Bytes queued by this end were delivered: there is room to send more. */
  onDrain(): void;
}

export interface LinkShape {
  /** One-way delay in ms. */
  latency: number;
  /** Bytes per ms. */
  bandwidth: number;
  /** Bytes one end may have in flight before it must wait for a drain. */
  sendBuffer: number;
}

class Direction {
  inFlight = 0;
  /** When the last queued byte arrives; later bytes arrive after it. */
  lastArrival = 0;
  /** This end has shut down: it sends nothing more. */
  shut = false;
}

export class SimLink {
  readonly id: number;
  readonly shape: LinkShape;
  /** Black-holed: bytes and closes vanish. */
  stalled = false;
  /** What a TLS link's exporter would give both ends (keyed-channel runs), else undefined. */
  channel: ChannelKeys | undefined;
  private readonly ends: [LinkEnd | undefined, LinkEnd | undefined] = [undefined, undefined];
  /** Ends whose kernel watches the connection (keepalive, TCP_USER_TIMEOUT): how long it takes to find it dead. */
  private readonly watchers: [(() => number) | undefined, (() => number) | undefined] = [undefined, undefined];
  private readonly dirs = [new Direction(), new Direction()];
  /** An end that was told the link closed hears nothing more. */
  private readonly told = [false, false];

  constructor(
    private readonly clock: Clock,
    private readonly random: SimRandom,
    id: number,
    shape: LinkShape,
  ) {
    this.id = id;
    this.shape = shape;
  }

  attach(side: 0 | 1, end: LinkEnd): void {
    this.ends[side] = end;
  }

  /** `side`'s kernel watches the connection: once it is black-holed, that end hears ETIMEDOUT after `detectAfter()` ms. */
  watch(side: 0 | 1, detectAfter: () => number): void {
    this.watchers[side] = detectAfter;
  }

  /** Black-holes the link: bytes and closes vanish, and only a watching kernel finds out. */
  stall(): void {
    if (this.stalled) return;
    this.stalled = true;
    for (const side of [0, 1] as const) {
      const detectAfter = this.watchers[side];
      if (detectAfter !== undefined) this.clock.after(detectAfter(), () => this.tell(side, 'ETIMEDOUT'));
    }
  }

  /** Room left in `side`'s send buffer. */
  room(side: 0 | 1): number {
    return this.shape.sendBuffer - this.dirs[side].inFlight;
  }

  isOpen(side: 0 | 1): boolean {
    return !this.told[side] && !this.dirs[side].shut;
  }

  /** `side` writes bytes; they reach the other end split into random pieces. */
  send(side: 0 | 1, buffers: Buffer[]): void {
    const dir = this.dirs[side];
    if (dir.shut || this.told[side]) return;
    // The kernel copies on write; so does the simulated one.
    const bytes = Buffer.concat(buffers);
    let pos = 0;
    // Pieces arrive whole, so keep each within ~20 ms of the link's bandwidth.
    const largest = Math.max(1, Math.min(96 * 1024, Math.floor(this.shape.bandwidth * 20)));
    while (pos < bytes.length) {
      const n = Math.min(bytes.length - pos, this.random.spread(1, largest));
      this.transmit(side, bytes.subarray(pos, pos + n));
      pos += n;
    }
  }

  /** `side` closes its end. Graceful: the peer hears after the bytes already sent; abortive: maybe sooner. */
  close(side: 0 | 1, graceful: boolean): void {
    const dir = this.dirs[side];
    if (dir.shut || this.told[side]) return;
    dir.shut = true;
    this.told[side] = true;
    const other = (1 - side) as 0 | 1;
    const arrival =
      graceful || this.random.chance(SIM_OPTIONS.network.resetAfterData)
        ? Math.max(dir.lastArrival, this.clock.now + this.shape.latency)
        : this.clock.now + this.shape.latency;
    this.clock.at(arrival, () => {
      if (!this.stalled) this.tell(other, graceful ? 'closed by peer' : 'ECONNRESET');
    });
  }

  /** A fault resets the connection: each end hears of it after its own delay, or never. */
  reset(notifyProbability: number): void {
    for (const side of [0, 1] as const) {
      if (this.random.chance(notifyProbability)) {
        this.clock.after(this.random.int(0, Math.ceil(this.shape.latency) + 5), () => this.tell(side, 'ECONNRESET'));
      }
    }
    // Whatever is not told stops hearing anything: the connection is gone.
    this.stall();
  }

  /** Both ends are told at once (a refused or failed connect). */
  fail(side: 0 | 1, reason: string): void {
    this.tell(side, reason);
  }

  private tell(side: 0 | 1, reason: string): void {
    if (this.told[side]) return;
    this.told[side] = true;
    this.ends[side]?.onClosed(reason);
  }

  private transmit(side: 0 | 1, piece: Buffer): void {
    const dir = this.dirs[side];
    const other = (1 - side) as 0 | 1;
    dir.inFlight += piece.length;
    const serialized = Math.max(this.clock.now, dir.lastArrival - this.shape.latency) + piece.length / this.shape.bandwidth;
    const arrival = Math.max(dir.lastArrival, serialized + this.shape.latency);
    dir.lastArrival = arrival;
    this.clock.at(arrival, () => {
      dir.inFlight -= piece.length;
      if (!this.stalled && !this.told[other]) this.ends[other]?.onData(piece);
      if (!this.told[side]) this.ends[side]?.onDrain();
    });
  }
}
