// Acknowledging a small read at once (Linux, TCP_QUICKACK through koffi).
//
// A middlebox with Nagle's algorithm on (socat's default, many proxies)
// sends the first segment of an answer written in two writes, then holds
// the second until that first one is acknowledged; our kernel delays the
// acknowledgement of a lone small segment by up to 40 ms. An HTTP/2 answer
// (headers and data, then trailers) took 23.5 ms a call through such a hop
// for plain TCP and 28 ms for rocks (bench case `nagle`). Setting
// TCP_QUICKACK after a read smaller than a segment makes the kernel send
// its pending ACK now, on rocks links only (never on a connection served
// plain).
//
// Not when we write on that connection in the same turn of the event loop:
// the write carries the ACK, as a reply to a request or the server's answer
// to a HELLO does. The call and its lone ACK segment cost each end a system
// call and the loopback peer a wake-up, at every exchange.

import type { Socket } from 'node:net';
import { fdOf, IPPROTO_TCP, socketCalls } from './socket-calls.js';

export const TCP_QUICKACK = 12;
/** Reads smaller than a segment: a message whose sender may be waiting for our ACK to send the rest. */
export const QUICK_ACK_BELOW = 1400;
const ON = Buffer.from(new Int32Array([1]).buffer);

/** The kernel sends its pending ACK for `socket` now, instead of when its delayed-ACK timer fires. Best effort. */
export function ackAtOnce(socket: Socket): void {
  const c = socketCalls();
  if (c === null) return;
  const fd = fdOf(socket);
  if (fd !== undefined) c.setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, ON, 4);
}

/** Sockets that read a small chunk this turn, with what they had written by then. */
const owed = new Map<Socket, number>();

/**
 * The kernel acknowledges what `socket` just read at the end of this turn of
 * the event loop, unless we wrote on it by then. With Nagle on (`nagle`) our
 * own small write may wait for the peer, so the ACK goes at once.
 */
export function ackSoon(socket: Socket, nagle: boolean): void {
  if (nagle) ackAtOnce(socket);
  else if (!owed.has(socket)) {
    if (owed.size === 0) setImmediate(ackOwed);
    owed.set(socket, socket.bytesWritten);
  }
}

function ackOwed(): void {
  for (const [socket, written] of owed) if (!socket.destroyed && socket.bytesWritten === written) ackAtOnce(socket);
  owed.clear();
}
