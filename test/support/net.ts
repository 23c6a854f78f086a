// Small helpers for tests over real sockets.

import { once } from 'node:events';
import { createServer as httpCreateServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { createServer, type ReliableServer, type ReliableServerOptions, type ReliableSocket } from '../../src/index.js';
import type { FaultProxy } from '../../src/testbed/fault-proxy.js';
import { sleep, until } from './helpers.js';

/** A rocks server listening on an ephemeral port of `host`. */
export async function listen(
  options: ReliableServerOptions,
  onConnection: (s: ReliableSocket) => void,
  host = '127.0.0.1',
): Promise<{ server: ReliableServer; port: number }> {
  const server = createServer(options, onConnection);
  server.listen(0, host);
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * Passes on only reliable connections. A rocks link whose announcement was
 * lost (a black hole right after the TCP handshake) is, after detectTimeout,
 * rightly served as a silent ordinary client; tests that only speak rocks
 * count those in `strays` and close them.
 */
export function rocksOnly(handler: (s: ReliableSocket) => void, strays: ReliableSocket[] = []): (s: ReliableSocket) => void {
  return (s) => {
    if (s.reliable) return handler(s);
    strays.push(s);
    s.on('error', () => {});
    s.destroy();
  };
}

export function closeServer(server: ReliableServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

export function hasIPv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((a) => a.family === 'IPv6' && a.address === '::1'));
}

export function collect(socket: ReliableSocket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

/**
 * Ends a client cleanly and tears down what it went through: waits for the
 * client to close and for the server to release the session (the closing
 * handshake ends when the server has the last acknowledgement), then closes
 * the proxy and the server.
 */
export async function endAll(client: ReliableSocket, server: ReliableServer, proxy?: FaultProxy): Promise<void> {
  const closed = new Promise((r) => client.on('close', r));
  client.resume(); // the stream ends (and closes) only once what is left is read
  client.end();
  await closed;
  await until(() => server.sessionCount === 0, 5000, 'the server to release the session');
  await proxy?.close();
  await closeServer(server);
}

/**
 * An http server on 127.0.0.1 that answers every request with `body`, 1 MiB
 * per 100 ms (so that faults land mid-transfer).
 */
export async function slowHttpServer(body: Buffer): Promise<{ server: HttpServer; port: number }> {
  const server = httpCreateServer(async (_req, res) => {
    res.writeHead(200, { 'content-length': body.length });
    for (let at = 0; at < body.length && !res.destroyed; at += 1024 * 1024) {
      if (!res.write(body.subarray(at, at + 1024 * 1024))) await once(res, 'drain');
      await sleep(100);
    }
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}
