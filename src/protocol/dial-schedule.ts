// When a client dials a new link (PROTOCOL.md §9, "when to dial"):
// exponential backoff from reconnectDelay, capped at reconnectDelayMax, with
// jitter in its upper half; and one attempt at a time, except that an
// attempt that has heard nothing from the server for longer than the backoff
// cap does not hold up a fresh one. Its SYN may have been black-holed, or a
// middlebox (a proxy, a load balancer) accepted the connection for a server
// it cannot reach; either way a fresh attempt finds the path as soon as it
// returns. A server always speaks first (its EDP announcement), so an attempt
// that heard from it is left its whole handshake timeout: piling attempts on
// a slow server would not help it.

import type { SessionConfig } from './config.js';
import type { RandomSource } from './random.js';

/** Concurrent dial attempts while reconnecting: a slow attempt does not hold up the next. */
const MAX_PENDING_DIALS = 2;

export class DialSchedule {
  private attempts = 0;
  private lastAt = -Infinity;
  private nextAt = Infinity;
  /** The backoff before the next attempt. */
  private delay = 0;

  constructor(
    private readonly config: Pick<SessionConfig, 'reconnectDelay' | 'reconnectDelayMax'>,
    private readonly random: RandomSource,
  ) {}

  /**
   * The link carrying the session failed: dial at once, counting attempts
   * from one. `pendingSince`: when the newest attempt still pending was
   * dialed (a move's), which counts as the last dial.
   */
  restart(now: number, pendingSince = -Infinity): void {
    this.lastAt = pendingSince;
    this.attempts = 0;
    this.delay = 0;
    this.nextAt = now;
  }

  /** Dial at once, keeping the count (the server dropped the session before confirming it). */
  dialNow(now: number): void {
    this.nextAt = now;
  }

  /** Records a dial at `now`. Returns its attempt number and the backoff that preceded it. */
  dialed(now: number): { attempt: number; delay: number } {
    this.attempts++;
    this.lastAt = now;
    const made = { attempt: this.attempts, delay: this.delay };
    const base = Math.min(this.config.reconnectDelayMax, this.config.reconnectDelay * 2 ** (this.attempts - 1));
    this.delay = Math.round(base / 2 + (this.random.fraction() * base) / 2);
    this.nextAt = now + this.delay;
    return made;
  }

  /**
   * When the next dial may start, given how many attempts are still pending
   * and how many of them have heard nothing from the server; Infinity while
   * the pending ones must be waited for.
   */
  nextDialTime(pending: number, silent: number): number {
    if (pending === 0) return this.nextAt;
    if (pending >= MAX_PENDING_DIALS || silent < pending) return Infinity;
    return Math.max(this.nextAt, this.lastAt + this.config.reconnectDelayMax);
  }
}
