// Checks the order of the events a session gives its application: one
// 'connect' (client) or 'open' (server) first, then 'suspend' and 'resume'
// strictly alternating; 'end', 'fin-acked', 'closed' and 'error' at most once
// each, and none of them before the session was established ('error' may
// end a session that never was); nothing after 'released', which comes once.

import type { SessionEvent } from '../../src/protocol/session.js';

/** Events that may happen at most once in a session's life. */
const ONCE = new Set<SessionEvent['type']>(['end', 'fin-acked', 'closed', 'error']);

export class EventGrammar {
  private phase: 'new' | 'up' | 'suspended' | 'released' = 'new';
  private readonly seen = new Set<SessionEvent['type']>();
  readonly violations: string[] = [];
  /** 'connect' or 'open' was seen. */
  established = false;

  constructor(
    private readonly name: string,
    private readonly role: 'client' | 'server',
  ) {}

  see(ev: SessionEvent): void {
    const bad = (why: string): void => {
      this.violations.push(`${this.name}: '${ev.type}' ${why}`);
    };
    if (this.phase === 'released') return bad('after released');
    if (ONCE.has(ev.type)) {
      if (this.seen.has(ev.type)) return bad('a second time');
      this.seen.add(ev.type);
    }
    switch (ev.type) {
      case 'connect':
      case 'open':
        if ((ev.type === 'connect') !== (this.role === 'client')) return bad(`on a ${this.role}`);
        if (this.phase !== 'new') return bad('a second time');
        this.phase = 'up';
        this.established = true;
        return;
      case 'suspend':
        if (this.phase !== 'up') return bad(`while ${this.phase}`);
        this.phase = 'suspended';
        return;
      case 'resume':
        if (this.phase !== 'suspended') return bad(`while ${this.phase}`);
        this.phase = 'up';
        return;
      case 'migrate':
        // Moved while open: alone, or inside the suspend/resume pair of a move that stalled data.
        if (this.phase !== 'up' && this.phase !== 'suspended') return bad(`while ${this.phase}`);
        return;
      case 'data':
      case 'end':
      case 'fin-acked':
      case 'closed':
        if (this.phase === 'new') return bad('before the session was established');
        return;
      case 'released':
        this.phase = 'released';
        return;
      default:
        return;
    }
  }

  /** Whether 'released' was seen. */
  get released(): boolean {
    return this.phase === 'released';
  }
}
