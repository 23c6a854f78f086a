// The two stream transports the benchmark compares: raw node:net and rocks.
// Both give a Duplex with the same surface, so one peer program drives either.

import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { connect as rocksConnect, createServer as rocksCreateServer, type ReliableSocket } from '../../src/index.js';

export type Stream = Socket | ReliableSocket;
export type Transport = 'raw' | 'rocks';

/** Listens on `at` (default: a free port on 127.0.0.1). */
export function listen(
  transport: Transport,
  options: object,
  onConnection: (s: Stream) => void,
  at: { host?: string; port?: number } = {},
): Promise<{ port: number; close(): void }> {
  const server =
    transport === 'raw'
      ? netCreateServer({ allowHalfOpen: true, noDelay: true }, onConnection)
      : rocksCreateServer({ ...options, allowHalfOpen: true }, onConnection);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port ?? 0, at.host ?? '127.0.0.1', () => resolve({ port: (server.address() as AddressInfo).port, close: () => server.close() }));
  });
}

export function dial(transport: Transport, port: number, options: object): Stream {
  const s =
    transport === 'raw'
      ? netConnect({ port, host: '127.0.0.1', allowHalfOpen: true })
      : rocksConnect({ ...options, port, host: '127.0.0.1', allowHalfOpen: true });
  s.setNoDelay(true);
  return s;
}

/** The options every peer takes, plus the job's (all strings or booleans). */
export function peerArgs(
  extra: Record<string, { type: 'string' | 'boolean'; default?: string | boolean }>,
): Record<string, string | boolean | undefined> & { transport: string; job?: string; options: string } {
  return parseArgs({
    options: {
      transport: { type: 'string', default: 'raw' },
      job: { type: 'string' },
      options: { type: 'string', default: '{}' },
      port: { type: 'string' },
      ...extra,
    },
  }).values as Record<string, string | boolean | undefined> & { transport: string; job?: string; options: string };
}

export { fatal, say } from './say.js';
