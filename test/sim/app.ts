// A simulated application on one end of a session: it writes a stream of
// pseudo-random bytes in random pieces at random moments, honouring
// backpressure, ends it, and reads what arrives at its own pace, checking
// every byte against what the other end wrote.

import { createCipheriv } from 'node:crypto';
import type { Clock } from './network.js';
import { SIM_OPTIONS } from './options.js';
import type { SimRandom } from './random.js';

/** A deterministic byte stream of `length` bytes for `seed` (AES-CTR keystream). */
export function streamBytes(seed: number, length: number): Buffer {
  const key = Buffer.alloc(16);
  key.writeUInt32BE(seed >>> 0, 0);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

export interface AppPlan {
  /** What this end writes in total. */
  outgoing: Buffer;
  /** What the other end writes: the bytes this end must receive. */
  incoming: Buffer;
  /** Largest write. */
  maxWrite: number;
  /** Mean pause between writes, ms. */
  writePause: number;
  /** Mean pause between reads, ms (0: reads at once). */
  readPause: number;
}

/** The commands an app gives its end of the session. */
export interface AppPort {
  write(chunk: Buffer): boolean;
  end(): void;
  updateUnread(unread: number): void;
}

export class SimApp {
  readonly name: string;
  private written = 0;
  private blocked = false;
  private ended = false;
  private writing = false;
  private receivedBytes = 0;
  private unread = 0;
  private readScheduled = false;
  gotEnd = false;
  failure: string | undefined;

  constructor(
    name: string,
    private readonly clock: Clock,
    private readonly random: SimRandom,
    private readonly plan: AppPlan,
    private readonly port: AppPort,
  ) {
    this.name = name;
  }

  get done(): boolean {
    return this.ended && this.gotEnd && this.unread === 0;
  }

  get bytesReceived(): number {
    return this.receivedBytes;
  }

  get bytesWritten(): number {
    return this.written;
  }

  /** Starts writing; the first write may come before the session is established. */
  start(): void {
    if (this.writing) return;
    this.writing = true;
    this.scheduleWrite();
  }

  onWritable(): void {
    if (!this.blocked) return;
    this.blocked = false;
    this.scheduleWrite();
  }

  onData(data: Buffer): void {
    if (this.failure) return;
    const expected = this.plan.incoming.subarray(this.receivedBytes, this.receivedBytes + data.length);
    if (this.gotEnd) {
      this.failure = `${this.name}: data after end`;
    } else if (!expected.equals(data)) {
      let at = 0;
      while (at < data.length && at < expected.length && data[at] === expected[at]) at++;
      this.failure = `${this.name}: wrong byte at offset ${this.receivedBytes + at} (got ${data.length} bytes, expected ${expected.length} more)`;
    }
    this.receivedBytes += data.length;
    this.unread += data.length;
    this.scheduleRead();
  }

  onEnd(): void {
    if (this.receivedBytes !== this.plan.incoming.length) {
      this.failure ??= `${this.name}: end after ${this.receivedBytes} of ${this.plan.incoming.length} bytes`;
    }
    this.gotEnd = true;
  }

  private scheduleWrite(): void {
    const pause = this.random.chance(SIM_OPTIONS.app.writeAtOnce) ? 0 : this.random.int(0, 2 * this.plan.writePause);
    this.clock.after(pause, () => this.writeSome());
  }

  private writeSome(): void {
    if (this.blocked || this.ended) return;
    const left = this.plan.outgoing.length - this.written;
    if (left === 0) {
      this.ended = true;
      this.port.end();
      return;
    }
    const n = Math.min(left, this.random.spread(1, this.plan.maxWrite));
    const ok = this.port.write(this.plan.outgoing.subarray(this.written, this.written + n));
    this.written += n;
    if (ok) this.scheduleWrite();
    else this.blocked = true;
  }

  private scheduleRead(): void {
    if (this.readScheduled) return;
    this.readScheduled = true;
    const pause = this.plan.readPause === 0 ? 0 : this.random.int(0, 2 * this.plan.readPause);
    this.clock.after(pause, () => {
      this.readScheduled = false;
      const n = this.random.chance(SIM_OPTIONS.app.readAll) ? this.unread : this.random.int(0, this.unread);
      this.unread -= n;
      this.port.updateUnread(this.unread);
      if (this.unread > 0) this.scheduleRead();
    });
  }
}
