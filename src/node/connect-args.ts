// The argument forms of net.connect, shared by ReliableSocket.connect and
// the preload of `rock run`, which must read them exactly as net does.

import { RocksError } from '../protocol/errors.js';
import type { ReliableConnectOptions } from './socket.js';

/** The argument forms of net.connect: (options[, cb]), (port[, host][, cb]), (path[, cb]). */
export function normalizeConnectArgs(args: unknown[]): [ReliableConnectOptions, (() => void) | undefined] {
  const listener = typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as () => void) : undefined;
  const first = args[0];
  if (first !== null && typeof first === 'object') return [{ ...(first as ReliableConnectOptions) }, listener];
  if (typeof first === 'string' && !/^\d+$/.test(first)) return [{ path: first }, listener];
  if (typeof first === 'number' || typeof first === 'string') {
    const port = Number(first);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RocksError('ERR_ROCKS_INVALID_OPTION', `port must be 0-65535, got ${String(first)}`);
    }
    const host = typeof args[1] === 'string' ? args[1] : undefined;
    return [{ port, host }, listener];
  }
  throw new RocksError('ERR_ROCKS_INVALID_OPTION', 'connect needs options, a port or a path');
}
