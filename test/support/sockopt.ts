// Reading a socket option back from the kernel (getsockopt through koffi,
// Linux only): what the kernel holds, not what we asked of it.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { fdOf, socketCalls } from '../../src/node/socket-calls.js';

type GetSockOpt = (fd: number | undefined, level: number, name: number, value: Buffer, length: number[]) => number;
let getsockopt: GetSockOpt | undefined;

/** The int value of option `name` at `level` on `socket`'s descriptor. Call only where socketCalls() is not null. */
export function intOption(socket: Socket, level: number, name: number): number {
  assert.notEqual(socketCalls(), null, 'no socket calls here (Linux with koffi only)');
  getsockopt ??= createRequire(import.meta.url)('koffi')
    .load('libc.so.6')
    .func('int getsockopt(int, int, int, _Out_ void *, _Inout_ unsigned int *)');
  const value = Buffer.alloc(4);
  assert.equal(getsockopt!(fdOf(socket), level, name, value, [4]), 0, `getsockopt(${level}, ${name})`);
  return value.readInt32LE();
}
