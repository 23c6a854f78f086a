// Acknowledging a small read at once (Linux, TCP_QUICKACK through koffi).
//
// A middlebox with Nagle's algorithm on (socat's default, many proxies)
// sends the first segment of an answer written in two writes, then holds
// the second until that first one is acknowledged; our kernel delays the
// acknowledgement of a lone small segment by up to 40 ms. An HTTP/2 answer
// (headers and data, then trailers) took 23.5 ms a call through such a hop
// for plain TCP and 28 ms for rocks (bench case `nagle`). Setting
// TCP_QUICKACK after each read smaller than a segment makes the kernel send
// its pending ACK now: one system call and at most one small segment per
// small read, on rocks links only (never on a connection served plain).

import type { Socket } from 'node:net';
import { fdOf, IPPROTO_TCP, socketCalls } from './socket-calls.js';

const TCP_QUICKACK = 12;
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
