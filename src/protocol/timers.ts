// A session's deadlines, one entry per kind, in the manner of quinn-proto's
// timer table: the session arms and stops entries where its state changes,
// `handleTimeout` runs the work of each expired entry, and `pollTimeout`
// reports the earliest. No deadline is ever computed in two places.

import { invariant } from './invariant.js';

/** What a deadline is for. */
export const Timer = {
  /** The earliest handshake deadline among the links not yet carrying the session. */
  Handshake: 0,
  /** Open: nothing heard from the peer for failureTimeout (three path checks on a link our kernel watches) declares the link failed. */
  Failure: 1,
  /** Open: nothing sent for heartbeatInterval (or as long as the peer's PACE allows); an ACK goes out as a keepalive. */
  Heartbeat: 2,
  /** Open: a delayed acknowledgement must leave even without data to ride on. */
  AckDelay: 3,
  /** Client without a link: when the next dial may start. */
  Dial: 4,
  /** Suspended: past suspendLimit the session fails. */
  Suspend: 5,
  /** Client: the first session must be established by then. */
  Connect: 6,
  /** Both directions finished: how long the closing handshake may take. */
  Linger: 7,
  /** No application data moved for the idle timeout (setIdleTimeout). */
  Idle: 8,
} as const;
export type Timer = (typeof Timer)[keyof typeof Timer];

const KINDS = 9;

/**
 * The deadlines by kind (Infinity: not armed). The table is itself the
 * array of them, 120 bytes of doubles: a class holding an array costs 32
 * more, and a Float64Array with its ArrayBuffer and backing store 256.
 */
export class TimerTable extends Array<number> {
  constructor() {
    super(KINDS);
    this.fill(Infinity);
  }

  // Array methods that make arrays (map, filter, slice) make plain ones.
  static override get [Symbol.species](): ArrayConstructor {
    return Array;
  }

  set(kind: Timer, when: number): void {
    // A NaN deadline would never fire: the session would hang without a word.
    invariant(!Number.isNaN(when), () => `timer ${kind} set to NaN`);
    this[kind] = when;
  }

  stop(kind: Timer): void {
    this[kind] = Infinity;
  }

  /** Arms `kind` unless it is armed already. */
  setOnce(kind: Timer, when: number): void {
    if (this[kind] === Infinity) this[kind] = when;
  }

  get(kind: Timer): number {
    return this[kind];
  }

  isArmed(kind: Timer): boolean {
    return this[kind] !== Infinity;
  }

  /** Whether `kind` is armed and due at `now`. */
  expired(kind: Timer, now: number): boolean {
    return this[kind] <= now;
  }

  /** The earliest armed deadline, or Infinity. */
  next(): number {
    let t = Infinity;
    for (let k = 0; k < KINDS; k++) if (this[k] < t) t = this[k];
    return t;
  }

  stopAll(): void {
    this.fill(Infinity);
  }
}
