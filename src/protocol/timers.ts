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

export class TimerTable {
  // A plain array of doubles: 120 bytes, where a Float64Array with its
  // ArrayBuffer and backing store costs 256 for each session.
  private readonly at: number[] = new Array<number>(KINDS).fill(Infinity);

  set(kind: Timer, when: number): void {
    // A NaN deadline would never fire: the session would hang without a word.
    invariant(!Number.isNaN(when), () => `timer ${kind} set to NaN`);
    this.at[kind] = when;
  }

  stop(kind: Timer): void {
    this.at[kind] = Infinity;
  }

  /** Arms `kind` unless it is armed already. */
  setOnce(kind: Timer, when: number): void {
    if (this.at[kind] === Infinity) this.at[kind] = when;
  }

  get(kind: Timer): number {
    return this.at[kind];
  }

  isArmed(kind: Timer): boolean {
    return this.at[kind] !== Infinity;
  }

  /** Whether `kind` is armed and due at `now`. */
  expired(kind: Timer, now: number): boolean {
    return this.at[kind] <= now;
  }

  /** The earliest armed deadline, or Infinity. */
  next(): number {
    let t = Infinity;
    for (let k = 0; k < KINDS; k++) if (this.at[k] < t) t = this.at[k];
    return t;
  }

  stopAll(): void {
    this.at.fill(Infinity);
  }
}
