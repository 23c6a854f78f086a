// One timer for every session in the process. Each session (through its
// driver) asks to be woken at its next deadline; the scheduler keeps the
// requests in a heap and arms a single setTimeout for the earliest. A request
// is never cancelled: when a deadline moves later (traffic postponed a
// heartbeat) the old entry fires, finds nothing due, and the driver asks again.

import { MinHeap } from '../util/min-heap.js';

export interface Timed {
  /** The deadline this target is scheduled for, or undefined. Owned by the scheduler. */
  scheduledAt: number | undefined;
  onTimer(now: number): void;
}

export function monotonicNow(): number {
  return performance.now();
}

/** A timer this late, or wall time this far ahead of monotonic time, means the process did not run (sleep, SIGSTOP). */
const STALL_MS = 1000;

/** Time the event loop spent waiting for I/O since the process started (ms). */
function loopIdleTime(): number {
  return performance.nodeTiming.idleTime;
}

export class Scheduler {
  private readonly heap = new MinHeap<Timed>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private refs = 0;
  /** When the timer was armed, by both clocks: monotonic time stands still while the machine sleeps, wall time does not. */
  private armedMono = 0;
  private armedWall = 0;
  /** The loop's idle time when the timer was armed: a late timer tells a stopped process from a busy one by it. */
  private armedIdle = 0;
  /** Told how long the process stood still, when a timer shows it did for longer than STALL_MS. */
  onStall: ((ms: number) => void) | undefined;

  /** Wakes `target` at `at` (ms, monotonic), unless it is already due earlier. */
  schedule(target: Timed, at: number | undefined): void {
    if (at === undefined) return;
    // Whole milliseconds, as setTimeout counts them: a target then wakes at
    // its deadline or within 1 ms after, never before, and its scheduledAt
    // is a small integer, where a fraction would cost each session a boxed
    // number (16 bytes).
    at = Math.ceil(at);
    if (target.scheduledAt !== undefined && target.scheduledAt <= at) return;
    target.scheduledAt = at;
    this.heap.push(at, target);
    if (at < this.timerAt) this.arm(at);
  }

  /** Something the process should stay alive for now relies on the timer. */
  ref(): void {
    if (++this.refs === 1) this.timer?.ref();
  }

  unref(): void {
    if (--this.refs === 0) this.timer?.unref();
  }

  private arm(at: number): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timerAt = at;
    this.armedMono = monotonicNow();
    this.armedWall = Date.now();
    this.armedIdle = loopIdleTime();
    // setTimeout rounds to whole ms and may fire a little early; fire() copes.
    this.timer = setTimeout(() => this.fire(), Math.max(0, Math.ceil(at - monotonicNow())));
    if (this.refs === 0) this.timer.unref();
  }

  private fire(): void {
    const now = monotonicNow();
    // Late while the loop waited for I/O: the process was stopped (SIGSTOP)
    // or not scheduled. Late while the loop was busy (thousands of sessions
    // resuming at once) is not a stall: the process ran and its kernel kept
    // its connections, and checking every one of them would add to the load.
    const late = loopIdleTime() - this.armedIdle >= (now - this.timerAt) / 2 ? now - this.timerAt : 0;
    const slept = Date.now() - this.armedWall - (now - this.armedMono);
    this.timer = undefined;
    this.timerAt = Infinity;
    if (Math.max(late, slept) > STALL_MS) this.onStall?.(Math.max(late, slept));
    // Take everything due first: a target that asks again for a time already
    // past waits for the next turn of the event loop instead of spinning here.
    const due: Timed[] = [];
    while (this.heap.peekKey() <= now) {
      const at = this.heap.peekKey();
      const target = this.heap.pop()!;
      if (target.scheduledAt !== at) continue; // superseded by an earlier request
      target.scheduledAt = undefined;
      due.push(target);
    }
    const next = this.heap.peekKey();
    if (next < this.timerAt) this.arm(next);
    if (due.length === 0) return;
    // Run them after the event loop's I/O phase: if the process was busy and
    // this timer fires late, bytes that arrived meanwhile are read first, so
    // a stalled process does not declare its own peers dead.
    setImmediate(() => {
      const at = monotonicNow();
      for (const target of due) target.onTimer(at);
    });
  }
}

/** The scheduler every socket and server in this process shares. */
export const sharedScheduler = new Scheduler();
