// The stream transports the benchmark compares: raw node:net and rocks, and
// over TLS raw node:tls and rocks with its `tls` option (the options' tlsDir
// names a `rock keygen` folder). All give a Duplex with the same surface, so
// one peer program drives any.

import { readFileSync } from 'node:fs';
import { connect as netConnect, createServer as netCreateServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as tlsCreateServer } from 'node:tls';
import { parseArgs } from 'node:util';
import { connect as rocksConnect, createServer as rocksCreateServer, type ReliableSocket } from '../../src/index.js';

export type Stream = Socket | ReliableSocket;
export type Transport = 'raw' | 'rocks' | 'tls' | 'rocks+tls';

/** The pair in options.tlsDir: the server's key and certificate, which the client trusts as its CA. */
function pair(options: object): { key: Buffer; cert: Buffer } {
  const dir = (options as { tlsDir?: string }).tlsDir;
  if (dir === undefined) throw new Error('TLS transports need options.tlsDir (a rock keygen folder)');
  return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
}

/** The options without tlsDir, which is ours, not rocks'. */
function rocksOptions(options: object): object {
  const { tlsDir: _, ...rest } = options as { tlsDir?: string };
  return rest;
}

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
      : transport === 'tls'
        ? (tlsCreateServer({ ...pair(options), allowHalfOpen: true, noDelay: true }, onConnection) as unknown as NetServer)
        : transport === 'rocks+tls'
          ? rocksCreateServer({ ...rocksOptions(options), allowHalfOpen: true, tls: pair(options) }, onConnection)
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
      : transport === 'tls'
        ? tlsConnect({ port, host: '127.0.0.1', ca: pair(options).cert })
        : transport === 'rocks+tls'
          ? rocksConnect({ ...rocksOptions(options), port, host: '127.0.0.1', allowHalfOpen: true, tls: { ca: pair(options).cert } })
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
