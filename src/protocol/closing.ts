// How a session closes, as named states and transition tables (h11 keeps its
// states the same way): the one place that says which step may follow which.
// A step missing from a table is a bug in the session, not in the peer: a
// broken invariant (invariant.ts).
//
// Each side sends FIN after its data (`OutgoingFin`). Once a side holds the
// peer's FIN and the acknowledgement of its own, both directions are
// finished and the close handshake begins (`CloseHandshake`): the server
// sends CLOSE and keeps the session (its buffers are empty by then) until
// CLOSE_ACK arrives, for at most closeLinger, resuming it if need be, so that
// a client which missed the last acknowledgement can still learn that its FIN
// arrived. A finished client waits for CLOSE as long. PROTOCOL.md §11.

import { invariant } from './invariant.js';

/** Our sending direction's FIN. */
export type OutgoingFin =
  | 'none' // the application may still write
  | 'queued' // end() was called: FIN leaves once the data before it has
  | 'sent' // FIN transmitted, not yet acknowledged
  | 'acked'; // the peer holds everything we wrote, FIN included

export type OutgoingFinStep =
  | 'end' // the application ended its direction
  | 'transmit' // FIN went out on the link
  | 'rewind' // a resume rewound the sender to before FIN
  | 'ack' // the peer acknowledged FIN
  | 'held-by-peer'; // the server reported the session closed cleanly, so it held our FIN

const OUTGOING_FIN: Record<OutgoingFin, Partial<Record<OutgoingFinStep, OutgoingFin>>> = {
  none: { end: 'queued', rewind: 'none' },
  queued: { transmit: 'sent', rewind: 'queued', 'held-by-peer': 'sent' },
  sent: { ack: 'acked', rewind: 'queued' },
  acked: { rewind: 'acked' },
};

/** The close handshake once both directions are finished. */
export type CloseHandshake =
  | 'streaming' // a direction still carries data
  | 'awaiting-close' // client: finished; waits for the server's CLOSE
  | 'close-owed' // server: finished; CLOSE goes out with the next transmission
  | 'close-sent'; // server: CLOSE sent; waits for CLOSE_ACK

export type CloseStep =
  | 'finished' // both directions finished and acknowledged
  | 'transmit-close' // server: CLOSE went out
  | 'link-activated'; // a resumed link carries the session: the server owes CLOSE on it

const CLOSE_HANDSHAKE: Record<'client' | 'server', Record<CloseHandshake, Partial<Record<CloseStep, CloseHandshake>>>> = {
  client: {
    streaming: { finished: 'awaiting-close' },
    'awaiting-close': { 'link-activated': 'awaiting-close' },
    'close-owed': {},
    'close-sent': {},
  },
  server: {
    streaming: { finished: 'close-owed' },
    'awaiting-close': {},
    'close-owed': { 'transmit-close': 'close-sent', 'link-activated': 'close-owed' },
    'close-sent': { 'link-activated': 'close-owed' },
  },
};

export function stepOutgoingFin(state: OutgoingFin, step: OutgoingFinStep): OutgoingFin {
  const next = OUTGOING_FIN[state][step];
  invariant(next !== undefined, () => `FIN step '${step}' in state '${state}'`);
  return next;
}

export function stepClose(role: 'client' | 'server', state: CloseHandshake, step: CloseStep): CloseHandshake {
  const next = CLOSE_HANDSHAKE[role][state][step];
  invariant(next !== undefined, () => `close step '${step}' in state '${state}' (${role})`);
  return next;
}
