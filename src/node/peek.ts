// Looking at a TCP connection's first bytes without reading them (Linux).
//
// A TLS server must see a ClientHello's ALPN list before TLS starts (to tell
// a rocks client from an ordinary one, tls-link.ts). Reading it in
// JavaScript and handing it back costs twice: node:tls then takes the bytes
// through a 1 KiB input buffer that stays in its ring for the connection's
// life (a bulk receiver then reads 1 KiB and 16 KiB in turn: 30,000 reads
// for 256 MiB against 6,700), and runs the handshake's first step from
// JavaScript. So where the kernel allows, the server peeks: recv() with
// MSG_PEEK on the connection's descriptor, through koffi (Node has no
// MSG_PEEK), with TCP_DEFER_ACCEPT on the listening socket so that a
// connection is accepted once its first bytes are there. Anywhere else, or
// when the bytes are not all there yet, the caller reads them as before.

import type { Server, Socket } from 'node:net';
import { debuglog } from 'node:util';
import { fdOf, IPPROTO_TCP, setIntOption, socketCalls } from './socket-calls.js';

const debug = debuglog('rocks');

const TCP_DEFER_ACCEPT = 9;
const MSG_PEEK = 0x2;
const MSG_DONTWAIT = 0x40;
/** Seconds a connection that sends nothing waits in the kernel before it is accepted all the same. */
const DEFER_SECONDS = 5;

/** Asks the kernel to accept a connection on `server` once its first bytes are there. Best effort. */
export function deferAccept(server: Server): void {
  const c = socketCalls();
  const fd = fdOf(server);
  if (c === null || fd === undefined) return;
  if (!setIntOption(c, fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, DEFER_SECONDS)) debug('TCP_DEFER_ACCEPT refused');
}

/**
 * Up to `max` bytes waiting on `socket`, left in place; undefined when they
 * cannot be peeked (no MSG_PEEK here, nothing there yet, or the end).
 */
export function peekBytes(socket: Socket, max: number): Buffer | undefined {
  const c = socketCalls();
  const fd = fdOf(socket);
  if (c === null || fd === undefined) return undefined;
  if (scratch.length < max) scratch = Buffer.allocUnsafe(max);
  const n = Number(c.recv(fd, scratch, max, MSG_PEEK | MSG_DONTWAIT));
  return n > 0 ? Buffer.from(scratch.subarray(0, n)) : undefined;
}
let scratch = Buffer.alloc(0);
