// The simulated node directory, as the Redis one behaves (src/node/directory.ts
// and its Redis store): each live node keeps an entry under a lease it
// renews; a dead node's entry lasts until its lease ends. Nodes read the
// entries whenever the store answers (refreshing at once: a refresh lag is
// not modelled) and answer from the last entries read while it is out. A
// lookup of a node they do not know costs a round trip to the store, and
// finds nothing while the store is out.
//
// So an outage changes nothing for nodes already known; what it changes is
// how a relay to a dead node is refused: the stale address refuses the
// connection ("is gone"), or the node is no longer known ("is not in this
// deployment"). Both end that session with ERR_ROCKS_UNKNOWN_SESSION, and a
// session only ever names a node that was known (it issued the session), so
// the invariant stays exact: sessions of dead nodes end with that error,
// all others are untouched.

import type { Clock } from './network.js';

interface Entry<N> {
  node: N;
  /** When the lease ends (Infinity while the node renews it). */
  expires: number;
}

export class SimDirectory<N> {
  private readonly entries = new Map<number, Entry<N>>();
  /** What the nodes read last, while the store is out. */
  private snapshot = new Map<number, N>();
  private outUntil = -Infinity;
  private readonly waiting: (() => void)[] = [];
  outages = 0;

  constructor(
    private readonly clock: Clock,
    private readonly lookupDelay: number,
  ) {}

  /** The store is unreachable for `duration` ms from now; nodes keep what they read last. */
  scheduleOutage(at: number, duration: number, trace: (line: string) => void): void {
    this.clock.at(at, () => {
      const wasOut = this.isOut;
      this.snapshot = wasOut ? this.snapshot : this.current();
      this.outUntil = Math.max(this.outUntil, this.clock.now + duration);
      this.outages++;
      trace(`DIRECTORY out for ${duration} ms`);
      this.clock.at(this.outUntil, () => this.maybeBack(trace));
    });
  }

  get isOut(): boolean {
    return this.clock.now < this.outUntil;
  }

  /** A node (re)starts and keeps its entry alive. Only while the store answers: see whenReachable. */
  register(nodeId: number, node: N): void {
    this.entries.set(nodeId, { node, expires: Infinity });
  }

  /** A node died: its entry lasts until its lease ends. */
  leave(nodeId: number, lease: number): void {
    const e = this.entries.get(nodeId);
    if (e !== undefined) e.expires = this.clock.now + lease;
  }

  /** Runs `then` now if the store answers, else once it does (a node's start needs the store). */
  whenReachable(then: () => void): void {
    if (this.isOut) this.waiting.push(then);
    else then();
  }

  /** directory.addressOf: what the node knows now, without asking the store. */
  addressOf(nodeId: number): N | undefined {
    return this.isOut ? this.snapshot.get(nodeId) : this.current().get(nodeId);
  }

  /** directory.resolve after a miss: one GET, or nothing while the store is out. */
  resolve(nodeId: number, done: (node: N | undefined) => void): void {
    if (this.isOut) {
      done(undefined);
      return;
    }
    this.clock.after(this.lookupDelay, () => done(this.isOut ? undefined : this.current().get(nodeId)));
  }

  private current(): Map<number, N> {
    const now = this.clock.now;
    const m = new Map<number, N>();
    for (const [id, e] of this.entries) if (e.expires > now) m.set(id, e.node);
    return m;
  }

  private maybeBack(trace: (line: string) => void): void {
    if (this.isOut) return; // a later outage extended this one
    trace('DIRECTORY back');
    for (const then of this.waiting.splice(0)) then();
  }
}
