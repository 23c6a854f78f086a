// The socket calls Node has no API for (MSG_PEEK, setsockopt), through koffi
// (FFI), for peek.ts and kernel-liveness.ts. Linux only; loaded on first use.

import { createRequire } from 'node:module';
import type { Server, Socket } from 'node:net';
import { debuglog } from 'node:util';

const debug = debuglog('rocks');

export interface SocketCalls {
  recv(fd: number, buf: Buffer, length: number, flags: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
}

export const IPPROTO_TCP = 6;

let calls: SocketCalls | null | undefined;

/** The libc calls, loaded on first use; null where there are none (not Linux, or koffi cannot load). */
export function socketCalls(): SocketCalls | null {
  if (calls !== undefined) return calls;
  calls = null;
  if (process.platform !== 'linux') return calls;
  try {
    const koffi = createRequire(import.meta.url)('koffi');
    const lib = koffi.load('libc.so.6');
    calls = {
      recv: lib.func('long recv(int fd, void *buf, unsigned long length, int flags)'),
      setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *value, unsigned int length)'),
    };
  } catch (err) {
    debug('no socket calls through koffi (%s)', (err as Error).message);
  }
  return calls;
}

/** The descriptor of a socket's or server's handle, where Node has one (TCP and TLS over TCP, on Unix). */
export function fdOf(owner: Socket | Server): number | undefined {
  const fd = (owner as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** setsockopt with an int value; false when the kernel refused it. */
export function setIntOption(c: SocketCalls, fd: number, level: number, name: number, value: number): boolean {
  const buf = Buffer.alloc(4);
  buf.writeInt32LE(value);
  return c.setsockopt(fd, level, name, buf, 4) === 0;
}
